"""The IMDB sentiment LSTM: embedding, LSTM 128, dense 64, 1 out."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from target_models.base import SupervisedTarget
from target_models.data import IMDB, Splits, load_text_classification
from target_models.training import TrainConfig

VOCAB_SIZE = 20000
MAX_LEN = 256


class LastStepLSTM(nn.LSTM):
    """A batch-first one-layer LSTM that returns the hidden state of the last time step."""

    def forward(self, x):  # type: ignore[override]
        out, _ = super().forward(x)
        return out[:, -1]


def build_lstm(widths: Sequence[int] = (64, 128, 64), vocab_size: int = VOCAB_SIZE) -> nn.Sequential:
    """Embedding, LSTM (last state), dense with ReLU, one logit; ``widths`` are the units of
    its three prunable layers (embedding, LSTM, dense), or (LSTM, dense) with the embedding
    64 wide, as checkpoints made before the embedding became prunable record them."""
    embed_dim, hidden, dense = widths if len(widths) == 3 else (64, *widths)
    return nn.Sequential(
        nn.Embedding(vocab_size, embed_dim, padding_idx=0),
        LastStepLSTM(embed_dim, hidden, batch_first=True),
        nn.Dropout(0.3),
        nn.Linear(hidden, dense), nn.ReLU(),
        nn.Linear(dense, 1),
    )


class LstmImdb(SupervisedTarget):
    name = "lstm_imdb"
    default_widths = (64, 128, 64)
    train_config = TrainConfig(epochs=6, batch_size=64, lr=2e-3, optimizer="adam", grad_clip=1.0)
    finetune_lr = 3e-4

    def build_model(self, widths=None):
        return build_lstm(widths or self.default_widths)

    def load_splits(self) -> Splits:
        return load_text_classification(IMDB, self.data_dir, self.limit, VOCAB_SIZE, MAX_LEN)

    def to_batch(self, x, y, augment, rng):
        return torch.from_numpy(x.astype(np.int64)), torch.from_numpy(np.asarray(y))

    def example_input(self, batch_size: int = 1) -> torch.Tensor:
        return torch.ones(batch_size, MAX_LEN, dtype=torch.long)
