"""Reading JSON Lines and JSON arrays record by record, so that an error names the file and line.

    for lineno, obj in read_jsonl(path):          # every non-blank line, each a JSON object
    for lineno, obj in read_json_array(path):     # every item of one JSON array, with the line it starts on

Used by the named readers of the built-in tasks (benchmarks.py) and by task files' JSON Lines sources.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path


def malformed(shown: str | Path, line: int, why: str, error: type[ValueError] = ValueError) -> ValueError:
    return error(f"{shown}:{line}: {why}")


def read_jsonl(path: Path, shown: str | None = None,
               error: type[ValueError] = ValueError) -> Iterator[tuple[int, dict]]:
    """(line number, object) for every non-blank line; `shown` is the path as errors name it."""
    shown = shown or str(path)
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise malformed(shown, lineno, f"not valid JSON ({exc.msg})", error) from None
            if not isinstance(obj, dict):
                raise malformed(shown, lineno, "expected a JSON object per line", error)
            yield lineno, obj


def read_json_array(path: Path) -> Iterator[tuple[int, dict]]:
    """(line number, object) for every item of a file holding one JSON array of objects.

    Items are decoded one at a time so that an error can name the line where the bad item starts.
    """
    text = path.read_text(encoding="utf-8")
    decoder = json.JSONDecoder()
    ws = re.compile(r"[\s,]*")
    pos = ws.match(text, 0).end()
    if not text.startswith("[", pos):
        raise malformed(path, 1, "expected a JSON array")
    pos, lineno, counted = ws.match(text, pos + 1).end(), 1, 0
    while not text.startswith("]", pos):
        lineno += text.count("\n", counted, pos)
        counted = pos
        try:
            obj, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as exc:
            raise malformed(path, exc.lineno, f"not valid JSON ({exc.msg})") from None
        if not isinstance(obj, dict):
            raise malformed(path, lineno, "expected a JSON object")
        yield lineno, obj
        pos = ws.match(text, pos).end()
        if pos >= len(text):
            raise malformed(path, text.count("\n") + 1, "the JSON array is not closed")
