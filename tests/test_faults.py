"""Faults a user meets: a full disk, a read-only output, Ctrl-C while torch loads, a reader that
closes stdout, runs used from another directory. None ends in a traceback: a fault is one line
and exit 2 (Ctrl-C: 130; a closed stdout: 141 and silence), the files already there stay intact,
and a training run resumes afterwards."""

from __future__ import annotations

import errno
import io
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from fiqnn import _io
from fiqnn._run import PREVIOUS, RunDir, load_torch
from fiqnn.cli import main
from fiqnn.errors import OutputError

TEACHER = ["train-teacher", "--arch", "tiny", "--data", "synthetic", "--epochs", "3", "--no-progress"]
FOLD = ["--wbits", "4", "--abits", "4", "--method", "fold", "--teacher-epochs", "0", "--no-progress"]
ENOSPC = os.strerror(errno.ENOSPC)


class _NoSpace(io.BufferedWriter):
    """A file on a disk that is full: a write gets half its bytes out, then fails with ENOSPC."""

    def write(self, b) -> int:
        super().write(bytes(b)[: len(b) // 2])
        raise OSError(errno.ENOSPC, ENOSPC)


class FullDisk:
    """From the ``after + 1``-th write of a file named ``name`` on, the disk is full: its atomic
    writes (the temp file that os.fdopen opens in fiqnn._io) and its appends (train.log) fail
    part way. ``free()`` makes room again."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, name: str, after: int = 0):
        self.full, self.writes = True, 0
        fdopen = os.fdopen

        def full(ours: bool) -> bool:
            self.writes += ours
            return ours and self.full and self.writes > after

        def atomic(fd, mode="r", *args, **kwargs):
            if full(Path(os.readlink(f"/proc/self/fd/{fd}")).name.startswith(f".{name}.")):
                return _NoSpace(io.FileIO(fd, mode))
            return fdopen(fd, mode, *args, **kwargs)

        def append(path, mode="r", *args, encoding=None, **kwargs):
            if full(Path(path).name == name):
                return io.TextIOWrapper(_NoSpace(io.FileIO(path, mode)), encoding=encoding)
            return open(path, mode, *args, encoding=encoding, **kwargs)

        monkeypatch.setattr(os, "fdopen", atomic)
        monkeypatch.setattr(_io, "open", append, raising=False)

    def free(self) -> None:
        self.full = False


def no_temp_files(d: Path) -> bool:
    return not any(d.rglob("*.tmp"))


def the_error(err: list[str]) -> str:
    """The error line, checked to be the only one (the lines before it are the run's log)."""
    assert not any("Traceback" in line for line in err), "\n".join(err)
    assert [line for line in err if line.startswith("fiqnn: error: ")] == err[-1:]
    return err[-1]


@pytest.fixture(scope="module")
def student(tiny_teacher, tmp_path_factory) -> Path:
    """A fold student of a copy of the tiny teacher, both in one runs/ folder, distilled there
    with ``--teacher teacher --out student``: paths relative to the directory it ran in."""
    root = tmp_path_factory.mktemp("runs")
    shutil.copytree(tiny_teacher, root / "teacher")
    cwd = os.getcwd()
    os.chdir(root)
    try:
        assert main(["distill", "--teacher", "teacher", *FOLD, "--out", "student"]) == 0
    finally:
        os.chdir(cwd)
    return root / "student"


# --- a full disk ------------------------------------------------------------------------------


def test_full_disk_at_a_teacher_checkpoint_then_resume(cli, tmp_path, monkeypatch):
    out = tmp_path / "t"
    disk = FullDisk(monkeypatch, "checkpoint.pt", after=1)  # epoch 1 is saved, epoch 2 is not
    code, _, err = cli(*TEACHER, "--out", out)
    assert code == 2
    assert the_error(err) == (f"fiqnn: error: cannot write {out}/checkpoint.pt: {ENOSPC}; "
                              "rerun with --resume to continue")
    assert no_temp_files(out) and not (out / "checkpoint.pt").exists()
    assert load_torch(out / PREVIOUS)["epoch"] == 1  # the checkpoint before stays intact
    disk.free()
    assert cli("train-teacher", "--out", out, "--resume", "--no-progress")[0] == 0
    assert json.loads((out / "metrics.json").read_text())["status"] == "done"
    assert "resuming from epoch 1 of 3" in (out / "train.log").read_text()


def test_full_disk_at_a_distill_checkpoint_then_resume(cli, tiny_teacher, tmp_path, monkeypatch):
    out = tmp_path / "s"
    disk = FullDisk(monkeypatch, "checkpoint.pt", after=1)  # after teacher-qat, not after fold
    code, _, err = cli("distill", "--teacher", tiny_teacher, *FOLD, "--out", out)
    assert code == 2 and the_error(err).startswith(f"fiqnn: error: cannot write {out}/checkpoint.pt: {ENOSPC}")
    assert no_temp_files(out) and load_torch(out / PREVIOUS)["done"] == 1
    disk.free()
    assert cli("distill", "--out", out, "--resume", "--no-progress")[0] == 0
    assert json.loads((out / "metrics.json").read_text())["status"] == "done"


@pytest.mark.parametrize("name", ["train.log", "metrics.json", "config.json"])
def test_every_run_directory_write_names_its_file(tmp_path, monkeypatch, name):
    run = RunDir(tmp_path / "r", {}, resume=False)
    FullDisk(monkeypatch, name)
    with pytest.raises(OutputError, match=f"^cannot write {tmp_path}/r/{name}: {ENOSPC}$"):
        run.create("teacher")
        run.log("hello")
        run.write_metrics({"status": "running"})
    assert no_temp_files(tmp_path)


def test_full_disk_while_writing_a_report(cli, student, tmp_path, monkeypatch):
    FullDisk(monkeypatch, "report.html")
    code, _, err = cli("report", student, "--out", tmp_path)
    assert code == 2 and err == [f"fiqnn: error: cannot write {tmp_path}/report.html: {ENOSPC}"]
    assert no_temp_files(tmp_path) and not (tmp_path / "report.html").exists()


def _mount(path: Path, options: str) -> bool:
    """Mount a tmpfs on ``path``, where this process may (root, outside a locked-down container)."""
    if shutil.which("mount") is None:
        return False
    return subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
                          capture_output=True).returncode == 0


@pytest.fixture
def tmpfs(tmp_path):
    """``tmpfs(options)``: a fresh tmpfs mounted with ``options``; skips where mounting is not allowed."""
    mounted = []

    def make(options: str) -> Path:
        path = tmp_path / f"mnt{len(mounted)}"
        path.mkdir()
        if not _mount(path, options):
            pytest.skip("cannot mount a tmpfs here")
        mounted.append(path)
        return path

    yield make
    for path in mounted:
        subprocess.run(["umount", str(path)], check=True)


def test_a_real_full_disk(cli, student, tmpfs):
    disk = tmpfs("size=4k")  # one page: less than the report's first plot
    code, _, err = cli("report", student, "--out", disk)
    assert code == 2 and err == [f"fiqnn: error: cannot write {disk}/report_training.png: {ENOSPC}"]
    assert list(disk.iterdir()) == []


# --- a read-only output -------------------------------------------------------------------------


@pytest.fixture
def readonly(tmp_path, monkeypatch, tmpfs):
    """An empty directory this process cannot write: a read-only tmpfs where it may mount one;
    else chmod 0o555, which stops everyone but root (as whom tests run here), for whom os.access
    then answers as it would for anyone else."""
    try:
        return tmpfs("ro,size=64k")
    except pytest.skip.Exception:
        pass
    d = tmp_path / "ro"
    d.mkdir(mode=0o555)
    access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if Path(p) == d else access(p, mode, **kw))
    return d


@pytest.mark.parametrize("command", ["train-teacher", "distill", "export", "report", "bench", "demo"])
def test_read_only_output(cli, tiny_teacher, student, readonly, command):
    args = {"train-teacher": [*TEACHER, "--out", readonly / "t"],
            "distill": ["distill", "--teacher", tiny_teacher, *FOLD, "--out", readonly / "s"],
            "export": ["export", student, "--format", "npz", "--out", readonly / "m.npz"],
            "report": ["report", student, "--out", readonly],
            "bench": ["bench", "--teacher", tiny_teacher, "--methods", "fold", "--bits", "4", "--out", readonly / "b"],
            "demo": ["demo", "--out", readonly / "d", "--no-progress"]}[command]
    code, _, err = cli(*args)
    assert code == 2 and len(err) == 1 and err[0].startswith("fiqnn: error: cannot write to ")
    assert f"{readonly} is not writable" in err[0]
    assert list(readonly.iterdir()) == []


def test_report_of_a_missing_run_creates_nothing(cli, tmp_path):
    code, _, err = cli("report", tmp_path / "nope", "--out", tmp_path / "rep")
    assert code == 2 and len(err) == 1 and "is not a finished distill run" in err[0]
    assert not (tmp_path / "rep").exists()


# --- a run's teacher, from another directory --------------------------------------------------


def test_student_used_from_another_directory(cli, student, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, err = cli("eval", student, "--json")
    assert code == 0, err
    assert json.loads(out)["test_acc"] == json.loads((student / "metrics.json").read_text())["test_acc"]
    assert cli("report", student, "--out", tmp_path / "rep")[0] == 0


def test_runs_moved_together_keep_their_teacher(cli, student, tmp_path, monkeypatch):
    root, moved = student.parent, tmp_path / "moved"
    root.rename(moved)  # the absolute teacher path is gone; the one relative to the student is not
    try:
        monkeypatch.chdir(tmp_path)
        code, _, err = cli("eval", moved / "student")
        assert code == 0, err
    finally:
        moved.rename(root)


def test_resume_of_a_run_that_stored_its_teacher_relative(cli, student, tmp_path, monkeypatch):
    """Runs from before absolute teacher paths hold ``"teacher": "teacher"``; they still resume."""
    shutil.copytree(student.parent, tmp_path / "runs")
    config = tmp_path / "runs" / "student" / "config.json"
    old = json.loads(config.read_text())
    old["config"]["teacher"] = "teacher"
    del old["config"]["teacher_rel"]
    config.write_text(json.dumps(old))
    monkeypatch.chdir(tmp_path / "runs")
    code, _, err = cli("distill", "--out", "student", "--resume", "--no-progress")
    assert code == 0, err
    assert json.loads(config.read_text()) == old


# --- the process: Ctrl-C, a closed stdout -------------------------------------------------------


def _as_from_a_shell() -> None:
    """A child's SIGINT as a terminal user's shell starts it: default handling, not blocked (a
    library loaded in the pytest process may have left it ignored or masked, which children inherit)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


def test_ctrl_c_while_torch_imports(tmp_path):
    cmd = [sys.executable, "-X", "importtime", "-m", "fiqnn", *TEACHER, "--out", str(tmp_path / "t")]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            preexec_fn=_as_from_a_shell)
    for line in proc.stderr:  # -X importtime reports each module as it finishes loading
        if "torch" in line:  # torch is loading, inside main()
            break
    proc.send_signal(signal.SIGINT)
    err = [line for line in proc.stderr.read().splitlines() if not line.startswith("import time:")]
    assert proc.wait() == 130 and err == ["fiqnn: interrupted"]
    assert not (tmp_path / "t").exists()


@pytest.mark.parametrize("json_flag", [[], ["--json"]])
def test_closed_stdout_exits_quietly(student, json_flag):
    """`fiqnn info ... | head -c 300` with the reader gone before fiqnn writes: no traceback."""
    proc = subprocess.Popen([sys.executable, "-m", "fiqnn", "info", str(student), *json_flag],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait() == 141 and err == ""
