"""Physical pruning is exact, leaves the original alone and costs what the formulas say."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch

from prune_env.cost import FlopModel, count_flops, count_params
from prune_env.pruner import Pruner
from prune_env.structure import find_prunable_layers
from prune_env.surgery import keep_count, prune_model, top_units, widths_of
from target_models.cnn import build_cnn
from target_models.lstm import build_lstm
from target_models.policy_mlp import build_policy_mlp
from target_models.vgg import build_vgg16

BUILDERS = {
    "cnn": (build_cnn, lambda: torch.randn(3, 3, 32, 32)),
    "vgg16": (build_vgg16, lambda: torch.randn(2, 3, 32, 32)),
    "lstm": (build_lstm, lambda: torch.randint(0, 20000, (3, 256))),
    "mlp": (build_policy_mlp, lambda: torch.randn(5, 4)),
}


def _model(name: str, seed: int = 0):
    torch.manual_seed(seed)
    build, make_input = BUILDERS[name]
    model = build().eval()
    for m in model.modules():  # non-trivial batch-norm statistics
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    return model, make_input()


def _hash(model) -> str:
    h = hashlib.sha1()
    for k, v in model.state_dict().items():
        h.update(k.encode())
        h.update(v.detach().numpy().tobytes())
    return h.hexdigest()


@pytest.mark.parametrize("name", list(BUILDERS))
def test_keep_all_gives_identical_outputs(name):
    model, x = _model(name)
    pruned = Pruner(model, x).prune(1.0)
    assert torch.equal(model(x), pruned(x))


@pytest.mark.parametrize("name", list(BUILDERS))
def test_removing_units_without_outgoing_weights_is_exact(name):
    """Zero the outgoing weights of some units; removing them must not change the outputs."""
    model, x = _model(name)
    layers = find_prunable_layers(model, x)
    rng = np.random.default_rng(0)
    keep = []
    with torch.no_grad():
        for layer in layers:
            dead = torch.from_numpy(rng.choice(layer.units, size=layer.units // 3, replace=False))
            consumer = model[layer.consumer]
            f = layer.features_per_unit
            cols = (dead[:, None] * f + torch.arange(f)).reshape(-1)
            w = consumer.weight_ih_l0 if isinstance(consumer, torch.nn.LSTM) else consumer.weight
            w[:, cols] = 0
            own = model[layer.position]
            if isinstance(own, torch.nn.LSTM):  # the recurrence is an outgoing path too
                own.weight_hh_l0[:, dead] = 0
            keep.append(torch.tensor(sorted(set(range(layer.units)) - set(dead.tolist()))))
    before = model(x)
    pruned = prune_model(model, layers, keep)
    assert widths_of(pruned, layers) == [len(k) for k in keep]
    torch.testing.assert_close(pruned(x), before, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", list(BUILDERS))
def test_original_model_is_never_modified(name):
    model, x = _model(name)
    digest = _hash(model)
    pruner = Pruner(model, x, calibration_inputs=x)
    for ratio in (0.3, 0.7):
        for criterion in ("l1", "activation", "random"):
            pruner.prune(ratio, criterion)
    assert _hash(model) == digest


def _closed_form(name: str, w: list[int]) -> tuple[int, int]:
    """(FLOPs, params) from the architectures' formulas, one multiply-add = one flop."""
    if name == "cnn":
        c1, c2, d = w
        flops = 32 * 32 * 27 * c1 + 32 * 32 * 9 * c1 * c2 + 256 * c2 * d + 10 * d
        params = (27 * c1 + c1) + (9 * c1 * c2 + c2) + (256 * c2 * d + d) + (10 * d + 10)
        return flops, params
    if name == "lstm":
        e, h, d = w  # the embedding width is prunable too
        t = 256
        flops = t * 4 * h * (e + h) + h * d + d
        params = 20000 * e + 4 * h * (e + h) + 8 * h + (h * d + d) + (d + 1)
        return flops, params
    if name == "mlp":
        h1, h2 = w
        return 4 * h1 + h1 * h2 + 2 * h2, (5 * h1) + (h1 * h2 + h2) + (2 * h2 + 2)
    if name == "vgg16":
        sizes = [32, 32, 16, 16, 8, 8, 8, 4, 4, 4, 2, 2, 2]
        flops = params = 0
        cin = 3
        for c, s in zip(w, sizes, strict=True):
            flops += s * s * 9 * cin * c + 2 * c * s * s  # conv + batch norm
            params += 9 * cin * c + 2 * c
            cin = c
        return flops + cin * 10, params + cin * 10 + 10
    raise KeyError(name)


