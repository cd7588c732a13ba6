"""A small, resumable supervised training loop with a time budget, and evaluation."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from target_models.device import autocast, module_device, needs_grad_scaler, on_device, to_device


@dataclass
class TrainConfig:
    """Hyperparameters of supervised training (pretraining and fine-tuning)."""

    epochs: float = 10
    """Passes over the training data; a fraction trains part of one pass."""
    batch_size: int = 128
    """Examples per optimiser step."""
    lr: float = 1e-3
    """Peak learning rate, decayed along a cosine to zero."""
    optimizer: str = "adam"
    """``adam`` or ``sgd`` (with Nesterov momentum 0.9)."""
    weight_decay: float = 0.0
    """L2 penalty of the optimiser."""
    grad_clip: float | None = None
    """Clip the gradient norm to this value when set."""
    autocast: bool = False
    """Train in mixed precision: the autocast that suits the device (:func:`target_models.device.autocast`:
    bfloat16 on the CPU, where AMX makes it faster, and on recent GPUs; float16 with loss scaling on others)."""
    seed: int = 0
    """Seeds the order of examples in every epoch."""
    schedule: str = "cosine"
    """``cosine`` decay over the run, or ``constant``."""


@dataclass
class TrainProgress:
    """Where training stands: restored from and written to checkpoints."""

    epoch: int = 0
    step: int = 0
    seconds: float = 0.0
    history: list[dict] = field(default_factory=list)
    loss_sum: float = 0.0
    loss_steps: int = 0

    def as_dict(self) -> dict:
        return {"epoch": self.epoch, "step": self.step, "seconds": self.seconds, "history": self.history,
                "loss_sum": self.loss_sum, "loss_steps": self.loss_steps}

    def mean_loss(self) -> float:
        """Mean training loss over the steps this progress has seen."""
        return self.loss_sum / max(1, self.loss_steps)


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """The optimiser named in ``cfg``."""
    if cfg.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(
            model.parameters(), lr=cfg.lr, momentum=0.9, nesterov=True, weight_decay=cfg.weight_decay
        )
    raise ValueError(f"unknown optimizer {cfg.optimizer!r}; use 'adam' or 'sgd'")


BatchFn = Callable[[np.ndarray, np.ndarray, bool, np.random.Generator], tuple[torch.Tensor, torch.Tensor]]


def train(
    model: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    to_batch: BatchFn,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    cfg: TrainConfig,
    *,
    optimizer: torch.optim.Optimizer | None = None,
    progress: TrainProgress | None = None,
    deadline: float | None = None,
    end_of_epoch: Callable[[TrainProgress], None] | None = None,
    save_state: Callable[[TrainProgress], None] | None = None,
    desc: str = "train",
    show_progress: bool = True,
    device: torch.device | None = None,
) -> TrainProgress:
    """Train ``model`` in place on ``(x, y)``, resumable from ``progress``, on ``device``
    (default: where the model is; it is moved back there at the end).

    The order of examples in epoch ``e`` depends only on ``cfg.seed`` and ``e``, so a run that
    stops mid-epoch (deadline reached, or Ctrl-C) and resumes from its saved progress sees
    the same batches as one that never stopped. ``save_state`` is called when the run stops
    early; ``end_of_epoch`` after every full epoch (evaluate and checkpoint there).
    """
    device = device or module_device(model)
    with on_device(model, device):
        optimizer = optimizer or make_optimizer(model, cfg)
        return _train_on_device(model, x, y, to_batch, loss_fn, cfg, optimizer=optimizer,
                                progress=progress or TrainProgress(), deadline=deadline, end_of_epoch=end_of_epoch,
                                save_state=save_state, desc=desc, show_progress=show_progress, device=device)


def _train_on_device(model, x, y, to_batch, loss_fn, cfg, *, optimizer, progress, deadline, end_of_epoch, save_state,
                     desc, show_progress, device) -> TrainProgress:
    """:func:`train`'s loop, with the model already on ``device``."""
    _move_optimizer_state(optimizer, device)
    scaler = torch.amp.GradScaler(device.type) if needs_grad_scaler(device, cfg.autocast) else None
    steps_per_epoch = math.ceil(len(y) / cfg.batch_size)
    total_steps = max(1, int(round(cfg.epochs * steps_per_epoch)))
    done = progress.epoch * steps_per_epoch + progress.step
    bar = tqdm(total=total_steps, initial=done, desc=desc, unit="batch", disable=not show_progress,
               dynamic_ncols=True, leave=False)
    started = time.perf_counter()
    seconds_before = progress.seconds
    model.train()
    try:
        while done < total_steps:
            order = np.random.default_rng(cfg.seed * 100_003 + progress.epoch).permutation(len(y))
            rng = np.random.default_rng((cfg.seed, progress.epoch, 0))
            for skipped in range(progress.step):  # a resumed epoch: draw what its first steps drew
                idx = order[skipped * cfg.batch_size:(skipped + 1) * cfg.batch_size]
                to_batch(x[idx], y[idx], True, rng)
            while progress.step < steps_per_epoch and done < total_steps:
                if deadline is not None and time.time() >= deadline:
                    raise TimeoutError
                idx = order[progress.step * cfg.batch_size:(progress.step + 1) * cfg.batch_size]
                xb, yb = (to_device(t, device) for t in to_batch(x[idx], y[idx], True, rng))
                lr = cfg.lr if cfg.schedule == "constant" else cfg.lr * 0.5 * (1 + math.cos(math.pi * done / total_steps))
                for group in optimizer.param_groups:
                    group["lr"] = lr
                with autocast(device, cfg.autocast):
                    loss = loss_fn(model(xb), yb)
                optimizer.zero_grad(set_to_none=True)
                if scaler is None:
                    loss.backward()
                else:
                    scaler.scale(loss).backward()
                    scaler.unscale_(optimizer)
                if cfg.grad_clip is not None:
                    nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                if scaler is None:
                    optimizer.step()
                else:
                    scaler.step(optimizer)
                    scaler.update()
                loss_value = loss.item()
                progress.loss_sum += loss_value
                progress.loss_steps += 1
                progress.step += 1
                done += 1
                bar.update(1)
                bar.set_postfix(epoch=progress.epoch, loss=f"{loss_value:.3f}")
            if progress.step >= steps_per_epoch:
                progress.epoch += 1
                progress.step = 0
                progress.seconds = seconds_before + time.perf_counter() - started
                if end_of_epoch is not None:
                    end_of_epoch(progress)
                    model.train()
    except (TimeoutError, KeyboardInterrupt) as stop:
        progress.seconds = seconds_before + time.perf_counter() - started
        if save_state is not None:
            save_state(progress)
        if isinstance(stop, KeyboardInterrupt):
            raise
    finally:
        bar.close()
    progress.seconds = seconds_before + time.perf_counter() - started
    model.eval()
    return progress


