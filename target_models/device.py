"""Devices: which one to use, the autocast that suits it, and moving models and batches.

The library keeps pretrained and pruned networks on the CPU, where surgery happens; the
work that costs (training, fine-tuning, measuring) moves a network to the target's
device for its duration and back (:func:`on_device`), and batches follow the network
(:func:`to_device`, pinned and asynchronous on CUDA).
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Callable, Iterator

import torch
from torch import nn

DEVICES = ("auto", "cpu", "cuda", "mps")
"""What ``--device`` accepts; ``auto`` is CUDA when available, else MPS, else the CPU."""


class DeviceUnavailableError(ValueError):
    """A device that this machine does not have."""


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """A ``torch.device`` for ``auto``, ``cpu``, ``cuda`` (``cuda:N``) or ``mps``; a clear
    error for a device this machine lacks. A GPU comes with its index (``cuda`` is the
    current one), so that it equals the device its tensors report."""
    if isinstance(device, torch.device):
        device = str(device)
    name = (device or "auto").lower()
    kind = name.split(":")[0]
    if kind not in DEVICES:
        raise DeviceUnavailableError(f"unknown device {device!r}; choose one of: {', '.join(DEVICES)}")
    if kind == "auto":
        name = kind = "cuda" if torch.cuda.is_available() else "mps" if _mps_available() else "cpu"
    if kind == "cuda" and not torch.cuda.is_available():
        raise DeviceUnavailableError("--device cuda: this machine has no CUDA GPU that torch can use; "
                                     "use --device cpu (or auto)")
    if kind == "mps" and not _mps_available():
        raise DeviceUnavailableError("--device mps: this machine has no Apple GPU that torch can use; "
                                     "use --device cpu (or auto)")
    if name == "cuda":
        return torch.device("cuda", torch.cuda.current_device())
    if kind == "cuda":  # cuda:N
        index = name.split(":", 1)[1]
        count = torch.cuda.device_count()
        if not index.isdigit() or int(index) >= count:
            raise DeviceUnavailableError(f"--device {device}: this machine has CUDA GPUs cuda:0 to "
                                         f"cuda:{count - 1}; choose one of them, or cuda")
    return torch.device("mps", 0) if name == "mps" else torch.device(name)


CPU_AUTOCAST_VARIABLE = "PRUNE_ENV_CPU_AUTOCAST"
"""``auto`` (default): bfloat16 autocast on CPUs with native bfloat16 only; ``on`` or ``off`` forces it."""


@functools.cache  # asked on every autocast entry; the CPU does not change
def cpu_has_native_bfloat16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX-512 BF16 or AMX). Elsewhere torch emulates
    it: VGG16 validation in autocast ran 22x slower than float32 on an AVX2 host (BENCHMARKS.md)."""
    checks = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return any(check() for check in checks if check is not None)


def autocast_enabled(device: torch.device, requested: bool = True) -> bool:
    """Whether a request for autocast on ``device`` is honoured: always on GPUs; on the CPU
    where bfloat16 is native, or as :data:`CPU_AUTOCAST_VARIABLE` says."""
    if not requested or device.type != "cpu":
        return requested
    setting = os.environ.get(CPU_AUTOCAST_VARIABLE, "auto").strip().lower()
    if setting not in ("auto", "on", "off"):
        raise ValueError(f"{CPU_AUTOCAST_VARIABLE}={setting!r}: use auto, on or off")
    return cpu_has_native_bfloat16() if setting == "auto" else setting == "on"


@contextlib.contextmanager
def cpu_autocast_setting(setting: str) -> Iterator[None]:
    """:data:`CPU_AUTOCAST_VARIABLE` set to ``setting`` inside the block (to measure both precisions)."""
    before = os.environ.get(CPU_AUTOCAST_VARIABLE)
    os.environ[CPU_AUTOCAST_VARIABLE] = setting
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(CPU_AUTOCAST_VARIABLE, None)
        else:
            os.environ[CPU_AUTOCAST_VARIABLE] = before


def autocast_dtype(device: torch.device) -> torch.dtype:
    """The low precision autocast uses on ``device``: bfloat16 on the CPU (fast with AMX)
    and on CUDA GPUs that support it, float16 on older GPUs and on MPS."""
    if device.type == "cpu":
        return torch.bfloat16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float16


def autocast(device: torch.device, enabled: bool = True) -> contextlib.AbstractContextManager:
    """Mixed-precision autocast suited to ``device``: a no-op when not ``enabled``, and on a
    CPU without native bfloat16 (:func:`autocast_enabled`)."""
    return torch.autocast(device.type, dtype=autocast_dtype(device), enabled=autocast_enabled(device, enabled))


def needs_grad_scaler(device: torch.device, enabled: bool) -> bool:
    """Whether training in autocast on ``device`` needs loss scaling (float16 only)."""
    return autocast_enabled(device, enabled) and autocast_dtype(device) == torch.float16


def synchronizer(device: torch.device) -> Callable[[], None]:
    """What waits for ``device``'s queued work (GPUs run asynchronously; a timer must wait)."""
    if device.type == "cuda":
        return torch.cuda.synchronize
    if device.type == "mps":
        return torch.mps.synchronize
    return lambda: None


def module_device(model: nn.Module) -> torch.device:
    """Where ``model``'s parameters (else buffers) live; the CPU for a model with neither."""
    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device
    return torch.device("cpu")


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``tensor`` on ``device``; from pinned memory and without blocking on CUDA."""
    if tensor.device == device:
        return tensor
    if device.type == "cuda" and tensor.device.type == "cpu":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


@contextlib.contextmanager
def on_device(model: nn.Module, device: torch.device) -> Iterator[nn.Module]:
    """``model`` moved to ``device`` for the block, and back where it was afterwards."""
    home = module_device(model)
    if home == device:
        yield model
        return
    model.to(device)
    try:
        yield model
    finally:
        model.to(home)


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[int]:
    """torch's intra-op thread count set to ``threads`` for the block (``None``: left as it
    is), and restored afterwards; yields the count in force. A latency table is specific to
    its thread count, and a process that trains on every core can still time at one."""
    before = torch.get_num_threads()
    if threads is not None and threads < 1:
        raise ValueError(f"threads must be at least 1, got {threads}")
    if threads is None or threads == before:
        yield before
        return
    torch.set_num_threads(threads)
    try:
        yield threads
    finally:
        torch.set_num_threads(before)
