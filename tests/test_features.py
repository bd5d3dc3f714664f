"""The feature store: rows equal the front-end on their samples (for every registered front-end), subsets
read the union's rows, keys follow files and settings, killed builds, float16 and workers."""

from __future__ import annotations

import os
import socket

import numpy as np
import pytest
import torch

from conftest import corpus_with_a_short_and_a_bad_file
from ncdetect.config import CodecAugmentConfig
from ncdetect.data import audio as audio_mod
from ncdetect.data.codec_augment import draw_variant, render, utterance_key
from ncdetect.data.dataset import AudioDataset
from ncdetect.data.features import FeatureStore, WindowPolicy, crop_offsets
from ncdetect.data.frontends import FRONTENDS, LogMel, build_frontend
from ncdetect.data.loader import collate, make_loader
from ncdetect.data.spectral import windows_encoded
from ncdetect.errors import NcdetectError

N = 8_000  # half-second windows; the clips are 0.5-0.9 s, so long windows (12,000) hold some padding
EDGE = 8  # frames of a shift-invariant crop whose analysis window (or delta context) passes an edge


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("storecorpus")
    return corpus_with_a_short_and_a_bad_file(root, 3000, n_bonafide=3, n_spoof=5, seed=7, seconds=0.7)


def _frontend(name: str):
    return build_frontend(name, **({"threads": 1} if name == "whisper" else {}))


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def test_crop_offsets_stay_in_real_audio():
    p = WindowPolicy(1000, crops=3)  # long window 1500
    assert crop_offsets(800, p) == [0] and crop_offsets(1000, p) == [0]
    assert crop_offsets(1200, p) == [0, 100, 200]
    assert crop_offsets(10_000, p) == [0, 250, 500]
    assert crop_offsets(10_000, WindowPolicy(1000, crops=1)) == [0]


@pytest.mark.parametrize("name", sorted(FRONTENDS))
def test_evaluation_rows_are_the_front_end_on_the_scoring_window(name, corpus, tmp_path):
    fe = _frontend(name)
    store = FeatureStore(tmp_path, fe)
    policy = WindowPolicy(N)
    report = store.build(corpus, policy, progress=False)
    assert report == {"windows": len(corpus) - 1, "encoded": len(corpus) - 1}  # the bad file has none
    ds = store.dataset(corpus, policy)
    audio = AudioDataset(corpus, num_samples=N)
    tol = 1e-3 if store.dtype == "float16" else 1e-5
    with torch.no_grad():
        for i in range(len(corpus) - 1):
            assert _rel(ds[i]["features"], fe(audio[i]["wave"][None])[0]) < tol
    bad = ds[len(corpus) - 1]
    assert bad["features"] is None and "not a readable audio file" in bad["error"]
    batch = collate([ds[0], bad, ds[1]])
    assert batch["features"].shape[0] == 2 and len(batch["errors"]) == 1
    # nothing left to do, and an unreadable file is not decoded again
    assert store.build(corpus, policy, progress=False)["encoded"] == 0


@pytest.mark.parametrize("name", sorted(FRONTENDS))
def test_a_training_item_equals_the_front_end_on_its_samples(name, corpus, tmp_path):
    """The exact-window rule, for every registered front-end and codec copies too: the item an epoch
    reads is the front-end over the samples it names (to 1e-3 relative; a shift-invariant front-end's crop
    of a longer encoding away from its edge frames)."""
    fe = _frontend(name)
    codec = CodecAugmentConfig(enabled=True, variants=2, p=0.5)
    store = FeatureStore(tmp_path, fe)
    policy = WindowPolicy(N, crops=3)
    store.build(corpus, policy, train=True, codec=codec, progress=False)
    ds = store.dataset(corpus, policy, train=True, seed=3, codec=codec)
    W = policy.window_samples
    seen: set[tuple[int, int, int]] = set()
    with torch.no_grad():
        for i in range(len(corpus) - 1):
            path, utt = str(corpus.path[i]), str(corpus.utt_id[i])
            long = audio_mod.tile_pad(audio_mod.load_audio(path, duration=W / 16_000), W)
            for epoch in range(4):
                ds.set_epoch(epoch)
                copy_no, start = ds.where(i)
                seen.add((i, copy_no, start))
                item = ds[i]["features"]
                if fe.shift_invariant:
                    base = long
                    if copy_no:
                        base = render([long], [draw_variant(codec, utterance_key(utt, path), copy_no - 1)])[0]
                    ref = fe(torch.from_numpy(np.ascontiguousarray(base[start : start + N]))[None])[0]
                    assert _rel(item[..., EDGE:-EDGE], ref[..., EDGE:-EDGE]) < 1e-3, (i, epoch)
                else:
                    wave = long[start : start + N]
                    if copy_no:
                        wave = render([wave], [draw_variant(codec, utterance_key(utt, path), copy_no - 1)])[0]
                    ref = fe(torch.from_numpy(np.ascontiguousarray(wave))[None])[0]
                    assert _rel(item, ref) < 1e-3, (i, epoch, copy_no, start)
    assert any(c for _, c, _ in seen) and any(s for _, _, s in seen)  # copies and later windows were read
    if not fe.shift_invariant:
        # windows start at the fixed offsets of their utterance, never elsewhere
        for i, _, start in seen:
            samples = len(audio_mod.load_audio(str(corpus.path[i]), duration=W / 16_000))
            assert start in crop_offsets(samples, policy)