def _move_optimizer_state(optimizer: torch.optim.Optimizer, device: torch.device) -> None:
    """An optimiser restored from a checkpoint (on the CPU) follows the model to ``device``."""
    for state in optimizer.state.values():
        for key, value in state.items():
            if torch.is_tensor(value) and value.dim() > 0:
                state[key] = value.to(device)


@torch.no_grad()
def predict_logits(model: nn.Module, x: torch.Tensor, batch_size: int = 500, mixed_precision: bool = False,
                   device: torch.device | None = None) -> torch.Tensor:
    """Model outputs (on the CPU) for a whole tensor, in batches, in eval mode, computed on
    ``device`` (default: where the model is) in autocast when ``mixed_precision``."""
    device = device or module_device(model)
    was_training = model.training
    outs = []
    with on_device(model, device):
        model.eval()
        with autocast(device, mixed_precision):
            for start in range(0, len(x), batch_size):
                outs.append(model(to_device(x[start:start + batch_size], device)).float().cpu())
    model.train(was_training)
    return torch.cat(outs)


def accuracy(logits: torch.Tensor, y: torch.Tensor) -> float:
    """Top-1 accuracy; a single output column is read as a binary logit."""
    pred = (logits[:, 0] > 0).long() if logits.shape[1] == 1 else logits.argmax(1)
    return (pred == y).float().mean().item()
