"""The CartPole policy network: an MLP (4 -> 64 -> 64 -> 2, tanh) acting greedily.

It is pretrained with stable-baselines3's PPO (the actor is copied out of the PPO policy),
evaluated as the mean return over seeded episodes of Gymnasium's vectorised CartPole-v1,
and fine-tuned after pruning by distillation from the pretrained policy on the states the
pruned policy visits (DAgger-style), which recovers a pruned policy in seconds.
"""

from __future__ import annotations

import io
import itertools
import math
import time
from collections.abc import Sequence

import gymnasium as gym
import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from tqdm.auto import tqdm

from target_models.base import Evaluator, Target
from target_models.checkpoints import atomic_save, atomic_write_bytes, home_dir

ENV_ID = "CartPole-v1"
SEEDS = {"val": 10_000, "test": 0, "train": 20_000}
EPISODES = {"val": 50, "test": 100, "train": 16}
STEPS_PER_CHUNK = 10_000


def build_policy_mlp(widths: Sequence[int] = (64, 64), obs_dim: int = 4, n_actions: int = 2) -> nn.Sequential:
    h1, h2 = widths
    return nn.Sequential(nn.Linear(obs_dim, h1), nn.Tanh(), nn.Linear(h1, h2), nn.Tanh(), nn.Linear(h2, n_actions))


