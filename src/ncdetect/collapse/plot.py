"""2-D views of an embedding folder (the paper's Figures 1 and 2): classes by colour, attacks by marker,
class means marked, and, given a sampled manifest, the selected samples ringed.

PCA (the default) is fitted on the plotted points and the class means are the means of the *whole*
class projected through it (PCA is linear, so this is also where the mean of the projected class lies).
t-SNE has no projection for new points, so there a class mean is marked at the centroid of the class's
plotted points. Large sets are subsampled (seeded) for plotting, but every selected sample is kept.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import BONAFIDE, SPOOF
from ..errors import ConfigError, NcdetectError
from .metrics import class_name, class_sums

METHODS = ("pca", "tsne")
CLASS_COLOURS = {SPOOF: "tab:red", BONAFIDE: "tab:blue"}
MARKERS = ["o", "s", "^", "v", "D", "P", "X", "<", ">", "p", "h", "*", "d", "8", "H"]


@dataclass
class Projection:
    """The plotted points: 2-D coordinates, their rows in the embedding folder, and the class means."""

    coords: np.ndarray  # n_plot x 2
    indices: np.ndarray  # rows of the embedding set, ascending
    labels: np.ndarray  # class ids of the plotted rows
    selected: np.ndarray  # bool per plotted row
    means: dict[str, np.ndarray]  # class name -> (2,) position of the class mean
    method: str


def choose_points(n: int, selected_rows: np.ndarray, max_points: int, seed: int) -> np.ndarray:
    """Rows to plot: every selected row, plus a seeded sample of the others.

    The others fill up to ``max_points``, but never fewer than a quarter of it, so the context around
    a large selection stays visible.
    """
    selected_rows = np.unique(selected_rows)
    if n <= max_points:
        return np.arange(n)
    others = np.setdiff1d(np.arange(n), selected_rows, assume_unique=True)
    budget = min(others.size, max(max_points - selected_rows.size, max_points // 4))
    rng = np.random.default_rng(seed)
    picked = rng.choice(others, size=budget, replace=False)
    return np.union1d(selected_rows, picked)


def project(
    embeddings: np.ndarray,
    labels: np.ndarray,
    method: str = "pca",
    max_points: int = 5000,
    seed: int = 0,
    selected_rows: np.ndarray | None = None,
) -> Projection:
    """Project a (subsample of an) embedding set to 2-D and place the class means."""
    if method not in METHODS:
        raise ConfigError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    if max_points < 2:
        raise ConfigError(f"max_points must be at least 2, got {max_points}")
    n, d = embeddings.shape
    if d < 2:
        raise NcdetectError(f"a 2-D projection needs embeddings of at least 2 dimensions, got {d}")
    if n < 3:
        raise NcdetectError(f"a 2-D projection needs at least 3 embeddings, got {n}")
    labels = np.asarray(labels, dtype=np.int64)
    selected_rows = np.empty(0, dtype=np.int64) if selected_rows is None else np.asarray(selected_rows)
    rows = choose_points(n, selected_rows, max_points, seed)
    x = np.asarray(embeddings[rows], dtype=np.float64)
    lab = labels[rows]
    present = [c for c in (SPOOF, BONAFIDE) if np.any(labels == c)]

    if method == "pca":
        from sklearn.decomposition import PCA

        pca = PCA(n_components=2, svd_solver="full", random_state=seed).fit(x)
        coords = pca.transform(x)
        sums, counts = class_sums(embeddings, labels, 2)
        full_means = sums[present] / counts[present, None]
        projected = pca.transform(full_means)
        means = {class_name(c): projected[j] for j, c in enumerate(present)}
    else:
        from sklearn.decomposition import PCA
        from sklearn.manifold import TSNE

        # The usual pre-reduction to 50 dimensions: it removes noise and makes t-SNE much faster.
        if d > 50 and x.shape[0] > 50:
            x = PCA(n_components=50, svd_solver="full", random_state=seed).fit_transform(x)
        perplexity = min(30.0, (x.shape[0] - 1) / 3)
        coords = TSNE(n_components=2, init="pca", perplexity=perplexity, random_state=seed).fit_transform(x)
        means = {class_name(c): coords[lab == c].mean(axis=0) for c in present if np.any(lab == c)}
    return Projection(
        coords=np.asarray(coords, dtype=np.float64),
        indices=rows,
        labels=lab,
        selected=np.isin(rows, selected_rows),
        means=means,
        method=method,
    )


def selected_rows_from_manifest(index, sampled: str | Path, emb_dir: str | Path) -> np.ndarray:
    """Rows of an embedding index whose (dataset, utt_id) appear in a sampled manifest."""
    from ..data.manifest import read_manifest

    chosen = read_manifest(sampled, resolve_paths=False)
    keys = set(zip(chosen["dataset"], chosen["utt_id"], strict=True))
    mask = np.fromiter(
        ((ds, u) in keys for ds, u in zip(index["dataset"], index["utt_id"], strict=True)),
        dtype=bool,
        count=len(index),
    )
    if not mask.any():
        raise NcdetectError(f"{sampled}: none of its rows are in {emb_dir} (matched by dataset and utt_id)")
    return np.flatnonzero(mask)


def plot_embeddings(
    emb_dir: str | Path,
    out: str | Path,
    sampled: str | Path | None = None,
    method: str = "pca",
    max_points: int = 5000,
    seed: int = 0,
    title: str | None = None,
) -> Projection:
    """Draw an embedding folder in 2-D to ``out`` (PNG) and return the projection that was drawn."""
    from ..fileio import ensure_writable_dir, write_png
    from .embeddings import load_embeddings

    out = Path(out)
    ensure_writable_dir(out.parent)
    es = load_embeddings(emb_dir, require_head=False)
    labels = es.labels
    sel_rows = selected_rows_from_manifest(es.index, sampled, emb_dir) if sampled is not None else None
    proj = project(
        es.embeddings, labels, method=method, max_points=max_points, seed=seed, selected_rows=sel_rows
    )
    attacks = es.index["attack"].to_numpy()[proj.indices].astype(str)

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    fig = Figure(figsize=(8, 6.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    attack_names = sorted(set(attacks))
    marker_of = {a: MARKERS[i % len(MARKERS)] for i, a in enumerate(attack_names)}
    for c in (SPOOF, BONAFIDE):
        for a in attack_names:
            m = (proj.labels == c) & (attacks == a)
            if not m.any():
                continue
            label = class_name(c) if a == "-" else f"{class_name(c)} {a}"
            ax.scatter(
                proj.coords[m, 0], proj.coords[m, 1], s=8, alpha=0.45, c=CLASS_COLOURS[c],
                marker=marker_of[a], linewidths=0, label=label,
            )
    if proj.selected.any():
        s = proj.selected
        ax.scatter(
            proj.coords[s, 0], proj.coords[s, 1], s=36, facecolors="none", edgecolors="black",
            linewidths=0.7, label=f"selected ({int(s.sum())})",
        )
    handles, names = ax.get_legend_handles_labels()
    for name, pos in proj.means.items():
        c = SPOOF if name == class_name(SPOOF) else BONAFIDE
        ax.scatter(
            [pos[0]], [pos[1]], s=320, marker="*", c=CLASS_COLOURS[c], edgecolors="black", linewidths=1.2,
            zorder=5,
        )
        # A legend-sized stand-in: the plotted star is too large for the legend box.
        handles.append(
            Line2D([], [], ls="", marker="*", markersize=11, markerfacecolor=CLASS_COLOURS[c],
                   markeredgecolor="black")
        )
        names.append(f"mean {name}")
    shown = f"{len(proj.indices)} of {len(es)} shown" if len(proj.indices) < len(es) else f"{len(es)} points"
    ax.set_title(title or f"{es.name}: {method.upper()} ({shown})")
    ax.set_xlabel(f"{method.upper()} 1")
    ax.set_ylabel(f"{method.upper()} 2")
    ax.legend(handles, names, loc="best", fontsize=7, framealpha=0.8)
    fig.tight_layout()
    write_png(fig, out, dpi=150)
    return proj
