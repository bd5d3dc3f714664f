"""Neural-collapse metrics (docs/method.md) and embedding-folder loading."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from ncdetect.cli import app
from ncdetect.collapse.embeddings import first_nonfinite_row, load_embeddings
from ncdetect.collapse.metrics import nc_metrics
from ncdetect.errors import NcdetectError


def write_emb_folder(
    root: Path,
    x: np.ndarray,
    labels,
    attacks=None,
    utt_ids=None,
    W: np.ndarray | None = None,
    b: np.ndarray | None = None,
    dataset: str = "toy",
    source: str = "src",
    dtype=np.float32,
) -> Path:
    """An embedding folder as `ncdetect embed` writes it: embeddings.npy, index.csv, head.npz."""
    root.mkdir(parents=True, exist_ok=True)
    n, d = x.shape
    names = ["spoof", "bonafide"]
    labels = [names[v] if not isinstance(v, str) else v for v in labels]
    if attacks is None:
        attacks = ["-" if lab == "bonafide" else f"A0{i % 2 + 1}" for i, lab in enumerate(labels)]
    if utt_ids is None:
        utt_ids = [f"{dataset}_{i:05d}" for i in range(n)]
    np.save(root / "embeddings.npy", np.asarray(x, dtype=dtype))
    pd.DataFrame(
        dict(
            utt_id=utt_ids, path=[f"wav/{u}.wav" for u in utt_ids], label=labels, dataset=dataset,
            attack=attacks, speaker="spk0", score=0.0, source=source,
        )
    ).to_csv(root / "index.csv", index=False)
    if W is None:
        W = np.zeros((2, d))
    np.savez(root / "head.npz", W=np.asarray(W, dtype=np.float32), b=np.zeros(2) if b is None else b)
    return root


# Worked example 1: 4 points in 2-D.
#   spoof (0): (0,0), (2,0) -> mu_0 = (1,0);  bonafide (1): (1,3), (1,5) -> mu_1 = (1,4)
#   mu_G = ((0+2+1+1)/4, (0+0+3+5)/4) = (1,2)
#   Sigma_W = 1/4 [ (-1,0)(-1,0)^T + (1,0)(1,0)^T + (0,-1)(0,-1)^T + (0,1)(0,1)^T ] = diag(0.5, 0.5)
#   centred means: (0,-2), (0,2);  Sigma_B = 1/2 [ diag(0,4) + diag(0,4) ] = diag(0, 4)
#   pinv(Sigma_B) = diag(0, 1/4);  Sigma_W pinv(Sigma_B) = diag(0, 1/8);  NC1 = (1/8) / 2 = 0.0625
#   norms 2, 2 -> equinorm 0;  cos = -1 -> equiangularity |-1 + 1/(2-1)| = 0
#   within-class distances are all 1
EX1 = np.array([[0, 0], [2, 0], [1, 3], [1, 5]], dtype=np.float32)
EX1_Y = np.array([0, 0, 1, 1])


def test_worked_example_nc1_nc2():
    m = nc_metrics(EX1, EX1_Y)
    assert m["nc1"] == pytest.approx(0.0625, abs=1e-12)
    assert m["nc2_equinorm"] == pytest.approx(0.0, abs=1e-12)
    assert m["nc2_equiangularity"] == pytest.approx(0.0, abs=1e-12)
    assert m["k"] == 2 and m["counts"] == {"spoof": 2, "bonafide": 2}
    assert m["within_class_distance"]["spoof"]["p50"] == pytest.approx(1.0)
    assert m["nc3"] is None and m["nc4"] is None  # no head given


def test_worked_example_nc3():
    # W = [[0,-1],[0,1]] is parallel to M = [[0,-2],[0,2]]: both normalise to
    # [[0,-1],[0,1]]/sqrt(2) -> NC3 = 0.
    assert nc_metrics(EX1, EX1_Y, W=np.array([[0.0, -1], [0, 1]]))["nc3"] == pytest.approx(0.0, abs=1e-12)
    # W = I: I/sqrt(2) - [[0,-1],[0,1]]/sqrt(2) = [[1,1],[0,0]]/sqrt(2), Frobenius norm sqrt(2)/sqrt(2) = 1.
    assert nc_metrics(EX1, EX1_Y, W=np.eye(2))["nc3"] == pytest.approx(1.0, abs=1e-12)


def test_worked_example_nc4():
    W = np.array([[0.0, -1], [0, 1]])
    # b = 0: logits (-y, y). (0,0) and (2,0) tie at (0,0) -> argmax 0 = spoof, as NCM;
    # (1,3), (1,5) -> bonafide.
    assert nc_metrics(EX1, EX1_Y, W=W, b=np.zeros(2))["nc4"] == 0.0
    # b = (3.5, -3.5): (1,3) -> (0.5, -0.5) -> spoof, but its nearest mean is mu_1: 1 of 4 disagree.
    assert nc_metrics(EX1, EX1_Y, W=W, b=np.array([3.5, -3.5]))["nc4"] == pytest.approx(0.25)


# Worked example 2: imbalanced, within-class spread orthogonal to the between-class direction.
#   spoof: (-1,0), (1,0), (0,0) -> mu_0 = (0,0);  bonafide: (0,3) -> mu_1 = (0,3);  mu_G = (0, 0.75)
#   centred means (0,-0.75), (0,2.25): norms 0.75, 2.25, mean 1.5, population std 0.75 -> equinorm 0.5
#   Sigma_W = 1/4 [ diag(1,0) + diag(1,0) ] = diag(0.5, 0)
#   Sigma_B = diag(0, (0.5625 + 5.0625)/2) = diag(0, 2.8125)
#   Sigma_W pinv(Sigma_B) = diag(0.5, 0) diag(0, 1/2.8125) = 0 -> NC1 = 0 (spread along x does not count)
#   spoof within-class distances 1, 1, 0: sorted [0, 1, 1]; linear percentiles p5 = 0.1, p25 = 0.5, p50 = 1
EX2 = np.array([[-1, 0], [1, 0], [0, 0], [0, 3]], dtype=np.float32)
EX2_Y = np.array([0, 0, 0, 1])


def test_worked_example_imbalanced():
    m = nc_metrics(EX2, EX2_Y)
    assert m["nc1"] == pytest.approx(0.0, abs=1e-12)
    assert m["nc2_equinorm"] == pytest.approx(0.5, abs=1e-12)
    assert m["centred_mean_norms"] == pytest.approx({"spoof": 0.75, "bonafide": 2.25})
    pct = m["within_class_distance"]["spoof"]
    assert (pct["p5"], pct["p25"], pct["p50"], pct["p95"]) == pytest.approx((0.1, 0.5, 1.0, 1.0))
    assert m["within_class_distance"]["bonafide"]["p95"] == 0.0


def _reference_nc1(x, y):
    x = x.astype(np.float64)
    classes = np.unique(y)
    mu_g = x.mean(axis=0)
    mus = np.stack([x[y == c].mean(axis=0) for c in classes])
    sw = sum((x[y == c] - mus[i]).T @ (x[y == c] - mus[i]) for i, c in enumerate(classes)) / len(x)
    sb = sum(np.outer(m - mu_g, m - mu_g) for m in mus) / len(classes)
    return np.trace(sw @ np.linalg.pinv(sb)) / len(classes)


@pytest.mark.parametrize("k", [2, 3])
def test_nc1_matches_direct_formula_and_is_chunk_invariant(k):
    rng = np.random.default_rng(k)
    y = rng.integers(0, k, 300)
    x = (rng.normal(size=(300, 6)) + 3 * rng.normal(size=(k, 6))[y]).astype(np.float32)
    full = nc_metrics(x, y)
    assert full["nc1"] == pytest.approx(_reference_nc1(x, y), rel=1e-9)
    chunked = nc_metrics(x, y, chunk_rows=7)
    assert chunked["nc1"] == pytest.approx(full["nc1"], rel=1e-12)
    for cls, pct in full["within_class_distance"].items():
        assert chunked["within_class_distance"][cls] == pytest.approx(pct, rel=1e-12)


def test_collapsed_set_scores_much_lower_nc1():
    rng = np.random.default_rng(0)
    means = rng.normal(size=(2, 32)) * 3
    y = rng.integers(0, 2, 2000)
    tight = means[y] + 0.05 * rng.normal(size=(2000, 32))
    loose = means[y] + 2.0 * rng.normal(size=(2000, 32))
    nc1_tight = nc_metrics(tight.astype(np.float32), y)["nc1"]
    nc1_loose = nc_metrics(loose.astype(np.float32), y)["nc1"]
    assert nc1_tight < 0.1 * nc1_loose
    assert nc1_tight < 0.01


def test_nc4_zero_when_head_is_the_ncm_classifier():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 500)
    x = (rng.normal(size=(500, 8)) + rng.normal(size=(2, 8))[y]).astype(np.float32)
    mus = np.stack([x[y == c].astype(np.float64).mean(axis=0) for c in (0, 1)])
    # argmax_c (mu_c . h - ||mu_c||^2 / 2) = argmin_c ||h - mu_c||^2
    m = nc_metrics(x, y, W=mus, b=-0.5 * (mus**2).sum(axis=1))
    assert m["nc4"] == 0.0
    # A head with the classes swapped disagrees almost everywhere.
    assert nc_metrics(x, y, W=mus[::-1], b=-0.5 * (mus[::-1] ** 2).sum(axis=1))["nc4"] > 0.9


def test_equiangularity_simplex_and_not():
    # Three balanced classes at the vertices of an equilateral triangle (a simplex ETF):
    # cos = -1/2 for every pair.
    angles = np.deg2rad([90, 210, 330])
    verts = np.stack([np.cos(angles), np.sin(angles)], axis=1)
    y = np.repeat([0, 1, 2], 2)
    x = verts[y] + np.array([[0.1, 0], [-0.1, 0]] * 3)
    assert nc_metrics(x.astype(np.float32), y)["nc2_equiangularity"] == pytest.approx(0.0, abs=1e-7)
    # Move class 2 onto class 0's direction side: centred means are no longer 120 degrees apart.
    x2 = x.copy()
    x2[y == 2] += np.array([0.0, 1.5])
    assert nc_metrics(x2.astype(np.float32), y)["nc2_equiangularity"] > 0.1


def test_single_class_is_a_clear_error():
    x = np.ones((5, 3), dtype=np.float32)
    with pytest.raises(NcdetectError, match="at least two classes"):
        nc_metrics(x, np.ones(5, dtype=int))


# ---------------------------------------------------------------------------------------------------
# load_embeddings


def test_load_roundtrip_is_memory_mapped(tmp_path):
    x = np.arange(12, dtype=np.float32).reshape(6, 2)
    d = write_emb_folder(tmp_path / "emb", x, [0, 0, 0, 1, 1, 1], W=np.ones((2, 2)), b=np.array([1.0, 2.0]))
    es = load_embeddings(d)
    assert isinstance(es.embeddings, np.memmap)
    assert np.array_equal(np.asarray(es.embeddings), x)
    assert es.labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert es.W.shape == (2, 2) and es.b.tolist() == [1.0, 2.0]
    assert es.name == "src"
    assert Path(es.index["path"].iloc[0]).is_absolute()  # resolved against the folder


@pytest.mark.parametrize("missing", ["embeddings.npy", "index.csv", "head.npz"])
def test_missing_file_is_named(tmp_path, missing):
    d = write_emb_folder(tmp_path / "emb", np.zeros((4, 2)), [0, 0, 1, 1])
    (d / missing).unlink()
    with pytest.raises(NcdetectError, match=missing.replace(".", r"\.")):
        load_embeddings(d)


def test_head_optional_when_not_required(tmp_path):
    d = write_emb_folder(tmp_path / "emb", np.zeros((4, 2)), [0, 0, 1, 1])
    (d / "head.npz").unlink()
    es = load_embeddings(d, require_head=False)
    assert es.W is None and es.b is None


def test_length_mismatch(tmp_path):
    d = write_emb_folder(tmp_path / "emb", np.zeros((4, 2)), [0, 0, 1, 1])
    np.save(d / "embeddings.npy", np.zeros((5, 2), dtype=np.float32))
    with pytest.raises(NcdetectError, match=r"index\.csv: 4 rows but embeddings\.npy has 5"):
        load_embeddings(d)


def test_wrong_dtype_and_ndim(tmp_path):
    d = write_emb_folder(tmp_path / "emb", np.zeros((4, 2)), [0, 0, 1, 1], dtype=np.float64)
    with pytest.raises(NcdetectError, match="float32"):
        load_embeddings(d)
    np.save(d / "embeddings.npy", np.zeros(4, dtype=np.float32))
    with pytest.raises(NcdetectError, match="2-D"):
        load_embeddings(d)


def test_head_shape_mismatch(tmp_path):
    d = write_emb_folder(tmp_path / "emb", np.zeros((4, 3)), [0, 0, 1, 1], W=np.zeros((2, 5)))
    with pytest.raises(NcdetectError, match=r"head\.npz: W has shape \(2, 5\)"):
        load_embeddings(d)
    np.savez(d / "head.npz", W=np.zeros((2, 3)), b=np.zeros(3))
    with pytest.raises(NcdetectError, match="b has shape"):
        load_embeddings(d)
    np.savez(d / "head.npz", W=np.zeros((2, 3)))
    with pytest.raises(NcdetectError, match="needs arrays"):
        load_embeddings(d)


def test_nan_row_reports_row_and_utt_id(tmp_path):
    x = np.zeros((6, 2), dtype=np.float32)
    x[4, 1] = np.inf
    d = write_emb_folder(tmp_path / "emb", x, [0, 0, 0, 1, 1, 1])
    with pytest.raises(NcdetectError, match=r"embeddings\.npy: row 4 \(utt_id toy_00004\)"):
        load_embeddings(d)


def test_first_nonfinite_row_across_chunks():
    x = np.ones((50, 3), dtype=np.float32)
    assert first_nonfinite_row(x, chunk_rows=8) is None
    x[37, 2] = np.nan
    x[45, 0] = np.inf
    assert first_nonfinite_row(x, chunk_rows=8) == 37
    # Huge but finite values must not count as Inf (the float64 block sum cannot overflow).
    y = np.full((10, 4), np.finfo(np.float32).max, dtype=np.float32)
    assert first_nonfinite_row(y, chunk_rows=3) is None


# ---------------------------------------------------------------------------------------------------
# CLI


def test_cli_collapse_table_and_json(tmp_path):
    d = write_emb_folder(tmp_path / "emb", EX1, EX1_Y, W=np.array([[0.0, -1], [0, 1]]))
    runner = CliRunner()
    res = runner.invoke(app, ["collapse", str(d)])
    assert res.exit_code == 0, res.output
    assert "NC1" in res.output and "0.0625" in res.output and "p95" in res.output
    res = runner.invoke(app, ["collapse", str(d), "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    assert data["nc1"] == pytest.approx(0.0625)
    assert data["nc3"] == pytest.approx(0.0, abs=1e-7)
    assert data["nc4"] == 0.0


def test_cli_collapse_without_head_and_single_class(tmp_path):
    d = write_emb_folder(tmp_path / "emb", EX1, EX1_Y)
    (d / "head.npz").unlink()
    res = CliRunner().invoke(app, ["collapse", str(d)])
    assert res.exit_code == 0 and "n/a (no head.npz)" in res.output
    one = write_emb_folder(tmp_path / "one", EX1, [1, 1, 1, 1])
    res = CliRunner().invoke(app, ["collapse", str(one)])
    assert res.exit_code != 0
    assert isinstance(res.exception, NcdetectError) and str(one) in str(res.exception)
