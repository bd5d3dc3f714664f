"""Training: every model family trains, scores and evaluates; loss falls; run-folder rules; balance
options; augmentation; the learning-rate schedule; bad files; no unsafe deserialisation in src/."""

from __future__ import annotations

import itertools
import json
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from ncdetect.config import RawBoostConfig, SpecAugmentConfig, load_config
from ncdetect.data.augment import rawboost, spec_augment
from ncdetect.distributed import DistEnv
from ncdetect.errors import ConfigError, NcdetectError
from ncdetect.train import epoch_batches, lr_at, schedule, train

SRC = Path(__file__).resolve().parents[1] / "src" / "ncdetect"

# 1 s windows, narrow models, no worker processes: each run takes a couple of seconds on one core.
FAST = ["data.num_samples=16000", "data.batch_size=8", "data.num_workers=0", "train.threads=1",
        "model.embedding_dim=32"]
FAMILIES = {
    "tiny_resnet": ["model.kwargs.width=8"],
    "resnet18": ["model.kwargs.width=4", "model.kwargs.stem_stride=2"],
    "convnext_atto": ["model.kwargs.dims=[8, 16, 32, 64]", "model.kwargs.depths=[1, 1, 1, 1]"],
    "lcnn": ["model.kwargs.width=4", "frontend.name=lfcc"],
}


def fast_config(*extra: str, model: str = "tiny_resnet", epochs: int = 2):
    sets = [f"model.name={model}", *FAST, *FAMILIES[model], f"optim.epochs={epochs}", *extra]
    return load_config(None, sets)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_each_family_trains_scores_and_evaluates(family, tmp_path, toy_manifest, toy_dev_manifest):
    from ncdetect.evaluate import evaluate_scores
    from ncdetect.runs import load_run
    from ncdetect.score import score_manifest

    run = tmp_path / "run"
    cfg = fast_config(model=family)
    metrics = train(cfg, toy_manifest, run, dev_manifest=toy_dev_manifest, progress=False)
    for name in ("model.safetensors", "config.yaml", "metrics.json", "train.log"):
        assert (run / name).is_file(), name
    assert not (run / "checkpoint").exists()  # removed once the run is finished
    saved = json.loads((run / "metrics.json").read_text())
    assert saved == json.loads(json.dumps(metrics))
    assert saved["finished"] and saved["n_train"] == 36 and saved["skipped"] == 0
    assert len(saved["epochs"]) == 2
    for rec in saved["epochs"]:
        assert set(rec) >= {"epoch", "train_loss", "train_acc", "dev_eer", "lr", "seconds", "samples_per_s"}
        assert math.isfinite(rec["train_loss"]) and 0 <= rec["dev_eer"] <= 100 and rec["samples_per_s"] > 0
    assert saved["best_epoch"] in (1, 2)
    assert saved["dev_eer_at_best"] == min(r["dev_eer"] for r in saved["epochs"])
    # config.yaml is the complete resolved config
    assert yaml_load(run / "config.yaml") == fast_config(model=family).to_dict()
    assert "epoch 2/2" in (run / "train.log").read_text()

    loaded = load_run(run)
    assert loaded.config.model.name == family
    df = score_manifest(run, toy_dev_manifest, tmp_path / "scores.csv", progress=False)
    result = evaluate_scores(df, n_bootstrap=0)
    assert 0 <= result["eer"] <= 100
    # The model kept is the best epoch's: its dev EER is reproduced by scoring the dev set again.
    assert result["eer"] == pytest.approx(saved["dev_eer_at_best"], abs=1e-6)


def yaml_load(path: Path) -> dict:
    import yaml

    return yaml.safe_load(path.read_text())


def test_loss_goes_down_and_dev_eer_improves(tmp_path, toy_manifest, toy_dev_manifest):
    cfg = fast_config("optim.lr=0.003", "train.patience=null", epochs=5)
    metrics = train(cfg, toy_manifest, tmp_path / "run", dev_manifest=toy_dev_manifest, progress=False)
    losses = [e["train_loss"] for e in metrics["epochs"]]
    assert losses[-1] < losses[0]
    assert metrics["dev_eer_at_best"] < 50.0


