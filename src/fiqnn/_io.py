"""Atomic file output: write to a temporary file beside the target, then rename.

A reader (or a resumed run) therefore sees either the old file or the new one,
never a half-written one, even if the process is killed mid-write. Every write here
that fails for a reason of the file system (no space left, read-only, no permission)
raises :class:`~fiqnn.errors.OutputError` naming the file, after removing its
temporary file, so a full disk is one line from the CLI and leaves the old file intact.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from .errors import OutputError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _os_error(e: BaseException | None) -> OSError | None:
    """The OSError behind ``e``, if any: torch.save reports a write that ran out of space as a
    RuntimeError ("unexpected pos") raised while handling the OSError."""
    while e is not None and not isinstance(e, OSError):
        e = e.__cause__ or e.__context__
    return e


@contextlib.contextmanager
def writing(path: str | os.PathLike) -> Iterator[None]:
    """Turn a file-system failure inside the block into an :class:`OutputError` naming ``path``."""
    try:
        yield
    except Exception as e:
        err = _os_error(e)
        if err is None:
            raise
        raise OutputError(f"cannot write {path}: {err.strerror or err}") from None


def _atomic(path: Path, write: Callable[[IO[bytes]], None]) -> None:
    path = Path(path)
    tmp = None
    with writing(path):
        try:
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
            with os.fdopen(fd, "wb") as f:
                os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual permissions
                write(f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            if tmp is not None:
                Path(tmp).unlink(missing_ok=True)
            raise


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Atomically write ``data`` to ``path``."""
    _atomic(Path(path), lambda f: f.write(data))


def write_text(path: str | os.PathLike, text: str) -> None:
    """Atomically write UTF-8 ``text`` to ``path``."""
    write_bytes(path, text.encode("utf-8"))


def append_text(path: str | os.PathLike, text: str) -> None:
    """Append UTF-8 ``text`` to ``path`` (for logs: not atomic; a full disk can cut the line short)."""
    with writing(path), open(path, "a", encoding="utf-8") as f:
        f.write(text)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Atomically write ``obj`` as indented JSON (with a trailing newline)."""
    write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


DIGEST = "sha256"  # the key under which torch_save stores a dict's content digest


def content_digest(obj: Any) -> str:
    """SHA-256 over what a checkpoint holds: every tensor's dtype, shape and bytes and every
    other value's repr, walked in a fixed order (dict keys sorted). Equal before saving and
    after loading; a flipped bit anywhere in the data changes it."""
    import hashlib

    import torch

    h = hashlib.sha256()

    def walk(x: Any) -> None:
        if isinstance(x, torch.Tensor):
            t = x.detach().cpu().contiguous()
            h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy())
        elif isinstance(x, dict):
            h.update(f"D{len(x)}".encode())
            for k in sorted(x, key=repr):
                h.update(repr(k).encode())
                walk(x[k])
        elif isinstance(x, (list, tuple)):
            h.update(f"{type(x).__name__}{len(x)}".encode())
            for v in x:
                walk(v)
        else:
            h.update(repr(x).encode())

    walk(obj)
    return h.hexdigest()


def torch_save(obj: Any, path: str | os.PathLike) -> None:
    """Atomically ``torch.save`` ``obj`` (tensors, numbers, strings, dicts, lists only); a dict
    gets its :func:`content_digest` under :data:`DIGEST`, checked by ``fiqnn._run.load_torch``."""
    import torch

    if isinstance(obj, dict):
        obj = {**obj, DIGEST: content_digest(obj)}
    _atomic(Path(path), lambda f: torch.save(obj, f))
