"""Subprocess helpers shared by the kill-and-resume tests."""

from __future__ import annotations

import os
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
