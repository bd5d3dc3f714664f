"""Codec and channel augmentation: seeded draws, what each stage does to the audio, the K copies in the
feature store, one copy per epoch, and training audio only.

The codec round trips need ffmpeg with libmp3lame, libopus and libgsm (Debian's ffmpeg, which `make test`
installs for the demo corpus); those tests skip, naming it, where it is absent.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from conftest import synth_utterance
from ncdetect.config import CodecAugmentConfig, load_config
from ncdetect.data import codec_augment as ca
from ncdetect.data.dataset import AudioDataset
from ncdetect.data.features import FeatureStore, WindowPolicy
from ncdetect.data.frontends import LogMel
from ncdetect.data.manifest import read_manifest
from ncdetect.errors import ConfigError, NcdetectError

SR = 16_000
needs_ffmpeg = pytest.mark.skipif(shutil.which("ffmpeg") is None,
                                  reason="ffmpeg not found (Debian's ffmpeg; `make test` installs it)")


def _speech(seed: int = 0, seconds: float = 1.0) -> np.ndarray:
    return synth_utterance(np.random.default_rng(seed), "bonafide", seconds=seconds)


def _band_energy(x: np.ndarray, lo: float, hi: float) -> float:
    spec = np.abs(np.fft.rfft(x)) ** 2
    freqs = np.fft.rfftfreq(len(x), 1 / SR)
    return float(spec[(freqs >= lo) & (freqs < hi)].sum() / spec.sum())


def test_draws_are_seeded_by_seed_utterance_and_copy():
    cfg = CodecAugmentConfig(enabled=True, p_filter=1.0, p_noise=1.0, p_packet_loss=1.0, p_codec=1.0)
    key = ca.utterance_key("utt_1", "a.wav")
    assert key == ca.utterance_key("utt_1", "elsewhere.wav")  # the id names the utterance, not the path
    first = [ca.draw_variant(cfg, key, k) for k in range(8)]
    assert first == [ca.draw_variant(cfg, key, k) for k in range(8)]
    assert len(set(first)) == 8
    assert first != [ca.draw_variant(cfg.model_copy(update={"seed": 1}), key, k) for k in range(8)]
    many = [ca.draw_variant(cfg, ca.utterance_key(f"u{i}", ""), 0) for i in range(300)]
    assert {v.codec for v in many} == set(ca.CODECS)
    assert {v.kbps for v in many if v.codec == "mp3"} <= set(ca.MP3_KBPS)
    assert all(6 <= v.kbps <= 24 for v in many if v.codec == "opus")
    assert all(cfg.snr_min <= v.snr_db <= cfg.snr_max and 0.01 <= v.loss_rate <= cfg.max_loss for v in many)
    none = CodecAugmentConfig(p_codec=0, p_filter=0, p_noise=0, p_packet_loss=0)
    assert ca.draw_variant(none, key, 0) == ca.Variant(seed=ca.draw_variant(none, key, 0).seed)


def test_packet_loss_filter_and_noise():
    x = _speech(1, 2.0)
    lost = ca.packet_loss(x, 0.3, np.random.default_rng(0))
    packets = lost[: len(x) // 320 * 320].reshape(-1, 320)
    changed = (packets != x[: packets.size].reshape(-1, 320)).any(axis=1)
    assert 0.1 < changed.mean() < 0.4 and (lost == x).mean() > 0.5
    low = ca.band_filter(x, "lowpass", 2500.0)
    assert _band_energy(low, 4000, 8000) < 0.01 * max(_band_energy(x, 4000, 8000), 1e-12) + 1e-6
    high = ca.band_filter(x, "highpass", 500.0)
    assert _band_energy(high, 0, 150) < 0.01 * _band_energy(x, 0, 150)
    noisy = ca.add_noise(x, 10.0, 1.0, np.random.default_rng(0))
    snr = 10 * np.log10(np.sum(x**2) / np.sum((noisy - x) ** 2))
    assert abs(snr - 10.0) < 0.01


@needs_ffmpeg
@pytest.mark.parametrize("codec,kbps", [("mp3", 8), ("mp3", 64), ("opus", 6), ("opus", 24), ("gsm", None),
                                        ("g722", None), ("mulaw", None), ("alaw", None)])
def test_codec_round_trip(codec, kbps):
    x = _speech(2, 1.0)
    (y,) = ca.codec_roundtrip([x], codec, kbps)
    assert y.shape == x.shape and y.dtype == np.float32 and np.isfinite(y).all()
    assert not np.array_equal(y, x) and np.abs(y).max() > 0.05
    if codec in ("gsm", "mulaw", "alaw"):  # narrowband: carried at 8 kHz, nothing above 4 kHz
        assert _band_energy(y, 4100, 8000) < 1e-3 < _band_energy(x, 4100, 8000)


@needs_ffmpeg
def test_render_is_deterministic_and_keeps_the_peak():
    cfg = CodecAugmentConfig(enabled=True)
    signals = [_speech(i, 0.8) for i in range(6)]
    variants = [ca.draw_variant(cfg, ca.utterance_key(f"u{i}", ""), 0) for i in range(6)]
    a, b = ca.render(signals, variants), ca.render(signals, variants)
    for x, y, z, v in zip(signals, a, b, variants, strict=True):
        np.testing.assert_array_equal(y, z)
        assert y.shape == x.shape
        assert np.isclose(np.abs(y).max(), np.abs(x).max(), rtol=1e-5)
        assert np.array_equal(y, x) == (v == ca.Variant(seed=v.seed))


def test_codec_augmentation_needs_the_feature_cache():
    with pytest.raises(ConfigError, match=r"augment\.codec needs data\.feature_cache"):
        load_config(None, ["augment.codec=true"])
    cfg = load_config(None, ["augment.codec.enabled=true", "data.feature_cache=true",
                             "augment.codec.variants=2"])
    assert cfg.augment.codec.enabled and cfg.augment.codec.variants == 2
    with pytest.raises(ConfigError, match="codecs"):
        load_config(None, ["augment.codec.codecs=[amr]"])


def _copies(ds, i: int) -> np.ndarray:
    """The stored codec copies of utterance ``i`` of a store dataset, ``(K, F, frames)``."""
    return np.stack([np.load(file, mmap_mode="r")[row] for file, row, _, _ in ds.entries[i][1]])


@needs_ffmpeg
def test_store_renders_k_copies_once_and_training_draws_one_per_epoch(tmp_path, toy_manifest):
    df = read_manifest(toy_manifest).iloc[:10]
    # Two codecs keep it quick: one pair of ffmpeg calls per codec setting and batch.
    cfg = CodecAugmentConfig(enabled=True, variants=3, p=0.75, codecs=["gsm", "mulaw"])
    policy = WindowPolicy(8000)
    store = FeatureStore(tmp_path / "a", LogMel())
    # log-mel is shift-invariant: one long window and its 3 copies per utterance
    assert store.build(df, policy, train=True, codec=cfg, progress=False) == {"windows": 40, "encoded": 40}
    assert store.build(df, policy, train=True, codec=cfg, progress=False)["encoded"] == 0
    train = store.dataset(df, policy, train=True, seed=0, codec=cfg)
    variants = np.stack([_copies(train, i) for i in range(10)])
    clean = np.stack([np.load(train.entries[i][0][0][0])[train.entries[i][0][0][1]] for i in range(10)])
    assert variants.shape == (10, 3, *clean.shape[1:]) and np.isfinite(variants).all()
    assert not np.allclose(variants[:, 0], clean)
    # A rebuild elsewhere, with the manifest in another order, renders the same copies.
    other = FeatureStore(tmp_path / "b", LogMel())
    other.build(df.iloc[::-1], policy, train=True, codec=cfg, progress=False)
    again = other.dataset(df.iloc[::-1], policy, train=True, seed=0, codec=cfg)
    np.testing.assert_array_equal(np.stack([_copies(again, i) for i in range(10)])[::-1], variants)

    drawn = np.array([[train.choice(i, epoch)[0] for i in range(10)] for epoch in range(40)])
    assert set(np.unique(drawn)) == {0, 1, 2, 3} and 0.6 < (drawn > 0).mean() < 0.9
    rerun = store.dataset(df, policy, train=True, seed=0, codec=cfg)
    other_seed = store.dataset(df, policy, train=True, seed=1, codec=cfg)
    np.testing.assert_array_equal(drawn, [[rerun.choice(i, e)[0] for i in range(10)] for e in range(40)])
    assert not np.array_equal(drawn, [[other_seed.choice(i, e)[0] for i in range(10)] for e in range(40)])
    epoch = int(np.flatnonzero(drawn[:, 0] > 0)[0])
    train.set_epoch(epoch)
    item = train[0]["features"][0].numpy()
    v = drawn[epoch, 0] - 1
    starts = [s for s in range(clean.shape[2] - train.frames + 1)
              if np.allclose(variants[0, v, :, s : s + train.frames], item)]
    assert starts  # the crop comes from the drawn copy

    assert store.build(df, policy, progress=False) == {"windows": 10, "encoded": 10}  # evaluation windows
    evaluation = store.dataset(df, policy)
    assert all(evaluation.choice(i, e) == (0, 0) for i in range(10) for e in range(5))
    wave = AudioDataset(df, num_samples=8000)[0]["wave"][None]
    torch.testing.assert_close(evaluation[0]["features"], LogMel()(wave)[0])


@needs_ffmpeg
def test_training_augments_the_training_set_only(tmp_path, toy_manifest, toy_dev_manifest):
    from ncdetect.train import train

    cfg = load_config(None, ["data.num_samples=8000", "data.batch_size=8", "data.num_workers=0",
                             "model.kwargs.width=8", "model.embedding_dim=16", "optim.epochs=1",
                             "train.threads=1", "data.feature_cache=true", "augment.codec.enabled=true",
                             "augment.codec.variants=2", "augment.codec.codecs=[alaw]"])
    metrics = train(cfg, toy_manifest, tmp_path / "run", dev_manifest=toy_dev_manifest, progress=False)
    assert metrics["finished"] and metrics["n_dev"] == len(read_manifest(toy_dev_manifest))
    from ncdetect.runs import build_frontend

    store = FeatureStore(tmp_path / "run" / "features", build_frontend(cfg)).refresh()
    train_df, dev_df = read_manifest(toy_manifest), read_manifest(toy_dev_manifest)
    policy = WindowPolicy(8000)
    train_ds = store.dataset(train_df, policy, train=True, codec=cfg.augment.codec)
    assert all(len(train_ds.entries[i][1]) == 2 for i in range(len(train_df)))
    # Only the training manifest has copies; the dev set is scored from its clean evaluation windows.
    with pytest.raises(NcdetectError, match="build the store first"):
        store.dataset(dev_df, policy, train=True, codec=cfg.augment.codec)
    assert len(store.dataset(dev_df, policy)) == len(dev_df)
