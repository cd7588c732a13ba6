"""Data sets of the targets: CIFAR-10 and IMDB through Hugging Face ``datasets``.

Each set is loaded from its hub id, or from a local directory in the hub's parquet layout
given by ``--data-dir`` or the ``PRUNE_ENV_DATA_DIR`` environment variable. Decoded images
and token ids are cached as numpy arrays under ``$PRUNE_ENV_HOME/data`` so that later loads
take a fraction of a second. A validation slice is carved out of the training split with a
fixed seed; the search never sees the test split.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from target_models.checkpoints import atomic_save_npz, home_dir

DATA_DIR_ENV = "PRUNE_ENV_DATA_DIR"
SPLIT_SEED = 1234


@dataclass(frozen=True)
class DataSource:
    """Where a data set lives on the hub and in a local directory of the hub's layout."""

    hub_id: str
    local_subdir: str


CIFAR10 = DataSource("uoft-cs/cifar10", "cifar10/plain_text")
IMDB = DataSource("stanfordnlp/imdb", "imdb/plain_text")
FASHION_MNIST = DataSource("zalando-datasets/fashion_mnist", "fashion_mnist/fashion_mnist")
MNIST = DataSource("ylecun/mnist", "mnist/mnist")


class DataUnavailableError(RuntimeError):
    """Raised when a data set can be found neither locally nor on the hub."""


