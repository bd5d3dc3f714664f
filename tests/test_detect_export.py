"""``ncdetect detect`` (any length, sliding windows, JSON lines, per-file errors) and ONNX export."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from conftest import synth_utterance, write_wav
from ncdetect.cli import app
from ncdetect.data.audio import load_audio, tile_pad
from ncdetect.detect import detect, iter_inputs, window_starts
from ncdetect.errors import NcdetectError
from ncdetect.runs import load_run


@pytest.fixture(scope="module")
def audio_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("audio")
    rng = np.random.default_rng(3)
    write_wav(root / "short.wav", synth_utterance(rng, "bonafide", seconds=0.6))
    write_wav(root / "sub" / "long.flac", synth_utterance(rng, "spoof", "A01", seconds=3.7))
    (root / "notes.txt").write_text("not audio, not an audio extension: ignored")
    (root / "sub" / "broken.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk")
    return root


def test_window_starts():
    assert window_starts(100, 160, 80) == [0]
    assert window_starts(160, 160, 80) == [0]
    assert window_starts(320, 160, 80) == [0, 80, 160]
    assert window_starts(330, 160, 80) == [0, 80, 160, 170]  # the tail gets a window flush with the end
    assert window_starts(1000, 200, 200) == [0, 200, 400, 600, 800]


def test_folders_are_walked_for_audio(audio_dir, tmp_path):
    found = [(p.name, e) for p, e in iter_inputs([audio_dir])]
    assert found == [("short.wav", None), ("broken.wav", None), ("long.flac", None)]
    (tmp_path / "empty").mkdir()
    [(_, error)] = list(iter_inputs([tmp_path / "empty"]))
    assert error and "no audio files" in error


def test_detect_results(run_dir, audio_dir):
    results = {Path(r["path"]).name: r for r in detect([audio_dir, audio_dir / "gone.wav"], run_dir)}
    assert set(results) == {"short.wav", "long.flac", "broken.wav", "gone.wav"}
    assert set(results["broken.wav"]) == {"path", "error"}
    assert results["gone.wav"]["error"] == "file not found"
    run = load_run(run_dir)

    # A short file: one window, tile-padded, exactly what `score` computes.
    short = results["short.wav"]
    wave = tile_pad(load_audio(audio_dir / "short.wav"), 16000)
    logits = run.logits(torch.from_numpy(wave)[None])[0].double()
    assert short["windows"] == 1
    assert short["score"] == pytest.approx(float(logits[1] - logits[0]), abs=1e-5)

    # A long file: the mean of the window logits over windows every half window plus the tail.
    long = results["long.flac"]
    x = load_audio(audio_dir / "sub" / "long.flac")
    starts = window_starts(len(x), 16000, 8000)
    assert long["windows"] == len(starts) == 7
    windows = torch.from_numpy(np.stack([x[s : s + 16000] for s in starts]))
    mean = run.logits(windows).double().mean(dim=0)
    assert long["score"] == pytest.approx(float(mean[1] - mean[0]), abs=1e-5)
    assert long["seconds"] == pytest.approx(3.7, abs=0.01)

    for r in (short, long):
        # Uncalibrated: no probability (a sigmoid of the score would be the probability of nothing).
        assert r["calibrated"] is False and r["probability"] is None and r["llr"] is None
        assert r["prior_spoof"] is None
        assert r["label"] == ("bonafide" if r["score"] > 0 else "spoof") and r["threshold"] == 0.0


def test_detect_window_options_and_threshold(run_dir, audio_dir):
    long = audio_dir / "sub" / "long.flac"
    [r] = list(detect([long], run_dir, window_seconds=2.0, hop_seconds=2.0, threshold="dev-eer"))
    assert r["windows"] == 2  # 0-2 s and the tail 1.7-3.7 s
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert r["threshold"] == metrics["dev_threshold_at_best"]
    assert r["label"] == ("bonafide" if r["score"] > r["threshold"] else "spoof")
    [r] = list(detect([long], run_dir, threshold=1e9))
    assert r["label"] == "spoof"
    with pytest.raises(NcdetectError, match="--threshold"):
        list(detect([long], run_dir, threshold="median"))


def test_detect_cli_prints_json_lines_and_fails_on_errors(run_dir, audio_dir):
    runner = CliRunner()
    result = runner.invoke(app, ["detect", str(audio_dir / "short.wav"), str(audio_dir / "sub"),
                                 "--model", str(run_dir)])
    lines = [json.loads(line) for line in result.stdout.strip().splitlines()]
    assert [Path(r["path"]).name for r in lines] == ["short.wav", "broken.wav", "long.flac"]
    assert "error" in lines[1] and "score" in lines[0] and "score" in lines[2]
    assert result.exit_code == 1
    ok = runner.invoke(app, ["detect", str(audio_dir / "short.wav"), "--model", str(run_dir)])
    assert ok.exit_code == 0 and json.loads(ok.stdout)["label"] in ("bonafide", "spoof")


# --- ONNX ------------------------------------------------------------------------------------------------


def test_onnx_export_matches_pytorch(run_dir, tmp_path):
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime not installed (extra ncdetect[onnx])")
    from ncdetect.export import export_onnx

    out = export_onnx(run_dir, tmp_path / "model.onnx")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    session = ort.InferenceSession(str(out), opts, providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["waveform"]
    assert [o.name for o in session.get_outputs()] == ["logits", "score"]
    run = load_run(run_dir)
    rng = np.random.default_rng(0)
    # Batch and length both differ from the export example (2 x 16000): both axes are dynamic.
    for batch, samples in [(2, 16000), (5, 16000), (1, 40000), (3, 9000)]:
        wave = (0.1 * rng.standard_normal((batch, samples))).astype(np.float32)
        logits, score = session.run(None, {"waveform": wave})
        ref = run.logits(torch.from_numpy(wave)).numpy()
        np.testing.assert_allclose(logits, ref, atol=1e-4)
        np.testing.assert_allclose(score, ref[:, 1] - ref[:, 0], atol=1e-4)


def test_export_cli(run_dir, tmp_path):
    pytest.importorskip("onnx", reason="onnx is not installed (pip install 'ncdetect[onnx]')")
    import onnx

    result = CliRunner().invoke(app, ["export", str(run_dir), "--onnx", str(tmp_path / "m.onnx")])
    assert result.exit_code == 0, result.output
    onnx.checker.check_model(onnx.load(str(tmp_path / "m.onnx")))
