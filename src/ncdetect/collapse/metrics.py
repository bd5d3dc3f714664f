"""Neural-collapse metrics, computed exactly as docs/method.md defines them.

With N samples h_i in K present classes (a class is present when it has at least one sample):

- mu_c = class means, mu_G = the mean of all N embeddings (so an imbalanced set weights its larger
  class more; with K = 2 this makes ||mu_c - mu_G|| proportional to the *other* class's share).
- Sigma_W = (1/N) sum_i (h_i - mu_c(i))(h_i - mu_c(i))^T,  Sigma_B = (1/K) sum_c (mu_c - mu_G)(mu_c - mu_G)^T.
- NC1 = trace(Sigma_W @ pinv(Sigma_B)) / K. Sigma_B has rank <= K - 1, so the pseudo-inverse cut-off
  matters: we drop eigenvalues below D * eps * the largest (the array-API default of ``pinv``), which
  agrees with numpy's default 1e-15 wherever that one is stable, and stays stable for large D.
- NC2 equinorm = std / mean of ||mu_c - mu_G|| over the classes, with the population std (ddof=0).
  NC2 equiangularity = max over c != c' of |cos(mu_c - mu_G, mu_c' - mu_G) + 1/(K-1)|. For K = 2 the two
  centred means are anti-parallel by construction, so it is 0 up to rounding.
- NC3 = || W/||W||_F - M/||M||_F ||_F, with W the head rows of the present classes and M the K x D
  centred class means.
- NC4 = the fraction of samples whose nearest class mean (Euclidean, ties to the lower class id)
  differs from the classifier's argmax(W h + b).

Everything is accumulated in float64 over chunks of rows, so a memory-mapped N x D float32 array is never
copied whole. Fewer than two present classes is an error: every metric above compares classes.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .. import CLASSES
from ..errors import NcdetectError

CHUNK_ROWS = 32_768
# Small row blocks for the streaming passes: their float64 temporaries stay in the CPU cache.
SUM_CHUNK_ROWS = 4_096
PERCENTILES = (5, 25, 50, 75, 95)


def class_name(c: int) -> str:
    return CLASSES[c] if 0 <= c < len(CLASSES) else str(c)


def class_sums(
    embeddings: np.ndarray, labels: np.ndarray, n_classes: int, chunk_rows: int = SUM_CHUNK_ROWS
) -> tuple[np.ndarray, np.ndarray]:
    """Per-class float64 sums (n_classes x D) and counts, one chunk of rows at a time.

    The float32 rows are summed with a float64 accumulator (no float64 copy of the chunk); a chunk of a
    single class, the common case for sorted manifests, is summed without any boolean copy.
    """
    n, d = embeddings.shape
    sums = np.zeros((n_classes, d), dtype=np.float64)
    counts = np.bincount(labels, minlength=n_classes).astype(np.int64)
    for start in range(0, n, chunk_rows):
        block = embeddings[start : start + chunk_rows]
        lab = labels[start : start + chunk_rows]
        first = lab[0]
        if np.all(lab == first):
            sums[first] += block.sum(axis=0, dtype=np.float64)
            continue
        for c in np.unique(lab):
            sums[c] += block[lab == c].sum(axis=0, dtype=np.float64)
    return sums, counts


def _sqnorm_rows(x: np.ndarray) -> np.ndarray:
    return np.einsum("ij,ij->i", x, x)


def _check_inputs(embeddings: np.ndarray, labels: np.ndarray) -> np.ndarray:
    if embeddings.ndim != 2:
        raise NcdetectError(f"embeddings must be 2-D (N x D), got shape {tuple(embeddings.shape)}")
    labels = np.asarray(labels)
    if labels.shape != (embeddings.shape[0],):
        raise NcdetectError(f"{labels.shape[0]} labels for {embeddings.shape[0]} embeddings")
    if labels.size and (labels.min() < 0 or not np.issubdtype(labels.dtype, np.integer)):
        raise NcdetectError("labels must be non-negative integer class ids (0 = spoof, 1 = bonafide)")
    return labels.astype(np.int64, copy=False)


def nc_metrics(
    embeddings: np.ndarray,
    labels: np.ndarray,
    W: np.ndarray | None = None,
    b: np.ndarray | None = None,
    chunk_rows: int = CHUNK_ROWS,
    progress: bool = False,
) -> dict[str, Any]:
    """NC1-NC4 and per-class within-class distance percentiles (see the module doc for definitions).

    NC3 and NC4 need the head (``W``: K_head x D, ``b``: K_head) and are None without it.
    """
    labels = _check_inputs(embeddings, labels)
    n, d = embeddings.shape
    n_label_classes = int(labels.max()) + 1 if n else 0
    if W is not None:
        W = np.asarray(W, dtype=np.float64)
        b = np.zeros(W.shape[0]) if b is None else np.asarray(b, dtype=np.float64)
        if W.ndim != 2 or W.shape[1] != d or b.shape != (W.shape[0],):
            raise NcdetectError(
                f"head shapes W {W.shape}, b {b.shape} do not fit embeddings of dimension {d}"
            )
        if n_label_classes > W.shape[0]:
            raise NcdetectError(f"label {n_label_classes - 1} has no row in the {W.shape[0]}-class head")
    n_slots = max(n_label_classes, W.shape[0] if W is not None else 0)

    sums, counts = class_sums(embeddings, labels, n_slots)
    present = np.flatnonzero(counts > 0)
    k = len(present)
    if k < 2:
        only = ", ".join(class_name(int(c)) for c in present) or "none"
        raise NcdetectError(
            f"neural-collapse metrics need samples of at least two classes (present: {only}; N = {n})"
        )
    if not np.isfinite(sums).all():
        raise NcdetectError("embeddings hold NaN or Inf values")
    mu = sums[present] / counts[present, None]  # K x D
    mu_g = sums.sum(axis=0) / n
    centred = mu - mu_g  # the K x D matrix M
    slot = np.full(n_slots, -1, dtype=np.int64)
    slot[present] = np.arange(k)

    sigma_w = np.zeros((d, d), dtype=np.float64)
    within = np.empty(n, dtype=np.float64)
    disagree = 0
    w_present = W[present] if W is not None else None
    from ..progress import progress_bar

    for start in progress_bar(range(0, n, chunk_rows), desc="collapse", unit="chunk", enabled=progress):
        block = np.asarray(embeddings[start : start + chunk_rows], dtype=np.float64)
        s = slot[labels[start : start + chunk_rows]]
        diff = block - mu[s]
        sigma_w += diff.T @ diff
        within[start : start + block.shape[0]] = np.sqrt(np.einsum("ij,ij->i", diff, diff))
        if W is not None:
            # Squared distances to every present mean, computed from differences (not the expanded
            # ||h||^2 - 2 h.mu + ||mu||^2, which cancels badly when h sits close to a mean).
            dist2 = np.stack([_sqnorm_rows(block - m) for m in mu], axis=1)
            ncm = present[np.argmin(dist2, axis=1)]
            clf = np.argmax(block @ W.T + b, axis=1)
            disagree += int(np.count_nonzero(ncm != clf))
    sigma_w /= n
    sigma_b = centred.T @ centred / k

    # The array-API cutoff (numpy 2's rtol=None), spelled so that numpy 1.24 computes the same.
    cutoff = max(sigma_b.shape) * np.finfo(sigma_b.dtype).eps
    pinv_b = np.linalg.pinv(sigma_b, rcond=cutoff, hermitian=True)
    nc1 = float(np.trace(sigma_w @ pinv_b) / k)

    norms = np.linalg.norm(centred, axis=1)
    equinorm = float(np.std(norms, ddof=0) / np.mean(norms)) if np.mean(norms) > 0 else float("nan")
    if np.all(norms > 0):
        unit = centred / norms[:, None]
        cos = unit @ unit.T
        off = ~np.eye(k, dtype=bool)
        equiangular = float(np.max(np.abs(cos[off] + 1.0 / (k - 1))))
    else:
        equiangular = float("nan")

    nc3 = nc4 = None
    if W is not None:
        w_norm = np.linalg.norm(w_present)
        m_norm = np.linalg.norm(centred)
        if w_norm > 0 and m_norm > 0:
            nc3 = float(np.linalg.norm(w_present / w_norm - centred / m_norm))
        else:
            nc3 = float("nan")
        nc4 = disagree / n

    percentiles = {}
    for c in present:
        values = np.percentile(within[labels == c], PERCENTILES)
        percentiles[class_name(int(c))] = {
            f"p{p}": float(v) for p, v in zip(PERCENTILES, values, strict=True)
        }

    return {
        "n": int(n),
        "dim": int(d),
        "k": int(k),
        "counts": {class_name(int(c)): int(counts[c]) for c in present},
        "nc1": nc1,
        "nc2_equinorm": equinorm,
        "nc2_equiangularity": equiangular,
        "nc3": nc3,
        "nc4": nc4,
        "trace_sigma_w": float(np.trace(sigma_w)),
        "trace_sigma_b": float(np.trace(sigma_b)),
        "centred_mean_norms": {class_name(int(c)): float(v) for c, v in zip(present, norms, strict=True)},
        "within_class_distance": percentiles,
    }


def format_metrics(metrics: dict[str, Any], title: str = "") -> str:
    """A readable table of :func:`nc_metrics` output for the terminal."""

    def fmt(v: float | None) -> str:
        return "n/a (no head.npz)" if v is None else f"{v:.6g}"

    counts = ", ".join(f"{k} {v}" for k, v in metrics["counts"].items())
    lines = []
    if title:
        lines.append(title)
    lines.append(f"N = {metrics['n']} ({counts}), D = {metrics['dim']}, K = {metrics['k']}")
    lines.append("")
    rows = [
        ("NC1  trace(Sw pinv(Sb)) / K", fmt(metrics["nc1"])),
        ("NC2  equinorm (std/mean)", fmt(metrics["nc2_equinorm"])),
        ("NC2  equiangularity", fmt(metrics["nc2_equiangularity"])),
        ("NC3  head vs centred means", fmt(metrics["nc3"])),
        ("NC4  NCM vs head disagreement", fmt(metrics["nc4"])),
    ]
    width = max(len(r[0]) for r in rows)
    lines.append(f"{'metric':<{width}}  value")
    lines += [f"{name:<{width}}  {value}" for name, value in rows]
    lines.append("")
    lines.append("within-class distance ||h - mu_c||")
    header = f"{'class':<10}" + "".join(f"{f'p{p}':>12}" for p in PERCENTILES)
    lines.append(header)
    for cls, pct in metrics["within_class_distance"].items():
        lines.append(f"{cls:<10}" + "".join(f"{pct[f'p{p}']:>12.6g}" for p in PERCENTILES))
    return "\n".join(lines)
