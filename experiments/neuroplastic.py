"""TD3 on a Gymnasium continuous-control task, dense, static sparse, Neuroplastic Expansion
or NGF-pruned (:mod:`agents.neuroplastic`). A run writes config.json, results.json and
curves.png under ``results/td3/<env>/<network>/<run name>/`` (the layout of
``train_with_pruning.py``), TensorBoard logs, and a checkpoint (model, replay buffer, masks
and scheduler state) every ``checkpoint_every`` steps that ``resume`` continues from."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import gymnasium as gym
import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from agents.neuroplastic import (
    NEConfig,
    TopologyCallback,
    WindowReplayBuffer,
    activation_scores,
    dormancy,
)
from prune_env.files import write_json
from target_models.checkpoints import _atomic_write, atomic_save

TASK = "td3"


@dataclass
class TD3RunConfig:
    """A TD3 run (stable-baselines3), with the official NE code's settings where it has them."""

    env_id: str = "Pendulum-v1"
    steps: int = 100_000
    seed: int = 0
    hidden: tuple[int, ...] = (256, 256)
    learning_starts: int = 10_000
    batch_size: int = 256
    learning_rate: float = 3e-4
    action_noise: float = 0.1
    buffer_size: int = 1_000_000
    """Replay capacity (at most ``steps``: a shorter run never fills more, and checkpoints stay small)."""
    eval_every: int = 5_000
    eval_episodes: int = 5
    checkpoint_every: int = 10_000
    device: str = "cpu"

    def network_name(self) -> str:
        return "mlp" + "x".join(str(h) for h in self.hidden)


def run_folder(root: Path, run: TD3RunConfig, ne: NEConfig, name: str | None = None) -> Path:
    return Path(root) / TASK / run.env_id / run.network_name() / (name or f"{ne.method}-s{run.seed}")


def _make_model(run: TD3RunConfig, env, out: Path):
    from stable_baselines3 import TD3
    from stable_baselines3.common.noise import NormalActionNoise

    n_actions = env.action_space.shape[0]
    noise = NormalActionNoise(np.zeros(n_actions), run.action_noise * np.ones(n_actions))
    return TD3("MlpPolicy", env, learning_rate=run.learning_rate, buffer_size=min(run.buffer_size, run.steps),
               learning_starts=run.learning_starts, batch_size=run.batch_size, action_noise=noise,
               replay_buffer_class=WindowReplayBuffer, policy_kwargs={"net_arch": list(run.hidden)},
               tensorboard_log=str(out / "tensorboard"), seed=run.seed, device=run.device, verbose=0)