def test_without_dev_the_last_epoch_is_kept(tmp_path, toy_manifest):
    run = tmp_path / "run"
    metrics = train(fast_config(epochs=2), toy_manifest, run, progress=False)
    assert metrics["selected_by"] == "last" and metrics["best_epoch"] == 2
    assert metrics["dev_eer_at_best"] is None and metrics["epochs"][-1]["dev_eer"] is None


def test_existing_run_needs_resume_or_force(tmp_path, toy_manifest):
    run = tmp_path / "run"
    cfg = fast_config(epochs=1)
    first = train(cfg, toy_manifest, run, progress=False)
    weights = load_file(run / "model.safetensors")
    with pytest.raises(NcdetectError, match=r"--resume.*--force"):
        train(cfg, toy_manifest, run, progress=False)
    # --resume on a finished run returns it unchanged
    assert train(cfg, toy_manifest, run, resume=True, progress=False) == json.loads(json.dumps(first))
    # --force starts over, keeping files that a run does not write
    (run / "notes.txt").write_text("mine")
    train(fast_config("train.seed=1", epochs=1), toy_manifest, run, force=True, progress=False)
    assert (run / "notes.txt").read_text() == "mine"
    again = load_file(run / "model.safetensors")
    assert any(not torch.equal(weights[k], again[k]) for k in weights)


def test_batch_larger_than_the_corpus_is_a_config_error(tmp_path, toy_manifest):
    with pytest.raises(ConfigError, match="global batch"):
        train(fast_config("data.batch_size=64", epochs=1), toy_manifest, tmp_path / "run", progress=False)


@pytest.mark.parametrize("balance", ["sampler", "none"])
def test_balance_options_train(balance, tmp_path, toy_manifest):
    cfg = fast_config(f"loss.balance={balance}", epochs=1)
    metrics = train(cfg, toy_manifest, tmp_path / "r", progress=False)
    assert math.isfinite(metrics["epochs"][0]["train_loss"])


def test_augmented_and_cached_training(tmp_path, toy_manifest, toy_dev_manifest):
    aug = train(fast_config("augment.specaugment=true", "augment.rawboost=true", epochs=1), toy_manifest,
                tmp_path / "aug", progress=False)
    assert math.isfinite(aug["epochs"][0]["train_loss"])
    cached = train(fast_config("data.feature_cache=true", "augment.specaugment=true", epochs=2), toy_manifest,
                   tmp_path / "cached", dev_manifest=toy_dev_manifest, progress=False)
    assert list((tmp_path / "cached" / "features").glob("logmel-*/float32/shards/*/meta.json"))
    assert all(math.isfinite(e["train_loss"]) for e in cached["epochs"])


def test_early_stopping(tmp_path, toy_manifest, toy_dev_manifest):
    # A learning rate this small leaves the dev EER where it is, so patience 1 stops after one epoch
    # without improvement.
    cfg = fast_config("optim.lr=1e-9", "optim.warmup_epochs=0", "train.patience=1", epochs=6)
    metrics = train(cfg, toy_manifest, tmp_path / "run", dev_manifest=toy_dev_manifest, progress=False)
    assert metrics["stopped_early"]
    n = len(metrics["epochs"])
    assert n < 6 and n == metrics["best_epoch"] + 1


def test_unreadable_training_file_stops_or_is_skipped(tmp_path, toy_manifest):
    df = pd.read_csv(toy_manifest)
    bad = tmp_path / "broken.wav"
    bad.write_bytes(b"RIFF0000WAVEnot really audio")
    df["path"] = [str(toy_manifest.parent / p) for p in df["path"]]
    df.loc[3, "path"] = str(bad)
    manifest = tmp_path / "m.csv"
    df.to_csv(manifest, index=False)
    with pytest.raises(NcdetectError, match=re.escape(str(bad))):
        train(fast_config(epochs=1), manifest, tmp_path / "a", progress=False)
    metrics = train(fast_config(epochs=1), manifest, tmp_path / "b", skip_bad=True, progress=False)
    skipped = pd.read_csv(tmp_path / "b" / "skipped.csv")
    assert skipped["path"].tolist() == [str(bad)] and skipped["utt_id"].tolist() == [df.loc[3, "utt_id"]]
    assert metrics["skipped"] == 1


