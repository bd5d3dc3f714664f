"""The Whisper encoder in PyTorch (``backend: torch``): equal to CTranslate2 on real speech, layer by layer;
the stacked layers, the learned layer weighting, partial fine-tuning and its gradients.

Runs on the tiny.en of the extra ``ncdetect[whisper]``, which ``make test`` installs, and espeak-ng speech.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from ncdetect.config import load_config
from ncdetect.data import whisper
from ncdetect.data.frontends import build_frontend
from ncdetect.data.whisper_torch import _dequantised, load_encoder_weights, parse_layers, read_variables
from ncdetect.errors import ConfigError

SR = 16_000
CONFIGS = Path(__file__).parents[1] / "src/ncdetect/configs"


@pytest.fixture(scope="module")
def speech(tmp_path_factory) -> np.ndarray:
    """About 3 s of espeak-ng speech at 16 kHz."""
    import librosa

    exe = shutil.which("espeak-ng")
    if exe is None:
        pytest.skip("espeak-ng not found (the Debian package espeak-ng; `make test` installs it)")
    wav = tmp_path_factory.mktemp("speech") / "speech.wav"
    subprocess.run([exe, "-v", "en-us", "-w", str(wav),
                    "The quick brown fox jumps over the lazy dog, then rests by the river."],
                   check=True, capture_output=True)
    x, sr = sf.read(str(wav), dtype="float32")
    return librosa.resample(x, orig_sr=sr, target_sr=SR).astype(np.float32)


@pytest.fixture(scope="module")
def mel(speech) -> torch.Tensor:
    return whisper.WhisperLogMel()(torch.from_numpy(speech[: 3 * SR])[None])


def _ctranslate2_float32(path: Path, mel: torch.Tensor) -> np.ndarray:
    import ctranslate2

    model = ctranslate2.models.Whisper(str(path), compute_type="float32", intra_threads=1)
    return np.asarray(model.encode(ctranslate2.StorageView.from_array(mel.numpy()), to_cpu=True))


def _close(ours: np.ndarray, ref: np.ndarray) -> None:
    """Equal to 1e-3 relative: the largest error within 1e-3 of the largest value, and the whole
    difference within 1e-3 of the whole output (Frobenius norms)."""
    assert ours.shape == ref.shape
    assert np.abs(ours - ref).max() <= 1e-3 * np.abs(ref).max()
    assert np.linalg.norm(ours - ref) <= 1e-3 * np.linalg.norm(ref)


def test_every_layer_equals_ctranslate2_on_real_speech(mel, tmp_path, monkeypatch):
    monkeypatch.setenv("NCDETECT_CACHE", str(tmp_path))
    path = whisper.bundled_model_dir()
    total = whisper.encoder_layers(path)
    encoder = load_encoder_weights(path).eval()
    with torch.no_grad():
        ours = encoder(mel, list(range(total + 1))).numpy()
    assert ours.shape == (1, total + 1, mel.shape[-1] // 2, 384)
    # The last layer against the encoder output, the hidden ones against the cut models of `layers: N`.
    _close(ours[:, total], _ctranslate2_float32(path, mel))
    for n in range(1, total):
        _close(ours[:, n], _ctranslate2_float32(whisper.hidden_layer_model(path, n), mel))
    assert np.abs(ours[:, 1] - ours[:, total]).mean() > 0.1  # the layers differ: the check has teeth


def test_torch_backend_front_end_matches_the_ctranslate2_one(speech, tmp_path, monkeypatch):
    monkeypatch.setenv("NCDETECT_CACHE", str(tmp_path))
    wave = torch.from_numpy(np.stack([speech[:24_000], speech[8_000:32_000]]))
    for layers in (None, 2):
        ct = build_frontend("whisper", threads=1, compute_type="float32", layers=layers)(wave).numpy()
        ours = build_frontend("whisper", threads=1, backend="torch", layers=layers)(wave).numpy()
        assert ours.shape == ct.shape == (2, 1, 384, 75)
        _close(ours, ct)


def test_stacked_layers_in_one_pass(speech):
    wave = torch.from_numpy(speech[None, :24_000])
    fe = build_frontend("whisper", backend="torch", layers=[3, 0, 1])
    out = fe(wave)
    assert fe.n_features == out.shape[2] == 3 * 384 and out.shape == (1, 1, 1152, fe.num_frames(24_000))
    assert not out.requires_grad and fe.exportable
    every = build_frontend("whisper", backend="torch", layers="all")(wave)
    for k, layer in enumerate([3, 0, 1]):  # blocks of 384 features, in the order asked for
        block = slice(384 * layer, 384 * (layer + 1))
        torch.testing.assert_close(out[:, :, 384 * k : 384 * (k + 1)], every[:, :, block])
    assert build_frontend("whisper", backend="torch", layers="all").n_features == 5 * 384


def test_layer_options_are_checked():
    assert parse_layers(None, 4) == [4] and parse_layers("all", 4) == [0, 1, 2, 3, 4]
    assert parse_layers(2, 4) == [2] and parse_layers([0, 4], 4) == [0, 4]
    for bad in (0, 5, True, "first", [], [1, 1], [0, 5], [1.5]):
        with pytest.raises(ConfigError, match="layers must be"):
            parse_layers(bad, 4)
    with pytest.raises(ConfigError, match="need backend: torch"):
        build_frontend("whisper", layers="all")
    with pytest.raises(ConfigError, match="finetune needs backend: torch"):
        build_frontend("whisper", layers=1, finetune=1)
    with pytest.raises(ConfigError, match="finetune <= 1"):
        build_frontend("whisper", backend="torch", layers=1, finetune=2)
    with pytest.raises(ConfigError, match="backend must be one of ctranslate2, torch"):
        build_frontend("whisper", backend="onnx")


def test_quantised_weights_are_descaled():
    q = np.array([[127, -64], [10, 0]], dtype=np.int8)
    scale = np.array([127.0, 5.0], dtype=np.float32)  # per output row, as CTranslate2 writes int8
    out = _dequantised({"a/weight": q, "a/weight_scale": scale, "a/bias": np.ones(2, np.float16)})
    assert set(out) == {"a/weight", "a/bias"} and out["a/bias"].dtype == np.float32
    np.testing.assert_allclose(out["a/weight"], [[1.0, -64 / 127], [2.0, 0.0]])


def test_one_reader_walks_model_bin_for_both_backends(tmp_path):
    """The variable table that the torch backend loads from is the one that `layers: N` cuts: records
    back to back from the header to the aliases; a damaged file is a one-line error naming it."""
    from ncdetect.data.whisper_torch import scan_model_bin

    model_bin = whisper.bundled_model_dir() / "model.bin"
    table = scan_model_bin(model_bin)
    assert table.variables[0].start == table.header + 4 and table.variables[-1].end == table.aliases
    assert all(a.end == b.start for a, b in zip(table.variables, table.variables[1:], strict=False))
    assert whisper.encoder_layers(whisper.bundled_model_dir()) == 4
    data = model_bin.read_bytes()
    for name, damaged in (("cut.bin", data[: table.variables[3].data + 10]),
                          ("old.bin", (4).to_bytes(4, "little") + data[4:200])):
        (tmp_path / name).write_bytes(damaged)
        with pytest.raises(ConfigError, match=rf"{name}: (not a readable|CTranslate2 model format 4)"):
            read_variables(tmp_path / name)


def _model(overrides: list[str]):
    from ncdetect.runs import build_frontend as build_fe
    from ncdetect.runs import build_model

    cfg = load_config(CONFIGS / "whisper_attn_mlp.yaml", ["frontend.kwargs.backend=torch", *overrides])
    fe = build_fe(cfg)
    return fe, build_model(cfg, fe.n_features, fe)


def test_layer_weighting_feeds_the_head():
    fe, model = _model(["frontend.kwargs.layers=all"])
    assert model.layer_weights is not None and model.layer_weights.names == [0, 1, 2, 3, 4]
    torch.testing.assert_close(model.layer_weights.weights(), torch.full((5,), 0.2))
    feats = fe(torch.randn(2, 16_000) * 0.1)
    # Weight on one layer only: the model sees exactly that layer's block.
    with torch.no_grad():
        model.layer_weights.logits.copy_(torch.tensor([0.0, 0.0, 60.0, 0.0, 0.0]))
    torch.testing.assert_close(model.layer_weights(feats), feats[:, :, 2 * 384 : 3 * 384])
    model.train()
    model(feats).sum().backward()
    assert model.layer_weights.logits.grad is not None
    _, single = _model(["frontend.kwargs.layers=1"])
    assert single.layer_weights is None and single.encoder is None


def test_finetune_trains_the_stem_and_the_first_layers_only():
    fe, model = _model(["frontend.kwargs.layers=[1,2,3]", "frontend.kwargs.finetune=2"])
    wave = torch.randn(2, 16_000) * 0.1
    feats = fe(wave)
    assert feats.shape == (2, 1, 80, 100) and fe.n_features == 80  # the front-end keeps only the log-mel
    enc = model.encoder.encoder
    assert enc.n_layers == 3  # no layer after the last one read
    assert {n.rsplit(".", 1)[0] for n, p in enc.named_parameters() if p.requires_grad} == {
        "conv1", "conv2", *(f"layers.{i}.{m}" for i in (0, 1) for m in
                            ("attn_norm", "qkv", "out", "ffn_norm", "fc1", "fc2"))}
    model.train()
    model(feats).sum().backward()
    grads = {n: p.grad for n, p in enc.named_parameters()}
    assert grads["conv1.weight"].abs().sum() > 0 and grads["layers.1.fc2.weight"].abs().sum() > 0
    assert grads["layers.2.fc2.weight"] is None and grads["final_norm.weight"] is None
    # Before training the model's encoder is the frozen one: the same features as the torch front-end.
    frozen = build_frontend("whisper", backend="torch", layers=[1, 2, 3])
    with torch.no_grad():
        torch.testing.assert_close(model.encoder(feats), frozen(wave), atol=1e-4, rtol=1e-4)


# --- training, resume and export of a fine-tuned encoder ------------------------------------------------

FINETUNE = ["data.num_samples=16000", "data.batch_size=8", "model.kwargs.hidden=32", "model.embedding_dim=16",
            "model.kwargs.attention_dim=16", "optim.epochs=2", "train.threads=1", "frontend.kwargs.threads=1",
            "frontend.kwargs.backend=torch", "frontend.kwargs.layers=[1,2]", "frontend.kwargs.finetune=1",
            "optim.frontend_lr=0.0001"]


@pytest.fixture(scope="module")
def finetune_run(tmp_path_factory) -> Path:
    from conftest import make_corpus
    from ncdetect.train import train

    root = tmp_path_factory.mktemp("finetune")
    train_m = make_corpus(root / "train", n_bonafide=8, n_spoof=8, seed=3)
    dev_m = make_corpus(root / "dev", n_bonafide=4, n_spoof=4, seed=4, dataset="dev")
    cfg = load_config(CONFIGS / "whisper_attn_mlp.yaml", FINETUNE)
    train(cfg, train_m, root / "run", dev_manifest=dev_m, progress=False)
    return root / "run"


def test_a_finetuned_run_holds_its_encoder_and_layer_weights(finetune_run):
    import json

    from safetensors.torch import load_file

    saved = load_file(str(finetune_run / "model.safetensors"))
    start = load_encoder_weights(whisper.bundled_model_dir(), depth=2).state_dict()
    assert {k for k in saved if k.startswith("encoder.encoder.")} == {f"encoder.encoder.{k}" for k in start}
    changed = {k for k in start if not torch.equal(saved[f"encoder.encoder.{k}"], start[k])}
    assert "conv1.weight" in changed and "layers.0.fc1.weight" in changed  # trained
    assert not any(k.startswith(("layers.1.", "final_norm.")) for k in changed)  # frozen
    metrics = json.loads((finetune_run / "metrics.json").read_text())
    mix = metrics["layer_weights"]
    assert mix["layers"] == [1, 2] and abs(sum(mix["weights"]) - 1) < 1e-5 and mix["weights"] != [0.5, 0.5]
    from ncdetect.runs import load_run

    run = load_run(finetune_run)  # rebuilt from config.yaml and the weights: the fine-tuned encoder
    assert torch.equal(run.model.encoder.encoder.conv1.weight, saved["encoder.encoder.conv1.weight"])
    # The feature store holds the frozen part only, the log-mel; the trained encoder runs at every step.
    stored = list((finetune_run / "features").glob("whisper-*/float16/shards/*/w*.npy"))
    assert stored and all(np.load(f, mmap_mode="r").shape[1] == 80 for f in stored)


def test_finetuning_resumes_bit_for_bit(tmp_path, toy_manifest, monkeypatch):
    from conftest import resume_after_epoch_1

    cfg = load_config(CONFIGS / "whisper_attn_mlp.yaml", FINETUNE)
    checkpoint = resume_after_epoch_1(cfg, toy_manifest, tmp_path, monkeypatch)
    assert any(k.startswith("model.encoder.") for k in checkpoint)  # the fine-tuned encoder is resumed


def _onnx_matches(run_dir: Path, out: Path) -> None:
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime not installed (extra ncdetect[onnx])")
    from ncdetect.export import export_onnx
    from ncdetect.runs import load_run

    export_onnx(run_dir, out)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    session = ort.InferenceSession(str(out), opts, providers=["CPUExecutionProvider"])
    run = load_run(run_dir)
    rng = np.random.default_rng(0)
    for batch, samples in [(2, 16_000), (3, 24_000), (1, 9_000)]:  # both axes dynamic
        wave = (0.1 * rng.standard_normal((batch, samples))).astype(np.float32)
        logits, score = session.run(None, {"waveform": wave})
        ref = run.logits(torch.from_numpy(wave)).numpy()
        np.testing.assert_allclose(logits, ref, atol=1e-4, rtol=1e-4)
        np.testing.assert_allclose(score, ref[:, 1] - ref[:, 0], atol=1e-4, rtol=1e-4)


def test_a_finetuned_run_exports_to_one_onnx_graph(finetune_run, tmp_path):
    _onnx_matches(finetune_run, tmp_path / "finetuned.onnx")


def test_a_frozen_torch_backend_run_with_every_layer_exports(tmp_path, toy_manifest):
    import json

    from ncdetect.train import train

    settings = [s for s in FINETUNE if "finetune" not in s and "layers" not in s and "frontend_lr" not in s]
    cfg = load_config(CONFIGS / "whisper_attn_mlp.yaml", [*settings, "frontend.kwargs.layers=all",
                                                          "optim.epochs=1"])
    train(cfg, toy_manifest, tmp_path / "run", progress=False)
    stored = list((tmp_path / "run" / "features").glob("whisper-*/float16/shards/*/w*.npy"))
    assert stored and all(np.load(f, mmap_mode="r").shape[1] == 5 * 384 for f in stored)  # every layer
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["layer_weights"]["layers"] == [0, 1, 2,
                                                                                                    3, 4]
    _onnx_matches(tmp_path / "run", tmp_path / "frozen.onnx")


def test_the_encoder_and_the_layer_weights_get_their_own_learning_rates():
    from ncdetect.train import _param_groups

    cfg = load_config(CONFIGS / "whisper_attn_mlp.yaml", [
        "frontend.kwargs.backend=torch", "frontend.kwargs.layers=[0,1]", "frontend.kwargs.finetune=1",
        "optim.frontend_lr=0.0001", "optim.layer_weights_lr=0.05"])
    _, model = _model(["frontend.kwargs.layers=[0,1]", "frontend.kwargs.finetune=1"])
    groups = _param_groups(model, cfg)
    ids = {id(p): g.get("base_lr") for g in groups for p in g["params"]}
    assert ids[id(model.layer_weights.logits)] == 0.05
    assert ids[id(model.encoder.encoder.conv1.weight)] == 0.0001
    assert ids[id(model.head.weight)] is None  # the model's own groups follow optim.lr
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert set(ids) == trainable and len(ids) == sum(len(g["params"]) for g in groups)


def test_layer_weights_lr_drives_the_weighting_in_training(tmp_path, toy_manifest):
    """Two otherwise equal 1-epoch runs: at optim.lr the few softmax logits hardly move; at their own
    higher rate they move by far more (Adam steps each logit by about its group's rate)."""
    import json

    from ncdetect.train import train

    settings = [s for s in FINETUNE if "finetune" not in s and "layers" not in s and "frontend_lr" not in s]
    spread = {}
    for name, extra in (("shared", []), ("own", ["optim.layer_weights_lr=0.2"])):
        cfg = load_config(CONFIGS / "whisper_attn_mlp.yaml", [*settings, "frontend.kwargs.layers=[0,1,4]",
                                                              "optim.epochs=1", *extra])
        train(cfg, toy_manifest, tmp_path / name, progress=False)
        weights = json.loads((tmp_path / name / "metrics.json").read_text())["layer_weights"]["weights"]
        spread[name] = max(weights) - min(weights)
    assert spread["own"] > 10 * spread["shared"] and spread["own"] > 0.01
