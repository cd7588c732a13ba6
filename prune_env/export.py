"""Export a physically pruned network: state dict with its widths, TorchScript and ONNX.

Every export is checked: the exported model's outputs are compared with the in-memory
model's (max absolute difference), and the ONNX file is run with onnxruntime.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from prune_env.cost import measure_latency
from target_models import Target
from target_models.checkpoints import CheckpointError, atomic_save, load_checkpoint

FORMATS = ("torchscript", "onnx")


def save_pruned(path: str | Path, model: nn.Module, widths: list[int], *, target: Target | None = None,
                meta: dict | None = None) -> None:
    """The one way a physically pruned network is saved: its state dict, the widths that
    rebuild its architecture and ``meta``, written atomically.

    With ``target``, its name is recorded and :func:`load_pruned` rebuilds the network with
    ``target.build_model(widths)``; without (networks not from the target registry, such as
    the ones ``train_with_pruning`` trains), only the widths and ``meta`` are recorded.
    """
    atomic_save({"state_dict": model.state_dict(),
                 "meta": {**({"target": target.name} if target is not None else {}),
                          "widths": [int(w) for w in widths], **(meta or {})}}, path)


def load_pruned(path: str | Path, target: Target) -> nn.Module:
    ckpt = load_checkpoint(path, "python scripts/train_agent.py --target " + target.name)
    if ckpt["meta"].get("target") != target.name:
        raise CheckpointError(f"{path} holds a pruned {ckpt['meta'].get('target')}, not {target.name}")
    model = target.build_model(ckpt["meta"]["widths"])
    model.load_state_dict(ckpt["state_dict"])
    return model.eval()


def export_torchscript(model: nn.Module, example: torch.Tensor, path: str | Path) -> float:
    """Trace to TorchScript; returns the max absolute difference on ``example``."""
    model.eval()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(model, example)
        traced.save(str(path))
        loaded = torch.jit.load(str(path))
        return float((loaded(example) - model(example)).abs().max())


def export_onnx(model: nn.Module, example: torch.Tensor, path: str | Path) -> float:
    """Export to ONNX with a dynamic batch axis and run it with onnxruntime; returns the max
    absolute difference to the in-memory outputs."""
    import onnxruntime as ort

    model.eval()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (example,), str(path), input_names=["input"], output_names=["output"],
                          dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}}, dynamo=False)
        expected = model(example).numpy()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {"input": example.numpy()})[0]
    return float(np.abs(got - expected).max())


def parity_input(model: nn.Module, example: torch.Tensor) -> torch.Tensor:
    """A seeded random input shaped like ``example``, to compare an export with ``model``:
    an all-zeros example never reaches the first layer's weights. Token ids are drawn over
    the model's vocabulary (its first embedding)."""
    generator = torch.Generator().manual_seed(0)
    if example.is_floating_point():
        return torch.randn(example.shape, generator=generator, dtype=example.dtype)
    vocab = next((m.num_embeddings for m in model.modules() if isinstance(m, nn.Embedding)), int(example.max()) + 1)
    return torch.randint(0, vocab, example.shape, generator=generator, dtype=example.dtype)


def export_all(model: nn.Module, base: nn.Module, target: Target, out_dir: str | Path,
               formats: tuple[str, ...] = FORMATS, batch_sizes: tuple[int, ...] = (1, 64),
               measured: dict[int, dict[str, float]] | None = None) -> dict:
    """Export ``model`` in ``formats`` under ``out_dir``; parity (on the CPU) and PyTorch
    latency (on the target's device) against ``base``.
    ``measured`` holds latencies already taken (batch size -> ``{"base": ms, "pruned": ms}``),
    reused rather than timed a second time: one figure per network and batch size."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    example = parity_input(model, target.example_input(2))
    result: dict = {"files": {}, "max_abs_diff": {}}
    for fmt in formats:
        if fmt not in FORMATS:
            raise ValueError(f"unknown export format {fmt!r}; choose from {', '.join(FORMATS)}")
        path = out_dir / ("pruned.ts" if fmt == "torchscript" else "pruned.onnx")
        exporter = export_torchscript if fmt == "torchscript" else export_onnx
        result["max_abs_diff"][fmt] = exporter(model, example, path)
        result["files"][fmt] = str(path)
    result["latency_ms"] = {}
    for batch in batch_sizes:
        if measured and batch in measured:
            result["latency_ms"][f"batch_{batch}"] = dict(measured[batch])
            continue
        x = target.example_input(batch)
        result["latency_ms"][f"batch_{batch}"] = {
            "base": measure_latency(base, x, device=target.device)["ms"],
            "pruned": measure_latency(model, x, device=target.device)["ms"]}
    result["device"], result["threads"] = str(target.device), torch.get_num_threads()
    return result
