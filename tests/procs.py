"""Subprocess helpers shared by the kill-and-resume tests."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path


def descendants(pid: int) -> list[int]:
    """Every live process below ``pid`` (Linux /proc; torchrun starts its workers in sessions
    of their own, so they are not in its process group)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        kids = children.get(todo.pop(), [])
        out += kids
        todo += kids
    return out


def kill_when_logged(cmd: list[str], env: dict, log: Path, marker: str, timeout: float = 180) -> Path:
    """Start ``cmd``; as soon as ``marker`` appears in ``log``, SIGKILL it and every process
    below it at once (a launcher and all its workers, as in a machine crash). Return ``log``."""
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if log.exists() and marker in log.read_text():
            break
        time.sleep(0.02)
    for pid in [proc.pid, *descendants(proc.pid)]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert proc.wait() == -signal.SIGKILL, "the run finished before it could be killed"
    return log


def resume_after_mid_stage_kill(cmd: list[str], env: dict, out: Path) -> tuple[str, dict]:
    """Kill a distill ``cmd`` inside PTL stage 2 (once its first epoch is logged) and run it again
    with ``--resume``: the stage goes on after its last checkpointed epoch instead of starting
    over, and the run finishes bit-exact. Returns the log written after the kill and the metrics."""
    log = kill_when_logged(cmd, env, out / "train.log", "stage 2 epoch 1:")
    killed_at = log.read_text()
    assert not (out / "metrics.json").exists()
    done_epochs = max(int(e) for e in re.findall(r"stage 2 epoch (\d+):", killed_at))

    resumed = subprocess.run(cmd + ["--resume"], env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    text = log.read_text()[len(killed_at):]
    after = int(re.search(r"stage 2: resuming after epoch (\d+)", text).group(1))
    assert after in (done_epochs, done_epochs + 1)  # checkpoints precede log lines; one more may be saved
    assert "stage 2 epoch 0 (before training)" not in text  # the stage did not start over
    m = json.loads((out / "metrics.json").read_text())
    stage2 = next(h for h in m["history"] if h["phase"].startswith("stage 2/"))
    assert [r["epoch"] for r in stage2["rows"]] == list(range(len(stage2["rows"])))
    assert m["status"] == "done" and m["bit_exact"]
    return text, m
