"""Studies: experiment presets x seeds, compared (see study.py)."""
