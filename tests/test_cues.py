"""Trivial-cue features and their EERs, on synthetic corpora where a cue is planted or absent."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from conftest import write_wav
from ncdetect.cues import (
    FEATURES,
    cue_eers,
    features,
    leading_silence,
    rolloff,
    trivial_cue_eers,
    trivial_cue_scores,
)
from ncdetect.data.manifest import read_manifest
from ncdetect.errors import AudioError, NcdetectError

SR = 16_000


def _tone(seconds: float, hz: float = 300.0, amp: float = 0.3) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    return (amp * np.sin(2 * np.pi * hz * t)).astype(np.float32)


def test_features_of_known_signals():
    x = np.concatenate([np.zeros(int(0.3 * SR), np.float32), _tone(1.2, hz=1000.0, amp=0.5)])
    f = features(x)
    assert set(f) == set(FEATURES)
    assert f["duration"] == pytest.approx(1.5)
    # A sine of amplitude a has RMS a/sqrt(2); 1.2 s of it within 1.5 s of file.
    assert f["rms"] == pytest.approx(20 * np.log10(0.5 / np.sqrt(2) * np.sqrt(1.2 / 1.5)), abs=0.05)
    assert f["rolloff95"] == pytest.approx(1000.0, abs=2 * SR / 512)
    assert f["leading_silence"] == pytest.approx(0.3, abs=0.02)


def test_rolloff_follows_bandwidth_and_silence_rule_is_relative():
    rng = np.random.default_rng(0)
    noise = rng.standard_normal(SR)
    wide = rolloff(noise)
    narrow = rolloff(np.convolve(noise, np.ones(8) / 8, mode="same"))  # a crude low-pass
    assert wide > 7000 and narrow < 0.5 * wide
    quiet_start = np.concatenate([1e-3 * _tone(0.5), _tone(0.5)])  # -50 dB: silence by the 40 dB rule
    loud_start = np.concatenate([3e-2 * _tone(0.5), _tone(0.5)])  # -30 dB: counts as sound
    assert leading_silence(quiet_start) == pytest.approx(0.5, abs=0.03)
    assert leading_silence(loud_start) == 0.0


def _corpus(tmp_path, plant: str | None, n: int = 40, seed: int = 0):
    """Bonafide and spoof clips drawn from one distribution, except the planted feature."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(2 * n):
        label = "bonafide" if i < n else "spoof"
        spoof = label == "spoof"
        seconds = rng.uniform(0.8, 1.6) + (1.5 if plant == "duration" and spoof else 0.0)
        lead = rng.uniform(0.05, 0.3) + (0.4 if plant == "leading_silence" and spoof else 0.0)
        amp = rng.uniform(0.05, 0.5) * (0.02 if plant == "rms" and spoof else 1.0)
        hz = rng.uniform(200, 400) * (8.0 if plant == "rolloff95" and spoof else 1.0)
        x = np.concatenate([np.zeros(int(lead * SR), np.float32), _tone(seconds, hz, amp)])
        x = x + (1e-5 * rng.standard_normal(len(x))).astype(np.float32)
        utt = f"u{i:03d}"
        write_wav(tmp_path / "wav" / f"{utt}.wav", x)
        rows.append(dict(utt_id=utt, path=f"wav/{utt}.wav", label=label, dataset="toy",
                         attack="-" if label == "bonafide" else "A01", speaker="s"))
    pd.DataFrame(rows).to_csv(tmp_path / "manifest.csv", index=False)
    return read_manifest(tmp_path / "manifest.csv")


@pytest.mark.parametrize("planted", FEATURES)
def test_planted_cue_is_found_and_others_are_not(tmp_path, planted):
    eers = trivial_cue_eers(_corpus(tmp_path, planted))
    assert set(eers) == set(FEATURES)
    assert eers[planted] < 3.0
    for name, eer in eers.items():
        if name == planted or (planted == "leading_silence" and name == "duration"):
            continue  # a longer lead makes a longer file: that cue is planted too
        assert eer > 25.0, (name, eers)


def test_no_cue_gives_about_fifty(tmp_path):
    eers = trivial_cue_eers(_corpus(tmp_path, None, n=60, seed=3))
    assert all(30.0 < e <= 50.0 for e in eers.values()), eers


def test_orientation_does_not_matter():
    """A feature that is larger for spoofs is as much a cue as one larger for bonafide."""
    rng = np.random.default_rng(0)
    base = pd.DataFrame({"label": ["bonafide"] * 50 + ["spoof"] * 50})
    for name in FEATURES:
        base[name] = rng.normal(size=100)
    up, down = base.copy(), base.copy()
    up.loc[up["label"] == "spoof", "duration"] += 10.0
    down.loc[down["label"] == "spoof", "duration"] -= 10.0
    assert cue_eers(up)["duration"] == cue_eers(down)["duration"] == 0.0


def test_scores_table_and_errors(tmp_path):
    df = _corpus(tmp_path, None, n=3)
    scores = trivial_cue_scores(df)
    assert list(scores.columns) == ["utt_id", "label", "attack", *FEATURES]
    assert len(scores) == 6 and scores["duration"].between(0.8, 2.0).all()
    with pytest.raises(NcdetectError, match="both bonafide and spoof"):
        cue_eers(scores[scores["label"] == "bonafide"])
    broken = df.copy()
    broken.loc[0, "path"] = str(tmp_path / "missing.wav")
    with pytest.raises(AudioError, match=r"missing\.wav"):
        trivial_cue_scores(broken)
