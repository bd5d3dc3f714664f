"""Scoring and embedding a manifest with a run; loading run folders safely (ModelFileError cases)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from ncdetect.config import load_config
from ncdetect.data.audio import first_window, load_audio
from ncdetect.data.manifest import read_manifest
from ncdetect.embed import embed_manifest
from ncdetect.errors import ModelFileError, NcdetectError
from ncdetect.runs import load_run, load_weights, save_weights
from ncdetect.score import score_manifest


def _reference(run_dir: Path, manifest: Path) -> tuple[np.ndarray, np.ndarray, pd.DataFrame]:
    """Embeddings and logits computed directly: first window of each file, tile-padded, one at a time."""
    run = load_run(run_dir)
    df = read_manifest(manifest)
    embs, logits = [], []
    with torch.inference_mode():
        for path in df["path"]:
            wave = torch.from_numpy(first_window(load_audio(path), run.num_samples))[None]
            feats = run.frontend(wave)
            embs.append(run.model.embed(feats)[0].numpy())
            logits.append(run.model(feats)[0].numpy())
    return np.stack(embs), np.stack(logits), df


def _with_bad_files(tmp_path: Path, manifest: Path) -> tuple[Path, list[str]]:
    df = read_manifest(manifest)
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk")
    df.loc[2, "path"] = str(broken)
    df.loc[5, "path"] = str(tmp_path / "missing.wav")
    out = tmp_path / "with_bad.csv"
    df.to_csv(out, index=False)
    return out, [df.loc[2, "utt_id"], df.loc[5, "utt_id"]]


# --- score -----------------------------------------------------------------------------------------


def test_score_csv_columns_order_and_sign(run_dir, toy_dev_manifest, tmp_path):
    out = tmp_path / "scores.csv"
    df = score_manifest(run_dir, toy_dev_manifest, out, batch_size=5, progress=False)
    written = pd.read_csv(out, dtype={"utt_id": str, "label": str, "attack": str}, keep_default_na=False)
    assert list(written.columns) == ["utt_id", "score", "label", "attack"]
    _, logits, manifest = _reference(run_dir, toy_dev_manifest)
    assert written["utt_id"].tolist() == manifest["utt_id"].tolist()
    assert written["label"].tolist() == manifest["label"].tolist()
    assert written["attack"].tolist() == manifest["attack"].tolist()
    # score = logit(bonafide) - logit(spoof): class 1 minus class 0 of the model's own output
    np.testing.assert_allclose(written["score"], logits[:, 1] - logits[:, 0], atol=1e-5)
    np.testing.assert_allclose(df["score"], written["score"], atol=1e-9)
    # higher = bonafide: the trained model ranks bonafide above spoof on average
    assert written[written.label == "bonafide"].score.mean() > written[written.label == "spoof"].score.mean()


def test_score_skip_bad(run_dir, toy_dev_manifest, tmp_path):
    manifest, bad_ids = _with_bad_files(tmp_path, toy_dev_manifest)
    with pytest.raises(NcdetectError, match=re.escape(str(tmp_path / "broken.wav"))):
        score_manifest(run_dir, manifest, tmp_path / "a" / "scores.csv", progress=False)
    assert not (tmp_path / "a" / "scores.csv").exists()
    df = score_manifest(run_dir, manifest, tmp_path / "b" / "scores.csv", skip_bad=True, progress=False)
    assert len(df) == 22 and not set(bad_ids) & set(df["utt_id"])
    skipped = pd.read_csv(tmp_path / "b" / "skipped.csv")
    assert skipped["utt_id"].tolist() == bad_ids
    assert "missing.wav" in skipped["path"].iloc[1] and skipped["reason"].str.len().min() > 0


def test_score_cli(run_dir, toy_dev_manifest, tmp_path):
    out = tmp_path / "cli_scores.csv"
    cmd = [sys.executable, "-m", "ncdetect.cli", "score", str(run_dir), str(toy_dev_manifest),
           "--out", str(out), "--batch-size", "7"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert len(pd.read_csv(out)) == 24


# --- embed -----------------------------------------------------------------------------------------


def test_embed_folder(run_dir, toy_manifest, tmp_path):
    out = tmp_path / "emb"
    embed_manifest(run_dir, toy_manifest, out, batch_size=7, progress=False)
    assert {"embeddings.npy", "index.csv", "head.npz"} <= {p.name for p in out.iterdir()}
    emb = np.load(out / "embeddings.npy")
    ref_emb, ref_logits, manifest = _reference(run_dir, toy_manifest)
    assert emb.dtype == np.float32 and emb.shape == (36, 32)
    np.testing.assert_allclose(emb, ref_emb, atol=1e-5)

    index = pd.read_csv(out / "index.csv", dtype=str, keep_default_na=False)
    assert list(index.columns) == [*manifest.columns, "score", "source"]
    assert index.drop(columns=["score", "source"]).equals(manifest)  # same rows, same order
    assert set(index["source"]) == {run_dir.name}
    np.testing.assert_allclose(index["score"].astype(float), ref_logits[:, 1] - ref_logits[:, 0], atol=1e-5)

    with np.load(out / "head.npz") as head:
        model = load_run(run_dir).model
        assert head["W"].shape == (2, 32) and head["b"].shape == (2,)
        np.testing.assert_array_equal(head["W"], model.head.weight.detach().numpy())
        np.testing.assert_array_equal(head["b"], model.head.bias.detach().numpy())
        # the head applied to the stored embeddings gives the logits
        np.testing.assert_allclose(emb @ head["W"].T + head["b"], ref_logits, atol=1e-4)


def test_embed_skip_bad(run_dir, toy_manifest, tmp_path):
    manifest, bad_ids = _with_bad_files(tmp_path, toy_manifest)
    with pytest.raises(NcdetectError, match=r"broken\.wav"):
        embed_manifest(run_dir, manifest, tmp_path / "a", progress=False)
    out = tmp_path / "b"
    embed_manifest(run_dir, manifest, out, skip_bad=True, progress=False)
    emb = np.load(out / "embeddings.npy")
    index = pd.read_csv(out / "index.csv", dtype=str, keep_default_na=False)
    assert emb.shape[0] == len(index) == 34 and not set(bad_ids) & set(index["utt_id"])
    assert pd.read_csv(out / "skipped.csv")["utt_id"].tolist() == bad_ids
    # the rows that remain still line up with their embeddings
    ref_emb, _, full = _reference(run_dir, toy_manifest)
    keep = ~full["utt_id"].isin(bad_ids).to_numpy()
    np.testing.assert_allclose(emb, ref_emb[keep], atol=1e-5)


# --- run folders -------------------------------------------------------------------------------------


def _copy_run(run_dir: Path, dst: Path) -> Path:
    dst.mkdir()
    for name in ("config.yaml", "model.safetensors", "metrics.json"):
        (dst / name).write_bytes((run_dir / name).read_bytes())
    return dst


def test_load_run_logits(run_dir):
    run = load_run(run_dir)
    wave = torch.randn(3, 16000) * 0.1
    logits = run.logits(wave)
    assert logits.shape == (3, 2)
    assert torch.allclose(run.score(wave), logits[:, 1] - logits[:, 0])
    assert not run.model.training


def test_pickle_weights_are_refused(run_dir, tmp_path):
    run = _copy_run(run_dir, tmp_path / "pickled")
    state = load_run(run_dir).model.state_dict()
    torch.save(state, run / "model.safetensors")  # a torch.save zip archive under the expected name
    with pytest.raises(ModelFileError, match="pickle"):
        load_run(run)
    import pickle

    (run / "model.safetensors").write_bytes(pickle.dumps({"a": 1}, protocol=4))
    with pytest.raises(ModelFileError, match="pickle"):
        load_run(run)


def test_truncated_weights_are_refused(run_dir, tmp_path):
    run = _copy_run(run_dir, tmp_path / "truncated")
    data = (run / "model.safetensors").read_bytes()
    (run / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFileError, match="truncated or corrupt"):
        load_run(run)
    (run / "model.safetensors").write_bytes(data[:5])
    with pytest.raises(ModelFileError, match="not a safetensors file"):
        load_run(run)


def test_shape_mismatch_is_refused(run_dir, tmp_path):
    run = _copy_run(run_dir, tmp_path / "shapes")
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    cfg["model"]["embedding_dim"] = 16
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    with pytest.raises(ModelFileError, match=r"shape .* expects"):
        load_run(run)


def test_architecture_mismatch_is_refused(run_dir, tmp_path):
    run = _copy_run(run_dir, tmp_path / "arch")
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    cfg["model"] = {"name": "resnet18", "embedding_dim": 32, "kwargs": {"width": 8}}
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    with pytest.raises(ModelFileError, match="resnet18"):
        load_run(run)
    # Without the name in the metadata, the key sets still disagree.
    model = load_run(run_dir).model
    save_weights(model, tmp_path / "anon.safetensors")
    from ncdetect.runs import build_model

    other = build_model(load_config(None, ["model.name=lcnn", "model.embedding_dim=32"]), 80)
    with pytest.raises(ModelFileError, match="missing"):
        load_weights(other, tmp_path / "anon.safetensors")


def test_missing_pieces(tmp_path, run_dir):
    with pytest.raises(ModelFileError, match="not found"):
        load_run(tmp_path / "nowhere")
    run = _copy_run(run_dir, tmp_path / "noweights")
    (run / "model.safetensors").unlink()
    with pytest.raises(ModelFileError, match="not found"):
        load_run(run)
    (run / "config.yaml").unlink()
    with pytest.raises(ModelFileError, match=r"config\.yaml"):
        load_run(run)


def test_save_weights_round_trip(run_dir, tmp_path):
    model = load_run(run_dir).model
    save_weights(model, tmp_path / "w.safetensors", model_name="tiny_resnet")
    fresh = load_run(run_dir).model
    for p in fresh.parameters():
        torch.nn.init.zeros_(p)
    load_weights(fresh, tmp_path / "w.safetensors", model_name="tiny_resnet")
    for (k, a), (_, b) in zip(model.state_dict().items(), fresh.state_dict().items(), strict=True):
        assert torch.equal(a, b), k