@torch.no_grad()
def rollout(model: nn.Module, episodes: int, seed: int, record_states: bool = False,
            epsilon: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Run ``episodes`` greedy episodes at once; returns (returns, visited states)."""
    envs = gym.make_vec(ENV_ID, num_envs=episodes, vectorization_mode="vector_entry_point")
    rng = np.random.default_rng(seed)
    obs, _ = envs.reset(seed=seed)
    returns = np.zeros(episodes)
    running = np.ones(episodes, dtype=bool)
    states = []
    model.eval()
    while running.any():
        if record_states:
            states.append(obs[running].copy())
        actions = model(torch.as_tensor(obs, dtype=torch.float32)).argmax(1).numpy()
        if epsilon:
            explore = rng.random(episodes) < epsilon
            actions = np.where(explore, rng.integers(0, 2, episodes), actions)
        obs, reward, terminated, truncated, _ = envs.step(actions)
        returns += reward * running
        running &= ~(terminated | truncated)
    envs.close()
    return returns, (np.concatenate(states) if states else np.zeros((0, 4), np.float32))


class CartPolePolicy(Target):
    name = "cartpole_policy"
    metric_name = "mean_return"
    metric_scale = 500.0  # CartPole-v1's longest episode
    default_widths = (64, 64)

    def build_model(self, widths=None):
        return build_policy_mlp(widths or self.default_widths)

    def example_input(self, batch_size: int = 1) -> torch.Tensor:
        return torch.zeros(batch_size, 4)

    def evaluator(self, split: str = "val", size: int | None = None, offset: int = 0) -> Evaluator:
        if split not in SEEDS:
            raise ValueError(f"unknown split {split!r}; use 'val' or 'test'")
        episodes = size or EPISODES[split]
        if self.limit is not None:
            episodes = min(episodes, self.limit)
        return lambda model: float(rollout(model, episodes, SEEDS[split] + offset)[0].mean())

    def calibration_inputs(self, n: int = 512) -> torch.Tensor:
        """States visited by the pretrained policy (random actions mixed in for coverage)."""
        teacher = self.load_pretrained() if self.has_checkpoint() else self.build_model()
        _, states = rollout(teacher, EPISODES["train"], SEEDS["train"], record_states=True, epsilon=0.1)
        idx = np.random.default_rng(0).permutation(len(states))[:n]
        return torch.as_tensor(states[idx], dtype=torch.float32)

    def finetune(self, model: nn.Module, epochs: float = 1.0, seed: int = 0, show_progress: bool = False,
                 steps: int | None = None) -> None:
        """Distil the pretrained policy's actions on states the pruned policy visits: five
        rounds per epoch, each of five passes over its states; ``steps`` stops after that
        many optimiser steps of one round."""
        teacher = self._teacher()
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        rounds = 1 if steps is not None else max(1, int(round(epochs * 5)))
        for r in tqdm(range(rounds), desc=f"fine-tune {self.name}", disable=not show_progress, leave=False):
            _, states = rollout(model, EPISODES["train"], SEEDS["train"] + 1000 * seed + r, True, epsilon=0.05)
            x = torch.as_tensor(states, dtype=torch.float32)
            with torch.no_grad():
                target = teacher(x).argmax(1)
            model.train()
            order = torch.Generator().manual_seed(1000 * seed + r)  # own generator: the same batches whatever ran before
            batches = (idx for _ in range(5) for idx in torch.randperm(len(x), generator=order).split(256))
            for idx in itertools.islice(batches, steps):
                loss = F.cross_entropy(model(x[idx]), target[idx])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
        model.eval()

    def _teacher(self) -> nn.Module:
        """The pretrained policy, loaded once (fine-tuning may run every episode)."""
        if getattr(self, "_teacher_model", None) is None:
            self._teacher_model = self.load_pretrained()
        return self._teacher_model

    def pretrain(self, epochs=None, max_minutes=None, resume=False, show_progress=True) -> dict:
        """PPO (rl-zoo's CartPole settings) in chunks of 10k steps, keeping the best actor."""
        from stable_baselines3 import PPO
        from stable_baselines3.common.env_util import make_vec_env

        if resume and epochs is None and self.pretrain_path.exists():  # continue the run as it was planned
            epochs = self.load_checkpoint(self.pretrain_path)["meta"].get("epochs_planned")
        chunks = max(1, math.ceil(epochs or 15))  # whole chunks of 10k steps
        ppo_path = home_dir() / "checkpoints" / f"{self.name}.ppo.zip"
        env = make_vec_env(ENV_ID, n_envs=8, seed=0)
        history: list[dict] = []
        best = {"val_metric": -1.0}
        if resume and ppo_path.exists() and self.pretrain_path.exists():
            ppo = PPO.load(ppo_path, env=env, device="cpu")
            ckpt = self.load_checkpoint(self.pretrain_path)
            history = ckpt["progress"]["history"]
            best = {"val_metric": ckpt["meta"]["val_metric"], "state_dict": ckpt["state_dict"]}
            print(f"resuming {self.name} at {ppo.num_timesteps} steps ({ppo_path})")
        else:
            ppo = PPO(
                "MlpPolicy", env, n_steps=32, batch_size=256, gae_lambda=0.8, gamma=0.98, n_epochs=20,
                ent_coef=0.0, learning_rate=lambda p: 1e-3 * p, clip_range=lambda p: 0.2 * p,
                policy_kwargs={"net_arch": {"pi": list(self.default_widths), "vf": [64, 64]}},
                seed=0, device="cpu", verbose=0,
            )
        evaluate_val, evaluate_test = self.evaluator("val"), self.evaluator("test")
        deadline = time.time() + max_minutes * 60 if max_minutes else None
        start = time.perf_counter()
        model = self.build_model()
        total = chunks * STEPS_PER_CHUNK
        bar = tqdm(total=total, initial=ppo.num_timesteps, desc=f"pretrain {self.name}", unit="step",
                   disable=not show_progress, leave=False)
        while ppo.num_timesteps < total and (deadline is None or time.time() < deadline):
            before = ppo.num_timesteps
            ppo.learn(STEPS_PER_CHUNK, reset_num_timesteps=False, progress_bar=False)
            bar.update(ppo.num_timesteps - before)
            copy_actor(ppo.policy, model)
            val = evaluate_val(model)
            history.append({"timesteps": ppo.num_timesteps, "val_metric": val})
            if val >= best["val_metric"]:
                best = {"val_metric": val, "state_dict": {k: v.clone() for k, v in model.state_dict().items()}}
            print(f"{self.name} {ppo.num_timesteps} steps: val mean return {val:.1f}")
            buffer = io.BytesIO()
            ppo.save(buffer)
            atomic_write_bytes(ppo_path, buffer.getvalue())  # never half a PPO file to resume from
            self._save(best, history, complete=False, seconds=time.perf_counter() - start, planned=chunks)
            if val >= 500 and len(history) >= 5:
                break
        bar.close()
        model.load_state_dict(best["state_dict"])
        test = evaluate_test(model)
        complete = deadline is None or time.time() < deadline
        self._save(best, history, complete=complete, seconds=time.perf_counter() - start, test=test,
                   planned=chunks)
        return self.load_checkpoint(self.pretrain_path)["meta"]

    def _save(self, best: dict, history: list[dict], complete: bool, seconds: float,
              test: float | None = None, planned: int | None = None) -> None:
        self._teacher_model = None  # a new checkpoint: the next fine-tune reloads it
        meta = {"target": self.name, "widths": list(self.default_widths), "complete": complete,
                "epochs_done": len(history), "epochs_planned": planned, "metric_name": self.metric_name,
                "val_metric": best["val_metric"], "test_metric": test, "data_fingerprint": ENV_ID,
                "train_seconds": round(seconds, 1)}
        atomic_save({"state_dict": best["state_dict"], "meta": meta,
                     "progress": {"history": history}}, self.pretrain_path)


def copy_actor(policy, model: nn.Sequential) -> None:
    """Copy the actor of an SB3 ``ActorCriticPolicy`` (policy_net + action_net) into ``model``."""
    net = policy.mlp_extractor.policy_net
    linear_src = [m for m in net if isinstance(m, nn.Linear)] + [policy.action_net]
    linear_dst = [m for m in model if isinstance(m, nn.Linear)]
    with torch.no_grad():
        for src, dst in zip(linear_src, linear_dst, strict=True):
            dst.weight.copy_(src.weight)
            dst.bias.copy_(src.bias)
