"""Every loader, on the real files where present and on small fakes otherwise."""

from __future__ import annotations

import gzip
import pickle
import struct

import numpy as np
import pytest
import torch

from fiqnn.data import (
    SPLIT_SEED,
    ArraySplit,
    Augment,
    batches,
    fashion_mnist_available,
    load_data,
    read_idx,
    to_float,
)
from fiqnn.errors import DataError


def _idx_bytes(arr: np.ndarray) -> bytes:
    return struct.pack(">BBBB", 0, 0, 0x08, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()


def _write_fake_fashion(d, n_train=50, n_test=20, gz=True):
    rng = np.random.default_rng(0)
    d.mkdir(exist_ok=True)
    for stem, arr in [("train-images-idx3-ubyte", rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8)),
                      ("train-labels-idx1-ubyte", rng.integers(0, 10, n_train, dtype=np.uint8)),
                      ("t10k-images-idx3-ubyte", rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8)),
                      ("t10k-labels-idx1-ubyte", rng.integers(0, 10, n_test, dtype=np.uint8))]:
        raw = _idx_bytes(arr)
        (d / (stem + ".gz" if gz else stem)).write_bytes(gzip.compress(raw) if gz else raw)
    return d


@pytest.mark.skipif(not fashion_mnist_available(), reason="Debian's dataset-fashion-mnist is not installed")
def test_fashion_mnist_real_files():
    b = load_data("fashion-mnist")
    assert (len(b.train), len(b.val), len(b.test)) == (54_000, 6_000, 10_000)
    assert b.in_shape == (1, 28, 28) and b.num_classes == 10
    assert b.train.x_q.dtype == np.uint8 and b.test.y.dtype == np.int64
    assert np.bincount(b.test.y).tolist() == [1000] * 10  # the real test split is balanced


@pytest.mark.parametrize("gz", [True, False])
def test_fashion_mnist_fake_dir(tmp_path, gz):
    b = load_data("fashion-mnist", _write_fake_fashion(tmp_path / "fm", gz=gz), val_fraction=0.2)
    assert (len(b.train), len(b.val), len(b.test)) == (40, 10, 20)
    assert b.train.x_q.shape == (40, 1, 28, 28)


def test_val_split_is_fixed_and_disjoint(tmp_path):
    d = _write_fake_fashion(tmp_path / "fm")
    a, b = load_data("fashion-mnist", d), load_data("fashion-mnist", d)
    assert np.array_equal(a.val.x_q, b.val.x_q)
    all_train = read_idx(d / "train-images-idx3-ubyte.gz")
    perm = np.random.default_rng(SPLIT_SEED).permutation(50)
    assert np.array_equal(a.val.x_q[:, 0], all_train[np.sort(perm[:5])])
    assert np.array_equal(a.train.x_q[:, 0], all_train[np.sort(perm[5:])])


def test_digits():
    b = load_data("digits")
    assert (len(b.train) + len(b.val), len(b.test)) == (1437, 360)
    assert b.in_shape == (1, 8, 8) and b.train.x_q.max() == 255


def test_synthetic_is_seeded():
    a, b = load_data("synthetic"), load_data("synthetic")
    assert np.array_equal(a.train.x_q, b.train.x_q) and a.num_classes == 4
    assert load_data("synthetic", image_size=12).in_shape == (1, 12, 12)


def _cifar_dict(n, seed):
    rng = np.random.default_rng(seed)
    return {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            b"labels": rng.integers(0, 10, n).tolist()}


def test_cifar10_python_batches(tmp_path):
    d = tmp_path / "cifar-10-batches-py"
    d.mkdir()
    for i, name in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
        (d / name).write_bytes(pickle.dumps(_cifar_dict(10, i)))
    b = load_data("cifar10", tmp_path)
    assert (len(b.train) + len(b.val), len(b.test)) == (50, 10)
    assert b.in_shape == (3, 32, 32)
    expected = _cifar_dict(10, 5)[b"data"].reshape(10, 3, 32, 32)
    assert np.array_equal(b.test.x_q, expected)


def test_cifar10_binary_batches(tmp_path):
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{k}.bin" for k in range(1, 6)] + ["test_batch.bin"]:
        rec = rng.integers(0, 256, (7, 3073), dtype=np.uint8)
        rec[:, 0] %= 10
        rec.tofile(tmp_path / name)
    b = load_data("cifar10", tmp_path)
    assert len(b.test) == 7 and b.test.x_q.shape == (7, 3, 32, 32)