def test_a_subset_reads_the_rows_of_the_union(corpus, tmp_path):
    fe = LogMel()
    store = FeatureStore(tmp_path, fe)
    policy = WindowPolicy(N)
    codec = CodecAugmentConfig(enabled=True, variants=2)
    built = store.build(corpus, policy, train=True, codec=codec, progress=False)
    n_ok = len(corpus) - 1
    assert built == {"windows": 3 * n_ok, "encoded": 3 * n_ok}  # one long window and two copies each
    before = windows_encoded()
    subset = corpus.iloc[[5, 1, 3]]
    again = FeatureStore(tmp_path, LogMel())  # another process, the same identity
    assert again.path == store.path
    report = again.build(subset, policy, train=True, codec=codec, progress=False)
    assert report == {"windows": 9, "encoded": 0}
    assert windows_encoded() == before  # the front-end did not run
    a = store.dataset(corpus, policy, train=True, seed=1, codec=codec)
    b = again.dataset(subset, policy, train=True, seed=1, codec=codec)
    # the same rows; the crop draws follow the item's index in its own manifest
    for j, i in enumerate([5, 1, 3]):
        (fa, ra, *_), (fb, rb, *_) = a.entries[i][0][0], b.entries[j][0][0]
        assert (fa, ra) == (fb, rb)


def test_keys_follow_files_settings_and_identity(corpus, tmp_path):
    policy = WindowPolicy(N)
    store = FeatureStore(tmp_path, LogMel())
    assert store.path == FeatureStore(tmp_path, LogMel()).path
    assert store.path != FeatureStore(tmp_path, LogMel(n_mels=40)).path
    assert store.path != FeatureStore(tmp_path, LogMel(), dtype="float16").path
    store.build(corpus.iloc[:3], policy, progress=False)
    assert store.build(corpus.iloc[:3], WindowPolicy(N + 160), progress=False)["encoded"] == 3
    assert store.build(corpus.iloc[:3], WindowPolicy(N, trim_silence=True), progress=False)["encoded"] == 3
    path = corpus.path[0]
    st = os.stat(path)
    try:
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # the file changed: a new row
        assert store.build(corpus.iloc[:3], policy, progress=False)["encoded"] == 1
    finally:
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    with pytest.raises(NcdetectError, match="build the store first"):
        store.dataset(corpus, policy)


def test_a_killed_build_keeps_finished_shards_and_leaves_no_partial_one(corpus, tmp_path, monkeypatch):
    import ncdetect.data.features as features

    class Exploding(LogMel):
        calls = 0

        def forward(self, wave):
            Exploding.calls += 1
            if Exploding.calls > 1:
                raise KeyboardInterrupt  # as a user's Ctrl-C mid-build
            return super().forward(wave)

    monkeypatch.setattr(features, "BUILD_BATCH", 4)
    policy = WindowPolicy(N)
    store = FeatureStore(tmp_path, Exploding())
    with pytest.raises(KeyboardInterrupt):
        store.build(corpus, policy, batch_size=4, progress=False)
    shards = store.path / "shards"
    assert len(list(shards.iterdir())) == 1 and not list(shards.glob(".tmp-*"))  # one batch finished
    # a leftover of a process killed with SIGKILL: a temporary shard of a dead pid
    dead = shards / f".tmp-0-{socket.gethostname()}-999999999"
    dead.mkdir()
    fresh = FeatureStore(tmp_path, LogMel())
    assert fresh.path == store.path
    assert fresh.build(corpus, policy, batch_size=4, progress=False)["encoded"] == len(corpus) - 1 - 4
    assert not dead.exists()
    # a damaged row file is refused with a message naming it, not a numpy traceback
    ds = fresh.dataset(corpus, policy)
    file = ds.entries[0][0][0][0]
    with open(file, "wb") as f:
        f.write(b"garbage")
    with pytest.raises(NcdetectError, match=r"w\d+\.npy"):
        fresh.dataset(corpus, policy)[0]


def test_float16_store_and_workers(corpus, tmp_path):
    policy = WindowPolicy(N)
    s32, s16 = FeatureStore(tmp_path, LogMel()), FeatureStore(tmp_path, LogMel(), dtype="float16")
    s32.build(corpus, policy, train=True, progress=False)
    s16.build(corpus, policy, train=True, num_workers=2, progress=False)
    a, b = s32.dataset(corpus, policy, train=True), s16.dataset(corpus, policy, train=True)
    assert np.load(b.entries[0][0][0][0], mmap_mode="r").dtype == np.float16
    for i in range(len(corpus) - 1):
        assert torch.max(torch.abs(a[i]["features"] - b[i]["features"])) < 0.01
    a[0]  # open a memory map in the parent first: it is not pickled into the workers
    assert a.__getstate__()["_maps"] == {}
    loader = make_loader(a, batch_size=4, shuffle=True, num_workers=2)
    assert sum(len(batch["index"]) for batch in loader) == len(corpus) - 1
