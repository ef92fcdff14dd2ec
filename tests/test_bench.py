"""fiqnn bench: recipes, the resumable grid, the results files and plots, and --quick end to end."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time

import pytest

from fiqnn import bench
from fiqnn.config import DistillConfig


def test_recipes_map_methods_to_configs():
    budget = bench.Budget(steps_per_epoch=50, teacher_epochs=2, max_epochs_per_stage=3, finetune_epochs=1)
    r = {m: bench.recipe(m, 3, "per-channel", 1, budget, layers=4) for m in bench.METHODS}
    assert r["fold"].method == "fold" and r["fold"].teacher_epochs == 0
    assert r["qat-fold"].method == "fold" and r["qat-fold"].teacher_epochs == 2 + 4 * 3 + 1
    assert r["scratch"].method == "scratch" and r["oneshot"].method == "oneshot"
    assert r["ptl-no-target"].lambda_target == 0 and r["ptl-no-target"].compensation
    assert not r["ptl-no-comp"].compensation and r["ptl-no-comp"].lambda_target == 1
    assert all(c.w_bits == c.a_bits == 3 and c.scale == "per-channel" and c.seed == 1 and c.steps_per_epoch == 50
               for c in r.values())
    with pytest.raises(Exception, match="unknown bench method 'qat'"):
        bench.recipe("qat", 4, "per-layer", 0, budget, layers=4)


@pytest.mark.parametrize("method", bench.METHODS)
def test_row_command_reproduces_its_config(method):
    from fiqnn.cli import build_parser
    from fiqnn.config import DISTILL_FLAGS

    config = bench.recipe(method, 2, "per-layer", 1, bench.Budget(calib_images=256, val_images=1000), layers=7, lr=1e-3)
    assert config.calib_images == 256 and config.val_images == 1000
    args = build_parser().parse_args(shlex.split(bench.command_line("T", config, "OUT"))[1:])
    given = {field: getattr(args, flag) for flag, field in DISTILL_FLAGS.items() if getattr(args, flag) is not None}
    if args.no_compensation:
        given["compensation"] = False
    assert DistillConfig(**given) == config


def test_grid_puts_first_seed_first():
    rows = bench.grid(["fold", "ptl"], [4, 2], ["per-layer"], [0, 1], ["ptl"])
    assert [r.key for r in rows] == ["fold-w4a4-per-layer-s0", "ptl-w4a4-per-layer-s0", "fold-w2a2-per-layer-s0",
                                     "ptl-w2a2-per-layer-s0", "ptl-w4a4-per-layer-s1", "ptl-w2a2-per-layer-s1"]


def test_table_reports_mean_and_spread_over_seeds():
    row = dict(method="ptl", bits=4, scale="per-layer", bit_exact=True, epochs=9, wall_s=60.0)
    results = {"teacher": {"test_acc": 93.0}, "rows": [
        {**row, "seed": 0, "test_acc": 90.0, "teacher_qnn_acc": 92.0},
        {**row, "seed": 1, "test_acc": 91.0, "teacher_qnn_acc": 92.5}]}
    table = bench.table(results)
    assert "| ptl | per-layer | 90.50 ± 0.50 (2 seeds) |" in table
    assert "| teacher-qnn | per-layer | 92.25 ± 0.25 (2 seeds) |" in table
    assert "| teacher-float | - | 93.00 |" in table


def test_versus_counts_a_difference_only_beyond_seed_noise():
    base = dict(bits=4, scale="per-layer", bit_exact=True, epochs=9, wall_s=60.0, teacher_qnn_acc=92.0)
    accs = {"ptl": [90.0, 91.0], "oneshot": [89.5, 89.9], "fold": [86.0], "scratch": [91.5], "qat-fold": [92.5]}
    rows = [{**base, "method": m, "seed": i, "test_acc": a} for m, aa in accs.items() for i, a in enumerate(aa)]
    rows[1]["teacher_qnn_acc"] = 85.0  # the ptl runs' teacher QNNs spread 7 points: not the comparison's noise
    rows.append({**base, "bits": 2, "method": "ptl", "seed": 0, "test_acc": 80.0})
    rows.append({**base, "bits": 2, "method": "fold", "seed": 0, "test_acc": 10.0})
    lines = bench.versus({"teacher": {"test_acc": 93.0}, "rows": rows}).splitlines()
    head, w4, w2 = ([c.strip() for c in line.strip("|").split("|")] for line in (lines[0], lines[2], lines[3]))
    w4 = dict(zip(head, w4))  # noise: ptl's spread, 1.00
    assert w4["noise"] == "1.00"
    assert w4["vs fold"] == "+4.50 **ahead**" and w4["vs qat-fold"] == "-2.00 **behind**"
    assert w4["vs oneshot"] == "+0.80 within noise" and w4["vs scratch"] == "-1.00 within noise"
    assert w4["vs ptl-no-comp"] == "not run"
    assert w2[:4] == ["W2A2", "per-layer", "-", "+70.00 one seed"] and w2[4:] == ["not run"] * 5


@pytest.mark.parametrize("argv, message", [
    (["bench", "--out", "X"], "bench needs --teacher"),
    (["bench", "--out", "X", "--teacher", "T", "--bits", "4,x"], "comma-separated integers"),
    (["bench", "--out", "X", "--teacher", "T", "--methods", "ptl,magic"], "unknown bench method 'magic'"),
    (["bench", "--out", "X", "--teacher", "T", "--seed-methods", "ptl,none"], "unknown bench method 'none'"),
    (["bench", "--out", "X", "--teacher", "T", "--bits", "9"], "w-bits must be an integer in 2..8"),
    (["bench", "--out", "X", "--teacher", "T", "--scales", "per-pixel"], "unknown scale 'per-pixel'"),
    (["bench", "--out", "X", "--teacher", "T", "--val-images", "0"], "val-images must be a positive integer"),
])
def test_bad_bench_arguments_exit_2(cli, tmp_path, argv, message):
    code, _, err = cli(*[a.replace("X", str(tmp_path / "b")) for a in argv])
    assert code == 2 and len(err) == 1 and message in err[0]
    assert not (tmp_path / "b").exists()


def test_quick_bench_end_to_end(cli, tmp_path):
    out = tmp_path / "quick"
    t0 = time.perf_counter()
    code, stdout, _ = cli("bench", "--quick", "--out", str(out), "--json", "--no-progress")
    wall = time.perf_counter() - t0
    assert code == 0 and wall < 180  # 12 s on 2 idle cores (3+ min when the cores are oversubscribed)
    results = json.loads(stdout)
    assert results == json.loads((out / "results.json").read_text())
    assert [r["key"] for r in results["rows"]] == [f"{m}-w{b}a{b}-per-layer-s0" for b in (4, 2) for m in bench.METHODS]
    for r in results["rows"]:
        assert r["bit_exact"] and r["test_images"] == 360 and 0 <= r["test_acc"] <= 100
        metrics = json.loads((out / "runs" / r["key"] / "metrics.json").read_text())
        assert metrics["test_acc"] == r["test_acc"] and metrics["teacher_qnn_acc"] == r["teacher_qnn_acc"]
        assert r["command"].startswith("fiqnn distill ") and f"--out {out}/runs/{r['key']}" in r["command"]
    md = (out / "results.md").read_text()
    ptl4 = next(r for r in results["rows"] if r["key"] == "ptl-w4a4-per-layer-s0")
    assert f"| ptl | per-layer | {ptl4['test_acc']:.2f} |" in md
    steps = ptl4["epochs"] * results["budget"]["steps_per_epoch"]  # the row table's optimizer steps
    assert f"| ptl-w4a4-per-layer-s0 | {ptl4['test_acc']:.2f} | {ptl4['epochs']} | {steps:,} |" in md
    assert (out / "plots" / "accuracy_vs_bits.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    t0 = time.perf_counter()  # every row is done: a rerun only rewrites the results
    code, stdout, _ = cli("bench", "--quick", "--out", str(out), "--json", "--no-progress")
    assert code == 0 and json.loads(stdout)["rows"] == results["rows"] and time.perf_counter() - t0 < 30


def test_two_bench_processes_share_one_grid(digits_teacher, tmp_path):
    """Two workers on one --out: every row runs exactly once, and results.json has them all."""
    out = tmp_path / "shared"
    cmd = [sys.executable, "-m", "fiqnn", "bench", "--teacher", str(digits_teacher), "--out", str(out),
           "--bits", "4,3", "--methods", "fold,oneshot,ptl", "--scales", "per-layer", "--seeds", "0",
           "--steps-per-epoch", "3", "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    workers = [subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
               for _ in range(2)]
    logs = [w.communicate(timeout=300)[1] for w in workers]  # the bench logs rows on stderr
    assert [w.returncode for w in workers] == [0, 0]
    keys = [f"{m}-w{b}a{b}-per-layer-s0" for b in (4, 3) for m in ("fold", "oneshot", "ptl")]
    started = [line.split("] ", 1)[1] for log in logs for line in log.splitlines()
               if line.startswith("[") and "skipped" not in line]
    assert sorted(started) == sorted(keys)  # each row run by exactly one worker
    results = json.loads((out / "results.json").read_text())
    assert sorted(r["key"] for r in results["rows"]) == sorted(keys)
    assert all(r["bit_exact"] for r in results["rows"])


def test_status_tells_done_running_started_and_pending(cli, tmp_path):
    """--status reads the bench directory only: results.json, the row claims and the run logs."""
    import fcntl

    out, runs = tmp_path / "b", tmp_path / "b" / "runs"
    (runs / "oneshot-w4a4-per-layer-s0").mkdir(parents=True)
    (runs / "oneshot-w4a4-per-layer-s0" / "train.log").write_text("t0 stage 1 epoch 1: loss 0.4\n")
    (runs / "ptl-w4a4-per-layer-s0").mkdir()
    (runs / "ptl-w4a4-per-layer-s0" / "train.log").write_text("t1 teacher QAT epoch 0\nt2 stage 3 epoch 1\n")
    row = dict(method="fold", bits=4, scale="per-layer", seed=0, test_acc=91.25, bit_exact=True)
    (out / "results.json").write_text(json.dumps({"rows": [{**row, "key": "fold-w4a4-per-layer-s0"}]}))
    args = ["bench", "--out", str(out), "--status", "--bits", "4", "--methods", "fold,oneshot,ptl,scratch",
            "--scales", "per-layer", "--seeds", "0"]
    with open(runs / "ptl-w4a4-per-layer-s0.lock", "a") as claim:  # as a running bench process holds it
        fcntl.flock(claim, fcntl.LOCK_EX)
        code, stdout, _ = cli(*args, "--json")
        code_text, text, _ = cli(*args)
    assert code == code_text == 0
    states = {r["key"].split("-")[0]: r for r in json.loads(stdout)["rows"]}
    assert states["fold"] == {"key": "fold-w4a4-per-layer-s0", "state": "done", "test_acc": 91.25}
    assert states["ptl"]["state"] == "running" and states["ptl"]["last_log"] == "t2 stage 3 epoch 1"
    assert states["oneshot"]["state"] == "started" and states["scratch"]["state"] == "pending"
    assert "91.25%" in text and text.strip().endswith("1 done, 1 running, 1 started, 1 pending (of 4 rows)")
    assert sorted(p.name for p in runs.iterdir()) == ["oneshot-w4a4-per-layer-s0", "ptl-w4a4-per-layer-s0",
                                                     "ptl-w4a4-per-layer-s0.lock"]  # nothing created
    code, _, err = cli("bench", "--out", str(out))
    assert code == 2 and "bench needs --teacher (or --quick, or --status)" in err[0]
