"""Shared fixtures: small synthetic corpora written to disk in manifest form.

Bonafide clips are harmonic tones with vibrato and breath noise; spoof clips carry a generator-specific
spectral artefact. The classes are learnable in a few epochs, which keeps training tests fast.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch
from hypothesis import HealthCheck, settings

torch.set_num_threads(1)

SR = 16_000

# Hypothesis profiles. `make test` (the default, "ci"): the same examples on every run and machine, so the
# same code always gets the same verdict; no example database is read or written. `make fuzz`
# (HYPOTHESIS_PROFILE=fuzz): every property with FUZZ_FACTOR times its examples and a fresh random seed;
# failures are kept in .hypothesis/ (git-ignored) and replayed first on the next fuzz run. A failure that
# fuzzing finds becomes an explicit @example in the test, so the seeded run checks it from then on.
FUZZ_FACTOR = 25
settings.register_profile(
    "ci", derandomize=True, database=None, deadline=None, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "fuzz", derandomize=False, deadline=None, print_blob=True, max_examples=100 * FUZZ_FACTOR,
    suppress_health_check=[HealthCheck.too_slow],
)
HYPOTHESIS_PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "ci")
settings.load_profile(HYPOTHESIS_PROFILE)


def property_settings(max_examples: int) -> settings:
    """Settings of a property test: ``max_examples`` under `make test`, FUZZ_FACTOR times as many under
    `make fuzz`. No deadline and no too-slow health check: both are wall-clock limits, which a loaded
    shared machine trips for reasons unrelated to the code."""
    factor = FUZZ_FACTOR if HYPOTHESIS_PROFILE == "fuzz" else 1
    return settings(
        max_examples=max_examples * factor, deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    )


@pytest.hookimpl(trylast=True)  # after hypothesis' plugin has marked its tests
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if HYPOTHESIS_PROFILE != "fuzz":
        return
    # The hang guards were sized for the seeded example counts.
    for item in items:
        marker = item.get_closest_marker("timeout")
        if marker is not None and marker.args and item.get_closest_marker("hypothesis") is not None:
            item.add_marker(pytest.mark.timeout(marker.args[0] * FUZZ_FACTOR), append=False)


def synth_utterance(
    rng: np.random.Generator, label: str, attack: str = "-", seconds: float = 1.0
) -> np.ndarray:
    n = int(seconds * SR)
    t = np.arange(n) / SR
    f0 = rng.uniform(100, 220)
    vibrato = 1 + 0.02 * np.sin(2 * np.pi * rng.uniform(4, 6) * t)
    phase = 2 * np.pi * np.cumsum(f0 * vibrato) / SR
    harmonics = sum(np.sin(k * phase) / k for k in range(1, 12))
    x = 0.3 * harmonics + 0.02 * rng.standard_normal(n)
    if label == "spoof":
        code = sum(map(ord, attack)) % 7
        buzz = np.sin(2 * np.pi * (2500 + 400 * code) * t)
        x = 0.8 * x + 0.25 * buzz + 0.05 * rng.standard_normal(n)
    x = x / np.max(np.abs(x)) * rng.uniform(0.3, 0.8)
    return x.astype(np.float32)


def write_wav(path: Path, x: np.ndarray, sr: int = SR) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), x, sr)
    return path


def make_corpus(
    root: Path,
    n_bonafide: int = 12,
    n_spoof: int = 24,
    attacks: tuple[str, ...] = ("A01", "A02"),
    dataset: str = "toy",
    seed: int = 0,
    seconds: float = 1.0,
) -> Path:
    """Write a small corpus of WAV files and its manifest (``root/manifest.csv``, relative paths)."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n_bonafide + n_spoof):
        label = "bonafide" if i < n_bonafide else "spoof"
        attack = "-" if label == "bonafide" else attacks[i % len(attacks)]
        utt = f"{dataset}_{i:04d}"
        dur = seconds * rng.uniform(0.7, 1.3)
        write_wav(root / "wav" / f"{utt}.wav", synth_utterance(rng, label, attack, dur))
        rows.append(
            dict(utt_id=utt, path=f"wav/{utt}.wav", label=label, dataset=dataset, attack=attack,
                 speaker=f"spk{i % 4}")
        )
    manifest = root / "manifest.csv"
    pd.DataFrame(rows).to_csv(manifest, index=False)
    return manifest


