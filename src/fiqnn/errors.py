"""The errors fiqnn raises for problems a user can fix.

The CLI turns any :class:`FiqnnError` into one line on stderr and exit code 2;
anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class FiqnnError(Exception):
    """Base class: a problem with the user's input, with the fix in the message."""


class ConfigError(FiqnnError, ValueError):
    """An option value is out of range or unknown."""


class DataError(FiqnnError):
    """A data set is missing, truncated or malformed."""


class RunDirError(FiqnnError):
    """A run directory cannot be created, written, or resumed."""


class OutputError(FiqnnError):
    """An output file cannot be written: no space left, a read-only file system, no permission."""


class CheckpointError(FiqnnError):
    """A checkpoint or model file is missing, corrupt, or from another version."""


class TrainingError(FiqnnError):
    """Training diverged (a non-finite loss or weight); the last good checkpoint is kept."""


class MissingExtraError(FiqnnError, ImportError):
    """An optional dependency (an extra of the fiqnn package) is not installed; the message names it."""
