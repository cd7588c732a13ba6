"""Pruning networks that are not sequential (prune_env.graph): coupled channels found by
Torch-Pruning's dependency graph, proven exact against masking, FLOPs against fvcore."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from prune_env.cost import count_flops, count_params
from prune_env.graph import GraphPruner
from prune_env.pruner import Pruner, make_pruner
from target_models.resnet import CifarResNet


class ConcatNet(nn.Module):
    """Two branches concatenated into one convolution, then a depthwise convolution."""

    def __init__(self):
        super().__init__()
        self.a = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU())
        self.b = nn.Sequential(nn.Conv2d(3, 5, 3, padding=1), nn.BatchNorm2d(5), nn.ReLU())
        self.merge = nn.Sequential(nn.Conv2d(11, 8, 1), nn.BatchNorm2d(8), nn.ReLU())
        self.depthwise = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.BatchNorm2d(8), nn.ReLU())
        self.head = nn.Linear(8 * 4 * 4, 4)

    def forward(self, x):
        x = self.merge(torch.cat([self.a(x), self.b(x)], dim=1))
        x = nn.functional.adaptive_avg_pool2d(self.depthwise(x), 4)
        return self.head(x.flatten(1))


class GroupedNet(nn.Module):
    """A grouped (not depthwise) convolution between two plain ones."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.grouped = nn.Conv2d(8, 8, 3, padding=1, groups=2)
        self.c3 = nn.Conv2d(8, 6, 3, padding=1)
        self.head = nn.Linear(6, 3)

    def forward(self, x):
        x = self.c3(torch.relu(self.grouped(torch.relu(self.c1(x)))))
        return self.head(x.mean((2, 3)))


