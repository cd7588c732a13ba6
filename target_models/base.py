"""What every target offers: build, data, evaluate, fine-tune, pretrain, load."""

from __future__ import annotations

import math
import time
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import replace
from functools import cached_property
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from target_models.checkpoints import (
    CheckpointError,
    atomic_save,
    checkpoint_path,
    find_checkpoint,
    load_checkpoint,
)
from target_models.data import Splits
from target_models.device import resolve_device
from target_models.training import (
    TrainConfig,
    TrainProgress,
    accuracy,
    make_optimizer,
    predict_logits,
    train,
)

Evaluator = Callable[[nn.Module], float]


class Target(ABC):
    """A pretrained network to prune, with its data and its measure of quality.

    Subclasses set ``name``, ``metric_name`` (``accuracy`` or ``mean_return``) and
    ``default_widths`` (units of every prunable layer, in order), and build the network
    for any widths, so a pruned architecture is described by its widths alone.
    """

    name: str
    metric_name: str
    metric_scale: float = 1.0
    """The metric's best value: rewards see ``metric / metric_scale`` in [0, 1]."""
    default_widths: tuple[int, ...]
    keep_layers: tuple[str, ...] | None = None
    """Names of modules whose output channels always stay, for networks that are not
    ``nn.Sequential`` (default: the output layer; :mod:`prune_env.graph`)."""

    def __init__(self, data_dir: str | Path | None = None, limit: int | None = None,
                 checkpoint: str | Path | None = None, device: str | torch.device = "cpu"):
        self.data_dir = data_dir
        self.limit = limit
        self.checkpoint = Path(checkpoint).expanduser() if checkpoint is not None else None
        """A checkpoint file to use instead of the project's own (``--checkpoint``)."""
        self.device = resolve_device(device)
        """Where training, fine-tuning and measuring run (``--device``); networks are handed in
        and back on the CPU, where surgery happens (:func:`target_models.device.on_device`)."""

    @abstractmethod
    def build_model(self, widths: Sequence[int] | None = None) -> nn.Module:
        """A freshly initialised network; ``widths`` defaults to ``default_widths``."""

    @abstractmethod
    def example_input(self, batch_size: int = 1) -> torch.Tensor:
        """An input of the right shape and dtype (for tracing, FLOPs and latency)."""

    @abstractmethod
    def evaluator(self, split: str = "val", size: int | None = None, offset: int = 0) -> Evaluator:
        """A function ``model -> metric`` on a fixed slice of ``split`` (``val`` or ``test``):
        ``size`` examples (episodes) from the ``offset``-th on, so that slices at different
        offsets never share an example."""

    @abstractmethod
    def calibration_inputs(self, n: int = 512) -> torch.Tensor:
        """Inputs from the training split used to measure unit activations."""

    @abstractmethod
    def finetune(self, model: nn.Module, epochs: float = 1.0, seed: int = 0, show_progress: bool = False,
                 steps: int | None = None) -> None:
        """Train a (pruned) model briefly, in place: ``epochs`` passes, or exactly ``steps``
        optimiser steps when given (the ``finetune`` evaluation mode)."""

    def bn_calibration_inputs(self, n: int = 1024) -> torch.Tensor:
        """Training inputs for re-estimating batch-norm statistics (``adaptive_bn``)."""
        return self.calibration_inputs(n)

    @abstractmethod
    def pretrain(
        self,
        epochs: float | None = None,
        max_minutes: float | None = None,
        resume: bool = False,
        show_progress: bool = True,
    ) -> dict:
        """Train from scratch (or resume) and write the checkpoint; returns its metadata."""

    def pruner_for(self, model: nn.Module):
        """The pruner of one of this target's networks (:func:`prune_env.pruner.make_pruner`,
        with the target's ``keep_layers``): for widths and architectures of networks that
        are not sequential."""
        from prune_env.pruner import make_pruner

        return make_pruner(model.eval(), self.example_input(), keep_layers=self.keep_layers)

    @property
    def checkpoint_path(self) -> Path:
        """The checkpoint to load: ``checkpoint`` when given, else
        :func:`target_models.checkpoints.find_checkpoint`."""
        return self.checkpoint if self.checkpoint is not None else find_checkpoint(self.name)

    @property
    def pretrain_path(self) -> Path:
        """Where pretraining writes (never a checkpoint you brought)."""
        if self.checkpoint is not None:
            raise CheckpointError(f"pretraining writes to {checkpoint_path(self.name)}, not to a --checkpoint "
                                  f"file ({self.checkpoint}); drop --checkpoint to pretrain")
        return checkpoint_path(self.name)

    def pretrain_command(self) -> str:
        """The command that makes this target's checkpoint (quoted in errors)."""
        return f"python scripts/pretrain.py --target {self.name}"

    def load_checkpoint(self, path: Path | None = None) -> dict:
        """The checkpoint dict (of ``checkpoint_path`` by default), checked to belong to this target."""
        path = path or self.checkpoint_path
        ckpt = load_checkpoint(path, self.pretrain_command())
        if ckpt["meta"].get("target") != self.name:
            raise CheckpointError(
                f"checkpoint {path} was made for {ckpt['meta'].get('target')!r}, "
                f"not {self.name!r}. Make it again with: {self.pretrain_command()}"
            )
        return ckpt

    def load_pretrained(self, check_data: bool = True) -> nn.Module:
        """The pretrained network in eval mode, with a clear error if it cannot be loaded.
        ``check_data`` warns when it was trained on other data than this target loads (it
        loads the data; work that needs none, such as exporting, turns it off)."""
        ckpt = self.load_checkpoint()
        meta = ckpt["meta"]
        model = self.build_model(meta.get("widths"))
        try:
            model.load_state_dict(ckpt["state_dict"])
        except RuntimeError as exc:
            raise CheckpointError(
                f"checkpoint {self.checkpoint_path} does not fit the {self.name} architecture ({exc}). "
                f"Make it again with: {self.pretrain_command()}"
            ) from exc
        if check_data:
            self._check_data_fingerprint(meta)
        if not meta.get("complete", False):
            warnings.warn(
                f"{self.checkpoint_path} is from an unfinished pretraining "
                f"({meta.get('epochs_done')} epochs); resume it with `{self.pretrain_command()} --resume`",
                stacklevel=2,
            )
        return model.eval()

    def has_checkpoint(self) -> bool:
        return self.checkpoint_path.exists()

    def ensure_pretrained(self, show_progress: bool = True, start: bool = True) -> None:
        """Pretrain when there is no checkpoint (``start``), and finish a pretraining that was
        interrupted (the project's own checkpoint only: a ``--checkpoint`` file you brought is
        used as it is)."""
        if not self.has_checkpoint():
            if not start:
                return
            print(f"{self.name} has no pretrained checkpoint yet ({self.checkpoint_path}); pretraining it first.")
            self.pretrain(show_progress=show_progress)
        elif self.checkpoint is None and self.checkpoint_path == checkpoint_path(self.name):
            meta = self.load_checkpoint()["meta"]
            if not meta.get("complete", True):
                print(f"{self.checkpoint_path} is from an unfinished pretraining "
                      f"({meta.get('epochs_done', 0):.2f} epochs); finishing it first.")
                self.pretrain(epochs=meta.get("epochs_planned"), resume=True, show_progress=show_progress)

    def _check_data_fingerprint(self, meta: dict) -> None:
        """Warn when a checkpoint was trained on other data than this target loads."""
        return None


