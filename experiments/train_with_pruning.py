"""Training loops that prune while they train: supervised classifiers and REINFORCE on a
Gymnasium environment. Each run writes config.json, results.json and a plot of its curves
under ``results/<task>/<dataset or env>/<model>/<run name>/``; :func:`compare_runs`
aggregates those runs into comparison plots and a table."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import gymnasium as gym
import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.nn import functional as F
from tqdm.auto import tqdm

from prune_env.during_training import TrainingPruner
from prune_env.export import save_pruned
from prune_env.files import write_json
from prune_env.structure import find_prunable_layers
from prune_env.surgery import widths_of
from target_models.cnn import build_cnn
from target_models.data import CIFAR10, FASHION_MNIST, MNIST, load_image_classification
from target_models.device import resolve_device
from target_models.images import CIFAR10_MEAN, CIFAR10_STD, random_crop_flip, to_image_tensor
from target_models.policy_mlp import build_policy_mlp, rollout
from target_models.small_nets import build_lenet5, build_mlp
from target_models.training import TrainConfig, TrainProgress, accuracy, predict_logits, train

DATASETS = {  # source, mean, std, augment
    "fashion_mnist": (FASHION_MNIST, np.array([0.2860], np.float32), np.array([0.3530], np.float32), False),
    "mnist": (MNIST, np.array([0.1307], np.float32), np.array([0.3081], np.float32), False),
    "cifar10": (CIFAR10, CIFAR10_MEAN, CIFAR10_STD, True),
}
MODELS = ("mlp", "lenet5", "cnn")
METRICS = {"supervised": ("test_accuracy", "test accuracy"),
           "rl": ("mean_return_last_100", "mean return (last 100 episodes)"),
           "td3": ("final_return", "mean return (last 10 evaluations)")}
"""Task -> (the results.json key of its final metric, its name on plots)."""


@dataclass
class SupervisedConfig:
    """A supervised run: batch 128, Adam, cross-entropy, early stopping on validation accuracy."""

    dataset: str = "fashion_mnist"
    """``fashion_mnist``, ``mnist`` (hub only) or ``cifar10``."""
    model: str = "lenet5"
    """``mlp``, ``lenet5`` or ``cnn``."""
    epochs: int = 20
    """Most epochs to train."""
    batch_size: int = 128
    lr: float = 1e-3
    patience: int = 3
    """Stop when validation accuracy has not improved for this many epochs after the last pruning."""
    seed: int = 0
    limit: int | None = None
    """Use only the first rows of each split (quick trials)."""
    data_dir: str | None = None
    device: str = "cpu"
    """Where the network trains and is measured (``auto``, ``cpu``, ``cuda``, ``mps``)."""


def build_classifier(name: str, channels: int, size: int, widths: list[int] | None = None) -> nn.Sequential:
    """A classifier by name, for images of ``channels`` x ``size`` x ``size``."""
    if name == "mlp":
        return build_mlp(*([widths] if widths else []), in_features=channels * size * size)
    if name == "lenet5":
        return build_lenet5(*([widths] if widths else []), in_channels=channels, image_size=size)
    if name == "cnn":
        return build_cnn(*([widths] if widths else []), in_channels=channels, image_size=size)
    raise ValueError(f"unknown model {name!r}; choose one of: {', '.join(MODELS)}")


def train_supervised(cfg: SupervisedConfig, pruner: TrainingPruner, show_progress: bool = True) -> tuple[dict, nn.Module]:
    """Train with ``pruner`` acting at epoch ends; returns results and the exported model."""
    if cfg.dataset not in DATASETS:
        raise ValueError(f"unknown dataset {cfg.dataset!r}; choose one of: {', '.join(DATASETS)}")
    source, mean, std, augment = DATASETS[cfg.dataset]
    data = load_image_classification(source, cfg.data_dir, cfg.limit)
    _, size, _, channels = data.x_train.shape

    def to_batch(x, y, train_mode, rng):
        if train_mode and augment:
            x = random_crop_flip(x, rng)
        return to_image_tensor(x, mean, std), torch.from_numpy(np.asarray(y))

    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    model = build_classifier(cfg.model, channels, size)
    x_val, y_val = to_batch(data.x_val, data.y_val, False, None)
    pruner.attach(model, x_val[:1])
    history, best, since_best = [], -1.0, 0
    started = time.perf_counter()
    for epoch in tqdm(range(cfg.epochs), desc=f"{cfg.model} on {cfg.dataset} ({pruner.name})",
                      disable=not show_progress, unit="epoch"):
        pruner.begin_period(epoch)
        progress = train(model, data.x_train, data.y_train, to_batch, F.cross_entropy,
                         TrainConfig(epochs=1, batch_size=cfg.batch_size, lr=cfg.lr, schedule="constant",
                                     seed=cfg.seed * 1000 + epoch), progress=TrainProgress(), show_progress=False,
                         device=device)
        pruner.end_period(epoch)
        val = accuracy(predict_logits(model, x_val, device=device), y_val)
        history.append({"epoch": epoch + 1, "loss": progress.mean_loss(), "val_accuracy": val,
                        "params": pruner.params_after()})
        if pruner.pruned_at and pruner.pruned_at[-1] == epoch:
            best, since_best = val, 0  # patience counts from the network as pruned now
        else:
            best, since_best = (val, 0) if val > best else (best, since_best + 1)
        if since_best >= cfg.patience and epoch > pruner.last_pruning_period():
            break
    seconds = time.perf_counter() - started
    exported = pruner.export()
    x_test, y_test = to_batch(data.x_test, data.y_test, False, None)
    results = {
        "task": "supervised", "method": pruner.name, "config": asdict(cfg), "history": history,
        "epochs_trained": len(history), "test_accuracy": accuracy(predict_logits(exported, x_test, device=device), y_test),
        "test_accuracy_masked": accuracy(predict_logits(model, x_test, device=device), y_test),
        **pruner.summary(exported), "training_seconds": round(seconds, 2),
    }
    return results, exported


@dataclass
class RLConfig:
    """REINFORCE with discounted returns on a discrete-action Gymnasium environment."""

    env_id: str = "CartPole-v1"
    episodes: int = 1000
    gamma: float = 0.99
    lr: float = 3e-3
    batch_episodes: int = 8
    """Episodes played at once (a vectorised environment) per policy update."""
    hidden: tuple[int, int] = (64, 64)
    seed: int = 0
    video_every: int | None = None
    """Record a greedy episode as a GIF every N episodes (needs pygame)."""


def train_rl(cfg: RLConfig, pruner: TrainingPruner, out_dir: Path | None = None,
             show_progress: bool = True) -> tuple[dict, nn.Module]:
    """REINFORCE with ``pruner`` acting per episode (at the end of each batch of episodes)."""
    torch.manual_seed(cfg.seed)
    probe = gym.make(cfg.env_id)
    obs_dim, n_actions = probe.observation_space.shape[0], probe.action_space.n
    probe.close()
    model = build_policy_mlp(cfg.hidden, obs_dim, n_actions)
    pruner.attach(model, torch.zeros(1, obs_dim))
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    mode = "vector_entry_point" if gym.spec(cfg.env_id).vector_entry_point else "sync"
    envs = gym.make_vec(cfg.env_id, num_envs=cfg.batch_episodes, vectorization_mode=mode)
    rewards, lengths, running = [], [], []
    started = time.perf_counter()
    videos = VideoRecorder(cfg.env_id, out_dir, cfg.video_every)
    bar = tqdm(total=cfg.episodes, desc=f"REINFORCE {cfg.env_id} ({pruner.name})", disable=not show_progress,
               unit="episode")
    episode = 0
    while episode < cfg.episodes:
        n = min(cfg.batch_episodes, cfg.episodes - episode)
        for t in range(episode, episode + n):
            pruner.begin_period(t)
        returns, steps, loss = _reinforce_batch(model, envs, n, cfg, seed=cfg.seed * 100_000 + episode)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        for t in range(episode, episode + n):
            pruner.end_period(t)
        for r, length in zip(returns, steps, strict=True):
            rewards.append(float(r))
            lengths.append(int(length))
            running.append(float(np.mean(rewards[-100:])))
        episode += n
        bar.update(n)
        bar.set_postfix(avg100=f"{running[-1]:.1f}")
        videos.maybe_record(model, episode)
    bar.close()
    envs.close()
    exported = pruner.export()
    results = {
        "task": "rl", "method": pruner.name, "config": {**asdict(cfg), "hidden": list(cfg.hidden)},
        "history": [{"episode": i + 1, "reward": r, "length": length, "running_avg": a}
                    for i, (r, length, a) in enumerate(zip(rewards, lengths, running, strict=True))],
        "mean_return_last_100": float(np.mean(rewards[-100:])),
        "greedy_test_mean_return": float(rollout(exported, 100, seed=0)[0].mean()) if cfg.env_id == "CartPole-v1" else None,
        **pruner.summary(exported), "training_seconds": round(time.perf_counter() - started, 2),
    }
    return results, exported


def _reinforce_batch(model: nn.Module, envs, n: int, cfg: RLConfig, seed: int):
    """Play ``n`` episodes at once; returns their returns, lengths and the REINFORCE loss
    (discounted returns normalised over the batch). Actions are sampled without a graph;
    the log-probabilities come from one batched forward pass over every visited state."""
    obs, _ = envs.reset(seed=seed)
    count = envs.num_envs
    alive = np.zeros(count, dtype=bool)
    alive[:n] = True
    states, actions_t, rewards_t, alive_t = [], [], [], []
    totals, lengths = np.zeros(count), np.zeros(count, dtype=int)
    model.train()
    with torch.no_grad():
        while alive.any():
            x = torch.as_tensor(obs, dtype=torch.float32)
            actions = torch.multinomial(torch.softmax(model(x), dim=1), 1).squeeze(1)
            obs, reward, terminated, truncated, _ = envs.step(actions.numpy())
            states.append(x)
            actions_t.append(actions)
            rewards_t.append(reward * alive)
            alive_t.append(alive.copy())
            totals += reward * alive
            lengths += alive
            alive &= ~(terminated | truncated)
    rewards_arr, mask = np.array(rewards_t), np.array(alive_t)
    g = np.zeros_like(rewards_arr)
    running = np.zeros(count)
    for step in range(len(rewards_arr) - 1, -1, -1):
        running = rewards_arr[step] + cfg.gamma * running * mask[step]
        g[step] = running
    mask_t = torch.as_tensor(mask)
    returns = torch.as_tensor(g, dtype=torch.float32)[mask_t]
    advantage = (returns - returns.mean()) / (returns.std() + 1e-8)
    x, a = torch.stack(states)[mask_t], torch.stack(actions_t)[mask_t]
    log_probs = torch.log_softmax(model(x), dim=1).gather(1, a[:, None]).squeeze(1)
    loss = -(log_probs * advantage).sum() / max(1, n)
    return totals[:n], lengths[:n], loss


class VideoRecorder:
    """Greedy episodes as GIFs every ``every`` episodes, when pygame can render."""

    def __init__(self, env_id: str, out_dir: Path | None, every: int | None):
        self.env_id, self.out_dir, self.every, self.next = env_id, out_dir, every, every
        if every and out_dir is not None:
            try:
                import pygame  # noqa: F401
            except ImportError:
                print("episode videos need pygame: pip install 'gymnasium[classic-control]'; recording none")
                self.every = None

    @torch.no_grad()
    def maybe_record(self, model: nn.Module, episode: int) -> None:
        if not self.every or episode < self.next:
            return
        self.next += self.every
        env = gym.make(self.env_id, render_mode="rgb_array")
        obs, _ = env.reset(seed=episode)
        frames, done = [env.render()], False
        while not done:
            action = int(model(torch.as_tensor(obs, dtype=torch.float32)[None]).argmax())
            obs, _, terminated, truncated, _ = env.step(action)
            frames.append(env.render())
            done = terminated or truncated
        env.close()
        from PIL import Image

        images = [Image.fromarray(f) for f in frames[::2]]
        path = self.out_dir / "videos" / f"episode_{episode:06d}.gif"
        path.parent.mkdir(parents=True, exist_ok=True)
        images[0].save(path, save_all=True, append_images=images[1:], duration=40, loop=0)


def save_run(out_dir: Path, config: dict, results: dict, model: nn.Sequential, example: torch.Tensor) -> None:
    """config.json, results.json, model.pt (the saved, physically pruned model: state dict
    and widths of its prunable layers) and curves.png."""
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "config.json", config)
    write_json(out_dir / "results.json", results)
    save_pruned(out_dir / "model.pt", model, widths_of(model, find_prunable_layers(model, example)), meta=config)
    plot_curves(results, out_dir / "curves.png")


def plot_curves(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    history = results["history"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    if results["task"] == "supervised":
        x = [h["epoch"] for h in history]
        axes[0].plot(x, [h["loss"] for h in history])
        axes[0].set(xlabel="epoch", ylabel="training loss")
        axes[1].plot(x, [h["val_accuracy"] for h in history])
        axes[1].set(xlabel="epoch", ylabel="validation accuracy")
    else:
        x = [h["episode"] for h in history]
        axes[0].plot(x, [h["reward"] for h in history], alpha=0.4, label="return")
        axes[0].plot(x, [h["running_avg"] for h in history], label="mean of last 100")
        axes[0].set(xlabel="episode", ylabel="return")
        axes[0].legend()
        axes[1].plot(x, [h["length"] for h in history])
        axes[1].set(xlabel="episode", ylabel="episode length")
    for ax in axes:
        for m in (t + 1 for t in results["pruned_at"]):
            ax.axvline(m, color="grey", linestyle=":", linewidth=1)
        ax.grid(alpha=0.3)
    fig.suptitle(f"{results['method']}: pruning rate {results['pruning_rate']:.1%}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def load_runs(root: Path, task: str) -> pd.DataFrame:
    """One row per ``<root>/<task>/<dataset or env>/<model>/<run>/results.json``."""
    rows = []
    for path in sorted((root / task).glob("*/*/*/results.json")):
        r = json.loads(path.read_text())
        metric = r[METRICS[task][0]]
        rows.append({"group": path.parts[-4], "model": path.parts[-3], "run": path.parts[-2], "method": r["method"],
                     "metric": metric, "pruning_rate": r["pruning_rate"], "params_after": r["params_after"],
                     "seconds": r["training_seconds"]})
    return pd.DataFrame(rows)


def compare_runs(runs: pd.DataFrame, root: Path, task: str) -> pd.DataFrame:
    """Mean and standard deviation per method of :func:`load_runs`' ``runs``; for each
    dataset (or environment) and model, the final metric against the pruning rate in
    ``<root>/<task>/<dataset>_<model>_comparison.png``; the table in
    ``<root>/<task>/comparison.csv``. Returns the table."""
    metric_name = METRICS[task][1]
    table = runs.groupby(["group", "model", "method"], sort=False).agg(
        runs=("run", "count"), metric_mean=("metric", "mean"), metric_std=("metric", "std"),
        pruning_rate=("pruning_rate", "mean"), params_after=("params_after", "mean"), seconds=("seconds", "mean"),
    ).reset_index().fillna({"metric_std": 0.0})
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for (group, model), rows in table.groupby(["group", "model"], sort=False):
        fig, ax = plt.subplots(figsize=(6, 4))
        for _, row in rows.iterrows():
            ax.errorbar(row["pruning_rate"], row["metric_mean"], yerr=row["metric_std"], marker="o", capsize=3,
                        linestyle="none", label=f"{row['method']} ({row['runs']} runs)")
        ax.set(xlabel="pruning rate (share of parameters removed)", ylabel=metric_name, title=f"{group} / {model}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = root / task / f"{group}_{model}_comparison.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        print(f"wrote {path}")
    table.to_csv(root / task / "comparison.csv", index=False)
    return table