def test_cifar10_refuses_code_in_pickles(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    for name in [f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]:
        (tmp_path / name).write_bytes(pickle.dumps({b"data": Evil(), b"labels": []}))
    with pytest.raises(DataError, match="refusing to load builtins.print"):
        load_data("cifar10", tmp_path)


def test_imagefolder(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", 6), ("val", 2)):
        for c in ("cat", "dog"):
            (tmp_path / split / c).mkdir(parents=True)
            for i in range(n):
                arr = rng.integers(0, 256, (40 + i, 50, 3), dtype=np.uint8)
                Image.fromarray(arr).save(tmp_path / split / c / f"{i}.png")
    b = load_data("imagefolder", tmp_path, image_size=32, val_fraction=0.25)
    assert b.num_classes == 2 and b.in_shape == (3, 32, 32)
    assert (len(b.train), len(b.val), len(b.test)) == (9, 3, 4)
    x_q, y = next(batches(b.train, 4, shuffle=True))
    assert x_q.shape == (4, 3, 32, 32) and x_q.dtype == torch.uint8
    x_q, y = next(batches(b.test, 4))
    assert x_q.shape == (4, 3, 32, 32) and y.tolist() == [0, 0, 1, 1]


# --- bad input --------------------------------------------------------------------------------

def test_missing_data_dir(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_data("fashion-mnist", tmp_path / "nope")
    with pytest.raises(DataError, match="--data-dir"):
        load_data("cifar10")


def test_unknown_data_set():
    with pytest.raises(DataError, match="unknown data set 'mnist2'"):
        load_data("mnist2")


def test_truncated_gzip_idx(tmp_path):
    d = _write_fake_fashion(tmp_path / "fm")
    p = d / "t10k-images-idx3-ubyte.gz"
    p.write_bytes(p.read_bytes()[:-100])
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte.gz: cannot read IDX"):
        load_data("fashion-mnist", d)


def test_truncated_raw_idx(tmp_path):
    d = _write_fake_fashion(tmp_path / "fm", gz=False)
    p = d / "train-labels-idx1-ubyte"
    p.write_bytes(p.read_bytes()[:-3])
    with pytest.raises(DataError, match="header promises 50 bytes of data, found 47"):
        load_data("fashion-mnist", d)


def test_corrupt_idx_magic(tmp_path):
    d = _write_fake_fashion(tmp_path / "fm", gz=False)
    (d / "train-images-idx3-ubyte").write_bytes(b"GARBAGE!" * 10)
    with pytest.raises(DataError, match="bad magic number"):
        load_data("fashion-mnist", d)


def test_missing_idx_file(tmp_path):
    d = _write_fake_fashion(tmp_path / "fm")
    (d / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte.gz not found"):
        load_data("fashion-mnist", d)


# --- input convention and augmentation ---------------------------------------------------------

def test_to_float_rule():
    x_q = torch.tensor([0, 51, 255], dtype=torch.uint8)
    assert torch.equal(to_float(x_q), torch.tensor([0.0, 0.2, 1.0]))


def test_batches_cover_split_once_and_are_reproducible():
    split = ArraySplit(np.arange(10, dtype=np.uint8).reshape(10, 1, 1, 1), np.arange(10))
    seen = torch.cat([y for _, y in batches(split, 3, shuffle=True, seed=5)])
    assert sorted(seen.tolist()) == list(range(10))
    again = torch.cat([y for _, y in batches(split, 3, shuffle=True, seed=5)])
    assert torch.equal(seen, again)


def test_augment_shifts_and_flips_whole_pixels():
    x_q = torch.arange(16, dtype=torch.uint8).reshape(1, 1, 4, 4).repeat(64, 1, 1, 1)
    out = Augment(pad=1, flip=True)(x_q, torch.Generator().manual_seed(0))
    assert out.shape == x_q.shape and out.dtype == torch.uint8
    # every output is the input shifted by at most one pixel (zero fill), maybe mirrored
    candidates = []
    for flip in (False, True):
        src = x_q[0, 0].flip(-1) if flip else x_q[0, 0]
        padded = torch.nn.functional.pad(src, (1, 1, 1, 1))
        candidates += [padded[dy:dy + 4, dx:dx + 4] for dy in range(3) for dx in range(3)]
    for img in out[:, 0]:
        assert any(torch.equal(img, c) for c in candidates)
    assert len({tuple(img.flatten().tolist()) for img in out[:, 0]}) > 5