@pytest.mark.parametrize("name", list(BUILDERS))
@pytest.mark.parametrize("ratio", [1.0, 0.55, 0.2])
def test_params_and_flops_match_closed_formulas(name, ratio):
    model, x = _model(name)
    pruner = Pruner(model, x)
    rng = np.random.default_rng(1)
    ratios = np.clip(ratio * rng.uniform(0.8, 1.2, len(pruner.layers)), 0.01, 1.0)
    pruned = pruner.prune(ratios)
    widths = widths_of(pruned, pruner.layers)
    flops, params = _closed_form(name, widths)
    assert count_params(pruned) == params
    assert count_flops(pruned, x[:1]) == flops
    assert FlopModel(model, pruner.layers, x[:1]).flops(widths) == flops


def test_vgg16_flops_are_fvcores_313_7_million():
    model, x = _model("vgg16")
    assert count_flops(model, x[:1]) == 313_754_624


def test_at_least_one_unit_stays_and_ratios_are_checked():
    assert keep_count(1e-9, 64) == 1
    assert keep_count(1.0, 64) == 64
    for bad in (0.0, -0.1, 1.01, float("nan")):
        with pytest.raises(ValueError, match=r"keep-ratio must be in \(0, 1\]"):
            keep_count(bad, 64)


def test_top_units_keeps_the_highest_scores_in_index_order():
    scores = torch.tensor([0.1, 0.9, 0.5, 0.9, 0.0])
    assert top_units(scores, 3).tolist() == [1, 2, 3]


@pytest.mark.parametrize("name", ["cnn", "vgg16"])
def test_surgery_agrees_with_torch_pruning(name):
    """Torch-Pruning, given the same units to remove, builds the same network."""
    tp = pytest.importorskip("torch_pruning")
    import copy

    model, x = _model(name)
    pruner = Pruner(model, x)
    keep = pruner.keep_indices(pruner.keep_counts(0.5), "l1")
    ours = prune_model(model, pruner.layers, keep)
    theirs = copy.deepcopy(model)
    graph = tp.DependencyGraph().build_dependency(theirs, example_inputs=x[:1])
    for layer, k in zip(pruner.layers, keep, strict=True):
        drop = sorted(set(range(layer.units)) - set(k.tolist()))
        graph.get_pruning_group(theirs[layer.position], tp.prune_conv_out_channels
                                if layer.kind == "conv" else tp.prune_linear_out_channels, idxs=drop).prune()
    assert count_params(theirs) == count_params(ours)
    torch.testing.assert_close(theirs(x), ours(x), rtol=1e-5, atol=1e-5)


def test_the_lstm_embedding_width_is_a_prunable_layer_that_costs_flops_through_the_lstm():
    model, x = _model("lstm")
    pruner = Pruner(model, x[:1])
    assert [(layer.kind, layer.units) for layer in pruner.layers] == [("linear", 64), ("lstm", 128), ("linear", 64)]
    narrow = pruner.prune_counts([16, 128, 64])
    assert narrow[0].weight.shape == (20000, 16) and narrow[1].input_size == 16
    saved = 256 * 4 * 128 * (64 - 16)  # the LSTM's input-to-hidden products
    assert count_flops(model, x[:1]) - count_flops(narrow, x[:1]) == saved
    assert pruner.flop_model.flops([16, 128, 64]) == count_flops(narrow, x[:1])


@pytest.mark.parametrize("name", list(BUILDERS))
def test_surgery_never_moves_torchs_random_generator(name):
    """Agents draw their actions from torch's generator: a cache miss (surgery) must not
    shift their stream, or a resumed or parallel run would differ from a serial one."""
    model, x = _model(name)
    pruner = Pruner(model, x)
    state = torch.get_rng_state()
    pruned = pruner.prune(0.5)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(pruned(x), pruner.prune(0.5)(x))


@pytest.mark.parametrize("name", ["cnn_cifar10", "vgg16_cifar10", "lstm_imdb", "cartpole_policy"])
def test_a_saved_pruned_network_of_every_target_loads_back(name, tmp_path):
    from prune_env.export import load_pruned, save_pruned
    from target_models import get_target

    torch.manual_seed(0)
    target = get_target(name)
    pruner = target.pruner_for(target.build_model())
    pruned = pruner.prune(0.5).eval()
    save_pruned(tmp_path / "pruned.pt", pruned, pruner.widths_of(pruned), target=target)
    x = target.example_input(2)
    assert torch.equal(load_pruned(tmp_path / "pruned.pt", target)(x), pruned(x))


def test_lstm_checkpoints_that_record_two_widths_still_build():
    assert widths_of(build_lstm((128, 64)), find_prunable_layers(build_lstm(), torch.ones(1, 256, dtype=torch.long))) \
        == [64, 128, 64]
