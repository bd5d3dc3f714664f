"""Atomic writes: every artifact is written under a temporary name and renamed into place, so a
partial file left by a crash is never taken for a finished one.

A write that fails (disk full, quota, read-only file system, permissions) becomes one
:class:`~ncdetect.errors.NcdetectError` naming the file, and the temporary file is removed: what was at
the path before (if anything) stays as it was.
"""

from __future__ import annotations

import errno
import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from .errors import NcdetectError

# Below this many free bytes a failed write is reported as a full disk (some writers, e.g. numpy's,
# raise an OSError without an errno when the disk fills).
_NEARLY_FULL = 1 << 20
# Some writers (safetensors) wrap the OS error in their own exception type; these phrases identify it.
_DISK_FULL_TEXT = ("No space left on device", "os error 28", "Disk quota exceeded", "os error 122")


def _write_failure(err: BaseException, folder: Path) -> str | None:
    """The reason to show when ``err`` is a failed write into ``folder``; None when it is something else."""
    if isinstance(err, NcdetectError) or not isinstance(err, Exception):
        return None
    text = str(err)
    if isinstance(err, OSError):
        reason = err.strerror or text or type(err).__name__
        if err.filename is not None and not str(err.filename).startswith(str(folder)):
            reason += f": {err.filename}"
    elif any(phrase in text for phrase in _DISK_FULL_TEXT):
        reason = text.splitlines()[0]
    else:
        return None
    if isinstance(err, OSError) and err.errno is None:
        try:
            free = shutil.disk_usage(folder).free
        except OSError:
            free = None
        if free is not None and free < _NEARLY_FULL:
            reason += f"; no space left on device ({free} bytes free)"
    return reason


@contextmanager
def reporting_write_errors(path: str | Path) -> Iterator[None]:
    """Turn a failed write of ``path`` (an OSError, or a library error that wraps a full disk) into one
    NcdetectError naming ``path``. Other exceptions pass through unchanged."""
    path = Path(path)
    try:
        yield
    except Exception as err:
        reason = _write_failure(err, path.parent)
        if reason is None:
            raise
        raise NcdetectError(f"{path}: could not be written ({reason}); no partial file was left") from err


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is renamed onto ``path``.

    On any failure the temporary file is removed and ``path`` keeps what it held before; a failed write
    (see :func:`reporting_write_errors`) is reported as one line naming ``path``.
    """
    path = Path(path)
    with reporting_write_errors(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
    tmp_path = Path(tmp)
    try:
        with reporting_write_errors(path):
            yield tmp_path
            # mkstemp creates 0600; artifacts get the mode an ordinary open() would give them.
            if tmp_path.exists():
                os.chmod(tmp_path, 0o666 & ~_umask())
            os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | Path, data: Any) -> None:
    write_text(path, json.dumps(data, indent=2, sort_keys=False, default=_json_default) + "\n")


def write_yaml(path: str | Path, data: Any) -> None:
    write_text(path, yaml.safe_dump(data, sort_keys=False))


def json_safe(value: Any) -> Any:
    """``value`` with NaN and Inf (not JSON) replaced by None, through dicts, lists and tuples."""
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_png(fig: Any, path: str | Path, dpi: int, tight: bool = False) -> Path:
    """Save a matplotlib figure as a PNG, atomically (every plot of the package goes through here).

    ``tight`` crops to the drawn content (``bbox_inches="tight"``).
    """
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi, **({"bbox_inches": "tight"} if tight else {}))
    return path


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


# The probe is a few blocks, not an empty file: creating an empty file still works on a full disk.
_PROBE_BYTES = 64 * 1024


def ensure_writable_dir(path: str | Path) -> Path:
    """Create ``path`` and check that it can be written (a folder, permissions, space for a little data),
    before any long work starts."""
    path = Path(path)
    probe = path / f".write-test-{os.getpid()}"
    try:
        path.mkdir(parents=True, exist_ok=True)
        with open(probe, "wb") as f:
            f.write(b"\0" * _PROBE_BYTES)
            f.flush()
            os.fsync(f.fileno())
    except OSError as err:
        raise NcdetectError(f"{path}: output folder cannot be written ({err.strerror or err})") from None
    finally:
        with suppress(OSError):
            probe.unlink(missing_ok=True)
    return path


_NO_FALLOCATE = {errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL}


def open_npy_for_writing(
    path: str | Path, dtype: Any, shape: tuple[int, ...], name: str | Path | None = None
) -> np.memmap:
    """``numpy.lib.format.open_memmap(path, "w+")`` with the file's blocks reserved on disk up front.

    A memory map over a sparse file dies with SIGBUS, and no message, when it first touches a page the
    disk has no room for; reserving the blocks turns a full disk into an error here, naming ``name``
    (default ``path``), before any work is done.
    """
    from numpy.lib.format import open_memmap

    path = Path(path)
    try:
        arr = open_memmap(path, mode="w+", dtype=dtype, shape=shape)
        _reserve_blocks(path)
    except OSError as err:
        path.unlink(missing_ok=True)
        needed = int(np.prod(shape)) * np.dtype(dtype).itemsize
        reason = _write_failure(err, path.parent)
        raise NcdetectError(
            f"{name or path}: could not be written ({reason}; {needed} bytes needed); "
            "no partial file was left"
        ) from None
    return arr


def _reserve_blocks(path: Path) -> None:
    if not hasattr(os, "posix_fallocate"):  # macOS, Windows: the file stays sparse
        return
    with open(path, "r+b") as f:
        size = os.fstat(f.fileno()).st_size
        try:
            if size:
                os.posix_fallocate(f.fileno(), 0, size)
        except OSError as err:
            if err.errno not in _NO_FALLOCATE:  # a file system without fallocate keeps the sparse file
                raise