class SupervisedTarget(Target):
    """A classifier trained with a supervised loss on arrays of a :class:`Splits`."""

    metric_name = "accuracy"
    train_config: TrainConfig
    finetune_lr: float = 1e-4
    eval_autocast: bool = False
    """Evaluate in mixed precision, the autocast that suits the device (bfloat16 is faster on CPUs with AMX;
    checked to agree, ``bench_env.py``)."""

    @abstractmethod
    def load_splits(self) -> Splits:
        """Load (or read from cache) the data set."""

    @abstractmethod
    def to_batch(
        self, x: np.ndarray, y: np.ndarray, augment: bool, rng: np.random.Generator | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Arrays to model-ready tensors, with training augmentation when asked."""

    def __getstate__(self) -> dict:
        """Pickled without the loaded data (worker processes load it again from disk)."""
        state = dict(vars(self))
        state.pop("data", None)
        return state

    @cached_property
    def data(self) -> Splits:
        return self.load_splits()

    def _check_data_fingerprint(self, meta: dict) -> None:
        made_on = meta.get("data_fingerprint")
        if self.limit is None and made_on and made_on != self.data.fingerprint():
            warnings.warn(f"{self.checkpoint_path} was trained on other data (fingerprint {made_on}, "
                          f"this data {self.data.fingerprint()}): its split may overlap this test split",
                          stacklevel=3)

    def loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if logits.shape[1] == 1:
            return F.binary_cross_entropy_with_logits(logits[:, 0].float(), y.float())
        return F.cross_entropy(logits.float(), y)

    def split_tensors(self, split: str, size: int | None = None, offset: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        if split not in ("train", "val", "test"):
            raise ValueError(f"unknown split {split!r}; use 'train', 'val' or 'test'")
        x, y = getattr(self.data, f"x_{split}"), getattr(self.data, f"y_{split}")
        end = None if size is None else offset + size
        x, y = x[offset:end], y[offset:end]
        if len(y) == 0:
            raise ValueError(f"the {split} split has {len(getattr(self.data, f'y_{split}'))} rows: none from row "
                             f"{offset} on; use a smaller val_size")
        return self.to_batch(x, y, False, None)

    def evaluator(self, split: str = "val", size: int | None = None, offset: int = 0) -> Evaluator:
        x, y = self.split_tensors(split, size, offset)

        def evaluate(model: nn.Module) -> float:
            return accuracy(predict_logits(model, x, mixed_precision=self.eval_autocast, device=self.device), y)

        return evaluate

    def calibration_inputs(self, n: int = 512) -> torch.Tensor:
        """The first ``n`` training inputs (activation statistics)."""
        return self.split_tensors("train", n)[0]

    def bn_calibration_inputs(self, n: int = 1024) -> torch.Tensor:
        """The last ``n`` training inputs: apart from the statistics slice at the start of the
        training split (on any split of more than ``n`` + 512 rows) and from validation."""
        x = self.data.x_train[-n:]
        return self.to_batch(x, self.data.y_train[-n:], False, None)[0]

    def finetune(self, model: nn.Module, epochs: float = 1.0, seed: int = 0, show_progress: bool = False,
                 steps: int | None = None) -> None:
        if steps is not None:
            epochs = steps / math.ceil(len(self.data.y_train) / self.train_config.batch_size)
        cfg = replace(self.train_config, epochs=epochs, lr=self.finetune_lr, seed=seed)
        train(model, self.data.x_train, self.data.y_train, self.to_batch, self.loss, cfg,
              desc=f"fine-tune {self.name}", show_progress=show_progress, device=self.device)

    def pretrain(
        self,
        epochs: float | None = None,
        max_minutes: float | None = None,
        resume: bool = False,
        show_progress: bool = True,
    ) -> dict:
        path = self.pretrain_path
        if resume and epochs is None and path.exists():  # continue the run as it was planned
            epochs = self.load_checkpoint(path)["meta"].get("epochs_planned")
        cfg = replace(self.train_config, epochs=epochs or self.train_config.epochs)
        torch.manual_seed(cfg.seed)
        model = self.build_model()
        optimizer = make_optimizer(model, cfg)
        progress = TrainProgress()
        fingerprint = self.data.fingerprint()
        if resume and path.exists():
            ckpt = self.load_checkpoint(path)
            if ckpt["meta"].get("data_fingerprint") != fingerprint:
                raise CheckpointError(
                    f"{path} was trained on other data (fingerprint {ckpt['meta'].get('data_fingerprint')}, "
                    f"now {fingerprint}); rerun without --resume to start afresh"
                )
            model.load_state_dict(ckpt["state_dict"])
            optimizer.load_state_dict(ckpt["optimizer"])
            progress = TrainProgress(**ckpt["progress"])
            print(f"resuming {self.name} from epoch {progress.epoch}, step {progress.step} ({path})")
        evaluate_val, evaluate_test = self.evaluator("val"), self.evaluator("test")
        metrics: dict = {}

        def save(p: TrainProgress, complete: bool = False) -> None:
            meta = {
                "target": self.name, "widths": list(self.default_widths), "complete": complete,
                "epochs_done": p.epoch + p.step / max(1, -(-len(self.data.y_train) // cfg.batch_size)),
                "epochs_planned": cfg.epochs, "metric_name": self.metric_name,
                "data_fingerprint": fingerprint, "train_seconds": round(p.seconds, 1), **metrics,
                "metrics_at_epoch": p.history[-1]["epoch"] if p.history else None,
            }
            atomic_save({"state_dict": model.state_dict(), "meta": meta,
                         "optimizer": optimizer.state_dict(), "progress": p.as_dict()}, path)

        def end_of_epoch(p: TrainProgress) -> None:
            metrics.update(val_metric=evaluate_val(model), test_metric=evaluate_test(model))
            p.history.append({"epoch": p.epoch, "seconds": round(p.seconds, 1), **metrics})
            print(f"{self.name} epoch {p.epoch}: val {metrics['val_metric']:.4f} "
                  f"test {metrics['test_metric']:.4f} ({p.seconds:.0f} s)")
            save(p, complete=p.epoch >= cfg.epochs)

        if progress.history:
            metrics.update({k: progress.history[-1][k] for k in ("val_metric", "test_metric")})
        deadline = time.time() + max_minutes * 60 if max_minutes else None
        progress = train(model, self.data.x_train, self.data.y_train, self.to_batch, self.loss, cfg,
                         optimizer=optimizer, progress=progress, deadline=deadline,
                         end_of_epoch=end_of_epoch, save_state=save, desc=f"pretrain {self.name}",
                         show_progress=show_progress, device=self.device)
        steps_per_epoch = -(-len(self.data.y_train) // cfg.batch_size)
        finished = progress.epoch * steps_per_epoch + progress.step >= round(cfg.epochs * steps_per_epoch)
        if finished and progress.step:  # a fractional last epoch: measure and mark complete
            metrics.update(val_metric=evaluate_val(model), test_metric=evaluate_test(model))
        if finished:
            save(progress, complete=True)
        return self.load_checkpoint(path)["meta"]