def test_missing_class_is_an_error(tmp_path, toy_manifest):
    df = pd.read_csv(toy_manifest)
    df["path"] = [str(toy_manifest.parent / p) for p in df["path"]]
    only_spoof = tmp_path / "spoof.csv"
    df[df["label"] == "spoof"].to_csv(only_spoof, index=False)
    with pytest.raises(NcdetectError, match="no bonafide"):
        train(fast_config(epochs=1), only_spoof, tmp_path / "run", progress=False)


# --- pieces of the loop -------------------------------------------------------------------------------


def test_epoch_batches_depend_only_on_seed_and_epoch():
    labels = np.array([1] * 10 + [0] * 90)
    env = DistEnv()
    a = epoch_batches(labels, 3, 7, "weighted", 16, env, 1)
    assert a == epoch_batches(labels, 3, 7, "weighted", 16, env, 1)
    assert a != epoch_batches(labels, 4, 7, "weighted", 16, env, 1)
    assert a != epoch_batches(labels, 3, 8, "weighted", 16, env, 1)
    flat = [i for b in a for i in b]
    assert len(a) == 100 // 16 and all(len(b) == 16 for b in a)
    assert len(set(flat)) == len(flat)  # a permutation: no repeats


def test_sampler_balances_the_classes():
    labels = np.array([1] * 100 + [0] * 900)
    batches = epoch_batches(labels, 0, 0, "sampler", 50, DistEnv(), 1)
    drawn = labels[[i for b in batches for i in b]]
    assert 0.45 < drawn.mean() < 0.55  # about half bonafide, against 10% in the data


def test_a_step_budget_cuts_the_last_epoch_short(tmp_path, toy_manifest):
    # 36 clips in batches of 8: 4 steps per epoch, so 6 steps are one epoch and half of the next
    metrics = train(fast_config("optim.steps=6", epochs=50), toy_manifest, tmp_path / "run", progress=False)
    assert metrics["steps"] == 6 and metrics["steps_per_epoch"] == 4
    assert [e["samples"] for e in metrics["epochs"]] == [32, 16]
    assert metrics["stopped_early"] is False and metrics["best_epoch"] == 2
    without = train(fast_config(epochs=2), toy_manifest, tmp_path / "epochs", progress=False)
    assert without["steps"] == 8 and [e["samples"] for e in without["epochs"]] == [32, 32]


def test_the_schedule_spans_the_step_budget():
    from ncdetect.config import OptimConfig

    by_epochs = schedule(OptimConfig(epochs=3, warmup_epochs=0.5), 10)
    assert (by_epochs.total_steps, by_epochs.warmup_steps, by_epochs.epochs) == (30, 5, 3)
    by_steps = schedule(OptimConfig(epochs=3, warmup_epochs=0.5, steps=120, warmup_steps=20), 10)
    assert (by_steps.total_steps, by_steps.warmup_steps, by_steps.epochs) == (120, 20, 12)
    assert schedule(OptimConfig(steps=121), 10).epochs == 13  # a partial last epoch is one more


def test_lr_schedule_warms_up_then_decays_to_the_floor():
    lrs = [lr_at(s, 100, 10, 1e-3, 1e-5) for s in range(100)]
    assert lrs[0] == pytest.approx(1e-4) and lrs[9] == pytest.approx(1e-3)
    assert all(b <= a for a, b in itertools.pairwise(lrs[10:]))
    assert lrs[-1] == pytest.approx(1e-5, rel=0.05)
    assert lr_at(0, 100, 0, 1e-3, 1e-5) == pytest.approx(1e-3)


