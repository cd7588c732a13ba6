"""Checkpoints: where they live, atomic writes, and loading with clear errors."""

from __future__ import annotations

import os
import signal
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

HOME_ENV = "PRUNE_ENV_HOME"


class CheckpointError(RuntimeError):
    """A checkpoint is missing, unreadable or made for another model."""


def home_dir() -> Path:
    """The project's cache folder: ``$PRUNE_ENV_HOME`` or ``~/.cache/prune-env``."""
    path = Path(os.environ.get(HOME_ENV) or Path.home() / ".cache" / "prune-env").expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


CHECKPOINTS_ENV = "PRUNE_ENV_CHECKPOINTS"


def checkpoint_path(target: str) -> Path:
    """Where pretraining writes a target's checkpoint: ``$PRUNE_ENV_HOME/checkpoints``."""
    folder = home_dir() / "checkpoints"
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"{target}.pt"


def find_checkpoint(target: str) -> Path:
    """The checkpoint to load: ``<target>.pt`` in the folder named by
    ``$PRUNE_ENV_CHECKPOINTS`` when it holds one (checkpoints you already have), else the
    one pretraining writes."""
    extra = os.environ.get(CHECKPOINTS_ENV)
    if extra:
        folder = Path(extra).expanduser()
        if not folder.is_dir():
            raise CheckpointError(f"${CHECKPOINTS_ENV}={extra} is not a folder; point it at a folder "
                                  f"holding <target>.pt files, or unset it")
        if (folder / f"{target}.pt").exists():
            return folder / f"{target}.pt"
    return checkpoint_path(target)


def _atomic_write(path: Path, write) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


SAVED_THIS_PROCESS: list[Path] = []
"""Checkpoints written by this process, newest last: an interrupted script says whether
anything was saved (and where) instead of assuming it."""


def note_saved(path: str | os.PathLike) -> None:
    """Record that ``path`` holds progress an interrupted script can be resumed from."""
    SAVED_THIS_PROCESS.append(Path(path))


def atomic_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` to a temporary file, then rename: a crash never leaves half a file."""
    _atomic_write(Path(path), lambda tmp: torch.save(obj, tmp))
    note_saved(path)


def atomic_write_bytes(path: str | os.PathLike, data: bytes, progress: bool = False) -> None:
    """``data`` written atomically; ``progress``: a result an interrupted script can be resumed from."""

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(data)

    _atomic_write(Path(path), write)
    if progress:
        note_saved(path)


@contextmanager
def interrupts_held() -> Iterator[None]:
    """Ctrl-C and SIGTERM wait until the block has run (in the main thread), so that files
    written together (an agent and its search state) are never left half-updated."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    for sig in previous:
        signal.signal(sig, lambda signum, frame: received.append(signum))
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if received:
            handler = previous[received[0]]
            if callable(handler):
                handler(received[0], None)
            else:
                os.kill(os.getpid(), received[0])


def atomic_save_npz(path: str | os.PathLike, **arrays: np.ndarray) -> None:
    """``np.savez`` written atomically."""

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)

    _atomic_write(Path(path), write)


def load_checkpoint(path: str | os.PathLike, make_hint: str) -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True``; errors name the file and ``make_hint``."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"no checkpoint at {path}. Make it with: {make_hint}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(
            f"checkpoint {path} is corrupt or unreadable ({exc.__class__.__name__}: {exc}). "
            f"Delete it and make it again with: {make_hint}"
        ) from exc
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "meta" not in ckpt:
        raise CheckpointError(
            f"checkpoint {path} is not a prune-env checkpoint. Make it again with: {make_hint}"
        )
    return ckpt