@dataclass
class Splits:
    """Arrays of one data set: inputs ``x_*`` and integer labels ``y_*`` per split."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray

    def head(self, limit: int | None) -> Splits:
        """The first ``limit`` rows of every split (all rows when None)."""
        if limit is None:
            return self
        return Splits(**{k: v[:limit] for k, v in vars(self).items()})

    def fingerprint(self) -> str:
        """A short hash of the labels and shapes of every split, stored in checkpoints."""
        h = hashlib.sha1()
        for name in ("train", "val", "test"):
            x, y = getattr(self, f"x_{name}"), getattr(self, f"y_{name}")
            h.update(f"{name}:{x.shape}:{x.dtype}".encode())
            h.update(np.ascontiguousarray(y).tobytes())
        return h.hexdigest()[:16]


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> Path | None:
    """The local data directory: the argument, else ``$PRUNE_ENV_DATA_DIR``, else None (hub)."""
    chosen = data_dir if data_dir is not None else os.environ.get(DATA_DIR_ENV) or None
    if chosen is None:
        return None
    path = Path(chosen).expanduser()
    if not path.is_dir():
        raise DataUnavailableError(
            f"data directory {path} does not exist; point --data-dir or {DATA_DIR_ENV} "
            "at a folder in the Hugging Face hub's parquet layout"
        )
    return path


def _load_raw_split(source: DataSource, split: str, data_dir: Path | None):
    """One split as a ``datasets.Dataset``, from the local directory or from the hub."""
    import datasets

    datasets.disable_progress_bars()
    if data_dir is not None:
        files = sorted((data_dir / source.local_subdir).glob(f"{split}-*.parquet"))
        if not files:
            raise DataUnavailableError(
                f"no {split}-*.parquet files for {source.hub_id} under "
                f"{data_dir / source.local_subdir}; fix --data-dir / {DATA_DIR_ENV}, or unset {DATA_DIR_ENV} "
                f"to load it from the hub"
            )
        ds = datasets.Dataset.from_parquet([str(f) for f in files], cache_dir=str(_cache_dir() / "hf"))
    else:
        try:
            ds = datasets.load_dataset(source.hub_id, split=split)
        except Exception as exc:  # the hub is unreachable or the id unknown
            raise DataUnavailableError(
                f"could not load {source.hub_id} from the Hugging Face hub ({exc.__class__.__name__}). "
                f"Set {DATA_DIR_ENV} (or pass --data-dir) to a local copy in the hub's parquet layout."
            ) from exc
    return ds


def _cache_dir() -> Path:
    path = home_dir() / "data"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _cache_key(source: DataSource, data_dir: Path | None, extra: str = "") -> str:
    origin = "hub" if data_dir is None else str(data_dir.resolve())
    if data_dir is not None:
        for f in sorted((data_dir / source.local_subdir).glob("*.parquet")):
            origin += f":{f.name}:{f.stat().st_size}"
    digest = hashlib.sha1(f"{origin}|{extra}".encode()).hexdigest()[:12]
    return f"{source.local_subdir.split('/')[0]}-{digest}"


def _carve_validation(x: np.ndarray, y: np.ndarray, val_fraction: float, max_val: int):
    """Split a training array into (train, val) with a fixed seed."""
    n_val = min(max_val, max(1, int(round(len(y) * val_fraction))))
    order = np.random.default_rng(SPLIT_SEED).permutation(len(y))
    val_idx, train_idx = np.sort(order[:n_val]), np.sort(order[n_val:])
    return x[train_idx], y[train_idx], x[val_idx], y[val_idx]


def _decode_images(ds, column: str) -> np.ndarray:
    """Decode an image column to a uint8 array (N, H, W, C), keeping grayscale as one channel."""
    from PIL import Image

    raw = ds.cast_column(column, _image_feature(decode=False))[column]
    images = [Image.open(io.BytesIO(item["bytes"])) for item in raw]
    mode = "L" if images and images[0].mode in ("L", "1", "I;16") else "RGB"
    arrays = np.stack([np.asarray(im.convert(mode)) for im in images]).astype(np.uint8)
    return arrays[..., None] if mode == "L" else arrays


def _image_feature(decode: bool):
    import datasets

    return datasets.Image(decode=decode)


def load_image_classification(
    source: DataSource,
    data_dir: str | os.PathLike | None = None,
    limit: int | None = None,
    val_fraction: float = 0.1,
    max_val: int = 5000,
) -> Splits:
    """An image classification set (CIFAR-10, Fashion-MNIST) as uint8 NHWC arrays, cached.

    The whole set is decoded and cached once; ``limit`` keeps the first rows of each split."""
    local = resolve_data_dir(data_dir)
    cache = _cache_dir() / f"{_cache_key(source, local)}.npz"
    if cache.exists():
        return _read_cache(cache).head(limit)
    arrays = {}
    for split in ("train", "test"):
        ds = _load_raw_split(source, split, local)
        image_column = "img" if "img" in ds.column_names else "image"
        arrays[f"x_{split}"] = _decode_images(ds, image_column)
        arrays[f"y_{split}"] = np.asarray(ds["label"], dtype=np.int64)
    x_tr, y_tr, x_va, y_va = _carve_validation(arrays["x_train"], arrays["y_train"], val_fraction, max_val)
    splits = Splits(x_tr, y_tr, x_va, y_va, arrays["x_test"], arrays["y_test"])
    atomic_save_npz(cache, **vars(splits))
    return splits.head(limit)


def _read_cache(path: Path) -> Splits:
    with np.load(path) as f:
        return Splits(**{k: f[k] for k in f.files})


_TOKEN = re.compile(r"[a-z0-9']+")


def tokenize(text: str) -> list[str]:
    """Lower-case word tokens with HTML line breaks removed."""
    return _TOKEN.findall(text.lower().replace("<br />", " "))


def build_vocabulary(texts: list[list[str]], vocab_size: int) -> dict[str, int]:
    """Most frequent words get ids from 2 on; 0 is padding and 1 an unknown word."""
    counts = Counter(word for tokens in texts for word in tokens)
    return {word: i + 2 for i, (word, _) in enumerate(counts.most_common(vocab_size - 2))}


def encode(tokens: list[list[str]], vocab: dict[str, int], max_len: int) -> np.ndarray:
    """Token ids, keeping the last ``max_len`` words and padding at the front."""
    out = np.zeros((len(tokens), max_len), dtype=np.int32)
    for row, words in enumerate(tokens):
        ids = [vocab.get(w, 1) for w in words[-max_len:]]
        if ids:
            out[row, max_len - len(ids):] = ids
    return out


def load_text_classification(
    source: DataSource = IMDB,
    data_dir: str | os.PathLike | None = None,
    limit: int | None = None,
    vocab_size: int = 20000,
    max_len: int = 256,
    val_fraction: float = 0.1,
    max_val: int = 2500,
) -> Splits:
    """IMDB as padded token ids; the vocabulary comes from the training part only, cached.

    ``limit`` keeps the first rows of each split; ids always use the full vocabulary."""
    local = resolve_data_dir(data_dir)
    cache = _cache_dir() / f"{_cache_key(source, local, f'{vocab_size}-{max_len}')}.npz"
    if cache.exists():
        return _read_cache(cache).head(limit)
    train = _load_raw_split(source, "train", local)
    test = _load_raw_split(source, "test", local)
    train_tokens = [tokenize(t) for t in train["text"]]
    y_train = np.asarray(train["label"], dtype=np.int64)
    index = np.arange(len(y_train))
    tr_idx, _, va_idx, _ = _carve_validation(index, y_train, val_fraction, max_val)
    vocab = build_vocabulary([train_tokens[i] for i in tr_idx], vocab_size)
    ids = encode(train_tokens, vocab, max_len)
    test_ids = encode([tokenize(t) for t in test["text"]], vocab, max_len)
    splits = Splits(
        ids[tr_idx], y_train[tr_idx], ids[va_idx], y_train[va_idx],
        test_ids, np.asarray(test["label"], dtype=np.int64),
    )
    atomic_save_npz(cache, **vars(splits))
    return splits.head(limit)