class _Checkpoint:
    """The run's checkpoint folder: the model, its replay buffer, and ``state.pt`` (the
    topology, the evaluation history, seconds so far), each written atomically."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.state_path = folder / "state.pt"

    def exists(self) -> bool:
        return self.state_path.is_file()

    def save(self, model, state: dict) -> None:
        _atomic_write(self.folder / "model.zip", lambda tmp: model.save(tmp))
        _atomic_write(self.folder / "replay.pkl", lambda tmp: model.save_replay_buffer(tmp))
        atomic_save(state, self.state_path)  # last: it marks a whole checkpoint (and is reported on Ctrl-C)

    def load(self, env, device: str):
        from stable_baselines3 import TD3

        state = torch.load(self.state_path, weights_only=False)
        model = TD3.load(self.folder / "model.zip", env=env, device=device)
        model.load_replay_buffer(self.folder / "replay.pkl")
        return model, state


def check_resumable(out: Path, run: TD3RunConfig, ne: NEConfig) -> None:
    """A run folder is continued only with the settings it was started with."""
    saved = out / "config.json"
    if not saved.is_file():
        return
    config = json.loads(saved.read_text())
    now = json.loads(json.dumps({"run": asdict(run), "topology": ne.to_dict()}))  # tuples as lists
    changed = [f"{part}.{key}" for part in ("run", "topology")
               for key in set(config.get(part, {})) | set(now[part]) if config.get(part, {}).get(key) != now[part].get(key)]
    if changed:
        raise ValueError(f"{out} holds a run with other settings ({', '.join(sorted(changed))}); resume it with the "
                         "same flags, or start it again with --force, or use another --root")


def run_td3(run: TD3RunConfig, ne: NEConfig, out: Path, resume: bool = False, show_progress: bool = True) -> dict:
    """Train, evaluate every ``eval_every`` steps, checkpoint; returns (and writes) the results."""
    from stable_baselines3.common.evaluation import evaluate_policy
    from stable_baselines3.common.monitor import Monitor

    if resume:
        check_resumable(out, run, ne)
    out.mkdir(parents=True, exist_ok=True)
    config = {"task": TASK, "run": asdict(run), "topology": ne.to_dict()}
    write_json(out / "config.json", config)
    env, eval_env = Monitor(gym.make(run.env_id)), Monitor(gym.make(run.env_id))
    eval_env.reset(seed=run.seed + 10_000)
    checkpoint = _Checkpoint(out / "checkpoint")
    state = {"history": [], "seconds": 0.0, "topology": None}
    if resume and checkpoint.exists():
        model, state = checkpoint.load(env, run.device)
        print(f"resuming {out} at step {model.num_timesteps} of {run.steps}")
    else:
        model = _make_model(run, env, out)
    history = state["history"]
    started = time.perf_counter() - state["seconds"]
    bar = tqdm(total=run.steps, initial=model.num_timesteps, desc=f"{ne.method} {run.env_id}",
               disable=not show_progress, mininterval=2)

    def on_step(cb: TopologyCallback) -> None:
        step = cb.num_timesteps
        if step % 100 == 0:
            bar.update(step - bar.n)
        if step % run.eval_every == 0:
            mean, std = evaluate_policy(model, eval_env, n_eval_episodes=run.eval_episodes, deterministic=True)
            row = {"step": step, "return_mean": float(mean), "return_std": float(std),
                   "sparsity": cb.sparsity(), "seconds": round(time.perf_counter() - started, 1)}
            if model.replay_buffer.size() >= ne.batch_size:
                data = model.replay_buffer.sample(ne.batch_size, env=model._vec_normalize_env)
                row.update(dormancy(activation_scores(model, data), ne.tau))
            history.append(row)
            for key, value in row.items():
                if key != "step":
                    cb.logger.record(f"topology/{key}", value)
            cb.logger.dump(step)
            bar.set_postfix(ret=f"{row['return_mean']:.0f}", sparsity=f"{row['sparsity']:.2f}")

    def save(cb: TopologyCallback) -> None:
        checkpoint.save(model, {"history": history, "seconds": time.perf_counter() - started,
                                "topology": cb.state(), "step": model.num_timesteps})

    def on_rollout_start(cb: TopologyCallback) -> None:  # every step so far stored and trained on
        step = cb.num_timesteps
        if step > 0 and step % run.checkpoint_every == 0 and step != state.get("step"):
            save(cb)
            state["step"] = step

    callback = TopologyCallback(ne, run.steps, seed=run.seed, state=state["topology"], on_step=on_step,
                                on_rollout_start=on_rollout_start)
    remaining = run.steps - model.num_timesteps
    if remaining > 0:
        model.learn(total_timesteps=remaining, callback=callback, reset_num_timesteps=not resume,
                    tb_log_name=ne.method)
        save(callback)
    else:
        callback.init_callback(model)
        callback.on_training_start(locals(), globals())
    bar.close()
    results = summarize_run(run, ne, history, callback, model, time.perf_counter() - started)
    write_json(out / "results.json", results)
    plot_run(results, out / "curves.png")
    return results


def summarize_run(run: TD3RunConfig, ne: NEConfig, history: list[dict], callback: TopologyCallback, model,
                  seconds: float) -> dict:
    """results.json: the evaluation history and the final figures (return: the mean of the last
    10 evaluations)."""
    weights = [m.weight for net in (model.policy.actor.mu, *model.policy.critic.q_networks)
               for m in net if isinstance(m, torch.nn.Linear)]
    nonzero = sum(int((w != 0).sum()) for w in weights)
    total = sum(w.numel() for w in weights)
    last = history[-10:]
    return {
        "task": TASK, "method": ne.method, "env": run.env_id, "seed": run.seed, "steps": model.num_timesteps,
        "final_return": float(np.mean([h["return_mean"] for h in last])) if last else float("nan"),
        "final_sparsity": callback.sparsity(), "pruning_rate": 1 - nonzero / total, "params_after": nonzero,
        "weights_total": total, "topology_updates": callback.updates, "training_seconds": round(seconds, 1),
        "history": history,
    }


def plot_run(results: dict, path: Path) -> None:
    """Return, FAU and sparsity against steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    h = pd.DataFrame(results["history"])
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    if len(h):
        axes[0].plot(h["step"], h["return_mean"])
        for part in ("actor", "critic"):
            if f"{part}_fau" in h:
                axes[1].plot(h["step"], h[f"{part}_fau"], label=part)
        axes[2].plot(h["step"], h["sparsity"])
    axes[0].set(xlabel="step", ylabel="evaluation return")
    axes[1].set(xlabel="step", ylabel="fraction of active units")
    axes[2].set(xlabel="step", ylabel="sparsity")
    if len(h) and "actor_fau" in h:
        axes[1].legend()
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.suptitle(f"{results['method']} on {results['env']}: final return {results['final_return']:.1f}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_learning_curves(root: Path, env_id: str) -> Path:
    """Mean (± std over seeds) return and critic FAU against steps, one line per method, of every
    run under ``root/td3/<env_id>/``: ``root/td3/<env_id>_learning_curves.png``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    frames = []
    for path in sorted((Path(root) / TASK / env_id).glob("*/*/results.json")):
        r = json.loads(path.read_text())
        frames.append(pd.DataFrame(r["history"]).assign(method=r["method"], seed=r["seed"]))
    if not frames:
        raise FileNotFoundError(f"no runs under {Path(root) / TASK / env_id}")
    table = pd.concat(frames)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for method, rows in table.groupby("method", sort=False):
        for ax, column in ((axes[0], "return_mean"), (axes[1], "critic_fau")):
            if column not in rows:
                continue
            curve = rows.groupby("step")[column].agg(["mean", "std"]).fillna(0.0)
            ax.plot(curve.index, curve["mean"], label=f"{method} ({rows['seed'].nunique()} seeds)")
            ax.fill_between(curve.index, curve["mean"] - curve["std"], curve["mean"] + curve["std"], alpha=0.2)
    axes[0].set(xlabel="step", ylabel="evaluation return", title=env_id)
    axes[1].set(xlabel="step", ylabel="critic: fraction of active units")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(root) / TASK / f"{env_id}_learning_curves.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path