def test_rawboost_is_seeded_and_genuine():
    rng = np.random.default_rng(0)
    t = np.arange(16000) / 16000
    x = (0.5 * np.sin(2 * np.pi * 220 * t) + 0.01 * rng.standard_normal(16000)).astype(np.float32)
    for algos in ([1], [2], [3], [1, 2, 3]):
        cfg = RawBoostConfig(enabled=True, algos=algos)
        y1 = rawboost(x, np.random.default_rng(5), cfg)
        y2 = rawboost(x, np.random.default_rng(5), cfg)
        y3 = rawboost(x, np.random.default_rng(6), cfg)
        assert y1.dtype == np.float32 and y1.shape == x.shape and np.isfinite(y1).all()
        assert np.array_equal(y1, y2) and not np.array_equal(y1, y3)
        assert not np.allclose(y1, x, atol=1e-3)
        assert np.abs(y1).max() == pytest.approx(np.abs(x).max(), rel=1e-5)  # loudness is not a cue


def test_rawboost_additive_noise_respects_the_snr():
    x = np.sin(2 * np.pi * 300 * np.arange(32000) / 16000).astype(np.float32)
    cfg = RawBoostConfig(enabled=True, algos=[3], snr_min=20, snr_max=20)
    y = rawboost(x, np.random.default_rng(1), cfg)
    # Undo the final peak normalisation, then measure the added noise.
    scale = np.dot(y, x) / np.dot(x, x)
    noise = y / scale - x
    snr = 10 * np.log10(np.sum(x.astype(np.float64) ** 2) / np.sum(noise.astype(np.float64) ** 2))
    assert snr == pytest.approx(20, abs=1.0)


def test_spec_augment_masks_bands_per_utterance():
    feats = torch.randn(3, 1, 40, 100)
    cfg = SpecAugmentConfig(enabled=True, freq_masks=2, freq_width=8, time_masks=2, time_width=20)
    out = spec_augment(feats, torch.tensor([0, 1, 2]), epoch=0, seed=0, cfg=cfg)
    again = spec_augment(feats, torch.tensor([0, 1, 2]), epoch=0, seed=0, cfg=cfg)
    assert torch.equal(out, again)
    changed = out != feats
    assert changed.any() and (~changed).any()
    # Masked cells hold the utterance's mean; whole rows (frequency) or columns (time) are masked.
    for b in range(3):
        rows, cols = changed[b, 0].all(dim=1), changed[b, 0].all(dim=0)
        assert (changed[b, 0] == (rows[:, None] | cols[None, :])).all()
        assert torch.allclose(out[b, 0][changed[b, 0]], feats[b].mean().expand(int(changed[b, 0].sum())))


def test_amp_choice():
    from ncdetect.train import _amp_dtype

    cpu = torch.device("cpu")
    assert _amp_dtype("auto", cpu) is None and _amp_dtype("off", cpu) is None
    assert _amp_dtype("bf16", cpu) is torch.bfloat16
    with pytest.raises(ConfigError, match="fp16 needs CUDA"):
        _amp_dtype("fp16", cpu)


def test_no_unsafe_deserialisation_in_src():
    offenders = []
    for path in SRC.rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        for m in re.finditer(r"torch\.load\(([^()]*(?:\([^()]*\)[^()]*)*)\)", text):
            if "weights_only=True" not in m.group(1):
                offenders.append(f"{path.name}: {m.group(0)}")
        if re.search(r"^\s*(import pickle|from pickle|import cPickle|import dill)", text, re.M):
            offenders.append(f"{path.name}: imports pickle")
        if "allow_pickle=True" in text:
            offenders.append(f"{path.name}: allow_pickle=True")
    assert not offenders, offenders


def test_bad_inputs_fail_before_the_run_folder_is_touched(tmp_path, toy_manifest):
    from ncdetect.errors import ProtocolError

    run = tmp_path / "run"
    with pytest.raises(ProtocolError, match="not found"):
        train(fast_config(epochs=1), tmp_path / "nope.csv", run, progress=False)
    with pytest.raises(ConfigError, match="widht"):
        train(fast_config("model.kwargs.widht=3", epochs=1), toy_manifest, run, progress=False)
    assert not run.exists()  # so the corrected command needs no --force
