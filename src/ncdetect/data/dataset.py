"""The torch dataset over a manifest and the record of skipped files.

``AudioDataset`` never raises inside a DataLoader worker: an unusable file comes back as an item with
``wave=None`` and ``error="path: reason"``; :func:`~ncdetect.data.loader.collate` removes it from the
batch tensors and lists it in ``batch["errors"]``; the training or scoring loop then calls
:func:`~ncdetect.data.loader.raise_or_skip`, which stops with that one-line error unless the user asked
to skip bad files, and :func:`write_skipped` records what was skipped. Nothing is dropped silently.

Randomness is a pure function of ``(seed, epoch, index)``, so the crops of an epoch are the same
whatever the number of workers or their scheduling, and a resumed run sees the crops it would have
seen. The epoch lives in shared memory, so ``set_epoch`` reaches persistent workers too (call it
before iterating the loader for that epoch).

The loader pieces shared with the feature store live in :mod:`ncdetect.data.loader`; the feature store
(:class:`~ncdetect.data.features.FeatureStore`, :class:`~ncdetect.data.features.StoreDataset`) in
:mod:`ncdetect.data.features`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from ..errors import AudioError
from ..fileio import atomic_path
from .audio import SAMPLE_RATE, WINDOW_SAMPLES, load_audio, load_crop, tile_pad
from .audio import random_crop as _random_crop
from .audio import trim_silence as _trim_silence
from .loader import EpochMixin, item_rng
from .manifest import label_ids

__all__ = ["AudioDataset", "write_skipped"]


class AudioDataset(EpochMixin, Dataset):
    """Utterances of a manifest as fixed-length 16 kHz waves.

    ``train=True``: a random crop of ``num_samples`` per (seed, epoch, index). Only the crop is read
    from disk: the start is drawn from the header's length, so a one-hour file costs a window of I/O.
    Clips no longer than the window are read whole and tile-padded.
    ``train=False``: the first ``num_samples`` (only those are read), tile-padded when shorter.
    ``trim_silence=True`` cuts leading and trailing silence first, which needs the whole clip: every
    file is then read in full.

    ``ds[i]`` is ``dict(wave=Tensor[num_samples] | None, label=int, index=i, error=None | str)``, plus
    ``length`` (samples of real audio in the window, before tile-padding) when ``return_length``.
    A manifest without a ``label`` column gives ``label=-1``.
    """

    def __init__(
        self,
        manifest: pd.DataFrame,
        num_samples: int = WINDOW_SAMPLES,
        train: bool = False,
        seed: int = 0,
        trim_silence: bool = False,
        sample_rate: int = SAMPLE_RATE,
        return_length: bool = False,
    ) -> None:
        if num_samples < 1:
            raise ValueError(f"num_samples must be positive, not {num_samples}")
        self.paths: list[str] = manifest["path"].astype(str).tolist()
        self.labels = (
            label_ids(manifest["label"].astype(str)) if "label" in manifest.columns
            else np.full(len(self.paths), -1, dtype=np.int64)
        )
        self.num_samples = int(num_samples)
        self.train = bool(train)
        self.seed = int(seed)
        self.trim_silence = bool(trim_silence)
        self.sample_rate = int(sample_rate)
        self.return_length = bool(return_length)
        self._init_epoch()

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = int(index)
        item: dict[str, Any] = dict(wave=None, label=int(self.labels[index]), index=index, error=None)
        try:
            wave, length = self._load(index)
            item["wave"] = torch.from_numpy(wave)
            if self.return_length:
                item["length"] = length
        except AudioError as err:
            item["error"] = str(err)
        except Exception as err:  # a worker must not die: the consumer decides (raise_or_skip)
            first = (str(err).splitlines() or [""])[0]
            item["error"] = f"{self.paths[index]}: unexpected {type(err).__name__} while reading ({first})"
        if item["error"] is not None and self.return_length:
            item["length"] = 0
        return item

    def _load(self, index: int) -> tuple[np.ndarray, int]:
        path, n, sr = self.paths[index], self.num_samples, self.sample_rate
        if self.trim_silence:
            x = _trim_silence(load_audio(path, sr))
            if self.train:
                x_win = _random_crop(x, n, item_rng(self.seed, self.epoch, index))
            else:
                x_win = tile_pad(x, n)
            return np.ascontiguousarray(x_win), min(len(x), n)
        if self.train:
            x = load_crop(path, n, item_rng(self.seed, self.epoch, index), sr)
        else:
            x = load_audio(path, sr, duration=n / sr)
        # A header can promise more than the data holds; tile what was there.
        return np.ascontiguousarray(tile_pad(x, n)), min(len(x), n)


def write_skipped(
    skipped: Sequence[tuple[int, str]], out_dir: str | Path, manifest: pd.DataFrame | None = None
) -> Path:
    """Write ``out_dir/skipped.csv`` (``index,utt_id,path,reason``), one row per skipped utterance.

    Pass the ``manifest`` the indices refer to for ``utt_id`` and ``path``; without it the path is
    taken from the message (``"path: reason"``) and ``utt_id`` is left empty. A file that failed in
    several epochs appears once. The file is written even when nothing was skipped, as a record.
    """
    rows: dict[int, dict[str, Any]] = {}
    for index, message in skipped:
        index = int(index)
        if index in rows:
            continue
        if manifest is not None and 0 <= index < len(manifest):
            path = str(manifest["path"].iloc[index])
            utt_id = str(manifest["utt_id"].iloc[index]) if "utt_id" in manifest.columns else ""
        else:
            path, utt_id = message.split(": ", 1)[0], ""
        reason = message[len(path) + 2 :] if message.startswith(path + ": ") else message
        rows[index] = dict(index=index, utt_id=utt_id, path=path, reason=reason)
    df = pd.DataFrame([rows[i] for i in sorted(rows)], columns=["index", "utt_id", "path", "reason"])
    out = Path(out_dir) / "skipped.csv"
    with atomic_path(out) as tmp:
        df.to_csv(tmp, index=False)
    return out
