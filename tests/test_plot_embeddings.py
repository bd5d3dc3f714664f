"""2-D embedding plots (`ncdetect plot-embeddings`)."""

from __future__ import annotations

import numpy as np
import pytest
from typer.testing import CliRunner

from ncdetect.cli import app
from ncdetect.collapse.plot import choose_points, plot_embeddings
from ncdetect.collapse.sampling import sample_folders
from ncdetect.errors import ConfigError, NcdetectError
from test_collapse_metrics import write_emb_folder


def two_blobs(n=200, d=12, seed=0):
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.4).astype(np.int64)
    x = rng.normal(size=(n, d)) + 6 * rng.normal(size=(2, d))[y]
    return x.astype(np.float32), y


def test_pca_plot_is_written_and_means_are_the_projected_class_means(tmp_path):
    x, y = two_blobs()
    emb = write_emb_folder(tmp_path / "emb", x, y)
    out = tmp_path / "fig" / "emb.png"
    proj = plot_embeddings(emb, out)
    assert out.is_file() and out.stat().st_size > 20_000
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert proj.coords.shape == (200, 2) and proj.indices.tolist() == list(range(200))
    for c, name in ((0, "spoof"), (1, "bonafide")):
        # PCA is linear: the projected class mean is the mean of the projected class.
        assert proj.means[name] == pytest.approx(proj.coords[proj.labels == c].mean(axis=0), abs=1e-6)
    # The two blobs are far apart, and so are their means along the first component.
    assert abs(proj.means["spoof"][0] - proj.means["bonafide"][0]) > 5


def test_subsample_keeps_every_selected_sample(tmp_path):
    x, y = two_blobs(n=600, seed=1)
    emb = write_emb_folder(tmp_path / "emb", x, y)
    manifest = tmp_path / "sel.csv"
    picked = sample_folders([emb], strategy="farthest", rate=0.1, out=manifest)
    proj = plot_embeddings(emb, tmp_path / "f.png", sampled=manifest, max_points=100, seed=3)
    assert proj.selected.sum() == len(picked) == 60
    assert len(proj.indices) == 100  # 60 selected + 40 others
    # PCA is fitted on the plotted points, but the means are those of the whole classes, projected.
    from sklearn.decomposition import PCA

    pca = PCA(n_components=2, svd_solver="full").fit(x[proj.indices].astype(np.float64))
    full_mean = x[y == 1].astype(np.float64).mean(axis=0, keepdims=True)
    assert proj.means["bonafide"] == pytest.approx(pca.transform(full_mean)[0], abs=1e-6)


def test_choose_points_is_seeded_and_keeps_context():
    sel = np.arange(0, 1000, 2)  # 500 selected, more than max_points
    a = choose_points(1000, sel, max_points=200, seed=0)
    b = choose_points(1000, sel, max_points=200, seed=0)
    assert a.tolist() == b.tolist()
    assert set(sel) <= set(a)
    assert len(set(a) - set(sel)) == 50  # a quarter of max_points of context


def test_tsne_plot(tmp_path):
    x, y = two_blobs(n=80, d=60, seed=2)
    emb = write_emb_folder(tmp_path / "emb", x, y)
    proj = plot_embeddings(emb, tmp_path / "t.png", method="tsne", seed=0)
    assert (tmp_path / "t.png").stat().st_size > 10_000
    assert proj.means["spoof"] == pytest.approx(proj.coords[proj.labels == 0].mean(axis=0))


def test_errors(tmp_path):
    x, y = two_blobs(n=30)
    emb = write_emb_folder(tmp_path / "emb", x, y)
    other = write_emb_folder(tmp_path / "other", x, y, dataset="elsewhere")
    manifest = tmp_path / "sel.csv"
    sample_folders([other], strategy="nc", rate=0.5, out=manifest)
    with pytest.raises(NcdetectError, match="none of its rows are in"):
        plot_embeddings(emb, tmp_path / "x.png", sampled=manifest)
    with pytest.raises(ConfigError, match="method"):
        plot_embeddings(emb, tmp_path / "x.png", method="umap")


def test_cli_plot_embeddings(tmp_path):
    x, y = two_blobs(n=120, seed=4)
    emb = write_emb_folder(tmp_path / "emb", x, y)
    manifest = tmp_path / "sel.csv"
    sample_folders([emb], strategy="nc", rate=0.1, out=manifest)
    out = tmp_path / "fig.png"
    args = ["plot-embeddings", str(emb), "--sampled", str(manifest), "--max-points", "50", "--out", str(out)]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    assert out.stat().st_size > 10_000 and "12 selected" in res.output
