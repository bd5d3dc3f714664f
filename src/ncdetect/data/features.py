"""The feature store: every front-end window an experiment needs, computed once and memory-mapped after.

One store per front-end identity (``Frontend.cache_identity``: the config plus, for Whisper, the model
file's path, size and time) and dtype, under ``<root>/<name>-<identity>/<dtype>/``. Its rows are windows of
utterances, not manifests: a row is keyed by the utterance as it is on disk ``(path, size, mtime)``, the
window ``(offset, length)`` in samples, silence trimming, and the codec copy (none, or the copy's draw:
the codec settings, the utterance and the copy's number). A sampled subset, another seed's subset, the
union, a dev set and a target all find their rows by those keys, so no window is encoded twice.

Windows, for a training window of ``n`` samples (``WindowPolicy``):

* the evaluation window: the first ``n`` samples, tile-padded when shorter, encoded on their own. It is
  what ``score``, ``embed`` and the dev EER read: the very features the front-end computes on that wave.
* training windows of a front-end that is ``shift_invariant`` (log-mel, LFCC, raw): one window of
  ``W = round(1.5 n)`` samples from the start; each epoch crops ``frames(n)`` frames at a random frame
  within the real audio. A crop equals the front-end over the samples it covers except in the edge frames
  whose analysis window reaches past the crop (a few frames of hundreds).
* training windows of a front-end that is not (Whisper, whose output depends on the whole window): up to
  ``crops`` windows of ``n`` samples at fixed offsets spread over ``[0, min(L, W) - n]`` (``L`` the real
  length), each encoded from its own first sample, as scoring encodes; an epoch draws one of them. Offset 0
  is the evaluation window itself, so training and scoring share that row.
* codec copies (``augment.codec``, K of them): copy ``k`` of the long window (shift-invariant), or of the
  training window at offset number ``k mod crops`` (otherwise), rendered once. An epoch reads one copy with
  probability ``p`` (drawn per seed, epoch and utterance), a clean window otherwise.

Layout of ``<store>/shards/<shard>/``, one folder per build batch, written into ``.tmp-<shard>`` and renamed
into place complete (a killed build keeps its finished shards; the next build removes leftovers of dead
processes on the same host):

* ``rows.csv``: ``key, kind, file, row, valid_frames, samples, error``; ``kind`` is ``window`` (a row of
  ``file``) or ``utterance`` (the decoded length of an utterance, which sets its training offsets).
* ``w<frames>.npy``: ``(rows, F, frames)`` in the store's dtype, one file per window length.
* ``meta.json``: what the shard holds and how many windows it encoded; written last.

Two processes that build the same rows at once both write them; readers take the first shard that has a
row, and the results are equal. ``windows_encoded`` (every front-end window computed, counted by
:func:`~ncdetect.data.spectral.windows_encoded`) against ``windows_distinct`` (the rows an experiment
reads) shows the work saved.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from ..config import CodecAugmentConfig
from ..errors import AudioError, NcdetectError
from ..fileio import ensure_writable_dir, reporting_write_errors, write_json
from ..progress import progress_bar
from .audio import SAMPLE_RATE, load_audio, tile_pad
from .audio import trim_silence as _trim_silence
from .loader import EpochMixin, item_rng
from .manifest import label_ids
from .spectral import Frontend, frontend_key

STORE_VERSION = 1
CROP_FACTOR = 1.5  # training windows lie within the first 1.5 x n samples of an utterance
RENDER_BATCH = 256  # utterances per build batch (and shard) when codec copies are rendered
BUILD_BATCH = 64  # utterances per build batch (and shard) otherwise
DTYPES = ("float32", "float16")
_SALT_VARIANT = 0xC0DEC


@dataclass(frozen=True)
class WindowPolicy:
    """Which windows of an utterance a model trains and is scored on (see the module docstring)."""

    num_samples: int
    trim_silence: bool = False
    crops: int = 3
    crop_factor: float = CROP_FACTOR

    def __post_init__(self) -> None:
        if self.num_samples < 1 or self.crops < 1 or self.crop_factor < 1:
            raise NcdetectError(f"window policy: num_samples and crops must be >= 1 and crop_factor >= 1, "
                                f"not {self.num_samples}, {self.crops}, {self.crop_factor}")

    @property
    def window_samples(self) -> int:
        return round(self.num_samples * self.crop_factor)

    @classmethod
    def of(cls, cfg: Any) -> WindowPolicy:
        """The policy of a :class:`~ncdetect.config.TrainConfig`."""
        return cls(cfg.data.num_samples, cfg.data.trim_silence, cfg.data.crops)


def utterance_signature(path: str) -> str:
    """``path|size|mtime_ns``: a changed file is another utterance; a missing one is signed as such."""
    try:
        st = os.stat(path)
        return f"{Path(path).resolve()}|{st.st_size}|{st.st_mtime_ns}"
    except OSError:
        return f"{path}|missing"


def _digest(*parts: Any) -> str:
    return hashlib.sha256("\t".join(map(str, parts)).encode()).hexdigest()[:24]


def crop_offsets(samples: int, policy: WindowPolicy) -> list[int]:
    """The training offsets of an utterance with ``samples`` of real audio (within the long window)."""
    span = max(0, min(samples, policy.window_samples) - policy.num_samples)
    if span == 0 or policy.crops == 1:
        return [0]
    return sorted({round(span * k / (policy.crops - 1)) for k in range(policy.crops)})


@dataclass(frozen=True)
class WindowSpec:
    """One row to read or compute: ``offset`` and ``length`` in samples; ``copy`` 0 clean, k codec copy k."""

    key: str
    offset: int
    length: int
    copy: int = 0


class _Decoded(Dataset):
    """Utterances decoded for a build: the evaluation window's samples and the long window's, each read as
    :class:`~ncdetect.data.dataset.AudioDataset` reads them."""

    def __init__(self, paths: Sequence[str], policy: WindowPolicy, sample_rate: int = SAMPLE_RATE) -> None:
        self.paths, self.policy, self.sample_rate = list(paths), policy, sample_rate

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict[str, Any]:
        path, p, sr = self.paths[index], self.policy, self.sample_rate
        try:
            if p.trim_silence:
                head = long = _trim_silence(load_audio(path, sr))
            else:
                head = load_audio(path, sr, duration=p.num_samples / sr)
                long = load_audio(path, sr, duration=p.window_samples / sr)
            return dict(index=index, head=head, long=long, error=None)
        except AudioError as err:
            return dict(index=index, head=None, long=None, error=str(err))
        except Exception as err:  # a worker must not die: the error is recorded for the utterance
            first = (str(err).splitlines() or [""])[0]
            return dict(index=index, head=None, long=None,
                        error=f"{path}: unexpected {type(err).__name__} while reading ({first})")


def _collate_decoded(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return items


class FeatureStore:
    """The store of ``frontend`` under ``root``: :meth:`build` the windows a manifest needs, then take a
    :meth:`dataset` of them. ``dtype`` None: the front-end's ``cache_dtype``."""

    def __init__(self, root: str | Path, frontend: Frontend, dtype: str | None = None) -> None:
        dtype = dtype or getattr(frontend, "cache_dtype", "float32")
        if dtype not in DTYPES:
            raise NcdetectError(f"feature store dtype must be one of {DTYPES}, not {dtype!r}")
        self.frontend = frontend
        self.dtype = dtype
        self.identity = f"{frontend.name}-{frontend_key(frontend)}"
        self.path = Path(root) / self.identity / dtype
        self.n_features = int(frontend.n_features)
        self.shift_invariant = bool(getattr(frontend, "shift_invariant", False))
        self._rows: dict[str, tuple[Path, str, int, int, str]] = {}
        self._utts: dict[str, tuple[int, str]] = {}
        self._shards: set[str] = set()

    # ----------------------------------------------------------------------------------------- keys
    def _window_key(self, sig: str, policy: WindowPolicy, offset: int, length: int, copy_tag: str = ""
                    ) -> str:
        return _digest(STORE_VERSION, sig, int(policy.trim_silence), offset, length, copy_tag)

    def _utt_key(self, sig: str, policy: WindowPolicy) -> str:
        return _digest(STORE_VERSION, "utterance", sig, int(policy.trim_silence), policy.window_samples)

    @staticmethod
    def _copy_tag(codec: CodecAugmentConfig, utt_id: str, path: str, k: int) -> str:
        from .codec_augment import utterance_key

        settings = json.dumps(codec.model_dump(mode="json"), sort_keys=True)
        return _digest("codec", settings, utterance_key(utt_id, path), k)

    def windows(
        self, utt_id: str, path: str, sig: str, policy: WindowPolicy, train: bool,
        codec: CodecAugmentConfig | None, samples: int | None,
    ) -> tuple[list[WindowSpec], list[WindowSpec]] | None:
        """An utterance's clean windows and codec copies for evaluation (``train=False``: the evaluation
        window alone) or training; None when training offsets need the decoded length ``samples``."""
        n = policy.num_samples
        if not train:
            return [WindowSpec(self._window_key(sig, policy, 0, n), 0, n)], []
        if self.shift_invariant:
            clean = [WindowSpec(self._window_key(sig, policy, 0, policy.window_samples), 0,
                                policy.window_samples)]
        else:
            if samples is None:
                return None
            clean = [WindowSpec(self._window_key(sig, policy, o, n), o, n)
                     for o in crop_offsets(samples, policy)]
        copies = []
        if codec is not None and codec.enabled:
            for k in range(codec.variants):
                base = clean[k % len(clean)]
                tag = self._copy_tag(codec, utt_id, path, k)
                copies.append(WindowSpec(self._window_key(sig, policy, base.offset, base.length, tag),
                                         base.offset, base.length, k + 1))
        return clean, copies

    # ---------------------------------------------------------------------------------------- index
    def refresh(self) -> FeatureStore:
        """Read the rows of shards written since the last look (by this process or another)."""
        shards = self.path / "shards"
        if not shards.is_dir():
            return self
        for shard in sorted(p for p in shards.iterdir() if p.is_dir() and not p.name.startswith(".")):
            if shard.name in self._shards or not (shard / "meta.json").is_file():
                continue
            try:
                rows = pd.read_csv(shard / "rows.csv", dtype={"key": str, "kind": str, "file": str,
                                                               "error": str}, keep_default_na=False)
            except (OSError, ValueError) as err:
                raise NcdetectError(f"{shard / 'rows.csv'}: unreadable feature store shard ({err}); delete "
                                    "that folder to rebuild its rows") from None
            for r in rows.itertuples(index=False):
                if r.kind == "utterance":
                    self._utts.setdefault(r.key, (int(r.samples), r.error))
                else:
                    self._rows.setdefault(r.key, (shard, r.file, int(r.row), int(r.valid_frames), r.error))
            self._shards.add(shard.name)
        return self

    def has(self, key: str) -> bool:
        return key in self._rows

    # ---------------------------------------------------------------------------------------- build
    def plan(
        self, manifest: pd.DataFrame, policy: WindowPolicy, train: bool,
        codec: CodecAugmentConfig | None = None,
    ) -> list[tuple[list[WindowSpec], list[WindowSpec]] | None]:
        """Per utterance, its windows (None: not decoded yet, or unreadable)."""
        out = []
        utt_ids = _utt_ids(manifest)
        for utt_id, path in zip(utt_ids, manifest["path"].astype(str), strict=True):
            sig = utterance_signature(path)
            utt = self._utts.get(self._utt_key(sig, policy))
            if utt is not None and utt[1]:
                out.append(None)
                continue
            out.append(self.windows(utt_id, path, sig, policy, train, codec, utt[0] if utt else None))
        return out

    def build(
        self,
        manifest: pd.DataFrame,
        policy: WindowPolicy,
        train: bool = False,
        codec: CodecAugmentConfig | None = None,
        batch_size: int = 32,
        num_workers: int = 0,
        device: str | torch.device = "cpu",
        progress: bool = True,
    ) -> dict[str, int]:
        """Compute the windows of ``manifest`` that the store lacks; returns ``{"windows", "encoded"}``:
        the distinct windows the manifest needs and how many this call computed."""
        self.refresh()
        manifest = manifest.reset_index(drop=True)
        plan = self.plan(manifest, policy, train, codec)
        todo = [i for i, p in enumerate(plan) if self._missing(manifest, i, policy, p)]
        encoded = 0
        if todo:
            ensure_writable_dir(self.path / "shards")
            self._remove_dead_builds()
            step = max(batch_size, RENDER_BATCH if codec is not None and codec.enabled else BUILD_BATCH)
            ds = _Decoded(manifest["path"].astype(str).iloc[todo].tolist(), policy)
            loader = torch.utils.data.DataLoader(ds, batch_size=step, num_workers=num_workers,
                                                 collate_fn=_collate_decoded)
            frontend = copy.deepcopy(self.frontend).to(device).eval()
            utt_ids = _utt_ids(manifest)
            for items in progress_bar(loader, desc="feature store", unit="batch", enabled=progress):
                rows = [todo[it["index"]] for it in items]
                encoded += self._build_shard(frontend, manifest, utt_ids, rows, items, policy, train, codec,
                                             batch_size, torch.device(device))
            self.refresh()
        return {"windows": len(self.keys(manifest, policy, train, codec)), "encoded": encoded}

    def keys(self, manifest: pd.DataFrame, policy: WindowPolicy, train: bool = False,
             codec: CodecAugmentConfig | None = None) -> set[str]:
        """The keys of the distinct windows ``manifest`` reads (of its decoded utterances)."""
        return {w.key for p in self.plan(manifest, policy, train, codec) if p for w in [*p[0], *p[1]]}

    def _missing(self, manifest: pd.DataFrame, i: int, policy: WindowPolicy, planned: Any) -> bool:
        """Whether utterance ``i`` has windows to compute (an unreadable one, recorded as such, has none)."""
        if planned is not None:
            return not all(self.has(w.key) for w in [*planned[0], *planned[1]])
        utt = self._utts.get(self._utt_key(utterance_signature(str(manifest["path"].iloc[i])), policy))
        return utt is None

    def _build_shard(
        self, frontend: Frontend, manifest: pd.DataFrame, utt_ids: list[str], rows: list[int],
        items: list[dict[str, Any]], policy: WindowPolicy, train: bool, codec: CodecAugmentConfig | None,
        batch_size: int, device: torch.device,
    ) -> int:
        """Encode the missing windows of one batch of decoded utterances into a new shard."""
        from .codec_augment import draw_variant, render, utterance_key

        records: list[dict[str, Any]] = []
        waves: dict[int, list[tuple[str, np.ndarray, int]]] = {}  # length -> (key, wave, valid samples)
        pending_copies: list[tuple[WindowSpec, np.ndarray, Any, int]] = []
        seen: set[str] = set()
        for i, item in zip(rows, items, strict=True):
            path = str(manifest["path"].iloc[i])
            sig = utterance_signature(path)
            if item["error"] is not None:
                records.append(dict(key=self._utt_key(sig, policy), kind="utterance", file="", row=0,
                                    valid_frames=0, samples=0, error=item["error"]))
                continue
            head, long = item["head"], item["long"]
            records.append(dict(key=self._utt_key(sig, policy), kind="utterance", file="", row=0,
                                valid_frames=0, samples=len(long), error=""))
            specs, copies = self.windows(utt_ids[i], path, sig, policy, train, codec, len(long))
            for spec in specs:
                if spec.key in seen or self.has(spec.key):
                    continue
                seen.add(spec.key)
                wave, valid = _window(head, long, spec, policy)
                waves.setdefault(spec.length, []).append((spec.key, wave, valid))
            for spec in copies:
                if spec.key in seen or self.has(spec.key):
                    continue
                seen.add(spec.key)
                wave, valid = _window(head, long, spec, policy)
                draw = draw_variant(codec, utterance_key(utt_ids[i], path), spec.copy - 1)
                pending_copies.append((spec, wave, draw, valid))
        if pending_copies:
            rendered = render([w for _, w, _, _ in pending_copies], [d for _, _, d, _ in pending_copies])
            for (spec, _, _, valid), wave in zip(pending_copies, rendered, strict=True):
                waves.setdefault(spec.length, []).append((spec.key, wave, valid))
        return self._write_shard(frontend, waves, records, batch_size, device)

    def _write_shard(self, frontend: Frontend, waves: dict[int, list[tuple[str, np.ndarray, int]]],
                     records: list[dict[str, Any]], batch_size: int, device: torch.device) -> int:
        name = f"{time.time_ns():x}-{socket.gethostname()}-{os.getpid()}"
        final = self.path / "shards" / name
        tmp = self.path / "shards" / f".tmp-{name}"
        encoded = 0
        with reporting_write_errors(final):
            tmp.mkdir(parents=True)
            try:
                for length, group in sorted(waves.items()):
                    feats = _encode(frontend, [w for _, w, _ in group], batch_size, device)
                    encoded += len(group)
                    file = f"w{feats.shape[-1]}.npy"
                    bad = ~np.isfinite(feats).all(axis=(1, 2))
                    np.save(tmp / file, feats.astype(self.dtype))
                    for j, (key, _, valid) in enumerate(group):
                        error = f"front-end output is not finite ({length}-sample window)" if bad[j] else ""
                        records.append(dict(key=key, kind="window", file=file, row=j,
                                            valid_frames=min(feats.shape[-1], frontend.num_frames(valid)),
                                            samples=length, error=error))
                pd.DataFrame(records, columns=["key", "kind", "file", "row", "valid_frames", "samples",
                                               "error"]).to_csv(tmp / "rows.csv", index=False)
                write_json(tmp / "meta.json", dict(
                    version=STORE_VERSION, frontend=frontend.config, dtype=self.dtype,
                    n_features=self.n_features, windows_encoded=encoded, utterances=sum(
                        1 for r in records if r["kind"] == "utterance"), host=socket.gethostname(),
                    pid=os.getpid(), created=time.strftime("%Y-%m-%d %H:%M:%S")))
                os.rename(tmp, final)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
        return encoded

    def _remove_dead_builds(self) -> None:
        host = socket.gethostname()
        for leftover in (self.path / "shards").glob(f".tmp-*-{host}-*"):
            try:
                os.kill(int(leftover.name.rsplit("-", 1)[1]), 0)
            except ProcessLookupError:
                shutil.rmtree(leftover, ignore_errors=True)
            except (ValueError, PermissionError):
                continue

    # -------------------------------------------------------------------------------------- reading
    def dataset(self, manifest: pd.DataFrame, policy: WindowPolicy, train: bool = False, seed: int = 0,
                codec: CodecAugmentConfig | None = None) -> StoreDataset:
        """The rows of ``manifest`` as a dataset; they must have been built (:meth:`build`)."""
        self.refresh()
        manifest = manifest.reset_index(drop=True)
        plan = self.plan(manifest, policy, train, codec)
        entries: list[tuple[list[tuple], list[tuple]] | str] = []
        for i, p in enumerate(plan):
            path = str(manifest["path"].iloc[i])
            if p is None:
                utt = self._utts.get(self._utt_key(utterance_signature(path), policy))
                if utt is None:
                    raise NcdetectError(f"{self.path}: no rows for {path}; build the store first")
                entries.append(utt[1])
                continue
            found = []
            for group in p:
                locs = []
                for w in group:
                    if w.key not in self._rows:
                        raise NcdetectError(f"{self.path}: no row for {path} (window at {w.offset} of "
                                            f"{w.length} samples); build the store first")
                    shard, file, row, valid, error = self._rows[w.key]
                    if error:
                        break
                    locs.append((str(shard / file), row, valid, w.offset))
                else:
                    found.append(locs)
                    continue
                found = f"{path}: {error}"
                break
            entries.append(found if isinstance(found, str) else (found[0], found[1]))
        labels = (label_ids(manifest["label"].astype(str)) if "label" in manifest.columns
                  else np.full(len(manifest), -1, dtype=np.int64))
        frames = int(self.frontend.num_frames(policy.num_samples))
        return StoreDataset(entries, labels, frames, train=train and self.shift_invariant, crops=train,
                            seed=seed, p_copy=float(codec.p) if codec is not None and codec.enabled else 0.0,
                            hop=int(getattr(self.frontend, "hop_samples", 1)))


