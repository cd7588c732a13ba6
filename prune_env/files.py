"""Writing JSON result files: every ``config.json``, ``report.json``, ``results.json`` and
``*.jsonl`` the project writes goes through these functions.

(Pruned networks are saved by :func:`prune_env.export.save_pruned`, checkpoints by
:func:`target_models.checkpoints.atomic_save`.)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from target_models.checkpoints import atomic_write_bytes, note_saved


def write_json(path: str | Path, payload: Any, progress: bool = False) -> Path:
    """``payload`` as indented JSON with a final newline, written atomically (an interrupted
    write never leaves half a file); creates the parent folders. ``progress``: a result that
    an interrupted script can be resumed from (its interrupt message names it)."""
    path = Path(path)
    atomic_write_bytes(path, (json.dumps(payload, indent=2) + "\n").encode(), progress=progress)
    return path


def write_jsonl(path: str | Path, rows: list[dict]) -> Path:
    """``rows`` as JSON lines, one compact object a line (replaces the file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def append_jsonl(path: str | Path, row: dict) -> None:
    """One more line of a JSON-lines file, written as soon as it is measured."""
    with Path(path).open("a") as f:
        f.write(json.dumps(row) + "\n")
    note_saved(path)
