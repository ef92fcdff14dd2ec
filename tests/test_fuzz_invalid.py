"""Invalid-graph fuzzing: a valid random model file (tests/graphgen.py) with one field of its
structure pushed out of range is refused by ``fiqnn.load`` with one line, never a traceback."""

from __future__ import annotations

import io
import json
import zipfile

import numpy as np
import pytest

from fiqnn.errors import FiqnnError
from fiqnn.integer.modelfile import load, save
from tests.graphgen import random_graph

# Per field of a node's meta.json entry: values no valid node can hold there.
BAD = {
    "name": ["", "a b", "input", "x */ y", "a\nb", "é", "x" * 65, 7, None, ["n0"]],
    "kind": ["mystery", "", 3, None],
    "in_bits": [0, 1, 9, -3, 2**63, "4", 4.0, None, True],
    "w_bits": [0, 1, 9, 2**40, "8", 2.5, None],
    "a_bits": [0, 1, 9, -1, "4", 7.5],
    "stride": [[0, 1], [1, 0], [-1, 1], [1], [1, 2, 3], "2", [1.5, 1], None, [True, 1]],
    "padding": [[-1, 0], [0, -2], [0], [2**40, 0], "1", [0.5, 0]],
    "dilation": [[0, 1], [1, -1], [1], "1", [1, 2.0]],
    "groups": [0, -1, "1", 1.0, None, 2**40],
    "pool": [[0, 1, 0], [2, 0, 0], [2, 2, 2], [2, 2, -1], [2, 2], "2", [2.0, 2, 0]],
    "kernel": [[0, 1], [1, 0], [-1, 1], [1], "3"],
    "inputs": [["nowhere"], "n0", [7], [["input"]]],
    "signed": [1, 0, "yes", None, [True]],
    "in_signed": [1, "false", None],
    "ceil_mode": [1, "true", None],
    "count_include_pad": [0, "false", None],
}
TOP = {"in_shape": [[0, 8, 8], [1, -1, 8], [1, 8], [1, 8, 2**40], "1,8,8", None],
       "num_classes": [0, -1, "10", 2.5, None, 10**6], "arith_version": [0, 99, "1", None],
       "layers": [[], None, "x"], "info": ["text", [1]]}


def _mutations(seed: int, tmp_path) -> tuple[bytes, str]:
    """The model file of random graph ``seed`` with one field replaced by a bad value."""
    rng = np.random.default_rng(10_000 + seed)
    p = tmp_path / "valid.npz"
    save(random_graph(seed), p)
    with zipfile.ZipFile(p) as z:
        members = {n: z.read(n) for n in z.namelist()}
    meta = json.loads(members["meta.json"])
    if rng.random() < 0.15:
        key = str(rng.choice(list(TOP)))
        meta[key] = TOP[key][int(rng.integers(len(TOP[key])))]
        what = f"top-level {key} = {meta[key]!r}"
    else:
        i = int(rng.integers(len(meta["layers"])))
        node = meta["layers"][i]
        keys = [k for k in BAD if k in node and not (k == "pool" and node.get("kind") != "conv")]
        key = str(rng.choice(keys))
        value = BAD[key][int(rng.integers(len(BAD[key])))]
        if key == "a_bits" and node["a_bits"] is None:  # the logits or a residual branch: codes are out of place
            value = 4 if i == len(meta["layers"]) - 1 else value
        node[key] = value
        what = f"node {i} ({node.get('kind')}) {key} = {value!r}"
    members["meta.json"] = json.dumps(meta).encode()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for n, d in members.items():
            z.writestr(n, d)
    return buf.getvalue(), what


@pytest.mark.parametrize("chunk", range(5))
def test_out_of_range_fields_are_refused_in_one_line(chunk, tmp_path):
    """500 mutated graphs in all (100 per chunk)."""
    for seed in range(chunk * 100, (chunk + 1) * 100):
        data, what = _mutations(seed, tmp_path)
        bad = tmp_path / "bad.npz"
        bad.write_bytes(data)
        try:
            load(bad)
        except FiqnnError as e:
            assert "\n" not in str(e) and len(str(e)) < 600, (what, str(e))
            continue
        except Exception as e:  # noqa: BLE001 - anything else would be a traceback for the user
            pytest.fail(f"seed {seed}, {what}: {type(e).__name__}: {e}")
        pytest.fail(f"seed {seed}, {what}: loaded")
