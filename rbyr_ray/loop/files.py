"""A run dir's stage files, read with one clear line when one is broken.

Every Parquet file of a round folder is read through `read_parquet`: a truncated file, a file that is not
Parquet, or a Parquet file without the columns its readers need (a foreign one) is a `BrokenFile` error that
names it, and, for a stage's output in a run dir, the flag that recomputes that stage:

    runs/x/round_2/teacher.parquet: not a readable Parquet file (Parquet magic bytes not found ...); recompute
    that stage and the later ones with `rbyr-ray resume runs/x --recompute round_2/teacher`

`broken_stage_outputs(rd)` checks the outputs of every completed stage at once (Parquet schemas, model weights):
what `resume` runs before anything else and `report` names.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pandas as pd

from ..errors import BrokenFile
from .rundir import STAGE_FILES, RunDir, stage_order

# The columns each stage file must have (those its readers use): a Parquet file without them is a foreign one.
REQUIRED_COLUMNS = {
    "exam.parquet": ("id", "sample", "rationale", "correct", "error"),
    "eval.parquet": ("id", "sample", "rationale", "correct", "error"),
    "teacher.parquet": ("id", "sample", "rationale", "accepted"),
    "train_data.parquet": ("id", "input_ids"),
}


def stage_of(path: str | os.PathLike) -> tuple[Path, str] | None:
    """(run dir, "round_<k>/<stage>") when `path` is a stage's output in a run dir (or a file inside one), else None."""
    path = Path(path)
    for part in (path, path.parent):
        if re.fullmatch(r"round_\d+", part.parent.name) and (part.parent.parent / "config.yaml").is_file():
            stage = next((s for s, names in STAGE_FILES.items() if part.name in names), None)
            if stage is not None:
                return part.parent.parent, f"{part.parent.name}/{stage}"
    return None


def broken(path: str | os.PathLike, why: str) -> BrokenFile:
    """The one-line error for a file that cannot be used, with the resume flag that recomputes its stage."""
    message = f"{path}: {why}"
    where = stage_of(path)
    if where is not None:
        run_dir, stage = where
        message += f"; recompute that stage and the later ones with `rbyr-ray resume {run_dir} --recompute {stage}`"
    return BrokenFile(message, str(path))


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:300]


def check_parquet(path: str | os.PathLike, columns: list[str] | None = None) -> None:
    """Its footer and schema only (cheap): a BrokenFile when it is missing, truncated, not Parquet, or lacks a
    column its readers need (REQUIRED_COLUMNS by file name, and `columns`)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path)
    if not path.is_file():
        raise broken(path, "missing")
    try:
        names = set(pq.read_schema(path).names)
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise broken(path, f"not a readable Parquet file, truncated or not Parquet ({_one_line(exc)})") from None
    missing = [c for c in (*REQUIRED_COLUMNS.get(path.name, ()), *(columns or ())) if c not in names]
    if missing:
        raise broken(path, f"a Parquet file without the columns {', '.join(missing)}: not this run's {path.name}")


def read_parquet(path: str | os.PathLike, columns: list[str] | None = None) -> pd.DataFrame:
    """pd.read_parquet of a stage file, or a BrokenFile naming it (see check_parquet)."""
    import pyarrow as pa

    check_parquet(path, columns)
    try:
        return pd.read_parquet(path, columns=columns)
    except (pa.ArrowException, OSError, ValueError) as exc:  # a damaged page behind an intact footer
        raise broken(path, f"not a readable Parquet file ({_one_line(exc)})") from None


def broken_stage_outputs(rd: RunDir) -> list[BrokenFile]:
    """For every completed stage in loop order, its output that cannot be used (a Parquet file that is missing,
    truncated or foreign; a model folder without weights); empty when all are fine."""
    from ..student.models import weights_problem

    found = []
    for entry in sorted(rd.manifest["stages"].values(), key=stage_order):
        folder = rd.path / f"round_{entry['round']}"
        for name in STAGE_FILES.get(entry["stage"], ()):
            path = folder / name
            try:
                if name.endswith(".parquet"):
                    check_parquet(path)
                elif problem := weights_problem(path):
                    raise broken(path, problem)
            except BrokenFile as exc:
                found.append(exc)
    return found


def first_broken(found: list[BrokenFile], note: str = "") -> BrokenFile:
    """One error for the broken stage outputs found (the first in loop order: recomputing its stage recomputes
    the later ones), counting the others."""
    more = f" ({len(found) - 1} more broken stage files after it)" if len(found) > 1 else ""
    return BrokenFile(f"{found[0]}{more}{note}", found[0].path)


def check_stage_outputs(rd: RunDir) -> None:
    """Raise for the first broken output of a completed stage (see broken_stage_outputs)."""
    found = broken_stage_outputs(rd)
    if found:
        raise first_broken(found)