def _utt_ids(manifest: pd.DataFrame) -> list[str]:
    if "utt_id" in manifest.columns:
        return manifest["utt_id"].astype(str).tolist()
    return [""] * len(manifest)


def _window(
    head: np.ndarray, long: np.ndarray, spec: WindowSpec, policy: WindowPolicy
) -> tuple[np.ndarray, int]:
    """The samples of one window and how many of them are real audio (the rest is tile-padding)."""
    # The evaluation window is read exactly as scoring reads it; the others come from the long read.
    x = head if spec.offset == 0 and spec.length == policy.num_samples else long[spec.offset :]
    return np.ascontiguousarray(tile_pad(x, spec.length), dtype=np.float32), min(len(x), spec.length)


def _encode(frontend: Frontend, waves: list[np.ndarray], batch_size: int, device: torch.device) -> np.ndarray:
    out = []
    with torch.no_grad():
        for i in range(0, len(waves), batch_size):
            batch = torch.from_numpy(np.stack(waves[i : i + batch_size])).to(device)
            out.append(frontend(batch)[:, 0].float().cpu().numpy())
    return np.concatenate(out)


class StoreDataset(EpochMixin, Dataset):
    """Items ``dict(features=Tensor[1, F, frames] | None, label, index, error)`` read from a store.

    Evaluation: the evaluation window. Training (``crops``): with probability ``p_copy`` one codec copy
    (uniformly), else one clean training window (uniformly), drawn per (seed, epoch, index); from a long
    window (``train``, a shift-invariant front-end) a crop of ``frames`` frames at a random frame within
    its real audio. Memory maps are opened lazily in each process, so workers share the page cache.
    """

    def __init__(self, entries: list, labels: np.ndarray, frames: int, train: bool, crops: bool, seed: int,
                 p_copy: float, hop: int = 1) -> None:
        self.entries, self.labels, self.frames, self.hop = entries, labels, int(frames), int(hop)
        self.train, self.crops, self.seed, self.p_copy = bool(train), bool(crops), int(seed), float(p_copy)
        self.errors = [e if isinstance(e, str) else "" for e in entries]
        self._maps: dict[str, np.ndarray] = {}
        self._init_epoch()

    def __len__(self) -> int:
        return len(self.entries)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_maps"] = {}
        return state

    def _array(self, file: str) -> np.ndarray:
        if file not in self._maps:
            try:
                self._maps[file] = np.load(file, mmap_mode="r")
            except (OSError, ValueError) as err:
                raise NcdetectError(f"{file}: unreadable feature store file ({err}); delete its shard "
                                    "folder to rebuild it") from None
        return self._maps[file]

    def choice(self, index: int, epoch: int | None = None) -> tuple[int, int]:
        """``(copy, window)`` an epoch reads for ``index``: copy 0 = a clean window, k = codec copy k."""
        entry = self.entries[index]
        if not self.crops or isinstance(entry, str):
            return 0, 0
        clean, copies = entry
        epoch = self.epoch if epoch is None else epoch
        rng = np.random.default_rng([self.seed, epoch, int(index), _SALT_VARIANT])
        if copies and rng.random() < self.p_copy:
            return 1 + int(rng.integers(len(copies))), 0
        return 0, int(rng.integers(len(clean))) if len(clean) > 1 else 0

    def _crop(self, index: int) -> tuple[tuple[str, int, int, int], int, int]:
        """The row an epoch reads for ``index``, its first frame, and its codec copy (0 = clean)."""
        copy_no, window = self.choice(index)
        entry = self.entries[index]
        loc = entry[1][copy_no - 1] if copy_no else entry[0][window]
        start = 0
        if self.train:
            span = max(0, loc[2] - self.frames)
            start = int(item_rng(self.seed, self.epoch, index).integers(0, span + 1))
        return loc, start, copy_no

    def where(self, index: int) -> tuple[int, int]:
        """``(copy, sample)``: the codec copy (0 = clean) and the utterance's first sample of the item this
        epoch reads for ``index`` (the front-end over ``num_samples`` samples from there gives the item)."""
        loc, start, copy_no = self._crop(int(index))
        return copy_no, loc[3] + start * self.hop

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = int(index)
        label = int(self.labels[index])
        entry = self.entries[index]
        if isinstance(entry, str):
            return dict(features=None, label=label, index=index, error=entry)
        (file, row, _, _), start, _ = self._crop(index)
        source = self._array(file)[row]
        out = np.array(source[:, start : start + self.frames], dtype=np.float32)
        return dict(features=torch.from_numpy(out).unsqueeze(0), label=label, index=index, error=None)
