"""Progress bars for every phase that takes more than a few seconds.

A bar shows on a terminal only: ``progress=False`` (``--no-progress``) turns it off, and so
does a stderr that is not a TTY (a log file, CI), so that redirected output stays clean.
"""

from __future__ import annotations

from collections.abc import Iterable

from tqdm import tqdm


def bar(iterable: Iterable | None = None, *, progress: bool, desc: str, **kwargs) -> tqdm:
    """``tqdm(iterable)`` shown on a terminal when ``progress`` is true (tqdm's ``disable=None``:
    off when stderr is not a TTY), never otherwise."""
    return tqdm(iterable, desc=desc, disable=None if progress else True, leave=False, dynamic_ncols=True, **kwargs)
