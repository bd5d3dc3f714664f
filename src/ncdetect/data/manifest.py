"""Manifests: plain tables with one row per utterance (CSV or Parquet, chosen by extension).

Required columns: ``utt_id, path, label, dataset, attack, speaker``. ``label`` is ``bonafide`` or
``spoof``; ``attack`` is ``-`` for bonafide. ``path`` is absolute or relative to the manifest's folder.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from .. import BONAFIDE, CLASSES, SPOOF
from ..errors import ProtocolError
from ..fileio import atomic_path

COLUMNS = ["utt_id", "path", "label", "dataset", "attack", "speaker"]
LABELS = set(CLASSES)


def read_manifest(path: str | Path, resolve_paths: bool = True) -> pd.DataFrame:
    """Read and validate a manifest; relative audio paths are resolved against its folder."""
    path = Path(path)
    if not path.is_file():
        raise ProtocolError(path, None, "manifest not found")
    try:
        df = pd.read_parquet(path) if path.suffix == ".parquet" else _read_csv(path)
    except Exception as err:  # pandas raises many types for unreadable tables
        reason = " ".join(str(err).split()) or type(err).__name__  # pandas' messages span lines
        raise ProtocolError(path, None, f"cannot read manifest ({reason})") from None
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise ProtocolError(path, 1, f"manifest lacks columns {missing}; it needs {COLUMNS}")
    for col in COLUMNS:
        df[col] = df[col].astype(str)
    # CSV line numbers: the header is line 1, so row i is line i + 2.
    bad_label = ~df["label"].isin(LABELS)
    if bad_label.any():
        i = int(np.flatnonzero(bad_label.to_numpy())[0])
        label = df["label"].iloc[i]
        raise ProtocolError(path, i + 2, f"unknown label {label!r} (expected bonafide or spoof)")
    empty_path = df["path"].str.len() == 0
    if empty_path.any():
        i = int(np.flatnonzero(empty_path.to_numpy())[0])
        raise ProtocolError(path, i + 2, "empty path")
    if resolve_paths:
        df["path"] = _resolve_paths(df["path"], path.resolve().parent)
    return df.reset_index(drop=True)


def _read_csv(path: Path) -> pd.DataFrame:
    """All columns as strings, empty fields as ``""``.

    Arrow's multi-threaded parser reads a million-row manifest several times faster than pandas' own;
    it gives the same table (names of duplicate or unnamed columns included) wherever it accepts the
    file. Where it does not (ragged rows, which pandas pads or reads with an index column), pandas' own
    parser decides, so odd files behave exactly as they always did.
    """
    try:
        return pd.read_csv(path, dtype=str, keep_default_na=False, engine="pyarrow")
    except Exception:
        return pd.read_csv(path, dtype=str, keep_default_na=False)


# A relative path that pathlib would rewrite: a "." component, a doubled or a trailing slash.
_NOT_NORMAL = r"(?:^|/)\.(?:/|$)|//|/$"


def _resolve_paths(paths: pd.Series, base: Path) -> pd.Series:
    """``p`` if absolute, else ``str(base / p)``: pathlib's result, without a Path per row.

    A clean relative POSIX path joins by string concatenation; the few pathlib would normalise go
    through pathlib itself. (A Path per row cost 5 s on a million rows.)
    """
    if os.name != "posix":
        return pd.Series([p if Path(p).is_absolute() else str(base / p) for p in paths], index=paths.index)
    relative = ~paths.str.startswith("/")
    if not relative.any():
        return paths
    out = paths.where(~relative, os.path.join(str(base), "") + paths)
    messy = relative & paths.str.contains(_NOT_NORMAL, regex=True)
    if messy.any():
        out[messy] = [str(base / p) for p in paths[messy]]
    return out


def write_manifest(df: pd.DataFrame, path: str | Path) -> Path:
    """Write a manifest atomically; the required columns come first, others are kept after them."""
    path = Path(path)
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"manifest lacks columns {missing}")
    ordered = df[COLUMNS + [c for c in df.columns if c not in COLUMNS]]
    with atomic_path(path) as tmp:
        if path.suffix == ".parquet":
            ordered.to_parquet(tmp, index=False)
        else:
            ordered.to_csv(tmp, index=False)
    return path


def label_ids(labels: pd.Series | np.ndarray | list[str]) -> np.ndarray:
    """Map ``spoof``/``bonafide`` to the class ids 0/1 (anything but ``bonafide`` is spoof)."""
    if isinstance(labels, (pd.Series, np.ndarray)):
        # Vectorised: a Python loop over a million labels took most of a second.
        is_bonafide = np.asarray(pd.Series(labels, copy=False) == "bonafide", dtype=bool)
    else:
        is_bonafide = np.array([lab == "bonafide" for lab in labels], dtype=bool)
    return np.where(is_bonafide, BONAFIDE, SPOOF).astype(np.int64)


def make_manifest(rows: list[dict]) -> pd.DataFrame:
    """Build a manifest frame from row dicts, with the required columns first."""
    df = pd.DataFrame(rows)
    if df.empty:
        return pd.DataFrame(columns=COLUMNS)
    return df[COLUMNS + [c for c in df.columns if c not in COLUMNS]]


def shared_audio(a: pd.DataFrame, b: pd.DataFrame) -> list[tuple[int, int]]:
    """Row pairs ``(i, j)`` where ``a.path[i]`` and ``b.path[j]`` are the same audio: the same file once
    resolved, or files with equal contents (the same corpus prepared twice, a copy under another name).

    Only files whose size occurs in both tables are read and hashed, so two distinct corpora cost one
    ``stat`` per file. A file that cannot be examined is left to the stage that reads it to report.
    """
    import hashlib

    def identities(paths: pd.Series) -> tuple[list[str], list[int]]:
        resolved, sizes = [], []
        for p in paths:
            resolved.append(os.path.realpath(p))
            try:
                sizes.append(os.stat(p).st_size)
            except OSError:
                sizes.append(-1)
        return resolved, sizes

    def digest(path: str) -> str | None:
        h = hashlib.sha256()
        try:
            with open(path, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
        except OSError:
            return None
        return h.hexdigest()

    paths_a, sizes_a = identities(a["path"])
    paths_b, sizes_b = identities(b["path"])
    where_b: dict[str, int] = {}
    for j, p in enumerate(paths_b):
        where_b.setdefault(p, j)
    pairs = {(i, where_b[p]) for i, p in enumerate(paths_a) if p in where_b}
    common = (set(sizes_a) & set(sizes_b)) - {-1}
    hashes_b: dict[str, int] = {}
    for j, (p, size) in enumerate(zip(paths_b, sizes_b, strict=True)):
        if size in common and (h := digest(p)) is not None:
            hashes_b.setdefault(h, j)
    for i, (p, size) in enumerate(zip(paths_a, sizes_a, strict=True)):
        if size in common and (h := digest(p)) is not None and h in hashes_b:
            pairs.add((i, hashes_b[h]))
    return sorted(pairs)