def resume_after_epoch_1(cfg, manifest: Path, root: Path, monkeypatch: pytest.MonkeyPatch) -> dict:
    """Train ``cfg`` on ``manifest`` into ``root/whole``, then again into ``root/crashed``, roll the second
    back to its epoch-1 checkpoint (as if it had crashed during epoch 2) and resume it. Asserts that both
    end with the same weights, bit for bit; returns the epoch-1 checkpoint's tensors."""
    import json

    from safetensors.torch import load_file

    from ncdetect import train as train_mod

    whole, crashed, saved = root / "whole", root / "crashed", {}
    train_mod.train(cfg, manifest, whole, progress=False)
    real_save = train_mod.save_checkpoint

    def keep_first(run_dir, tensors, meta):
        if meta["epoch"] == 1:
            saved["state"] = ({k: v.clone() for k, v in tensors.items()}, json.loads(json.dumps(meta)))
        return real_save(run_dir, tensors, meta)

    monkeypatch.setattr(train_mod, "save_checkpoint", keep_first)
    train_mod.train(cfg, manifest, crashed, progress=False)
    monkeypatch.undo()
    for name in ("metrics.json", "model.safetensors"):
        (crashed / name).unlink()
    train_mod.save_checkpoint(crashed, *saved["state"])
    assert train_mod.load_checkpoint(crashed)[1]["epoch"] == 1
    train_mod.train(cfg, manifest, crashed, resume=True, progress=False)
    a, b = load_file(whole / "model.safetensors"), load_file(crashed / "model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    return saved["state"][0]


def corpus_with_a_short_and_a_bad_file(root: Path, short_samples: int, **corpus_kwargs):
    """A toy corpus (``make_corpus``) as a DataFrame plus two rows: ``short``, a sine of
    ``short_samples`` samples (shorter than a window), and ``bad``, a text file named .wav."""
    from ncdetect.data.manifest import read_manifest

    manifest = read_manifest(make_corpus(root, **corpus_kwargs))
    short = root / "wav" / "short.wav"
    sf.write(str(short), (np.sin(np.arange(short_samples) / 5) * 0.5).astype(np.float32), 16_000,
             subtype="FLOAT")
    bad = root / "wav" / "bad.wav"
    bad.write_text("not audio")
    extra = pd.DataFrame([
        dict(utt_id="short", path=str(short), label="bonafide", dataset="toy", attack="-", speaker="s"),
        dict(utt_id="bad", path=str(bad), label="spoof", dataset="toy", attack="A01", speaker="s"),
    ])
    return pd.concat([manifest, extra], ignore_index=True)


@pytest.fixture(scope="session")
def toy_manifest(tmp_path_factory) -> Path:
    """36 one-second clips: 12 bonafide, 24 spoof over attacks A01 and A02."""
    return make_corpus(tmp_path_factory.mktemp("toy"))


@pytest.fixture(scope="session")
def run_dir(tmp_path_factory, toy_manifest, toy_dev_manifest) -> Path:
    """A tiny trained run (2 epochs, width 8) shared read-only by the scoring, embedding, detect and
    export tests."""
    from ncdetect.config import load_config
    from ncdetect.train import train

    settings = ["data.num_samples=16000", "data.batch_size=8", "data.num_workers=0", "model.kwargs.width=8",
                "model.embedding_dim=32", "optim.epochs=2", "train.threads=1"]
    run = tmp_path_factory.mktemp("tiny_run") / "run"
    train(load_config(None, settings), toy_manifest, run, dev_manifest=toy_dev_manifest, progress=False)
    return run


@pytest.fixture(scope="session")
def calibrated_run(tmp_path_factory, run_dir, toy_dev_manifest) -> Path:
    """A copy of the tiny run, calibrated on the toy dev set (``run_dir`` itself stays uncalibrated)."""
    import shutil

    from ncdetect.calibration import calibrate_run

    run = tmp_path_factory.mktemp("calibrated_run") / "run"
    shutil.copytree(run_dir, run)
    calibrate_run(run, toy_dev_manifest)
    return run


@pytest.fixture(scope="session")
def toy_dev_manifest(tmp_path_factory) -> Path:
    return make_corpus(tmp_path_factory.mktemp("toy_dev"), n_bonafide=8, n_spoof=16, seed=1, dataset="toydev")


# The only fields of results.json allowed to differ between runs: timings, and the work counts of the feature
# store (a killed stage's encoding is lost, so a resumed experiment encodes, and counts, less or more).
TIMING_FIELDS = {"created", "train_seconds", "windows_encoded", "encoded_per_distinct"}


def comparable_results(value, out: Path):
    """``results.json`` without its timing fields and with the output folder replaced, for comparing runs."""
    if isinstance(value, dict):
        return {k: comparable_results(v, out) for k, v in value.items() if k not in TIMING_FIELDS}
    if isinstance(value, list):
        return [comparable_results(v, out) for v in value]
    if isinstance(value, str):
        return value.replace(str(out), "<OUT>")
    return value


def naive_kcenter(x, k, start):
    """Greedy k-center (Gonzalez) in plain loops: the reference the sampling tests compare with."""
    x = x.astype(np.float64)
    picks = [start]
    dist = np.linalg.norm(x - x[start], axis=1)
    for _ in range(k - 1):
        i = int(np.argmax(dist))
        picks.append(i)
        dist = np.minimum(dist, np.linalg.norm(x - x[i], axis=1))
    return picks