def _randomised(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random batch-norm statistics and affine parameters, so that no channel is trivially zero."""
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
    return model.eval()


def _masked(pruner: GraphPruner, keep: list[torch.Tensor]) -> nn.Module:
    """The unpruned network with every removed unit's producers zeroed (weights, biases,
    batch-norm scale and shift): the function physical pruning must compute."""
    model = copy.deepcopy(pruner.model)
    with torch.no_grad():
        for group, kept in zip(pruner.layers, keep, strict=True):
            gone = set(range(group.units)) - {int(i) for i in kept}
            for name, is_out, idxs, roots in group.members:
                if not is_out:
                    continue
                module = model.get_submodule(name)
                rows = [i for i, r in zip(idxs, roots, strict=True) if r in gone]
                for param in (module.weight, module.bias):
                    if param is not None and rows:
                        param[rows] = 0
    return model


def _random_keep(pruner, rng) -> list[torch.Tensor]:
    return [torch.from_numpy(np.sort(rng.choice(u, size=max(1, int(u * rng.uniform(0.2, 0.9))), replace=False)))
            for u in pruner.units]


NETWORKS = {
    "resnet20": lambda: CifarResNet(blocks_per_stage=3),
    "concat_depthwise": ConcatNet,
    "mobilenet_v2": lambda: __import__("torchvision").models.mobilenet_v2(num_classes=10, width_mult=0.35),
}


@pytest.mark.parametrize("name", NETWORKS)
def test_pruned_network_computes_what_the_masked_one_does_and_costs_what_fvcore_counts(name):
    torch.manual_seed(0)
    model = _randomised(NETWORKS[name]())
    x = torch.randn(4, 3, 32, 32)
    pruner = make_pruner(model, x[:1], calibration_inputs=x)
    assert isinstance(pruner, GraphPruner) and len(pruner.layers) > 1
    rng = np.random.default_rng(0)
    for _ in range(3):
        keep = _random_keep(pruner, rng)
        pruned = pruner.prune_indices(keep)
        assert pruner.widths_of(pruned) == [len(k) for k in keep]
        assert count_params(pruned) < count_params(model)
        torch.testing.assert_close(pruned(x), _masked(pruner, keep)(x), rtol=1e-4, atol=1e-5)
        counts = [len(k) for k in keep]
        # exact for convolutions, linear layers and batch norms; what else fvcore counts
        # (pooling here) is held at its unpruned FLOPs, so the error is at most those
        error = abs(pruner.flop_model.flops(counts) - count_flops(pruned, x[:1]))
        assert error <= pruner.flop_model.fixed and error / pruner.flop_model.base < 0.02
    assert pruner.flop_model.base == pytest.approx(count_flops(model, x[:1]))
    out_before = model(x)
    torch.testing.assert_close(model(x), out_before)  # the original is never modified


def test_resnet_groups_tie_every_residual_stream_and_keep_the_output_layer():
    model = CifarResNet(blocks_per_stage=3).eval()
    pruner = GraphPruner(model, torch.zeros(1, 3, 32, 32))
    # 3 residual streams (stem + stage 1, stage 2, stage 3) and one inner width per block
    assert len(pruner.layers) == 3 + 9
    streams = [g for g in pruner.layers if sum(1 for _, out, *_ in g.members if out) > 3]
    assert len(streams) == 3
    stage3 = next(g for g in streams if g.units == 64)
    produced = {n for n, out, *_ in stage3.members if out}
    assert {f"layer3.{i}.bn2" for i in range(3)} <= produced and "layer3.0.shortcut.1" in produced
    assert "fc" in {n for n, out, *_ in stage3.members if not out}
    assert all(g.name != "fc" for g in pruner.layers)


def test_grouped_convolutions_keep_their_channels_and_the_rest_is_pruned():
    model = GroupedNet().eval()
    x = torch.randn(2, 3, 16, 16)
    pruner = GraphPruner(model, x[:1])
    assert [g.name for g in pruner.layers] == ["c3"]  # c1 and grouped feed or are the grouped conv
    pruned = pruner.prune_indices([torch.tensor([0, 2, 5])])
    assert pruned.c3.out_channels == 3 and pruned.grouped.groups == 2
    torch.testing.assert_close(pruned(x), _masked(pruner, [torch.tensor([0, 2, 5])])(x), rtol=1e-4, atol=1e-5)


def test_statistics_score_each_unit_of_a_group_and_criteria_pick_from_them():
    model = _randomised(CifarResNet(blocks_per_stage=1))
    x = torch.randn(16, 3, 32, 32)
    pruner = GraphPruner(model, x[:1], calibration_inputs=x)
    stem = pruner.layers[0]
    assert stem.name == "conv1"
    # the stem's units are produced by the stem conv and every conv summed into stage 1
    producers = [n for n, out, *_ in stem.members if out and isinstance(model.get_submodule(n), nn.Conv2d)]
    expected = sum(model.get_submodule(n).weight.detach().abs().flatten(1).sum(1) for n in producers)
    torch.testing.assert_close(pruner.stats.l1[0], expected.float())
    assert all(len(a) == u for a, u in zip(pruner.stats.activation, pruner.units, strict=True))
    assert all(bool((a >= 0).all()) and float(a.max()) > 0 for a in pruner.stats.activation)
    keep = pruner.keep_indices(pruner.keep_counts(0.5), "activation")
    assert [len(k) for k in keep] == list(pruner.keep_counts(0.5))
    top = torch.argsort(pruner.stats.activation[1], descending=True)[: len(keep[1])]
    assert set(keep[1].tolist()) == set(top.tolist())


def test_sequential_networks_keep_the_projects_own_pruner():
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    assert isinstance(make_pruner(model, torch.zeros(1, 4)), Pruner)
    with pytest.raises(ValueError, match="layer_types extend the sequential pruner"):
        make_pruner(CifarResNet(1), torch.zeros(1, 3, 32, 32), layer_types=[object()])


def test_a_saved_pruned_residual_network_loads_into_the_architecture_its_widths_describe():
    from target_models import get_target

    target = get_target("resnet56_cifar10")
    assert len(target.default_widths) == 3 + 27
    model = _randomised(target.build_model())
    pruner = make_pruner(model, target.example_input())
    pruned = pruner.prune_counts(pruner.keep_counts(0.5))
    rebuilt = target.build_model(pruner.widths_of(pruned))
    rebuilt.load_state_dict(pruned.state_dict())
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(rebuilt.eval()(x), pruned(x))


def test_the_readme_flow_for_your_own_torchvision_model_runs_as_it_stands(tmp_path, monkeypatch):
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    code = re.search(r"<!-- your-own-model -->\n```python\n(.*?)```", readme, re.S).group(1)
    assert len(code.strip().splitlines()) <= 25
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)
    record, pruned, model = scope["record"], scope["pruned"], scope["model"]
    assert abs(record["flops_ratio"] - 0.5) < 0.01
    assert count_params(pruned) < count_params(model)
    assert count_flops(pruned, torch.zeros(1, 3, 32, 32)) == pytest.approx(record["flops_pruned"], rel=1e-3)
    assert (tmp_path / "pruned.onnx").exists()


def test_keep_layers_stay_whole_besides_the_output_layer_and_rounds_respect_them():
    from agents.heuristics import make_heuristic
    from prune_env import PruningEnv
    from target_models import ModelTarget

    torch.manual_seed(0)
    net = _randomised(ConcatNet())
    x = torch.randn(8, 3, 32, 32)
    target = ModelTarget(net, x[:1], lambda m: float(m.eval()(x).argmax(1).float().mean()), calibration_inputs=x,
                         keep_layers=["a.0"])
    target.ensure_pretrained()  # your network is trained: nothing to do (train_agent's step)
    env = PruningEnv(target, flops_budget=0.6, val_size=None)
    names = [g.name for g in env.layers]
    assert "a.0" not in names and "head" not in names and names
    policy = make_heuristic("ngf_scheduled", env)
    policy.finetune_epochs = 0.0
    model, report = policy.run()
    assert model.a[0].out_channels == 6 and model.head.out_features == 4
    assert abs(report["flops_ratio"] - 0.6) <= 0.05
    assert next(net.parameters()).requires_grad  # the caller's network is untouched
