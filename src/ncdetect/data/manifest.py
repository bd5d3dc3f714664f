"""Manifests: plain tables with one row per utterance (CSV or Parquet, chosen by extension).

Required columns: ``utt_id, path, label, dataset, attack, speaker``. ``label`` is ``bonafide`` or
``spoof``; ``attack`` is ``-`` for bonafide. ``path`` is absolute or relative to the manifest's folder.
"""

from __future__ import annotations

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
        if path.suffix == ".parquet":
            df = pd.read_parquet(path)
        else:
            df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except Exception as err:  # pandas raises many types for unreadable tables
        raise ProtocolError(path, None, f"cannot read manifest ({err})") from None
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise ProtocolError(path, 1, f"manifest lacks columns {missing}; it needs {COLUMNS}")
    for col in COLUMNS:
        df[col] = df[col].astype(str)
    # CSV line numbers: the header is line 1, so row i is line i + 2.
    bad_label = ~df["label"].isin(LABELS)
    if bad_label.any():
        i = int(np.flatnonzero(bad_label.to_numpy())[0])
        raise ProtocolError(path, i + 2, f"unknown label {df['label'].iloc[i]!r} (expected bonafide or spoof)")
    empty_path = df["path"].str.len() == 0
    if empty_path.any():
        i = int(np.flatnonzero(empty_path.to_numpy())[0])
        raise ProtocolError(path, i + 2, "empty path")
    if resolve_paths:
        base = path.resolve().parent
        df["path"] = [p if Path(p).is_absolute() else str(base / p) for p in df["path"]]
    return df.reset_index(drop=True)


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


def label_ids(labels: pd.Series | list[str]) -> np.ndarray:
    """Map ``spoof``/``bonafide`` to the class ids 0/1."""
    return np.array([BONAFIDE if lab == "bonafide" else SPOOF for lab in labels], dtype=np.int64)


def make_manifest(rows: list[dict]) -> pd.DataFrame:
    """Build a manifest frame from row dicts, with the required columns first."""
    df = pd.DataFrame(rows)
    if df.empty:
        return pd.DataFrame(columns=COLUMNS)
    return df[COLUMNS + [c for c in df.columns if c not in COLUMNS]]
