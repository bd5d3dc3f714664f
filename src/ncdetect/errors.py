"""Errors that reach the user as one line naming the file (and line) at fault."""

from __future__ import annotations

from pathlib import Path


class NcdetectError(Exception):
    """Base class: the CLI prints ``str(error)`` as one line and exits non-zero."""


class AudioError(NcdetectError):
    """An audio file that cannot be used: missing, empty, corrupt, silent, NaN, not audio."""

    def __init__(self, path: str | Path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{path}: {reason}")


class ProtocolError(NcdetectError):
    """A malformed line in a protocol, metadata or manifest file."""

    def __init__(self, path: str | Path, line: int | None, reason: str):
        self.path = str(path)
        self.line = line
        where = f"{path}:{line}" if line is not None else str(path)
        super().__init__(f"{where}: {reason}")


class ConfigError(NcdetectError):
    """An invalid config or recipe value."""


class ModelFileError(NcdetectError):
    """Weights or a run folder that cannot be loaded safely."""
