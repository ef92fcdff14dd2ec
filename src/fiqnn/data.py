"""Data sets, splits, and the uint8 input convention.

Every image reaches a model as uint8 pixel codes ``x_q`` in 0..255, shape
(N, C, H, W). This is what the integer network consumes. The float view that a
teacher sees is derived from the codes by one rule, :func:`to_float`::

    x = x_q / 255                                    (float32, in [0, 1])

No mean/std normalisation: zero padding then means the same thing in the code
domain and in the float domain, and the teacher's first BatchNorm absorbs any
offset anyway.

Splits: ``train`` and ``val`` are carved from the data set's training images by
a permutation with the fixed seed :data:`SPLIT_SEED` (the same for every run, so
a teacher and the students distilled from it share one validation split);
``test`` is the data set's own test split and is used only for reported
accuracy.
"""

from __future__ import annotations

import gzip
import io
import os
import pickle
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .errors import DataError

DATASETS = ("fashion-mnist", "digits", "cifar10", "imagefolder", "synthetic")
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
SPLIT_SEED = 0


def to_float(x_q: torch.Tensor) -> torch.Tensor:
    """The float view of uint8 codes: ``x_q / 255`` as float32 (see module doc)."""
    return x_q.to(torch.float32) / 255.0


@dataclass(frozen=True)
class Augment:
    """Training-time augmentation on uint8 codes: random shift by up to ``pad``
    pixels (zero fill) and, if ``flip``, a random horizontal flip."""

    pad: int = 0
    flip: bool = False

    def __call__(self, x_q: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        n, c, h, w = x_q.shape
        if self.pad:
            p = self.pad
            padded = F.pad(x_q, (p, p, p, p))  # uint8, zeros = black
            dy = torch.randint(0, 2 * p + 1, (n, 1), generator=g)
            dx = torch.randint(0, 2 * p + 1, (n, 1), generator=g)
            rows = (dy + torch.arange(h))[:, None, :, None]  # (n, 1, h, 1)
            cols = (dx + torch.arange(w))[:, None, None, :]  # (n, 1, 1, w)
            x_q = padded[torch.arange(n)[:, None, None, None], torch.arange(c)[None, :, None, None],
                         rows, cols]
        if self.flip:
            mask = torch.rand(n, generator=g) < 0.5
            x_q = torch.where(mask[:, None, None, None], x_q.flip(-1), x_q)
        return x_q


@dataclass(frozen=True, eq=False)
class ArraySplit:
    """An in-memory split: ``x_q`` uint8 (N, C, H, W) and ``y`` int64 (N,)."""

    x_q: np.ndarray
    y: np.ndarray

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return torch.from_numpy(self.x_q[i]), int(self.y[i])

    def take(self, idx: np.ndarray) -> ArraySplit:
        return ArraySplit(self.x_q[idx], self.y[idx])


@dataclass(frozen=True, eq=False)
class DataBundle:
    """A data set ready for training: three splits plus what a model needs to know."""

    name: str
    train: ArraySplit | torch.utils.data.Dataset
    val: ArraySplit | torch.utils.data.Dataset
    test: ArraySplit | torch.utils.data.Dataset
    num_classes: int
    in_shape: tuple[int, int, int]  # (C, H, W) of x_q
    augment: Augment = Augment()


def batches(split, batch_size: int, *, shuffle: bool = False, augment: Augment | None = None,
            seed: int = 0, drop_last: bool = False, rank: int = 0, world: int = 1,
            skip: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield ``(x_q uint8 (B, C, H, W), y int64 (B,))`` batches of ``split``.

    ``drop_last`` drops a final partial batch (training does: BatchNorm cannot
    train on a batch of one).

    Shuffling and augmentation draw from a generator seeded with ``seed`` only,
    so an epoch is reproducible from (seed, epoch) and a resumed run sees the
    same batches it would have seen.

    With ``world`` > 1 (data-parallel ranks, :mod:`fiqnn.parallel`), ``batch_size``
    is the global batch and rank ``rank`` gets images ``rank, rank + world, ...`` of
    each global batch: the global batches (and their augmentation) are those of a
    single process, whatever ``world`` is.

    ``skip`` leaves out the first ``skip`` batches (a run resumed in the middle of a pass);
    the ones after them are the very batches, augmentation included, of an unskipped pass.
    """
    g = torch.Generator().manual_seed(seed)
    n = len(split)
    order = torch.randperm(n, generator=g) if shuffle else torch.arange(n)
    starts = range(0, num_batches(split, batch_size, drop_last) * batch_size, batch_size)
    if isinstance(split, ArraySplit):
        x_all, y_all = torch.from_numpy(split.x_q), torch.from_numpy(split.y)
        for i, start in enumerate(starts):
            idx = order[start:start + batch_size]
            x_q = augment(x_all[idx], g) if augment else x_all[idx]  # draws from g even when skipped
            if i >= skip and len(idx) > rank:  # a last evaluation batch may have fewer images than ranks
                yield x_q[rank::world], y_all[idx][rank::world]
        return
    # A Dataset (image folder): each rank decodes only its own share of every batch.
    shares = [order[start:start + batch_size][rank::world].tolist() for start in starts][skip:]
    shares = [s for s in shares if s]
    loader = torch.utils.data.DataLoader(split, batch_sampler=shares, num_workers=loader_workers())
    yield from loader


def first_images(split, n: int | None):
    """The first ``n`` images of ``split`` (all of it when ``n`` is None or not smaller). The
    validation split is a fixed random draw from the training images, so its head is one too."""
    if n is None or n >= len(split):
        return split
    if isinstance(split, ArraySplit):
        return split.take(np.arange(n))
    return torch.utils.data.Subset(split, range(n))


def loader_workers() -> int:
    """Decoding processes per training process: this machine's cores shared among the
    processes torchrun started on it (``LOCAL_WORLD_SIZE``), at most 8. (Not torch's thread
    count: torchrun sets OMP_NUM_THREADS=1, which would leave one decoder per GPU.)"""
    per_process = (os.cpu_count() or 1) // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    return max(1, min(8, per_process))


def num_batches(split, batch_size: int, drop_last: bool = False) -> int:
    """How many batches :func:`batches` yields."""
    return len(split) // batch_size if drop_last else -(-len(split) // batch_size)


def load_data(name: str, data_dir: str | Path | None = None, *, val_fraction: float = 0.1,
              image_size: int | None = None, channels: int | None = None) -> DataBundle:
    """Load data set ``name`` (one of :data:`DATASETS`) as a :class:`DataBundle`.

    Args:
        name: the data set.
        data_dir: where its files are; defaults to the Debian location for
            fashion-mnist. Required for cifar10 and imagefolder.
        val_fraction: share of the training images held out for validation.
        image_size: side of the square images of imagefolder (default 224) and
            synthetic (default 8).
        channels: channels of the synthetic images (default 1; the other sets have their own).

    Raises:
        DataError: the files are missing, truncated or malformed.
    """
    if name not in DATASETS:
        raise DataError(f"unknown data set {name!r}; choose one of {', '.join(DATASETS)}")
    if not 0.0 < val_fraction < 1.0:
        raise DataError(f"val_fraction must be in (0, 1), got {val_fraction}")
    if channels is not None and (name != "synthetic" or not 1 <= channels <= 16):
        raise DataError(f"channels is a setting of the synthetic set (1..16), not of {name}" if name != "synthetic"
                        else f"channels must be in 1..16, got {channels}")
    if name == "imagefolder":
        return _load_imagefolder(_need_dir(name, data_dir), val_fraction, image_size or 224)
    if name == "synthetic":
        train, test, num_classes = _load_synthetic(image_size or 8, channels or 1)
    elif name == "digits":
        train, test, num_classes = _load_digits()
    elif name == "fashion-mnist":
        train, test, num_classes = _load_fashion_mnist(_need_dir(name, data_dir or FASHION_MNIST_DIR))
    else:
        train, test, num_classes = _load_cifar10(_need_dir(name, data_dir))
    train, val = _carve_val(train, val_fraction)
    augment = {"fashion-mnist": Augment(pad=2, flip=True), "cifar10": Augment(pad=4, flip=True),
               "digits": Augment(pad=1), "synthetic": Augment()}[name]
    return DataBundle(name, train, val, test, num_classes, tuple(train.x_q.shape[1:]), augment)


def fashion_mnist_available(data_dir: str | Path | None = None) -> bool:
    d = Path(data_dir or FASHION_MNIST_DIR)
    return all(_find(d, stem) is not None for stem in _FASHION_FILES.values())


def _need_dir(name: str, data_dir: str | Path | None) -> Path:
    if data_dir is None:
        raise DataError(f"{name}: pass --data-dir pointing at the data set's folder")
    d = Path(data_dir)
    if not d.is_dir():
        hint = " (install Debian's dataset-fashion-mnist, or pass --data-dir)" if name == "fashion-mnist" else ""
        raise DataError(f"{name}: data directory {d} does not exist{hint}")
    return d


def _carve_val(train: ArraySplit, val_fraction: float) -> tuple[ArraySplit, ArraySplit]:
    perm = np.random.default_rng(SPLIT_SEED).permutation(len(train))
    n_val = max(1, round(len(train) * val_fraction))
    return train.take(np.sort(perm[n_val:])), train.take(np.sort(perm[:n_val]))


# --- Fashion-MNIST: IDX files ------------------------------------------------------------------

_FASHION_FILES = {"train_x": "train-images-idx3-ubyte", "train_y": "train-labels-idx1-ubyte",
                  "test_x": "t10k-images-idx3-ubyte", "test_y": "t10k-labels-idx1-ubyte"}


def _find(d: Path, stem: str) -> Path | None:
    for p in (d / f"{stem}.gz", d / stem):
        if p.is_file():
            return p
    return None


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file of unsigned bytes (optionally gzip-compressed) as a uint8 array.

    Raises:
        DataError: bad magic number, wrong element type, or truncated data.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise DataError(f"{path}: cannot read IDX file ({e})") from None
    if len(raw) < 4 or raw[:2] != b"\0\0" or raw[2] != 0x08:
        raise DataError(f"{path}: not an IDX file of unsigned bytes (bad magic number)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(raw) < header:
        raise DataError(f"{path}: truncated IDX header")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    size = int(np.prod(shape))
    if len(raw) - header != size:
        raise DataError(f"{path}: truncated or padded IDX file: header promises {size} bytes "
                        f"of data, found {len(raw) - header}")
    return np.frombuffer(raw, np.uint8, offset=header).reshape(shape).copy()  # writable, for torch


def _load_fashion_mnist(d: Path) -> tuple[ArraySplit, ArraySplit, int]:
    arrays = {}
    for key, stem in _FASHION_FILES.items():
        p = _find(d, stem)
        if p is None:
            raise DataError(f"fashion-mnist: {d / stem}.gz not found")
        arrays[key] = read_idx(p)
    splits = []
    for part in ("train", "test"):
        x, y = arrays[f"{part}_x"], arrays[f"{part}_y"]
        if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
            raise DataError(f"fashion-mnist: {part} images {x.shape} and labels {y.shape} do not match")
        if y.max(initial=0) > 9:
            raise DataError(f"fashion-mnist: {part} labels outside 0..9")
        splits.append(ArraySplit(np.ascontiguousarray(x[:, None]), y.astype(np.int64)))
    return splits[0], splits[1], 10


# --- scikit-learn digits ---------------------------------------------------------------------

def _load_digits() -> tuple[ArraySplit, ArraySplit, int]:
    """scikit-learn's 1,797 8x8 digits. Pixel values 0..16 become codes round(v * 255 / 16).
    It has no official test split: a fixed-seed 20% (360 images) is the test split."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x_q = np.rint(d.images * (255.0 / 16.0)).astype(np.uint8)[:, None]  # (1797, 1, 8, 8)
    y = d.target.astype(np.int64)
    perm = np.random.default_rng(SPLIT_SEED).permutation(len(y))
    test, train = np.sort(perm[:360]), np.sort(perm[360:])
    return ArraySplit(x_q[train], y[train]), ArraySplit(x_q[test], y[test]), 10


# --- CIFAR-10: python-pickle or binary batches -----------------------------------------------

class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles CIFAR-10's batch dicts and refuses every other class (no code runs)."""

    _ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
                ("numpy._core.multiarray", "scalar"), ("builtins", "bytes")}

    def find_class(self, module: str, name: str):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def _cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        d = _ArrayUnpickler(io.BytesIO(path.read_bytes()), encoding="bytes").load()
        x = np.asarray(d[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
        y = np.asarray(d[b"labels"], dtype=np.int64)
    except (OSError, EOFError, pickle.UnpicklingError, KeyError, ValueError, TypeError) as e:
        raise DataError(f"{path}: not a CIFAR-10 python batch ({e})") from None
    if len(x) != len(y):
        raise DataError(f"{path}: {len(x)} images but {len(y)} labels")
    return x, y


def _cifar_bin(path: Path) -> tuple[np.ndarray, np.ndarray]:
    raw = np.fromfile(path, np.uint8)
    if raw.size == 0 or raw.size % 3073:
        raise DataError(f"{path}: not a CIFAR-10 binary batch (size {raw.size} is not a multiple of 3073)")
    rec = raw.reshape(-1, 3073)
    return np.ascontiguousarray(rec[:, 1:].reshape(-1, 3, 32, 32)), rec[:, 0].astype(np.int64)


def _load_cifar10(d: Path) -> tuple[ArraySplit, ArraySplit, int]:
    """CIFAR-10 from ``d``: the python version (data_batch_1..5, test_batch), or the
    binary version (data_batch_1..5.bin, test_batch.bin), or either's extracted folder."""
    for sub in (d, d / "cifar-10-batches-py", d / "cifar-10-batches-bin"):
        if (sub / "test_batch").is_file():
            read, suffix = _cifar_batch, ""
            break
        if (sub / "test_batch.bin").is_file():
            read, suffix = _cifar_bin, ".bin"
            break
    else:
        raise DataError(f"cifar10: no test_batch or test_batch.bin in {d}")
    parts = []
    for stem in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        p = sub / f"{stem}{suffix}"
        if not p.is_file():
            raise DataError(f"cifar10: {p} not found")
        parts.append(read(p))
    x_tr = np.concatenate([x for x, _ in parts[:-1]])
    y_tr = np.concatenate([y for _, y in parts[:-1]])
    for y in (y_tr, parts[-1][1]):
        if y.min(initial=0) < 0 or y.max(initial=0) > 9:
            raise DataError(f"cifar10: labels outside 0..9 in {sub}")
    return ArraySplit(x_tr, y_tr), ArraySplit(*parts[-1]), 10


# --- Synthetic (tests only) ------------------------------------------------------------------

def _load_synthetic(size: int, channels: int = 1, n_train: int = 640, n_test: int = 160,
                    num_classes: int = 4) -> tuple[ArraySplit, ArraySplit, int]:
    """Seeded (channels, size, size) images: one fixed random template per class plus noise.
    Learnable, so training code can be exercised, but never an accuracy claim."""
    rng = np.random.default_rng(1234)
    templates = rng.integers(0, 256, (num_classes, channels, size, size))

    def make(n: int) -> ArraySplit:
        y = rng.integers(0, num_classes, n)
        x = templates[y] * 0.6 + rng.integers(0, 256, (n, channels, size, size)) * 0.4
        return ArraySplit(np.rint(x).astype(np.uint8), y.astype(np.int64))

    return make(n_train), make(n_test), num_classes


# --- ImageNet-style folders ------------------------------------------------------------------

_IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".webp"}


class FolderSplit(torch.utils.data.Dataset):
    """Images decoded lazily from ``(path, label)`` pairs, as uint8 (3, S, S) codes.

    Training: random-resized crop (scale 0.08..1, ratio 3/4..4/3) and a random
    horizontal flip. Evaluation: resize the short side to S * 8 / 7, center crop S.
    """

    def __init__(self, samples: list[tuple[Path, int]], size: int, train: bool):
        self.samples, self.size, self.train = samples, size, train

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        from PIL import Image

        path, label = self.samples[i]
        try:
            with Image.open(path) as im:
                im = im.convert("RGB")
                im = self._random_crop(im) if self.train else self._center_crop(im)
        except OSError as e:
            raise DataError(f"{path}: cannot decode image ({e})") from None
        x_q = torch.from_numpy(np.asarray(im, dtype=np.uint8).copy()).permute(2, 0, 1)
        if self.train and torch.rand(()) < 0.5:
            x_q = x_q.flip(-1)
        return x_q.contiguous(), label

    def _center_crop(self, im):
        short = round(self.size * 8 / 7)
        w, h = im.size
        s = short / min(w, h)
        im = im.resize((max(short, round(w * s)), max(short, round(h * s))))
        w, h = im.size
        left, top = (w - self.size) // 2, (h - self.size) // 2
        return im.crop((left, top, left + self.size, top + self.size))

    def _random_crop(self, im):
        w, h = im.size
        for _ in range(10):
            area = w * h * float(torch.empty(()).uniform_(0.08, 1.0))
            log_r = torch.empty(()).uniform_(np.log(3 / 4), np.log(4 / 3))
            ratio = float(torch.exp(log_r))
            cw, ch = round((area * ratio) ** 0.5), round((area / ratio) ** 0.5)
            if 0 < cw <= w and 0 < ch <= h:
                left = int(torch.randint(0, w - cw + 1, ()))
                top = int(torch.randint(0, h - ch + 1, ()))
                return im.resize((self.size, self.size), box=(left, top, left + cw, top + ch))
        return self._center_crop(im)


def _scan_folder(root: Path, classes: list[str] | None = None) -> tuple[list[tuple[Path, int]], list[str]]:
    if classes is None:
        classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    if not classes:
        raise DataError(f"imagefolder: {root} has no class folders")
    samples = []
    for label, c in enumerate(classes):
        folder = root / c
        if not folder.is_dir():
            raise DataError(f"imagefolder: class folder {folder} missing")
        samples += [(p, label) for p in sorted(folder.iterdir()) if p.suffix.lower() in _IMAGE_SUFFIXES]
    if not samples:
        raise DataError(f"imagefolder: no images under {root}")
    return samples, classes


def _load_imagefolder(d: Path, val_fraction: float, size: int) -> DataBundle:
    """ImageNet-style ``d/train/<class>/*.jpg`` and ``d/val/<class>/*.jpg``; ``val`` is
    the reported test split, and validation is carved from ``train``."""
    for sub in ("train", "val"):
        if not (d / sub).is_dir():
            raise DataError(f"imagefolder: {d / sub} not found (expected {d}/train/<class>/ "
                            f"and {d}/val/<class>/)")
    train, classes = _scan_folder(d / "train")
    test, _ = _scan_folder(d / "val", classes)
    perm = np.random.default_rng(SPLIT_SEED).permutation(len(train))
    n_val = max(1, round(len(train) * val_fraction))
    val = [train[i] for i in sorted(perm[:n_val])]
    train = [train[i] for i in sorted(perm[n_val:])]
    return DataBundle("imagefolder", FolderSplit(train, size, True), FolderSplit(val, size, False),
                      FolderSplit(test, size, False), len(classes), (3, size, size))
