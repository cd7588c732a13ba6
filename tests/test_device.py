"""Devices: which one ``auto`` picks, the autocast that suits each, and networks that come
back where they were after work on the target's device."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from torch import nn

from target_models.device import (
    CPU_AUTOCAST_VARIABLE,
    DeviceUnavailableError,
    autocast,
    autocast_dtype,
    autocast_enabled,
    cpu_autocast_setting,
    cpu_has_native_bfloat16,
    module_device,
    needs_grad_scaler,
    on_device,
    resolve_device,
)
from target_models.training import TrainConfig, predict_logits, train


def test_auto_picks_the_best_device_this_machine_has():
    expected = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    assert resolve_device(None).type == expected
    assert resolve_device("CPU") == torch.device("cpu")
    if expected != "cpu":  # a GPU equals the device its tensors report (cuda:0, not cuda)
        assert resolve_device(expected) == resolve_device("auto") == torch.zeros(1, device=expected).device


def test_a_device_the_machine_lacks_or_an_unknown_one_is_refused():
    with pytest.raises(DeviceUnavailableError, match="unknown device 'tpu'"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(DeviceUnavailableError, match="no CUDA GPU.*use --device cpu"):
            resolve_device("cuda")
    if not torch.backends.mps.is_available():
        with pytest.raises(DeviceUnavailableError, match="no Apple GPU"):
            resolve_device("mps")


def test_a_gpu_index_the_machine_lacks_is_refused(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # as on a machine with two GPUs
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    for bad in ("cuda:7", "cuda:x"):
        with pytest.raises(DeviceUnavailableError, match="cuda:0 to cuda:1; choose one of them"):
            resolve_device(bad)


def test_autocast_suits_the_device():
    cpu = torch.device("cpu")
    assert autocast_dtype(cpu) == torch.bfloat16 and not needs_grad_scaler(cpu, True)
    assert autocast_dtype(torch.device("mps")) == torch.float16 and needs_grad_scaler(torch.device("mps"), True)
    assert not needs_grad_scaler(torch.device("mps"), False)


@pytest.mark.parametrize("native", [True, False])
def test_cpu_autocast_only_where_bfloat16_is_native(monkeypatch, native):
    """On a CPU that emulates bfloat16 (AVX2 only) autocast is 30x slower than float32, so
    ``auto`` leaves it off there; ``on`` and ``off`` force it; GPUs are not affected."""
    import target_models.device as device_module

    monkeypatch.setattr(device_module, "cpu_has_native_bfloat16", lambda: native)
    monkeypatch.delenv(CPU_AUTOCAST_VARIABLE, raising=False)
    cpu, layer, x = torch.device("cpu"), nn.Linear(4, 4), torch.randn(2, 4)
    assert autocast_enabled(cpu, True) is native and autocast_enabled(cpu, False) is False
    with autocast(cpu, True):
        assert layer(x).dtype == (torch.bfloat16 if native else torch.float32)
    with cpu_autocast_setting("on"), autocast(cpu, True):
        assert layer(x).dtype == torch.bfloat16
    with cpu_autocast_setting("off"):
        assert not autocast_enabled(cpu, True)
    assert CPU_AUTOCAST_VARIABLE not in os.environ  # the setting is undone after the block
    assert autocast_enabled(torch.device("cuda"), True) and not autocast_enabled(torch.device("cuda"), False)
    monkeypatch.setenv(CPU_AUTOCAST_VARIABLE, "fast")
    with pytest.raises(ValueError, match="use auto, on or off"):
        autocast_enabled(cpu, True)


def test_the_cpu_check_reads_this_machine():
    expected = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    assert cpu_has_native_bfloat16() is expected


def test_training_and_measuring_leave_the_network_where_it_was():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 2))
    x, y = np.random.default_rng(0).normal(size=(64, 3)).astype(np.float32), np.arange(64) % 2

    def to_batch(xb, yb, augment, rng):
        return torch.from_numpy(xb), torch.from_numpy(yb)

    before = [p.detach().clone() for p in model.parameters()]
    device = resolve_device("auto")
    train(model, x, y, to_batch, nn.functional.cross_entropy, TrainConfig(epochs=1, batch_size=16), device=device,
          show_progress=False)
    assert module_device(model) == torch.device("cpu")
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))  # it trained
    logits = predict_logits(model, torch.from_numpy(x), device=device)
    assert logits.device == torch.device("cpu") and module_device(model) == torch.device("cpu")
    torch.testing.assert_close(logits, model(torch.from_numpy(x)).detach(), rtol=1e-4, atol=1e-4)
    with on_device(model, device) as moved:
        assert module_device(moved) == device
    assert module_device(model) == torch.device("cpu")
