"""AudioDataset, collate, the bad-file policy and the loader (the feature store: tests/test_features.py)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch

from conftest import corpus_with_a_short_and_a_bad_file
from ncdetect.data import audio as audio_mod
from ncdetect.data.dataset import AudioDataset, write_skipped
from ncdetect.data.loader import EpochShuffleSampler, collate, make_loader, raise_or_skip
from ncdetect.errors import NcdetectError

N = 4_000  # a quarter-second window keeps the tests fast; the clips are 0.7-1.3 s


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("dscorpus")
    # one short clip (shorter than the window) and one unreadable file
    return corpus_with_a_short_and_a_bad_file(root, 1500, n_bonafide=4, n_spoof=6, seed=5)


def _full(path: str) -> np.ndarray:
    return audio_mod.load_audio(path)


def _where(window: np.ndarray, full: np.ndarray) -> int:
    """Start of ``window`` inside ``full`` (exact match), or -1."""
    hits = np.flatnonzero(np.isclose(full, window[0], atol=0))
    for h in hits:
        if h + len(window) <= len(full) and np.array_equal(full[h : h + len(window)], window):
            return int(h)
    return -1


def test_eval_items_are_first_window_tile_padded(corpus):
    ds = AudioDataset(corpus, num_samples=N)
    assert len(ds) == len(corpus)
    item = ds[0]
    assert set(item) == {"wave", "label", "index", "error"}
    assert item["error"] is None and item["index"] == 0 and item["label"] == 1  # bonafide
    assert item["wave"].dtype == torch.float32 and item["wave"].shape == (N,)
    np.testing.assert_array_equal(item["wave"].numpy(), _full(corpus.path[0])[:N])
    short = ds[len(corpus) - 2]
    x = _full(corpus.path.iloc[-2])
    np.testing.assert_array_equal(short["wave"].numpy(), np.tile(x, 3)[:N])
    np.testing.assert_array_equal(ds[3]["wave"].numpy(), ds[3]["wave"].numpy())


def test_bad_file_is_returned_not_raised(corpus):
    ds = AudioDataset(corpus, num_samples=N, train=True)
    item = ds[len(corpus) - 1]
    assert item["wave"] is None and item["label"] == 0
    assert item["error"].startswith(corpus.path.iloc[-1] + ": ")
    assert "not a readable audio file" in item["error"]


def test_train_crops_are_windows_of_the_file_and_reproducible(corpus):
    ds = AudioDataset(corpus, num_samples=N, train=True, seed=7)
    full = _full(corpus.path[1])
    starts = []
    for epoch in range(6):
        ds.set_epoch(epoch)
        w = ds[1]["wave"].numpy()
        start = _where(w, full)
        assert start >= 0, "a training crop must be a contiguous window of the clip"
        starts.append(start)
        np.testing.assert_array_equal(w, ds[1]["wave"].numpy())  # same (seed, epoch, index)
    assert len(set(starts)) >= 4  # epochs differ
    ds.set_epoch(2)
    again = AudioDataset(corpus, num_samples=N, train=True, seed=7)
    again.set_epoch(2)
    np.testing.assert_array_equal(again[1]["wave"].numpy(), ds[1]["wave"].numpy())
    other_seed = AudioDataset(corpus, num_samples=N, train=True, seed=8)
    other_seed.set_epoch(2)
    assert not np.array_equal(other_seed[1]["wave"].numpy(), ds[1]["wave"].numpy())


def test_train_reads_only_the_window(corpus, monkeypatch):
    calls = []

    decode = audio_mod._decode

    def spy(f, path, sample_rate, offset, duration):
        calls.append((offset, duration))
        return decode(f, path, sample_rate, offset, duration)

    # Every read (load_audio, and load_crop for training windows) decodes through _decode.
    monkeypatch.setattr(audio_mod, "_decode", spy)
    AudioDataset(corpus, num_samples=N, train=True)[0]
    AudioDataset(corpus, num_samples=N, train=False)[0]
    assert calls[0][1] == pytest.approx(N / 16_000) and calls[0][0] >= 0
    assert calls[1] == (0.0, pytest.approx(N / 16_000))


def test_trim_silence_option(tmp_path):
    x = np.concatenate([np.zeros(8000), 0.5 * np.sin(np.arange(3000) / 3), np.zeros(8000)]).astype(np.float32)
    path = tmp_path / "padded.wav"
    sf.write(str(path), x, 16_000, subtype="FLOAT")
    df = pd.DataFrame({"path": [str(path)], "label": ["bonafide"]})
    plain = AudioDataset(df, num_samples=3000)[0]["wave"].numpy()
    trimmed = AudioDataset(df, num_samples=3000, trim_silence=True)[0]["wave"].numpy()
    assert not np.any(plain)  # the first 3000 samples are silence
    assert np.mean(np.abs(trimmed) > 0) > 0.8  # trimming works in 10 ms hops, so a frame may remain
    item = AudioDataset(df, num_samples=3000, trim_silence=True, train=True)[0]
    assert item["error"] is None and np.any(item["wave"].numpy())


def test_collate_drops_bad_items_and_lists_them(corpus):
    ds = AudioDataset(corpus, num_samples=N)
    items = [ds[i] for i in (0, len(corpus) - 1, 2)]
    batch = collate(items)
    assert batch["wave"].shape == (2, N)
    assert batch["label"].tolist() == [1, 1] and batch["index"].tolist() == [0, 2]
    assert len(batch["errors"]) == 1 and batch["errors"][0][0] == len(corpus) - 1
    empty = collate([ds[len(corpus) - 1]])
    assert empty["wave"].numel() == 0 and empty["label"].numel() == 0 and len(empty["errors"]) == 1


def test_raise_or_skip_and_write_skipped(corpus, tmp_path):
    errors = [(len(corpus) - 1, f"{corpus.path.iloc[-1]}: not a readable audio file (x)")]
    skipped: list = []
    with pytest.raises(NcdetectError, match=r"bad\.wav: not a readable audio file"):
        raise_or_skip(errors, skip_bad=False, skipped=skipped)
    assert skipped == []
    raise_or_skip(errors, skip_bad=True, skipped=skipped)
    raise_or_skip(errors, skip_bad=True, skipped=skipped)  # the same file in a second epoch
    out = write_skipped(skipped, tmp_path, manifest=corpus)
    df = pd.read_csv(out, keep_default_na=False)
    assert list(df.columns) == ["index", "utt_id", "path", "reason"]
    assert len(df) == 1 and df.utt_id[0] == "bad" and df.path[0] == corpus.path.iloc[-1]
    assert df.reason[0] == "not a readable audio file (x)"
    no_manifest = pd.read_csv(write_skipped(skipped, tmp_path / "b"), keep_default_na=False)
    assert no_manifest.path[0] == corpus.path.iloc[-1]
    assert len(pd.read_csv(write_skipped([], tmp_path / "c"))) == 0


def _epoch_waves(loader, ds, epoch):
    ds.set_epoch(epoch)
    out = {}
    for batch in loader:
        for i, w in zip(batch["index"].tolist(), batch["wave"], strict=True):
            out[i] = w.clone()
    return out


def test_crops_do_not_depend_on_workers_and_reach_persistent_workers(corpus):
    good = corpus.iloc[:-1].reset_index(drop=True)
    ds0 = AudioDataset(good, num_samples=N, train=True, seed=1)
    ds2 = AudioDataset(good, num_samples=N, train=True, seed=1)
    l0 = make_loader(ds0, batch_size=3, shuffle=True, num_workers=0, seed=4)
    l2 = make_loader(ds2, batch_size=3, shuffle=True, num_workers=2, seed=4)
    assert l2.persistent_workers
    seen = []
    for epoch in (0, 1):
        a, b = _epoch_waves(l0, ds0, epoch), _epoch_waves(l2, ds2, epoch)
        assert a.keys() == b.keys() == set(range(len(good)))
        for i in a:
            torch.testing.assert_close(a[i], b[i], rtol=0, atol=0)
        seen.append(a)
    # the second epoch really used epoch 1 inside the persistent workers
    assert any(not torch.equal(seen[0][i], seen[1][i]) for i in seen[0])


def test_epoch_shuffle_sampler_is_a_function_of_seed_and_epoch(corpus):
    ds = AudioDataset(corpus, num_samples=N)
    s = EpochShuffleSampler(ds, seed=3)
    ds.set_epoch(0)
    e0 = list(s)
    ds.set_epoch(1)
    e1 = list(s)
    ds.set_epoch(0)
    assert list(s) == e0 and sorted(e0) == list(range(len(ds))) and e0 != e1
    assert list(EpochShuffleSampler(ds, seed=4)) != e0
