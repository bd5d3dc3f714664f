"""Sampling strategies: neural-collapse selection (DESIGN section 2, Algorithms 1 and 2) and baselines.

Every strategy is a function with one signature::

    select(embeddings, labels, rate, *, real_rate=None, fake_rate=None, fake_mode="class",
           metric="euclidean", seed=0, attacks=None, utt_ids=None) -> Selection

``labels`` are class ids (0 = spoof, 1 = bonafide); ``real_rate`` (bonafide) and ``fake_rate`` (spoof)
default to ``rate``. Each class c with N_c samples keeps k_c = max(1, round(r_c * N_c)) of them, where
``round`` is Python's built-in (round half to even: 2.5 -> 2, 3.5 -> 4) applied to the float product
exactly as written, so 0.5 * 5 keeps 2 and 0.5 * 7 keeps 4. A class with no samples is skipped with a
notice in ``Selection.notices``.

Strategies (registry :data:`STRATEGIES`):

- ``nc``: the samples nearest their class mean mu_c (the mean over the whole class of this source).
  Ties in distance are broken by utt_id (lexicographic), then by row. The spoof class follows
  ``fake_mode``: ``class`` (Algorithm 2, the default); ``attack`` keeps, within each attack group, the
  k_a = max(1, round(r_fake * N_a)) samples nearest the *spoof class mean* (the same distance as
  ``class`` mode, so the modes differ only in how the budget is spread; the total can exceed k_c by
  the rounding of each group); ``kmeans`` clusters the spoof embeddings (k-means, seeded; as many
  clusters as spoof attacks when there are at least two, else 8; never more than k_c) and keeps the
  samples nearest each centroid, k_c shared in proportion to cluster size (largest remainder);
  ``spread`` sorts by distance and takes k_c samples at evenly spaced quantiles (the midpoints of k_c
  equal bins), covering near and far samples alike. ``fake_mode`` applies to ``nc`` only.
- ``farthest``: the reverse of ``nc`` (largest distances; ties by utt_id).
- ``random``: a seeded uniform draw of k_c per class (each class has its own stream, so one class's
  size does not change the other's draw).
- ``kcenter``: greedy k-center (Gonzalez) per class in torch (GPU when present), from a seeded random
  start. The nearest-centre distances are updated lazily in blocks (matrix products instead of one
  pass over the data per centre), which picks the same centres as the plain loop, so 100k points to
  10k centres takes seconds on a CPU.
- ``herding``: mean-matching herding (Welling 2009; the iCaRL exemplar rule) per class in torch: each
  step adds the sample that brings the mean of the chosen set closest to the class mean.

``metric="cosine"`` replaces ||h - mu|| by 1 - cos(h, mu) (a zero vector has distance 1); kcenter and
herding then work on L2-normalised embeddings, where Euclidean order equals cosine order.

``Selection.distances`` is the distance each sample was chosen by: to its class mean for nc (class,
attack, spread) and farthest, to its k-means centroid for nc/kmeans. Random, kcenter and herding do not
choose by a distance to a mean; they report the distance to the class mean, so selections compare.

Distances are computed in float64 from differences (never the expanded ||h||^2 - 2 h.mu + ||mu||^2),
chunk by chunk, so a memory-mapped 1M x 256 float32 array is read twice and never copied whole.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd
from tqdm import tqdm

from .. import BONAFIDE, SPOOF
from ..errors import ConfigError, NcdetectError
from .metrics import class_name

# Rows per block in the distance pass: the float64 differences of 4,096 x 256 stay in the CPU cache.
CHUNK_ROWS = 4_096
FAKE_MODES = ("class", "attack", "kmeans", "spread")
METRICS = ("euclidean", "cosine")
DEFAULT_KMEANS_CLUSTERS = 8


@dataclass
class Selection:
    """Chosen rows (ascending row indices into the embeddings) and the distance each was chosen by."""

    indices: np.ndarray
    distances: np.ndarray
    notices: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.indices.size)


class Strategy(Protocol):
    def __call__(
        self,
        embeddings: np.ndarray,
        labels: np.ndarray,
        rate: float,
        *,
        real_rate: float | None = None,
        fake_rate: float | None = None,
        fake_mode: str = "class",
        metric: str = "euclidean",
        seed: int = 0,
        attacks: Sequence[str] | np.ndarray | None = None,
        utt_ids: Sequence[str] | np.ndarray | None = None,
    ) -> Selection: ...


# ---------------------------------------------------------------------------------------------------
# shared pieces


def n_keep(rate: float, n: int) -> int:
    """k = max(1, round(rate * n)) for a non-empty group (Python's round: half to even), else 0."""
    if n <= 0:
        return 0
    return min(n, max(1, round(rate * n)))


def check_rate(value: float, name: str = "rate") -> float:
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a number in (0, 1], got {value!r}") from None
    if not (0.0 < value <= 1.0):  # also rejects NaN
        raise ConfigError(f"{name} must be in (0, 1] (a fraction of each class), got {value:g}")
    return value


@dataclass
class _Context:
    """What every strategy needs: validated inputs, class rows, class means and distances to them."""

    embeddings: np.ndarray
    labels: np.ndarray
    rates: dict[int, float]
    metric: str
    seed: int
    keys: np.ndarray | None  # utt_ids as an object array, for tie-breaking
    attacks: np.ndarray | None
    means: np.ndarray  # 2 x D float64 (rows of absent classes are zero)
    counts: np.ndarray
    dist: np.ndarray  # N float64: distance of every row to its own class mean
    notices: list[str]

    def rows(self, c: int) -> np.ndarray:
        return np.flatnonzero(self.labels == c)


def _prepare(
    embeddings: np.ndarray,
    labels: np.ndarray,
    rate: float,
    real_rate: float | None,
    fake_rate: float | None,
    metric: str,
    seed: int,
    attacks: Sequence[str] | np.ndarray | None,
    utt_ids: Sequence[str] | np.ndarray | None,
) -> _Context:
    if metric not in METRICS:
        raise ConfigError(f"metric must be one of {', '.join(METRICS)}, got {metric!r}")
    rates = {
        BONAFIDE: check_rate(rate, "rate") if real_rate is None else check_rate(real_rate, "real_rate"),
        SPOOF: check_rate(rate, "rate") if fake_rate is None else check_rate(fake_rate, "fake_rate"),
    }
    if not isinstance(embeddings, np.ndarray) or embeddings.ndim != 2:
        shape = getattr(embeddings, "shape", None)
        raise NcdetectError(f"embeddings must be a 2-D array (N x D), got shape {shape}")
    if not np.issubdtype(embeddings.dtype, np.floating):
        raise NcdetectError(f"embeddings must be floating point, got {embeddings.dtype}")
    n = embeddings.shape[0]
    labels = np.asarray(labels)
    if labels.shape != (n,):
        raise NcdetectError(f"{labels.size} labels for {n} embeddings; they must match row for row")
    if n and not np.isin(labels, (SPOOF, BONAFIDE)).all():
        raise NcdetectError("labels must be 0 (spoof) or 1 (bonafide)")
    labels = labels.astype(np.int64, copy=False)
    keys = _as_column(utt_ids, n, "utt_ids")
    attack_arr = _as_column(attacks, n, "attacks")

    means, counts = _class_means(embeddings, labels, keys)
    notices = [
        f"class {class_name(c)} has no samples; skipped" for c in (SPOOF, BONAFIDE) if counts[c] == 0
    ]
    dist = _distances_to_own_mean(embeddings, labels, means, metric)
    return _Context(
        embeddings, labels, rates, metric, int(seed), keys, attack_arr, means, counts, dist, notices
    )


def _as_column(values: Any, n: int, name: str) -> np.ndarray | None:
    if values is None:
        return None
    arr = np.asarray(values, dtype=object)
    if arr.shape != (n,):
        raise NcdetectError(f"{name} has {arr.size} entries for {n} embeddings; they must match row for row")
    return arr


def _class_means(
    embeddings: np.ndarray, labels: np.ndarray, keys: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    from .metrics import class_sums

    sums, counts = class_sums(embeddings, labels, 2)
    if not np.isfinite(sums).all():
        from .embeddings import first_nonfinite_row

        bad = first_nonfinite_row(embeddings)
        where = f" (utt_id {keys[bad]})" if keys is not None and bad is not None else ""
        raise NcdetectError(f"embeddings row {bad}{where} holds NaN or Inf values")
    means = np.zeros_like(sums)
    present = counts > 0
    means[present] = sums[present] / counts[present, None]
    return means, counts


def _distances_to_own_mean(
    embeddings: np.ndarray, labels: np.ndarray, means: np.ndarray, metric: str
) -> np.ndarray:
    n = embeddings.shape[0]
    out = np.empty(n, dtype=np.float64)
    if metric == "cosine":
        mean_norms = np.linalg.norm(means, axis=1)
        for c in np.unique(labels):
            if mean_norms[c] == 0:
                raise NcdetectError(
                    f"the {class_name(int(c))} class mean is the zero vector; cosine distance is undefined"
                )
    for start in range(0, n, CHUNK_ROWS):
        block = embeddings[start : start + CHUNK_ROWS]  # a view: memmap pages are read, not copied
        lab = labels[start : start + CHUNK_ROWS]
        if np.all(lab == lab[0]):
            out[start : start + block.shape[0]] = distance_to(block, means[lab[0]], metric)
            continue
        for c in np.unique(lab):
            rows = np.flatnonzero(lab == c)
            out[start + rows] = distance_to(block[rows], means[c], metric)
    return out


def distance_to(x: np.ndarray, centre: np.ndarray, metric: str) -> np.ndarray:
    """Distance of each row of ``x`` to ``centre`` in float64 (Euclidean, or 1 - cosine)."""
    centre = np.asarray(centre, dtype=np.float64)
    if metric == "euclidean":
        # float32 - float64 yields float64 exactly, with no separate conversion pass.
        diff = np.subtract(x, centre)
        return np.sqrt(np.einsum("ij,ij->i", diff, diff))
    x = np.asarray(x, dtype=np.float64)
    norms = np.sqrt(np.einsum("ij,ij->i", x, x)) * np.linalg.norm(centre)
    dots = x @ centre
    cos = np.divide(dots, norms, out=np.zeros_like(dots), where=norms > 0)
    return 1.0 - np.clip(cos, -1.0, 1.0)


def _smallest(dist: np.ndarray, k: int, keys: np.ndarray | None) -> np.ndarray:
    """Positions of the k smallest values, ties broken by key (then position). O(n) via partition."""
    n = dist.size
    if k >= n:
        return np.arange(n)
    if k <= 0:
        return np.empty(0, dtype=np.int64)
    kth = np.partition(dist, k - 1)[k - 1]
    below = np.flatnonzero(dist < kth)
    tied = np.flatnonzero(dist == kth)
    need = k - below.size
    if tied.size > need:
        # Only the values equal to the k-th one need the utt_id order; flatnonzero already gives
        # ascending positions, the fallback when there are no keys.
        if keys is not None:
            tied = tied[np.argsort(keys[tied], kind="stable")]
        tied = tied[:need]
    return np.concatenate([below, tied])


def _sorted_order(dist: np.ndarray, keys: np.ndarray | None) -> np.ndarray:
    """Full order by (distance, key, position)."""
    if keys is None:
        return np.argsort(dist, kind="stable")
    order = np.argsort(keys, kind="stable")
    return order[np.argsort(dist[order], kind="stable")]


def _finish(ctx: _Context, chosen: list[tuple[np.ndarray, np.ndarray]]) -> Selection:
    if chosen:
        idx = np.concatenate([c[0] for c in chosen]).astype(np.int64)
        dist = np.concatenate([c[1] for c in chosen]).astype(np.float64)
    else:
        idx, dist = np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float64)
    order = np.argsort(idx, kind="stable")
    return Selection(indices=idx[order], distances=dist[order], notices=list(ctx.notices))


def _per_class(
    ctx: _Context, choose: Callable[[_Context, int, np.ndarray, int], tuple[np.ndarray, np.ndarray]]
) -> Selection:
    chosen = []
    for c in (SPOOF, BONAFIDE):
        rows = ctx.rows(c)
        if rows.size == 0:
            continue
        k = n_keep(ctx.rates[c], rows.size)
        chosen.append(choose(ctx, c, rows, k))
    return _finish(ctx, chosen)


def _class_mode_only(name: str, fake_mode: str) -> None:
    if fake_mode != "class":
        raise ConfigError(
            f"fake_mode {fake_mode!r} applies to strategy nc only; {name} takes fake_mode 'class'"
        )


def _keys(ctx: _Context, rows: np.ndarray) -> np.ndarray | None:
    return None if ctx.keys is None else ctx.keys[rows]


# ---------------------------------------------------------------------------------------------------
# nc and farthest


def nc(
    embeddings: np.ndarray,
    labels: np.ndarray,
    rate: float,
    *,
    real_rate: float | None = None,
    fake_rate: float | None = None,
    fake_mode: str = "class",
    metric: str = "euclidean",
    seed: int = 0,
    attacks: Sequence[str] | np.ndarray | None = None,
    utt_ids: Sequence[str] | np.ndarray | None = None,
) -> Selection:
    """Neural-collapse sampling: the samples nearest their class mean (Algorithms 1 and 2)."""
    if fake_mode not in FAKE_MODES:
        raise ConfigError(f"fake_mode must be one of {', '.join(FAKE_MODES)}, got {fake_mode!r}")
    if fake_mode == "attack" and attacks is None:
        raise ConfigError("fake_mode 'attack' needs the attack of every row (attacks=...)")
    ctx = _prepare(embeddings, labels, rate, real_rate, fake_rate, metric, seed, attacks, utt_ids)

    def choose(ctx: _Context, c: int, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        if c == SPOOF and fake_mode == "attack":
            return _nearest_per_attack(ctx, rows)
        if c == SPOOF and fake_mode == "kmeans":
            return _nearest_per_cluster(ctx, rows, k)
        d = ctx.dist[rows]
        if c == SPOOF and fake_mode == "spread":
            order = _sorted_order(d, _keys(ctx, rows))
            n = rows.size
            # Midpoints of k equal-width rank bins: distinct for k <= n, and symmetric in the ranks.
            picks = order[((np.arange(k) + 0.5) * n / k).astype(np.int64)]
            return rows[picks], d[picks]
        picks = _smallest(d, k, _keys(ctx, rows))
        return rows[picks], d[picks]

    return _per_class(ctx, choose)


def _nearest_per_attack(ctx: _Context, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    assert ctx.attacks is not None
    groups = ctx.attacks[rows].astype(str)
    out_rows, out_dist = [], []
    for attack in sorted(set(groups)):
        members = rows[groups == attack]
        d = ctx.dist[members]
        picks = _smallest(d, n_keep(ctx.rates[SPOOF], members.size), _keys(ctx, members))
        out_rows.append(members[picks])
        out_dist.append(d[picks])
    return np.concatenate(out_rows), np.concatenate(out_dist)


def _allocate(k: int, sizes: np.ndarray) -> np.ndarray:
    """Share k over groups in proportion to their sizes (largest remainder; ties to the lower group)."""
    quota = k * sizes / sizes.sum()
    alloc = np.minimum(np.floor(quota).astype(np.int64), sizes)
    frac = quota - alloc
    order = np.lexsort((np.arange(sizes.size), -frac))
    while alloc.sum() < k:
        for j in order:
            if alloc.sum() >= k:
                break
            if alloc[j] < sizes[j]:
                alloc[j] += 1
    return alloc


def _nearest_per_cluster(ctx: _Context, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.cluster import KMeans, MiniBatchKMeans

    x = np.asarray(ctx.embeddings[rows], dtype=np.float32)
    if ctx.metric == "cosine":
        x = _l2_normalise(x)
    if ctx.attacks is not None and len(set(ctx.attacks[rows].astype(str))) >= 2:
        n_clusters = len(set(ctx.attacks[rows].astype(str)))
    else:
        n_clusters = DEFAULT_KMEANS_CLUSTERS
    n_clusters = max(1, min(n_clusters, k, rows.size))
    if n_clusters == 1:
        assign = np.zeros(rows.size, dtype=np.int64)
        centroids = x.astype(np.float64).mean(axis=0, keepdims=True)
    else:
        # Full k-means up to 50k points; mini-batch beyond, where Lloyd iterations would dominate.
        if rows.size <= 50_000:
            model = KMeans(n_clusters=n_clusters, n_init=3, random_state=ctx.seed)
        else:
            model = MiniBatchKMeans(n_clusters=n_clusters, n_init=3, random_state=ctx.seed, batch_size=4096)
        assign = model.fit_predict(x).astype(np.int64)
        centroids = model.cluster_centers_.astype(np.float64)
    sizes = np.bincount(assign, minlength=n_clusters)
    alloc = _allocate(k, sizes)
    out_rows, out_dist = [], []
    for j in range(n_clusters):
        members = np.flatnonzero(assign == j)
        if members.size == 0 or alloc[j] == 0:
            continue
        d = distance_to(x[members], centroids[j], ctx.metric)
        picks = _smallest(d, int(alloc[j]), _keys(ctx, rows[members]))
        out_rows.append(rows[members[picks]])
        out_dist.append(d[picks])
    return np.concatenate(out_rows), np.concatenate(out_dist)


def farthest(
    embeddings: np.ndarray,
    labels: np.ndarray,
    rate: float,
    *,
    real_rate: float | None = None,
    fake_rate: float | None = None,
    fake_mode: str = "class",
    metric: str = "euclidean",
    seed: int = 0,
    attacks: Sequence[str] | np.ndarray | None = None,
    utt_ids: Sequence[str] | np.ndarray | None = None,
) -> Selection:
    """The reverse of nc: the samples farthest from their class mean (ties by utt_id)."""
    _class_mode_only("farthest", fake_mode)
    ctx = _prepare(embeddings, labels, rate, real_rate, fake_rate, metric, seed, attacks, utt_ids)

    def choose(ctx: _Context, c: int, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        d = ctx.dist[rows]
        picks = _smallest(-d, k, _keys(ctx, rows))
        return rows[picks], d[picks]

    return _per_class(ctx, choose)


# ---------------------------------------------------------------------------------------------------
# random


def random(
    embeddings: np.ndarray,
    labels: np.ndarray,
    rate: float,
    *,
    real_rate: float | None = None,
    fake_rate: float | None = None,
    fake_mode: str = "class",
    metric: str = "euclidean",
    seed: int = 0,
    attacks: Sequence[str] | np.ndarray | None = None,
    utt_ids: Sequence[str] | np.ndarray | None = None,
) -> Selection:
    """Class-stratified uniform sampling, k_c per class, seeded."""
    _class_mode_only("random", fake_mode)
    ctx = _prepare(embeddings, labels, rate, real_rate, fake_rate, metric, seed, attacks, utt_ids)

    def choose(ctx: _Context, c: int, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng([ctx.seed, c])
        picks = rng.choice(rows.size, size=k, replace=False)
        return rows[picks], ctx.dist[rows[picks]]

    return _per_class(ctx, choose)


# ---------------------------------------------------------------------------------------------------
# kcenter and herding (torch)


def _device() -> Any:
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _l2_normalise(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.divide(x, norms, out=np.zeros_like(x), where=norms > 0)


def _class_tensor(ctx: _Context, rows: np.ndarray) -> Any:
    import torch

    x = np.asarray(ctx.embeddings[rows], dtype=np.float32)
    if ctx.metric == "cosine":
        x = _l2_normalise(x)
    return torch.from_numpy(np.ascontiguousarray(x)).to(_device())


def greedy_kcenter(x: Any, k: int, start: int, block: int = 128, top: int = 64) -> np.ndarray:
    """Greedy k-center (Gonzalez): positions of k centres in pick order, starting from ``start``.

    Each step takes the point farthest from its nearest centre. The plain loop reads all N x D values
    once per centre (memory-bound, 10k x 100 MB for the benchmark case), so the minimum distances are
    kept lazily: new centres wait in a block of ``block`` and are applied to all points at once by a
    matrix product, while each step only brings the ``top`` points with the largest (stale, hence upper)
    bounds up to date. If the best refreshed value is at least the next stale bound, it is the true
    farthest point; otherwise more points are refreshed. The picks equal the plain loop's (up to
    float32 rounding of near-ties). Squared distances use the expanded form on centred data, which
    keeps the norms small and the cancellation harmless. Once every point coincides with a centre
    (duplicates), the remaining picks are the unchosen points in row order.
    """
    import torch

    n = x.shape[0]
    k = min(k, n)
    x = x - x.mean(dim=0)
    sq = (x * x).sum(dim=1)
    taken = torch.zeros(n, dtype=torch.bool, device=x.device)
    picks = [int(start)]
    taken[start] = True
    bound = _sqdist(x, sq, [start]).squeeze(1)
    bound[start] = 0.0
    pending = []
    while len(picks) < k:
        if len(pending) >= block:
            bound = torch.minimum(bound, _sqdist(x, sq, pending).min(dim=1).values)
            pending = []
        width = top
        while True:
            m = min(width + 1, n)
            vals, idx = torch.topk(bound, m)
            cand = idx[:width]
            if pending:
                fresh = _sqdist(x[cand], sq[cand], pending, centres=x, centre_sq=sq).min(dim=1).values
                bound[cand] = torch.minimum(bound[cand], fresh)
            values = bound[cand]
            best = values.max()
            if m <= width or bool(best >= vals[width]):
                break
            width *= 4
        if float(best) <= 0.0:
            picks += torch.nonzero(~taken, as_tuple=True)[0][: k - len(picks)].tolist()
            break
        i = int(cand[values == best].min())
        picks.append(i)
        pending.append(i)
        taken[i] = True
        bound[i] = 0.0
    return np.asarray(picks, dtype=np.int64)


def _sqdist(
    x: Any, sq: Any, rows: list[int], centres: Any = None, centre_sq: Any = None, chunk: int = 16_384
) -> Any:
    """Squared distances (clamped at 0) from every row of x to the centres ``rows`` of ``centres``."""
    import torch

    centres = x if centres is None else centres
    centre_sq = sq if centre_sq is None else centre_sq
    sel = torch.as_tensor(rows, device=x.device)
    c, csq = centres[sel], centre_sq[sel]
    out = torch.empty((x.shape[0], len(rows)), dtype=x.dtype, device=x.device)
    for s in range(0, x.shape[0], chunk):
        part = torch.addmm(sq[s : s + chunk, None] + csq[None, :], x[s : s + chunk], c.T, alpha=-2.0)
        out[s : s + chunk] = part.clamp_min_(0.0)
    return out


def kcenter(
    embeddings: np.ndarray,
    labels: np.ndarray,
    rate: float,
    *,
    real_rate: float | None = None,
    fake_rate: float | None = None,
    fake_mode: str = "class",
    metric: str = "euclidean",
    seed: int = 0,
    attacks: Sequence[str] | np.ndarray | None = None,
    utt_ids: Sequence[str] | np.ndarray | None = None,
) -> Selection:
    """Greedy k-center per class (coverage baseline), seeded random start, torch on GPU when present."""
    _class_mode_only("kcenter", fake_mode)
    ctx = _prepare(embeddings, labels, rate, real_rate, fake_rate, metric, seed, attacks, utt_ids)

    def choose(ctx: _Context, c: int, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        start = int(np.random.default_rng([ctx.seed, c]).integers(rows.size))
        picks = greedy_kcenter(_class_tensor(ctx, rows), k, start)
        return rows[picks], ctx.dist[rows[picks]]

    return _per_class(ctx, choose)


def greedy_herding(x: Any, k: int, mean: Any) -> np.ndarray:
    """Mean-matching herding: positions of k samples, each step minimising ||mean - mean(chosen)||."""
    import torch

    n = x.shape[0]
    k = min(k, n)
    sq = (x * x).sum(dim=1)
    acc = torch.zeros(x.shape[1], dtype=torch.float64, device=x.device)
    taken = torch.zeros(n, dtype=torch.bool, device=x.device)
    picks = torch.empty(k, dtype=torch.int64, device=x.device)
    for t in range(1, k + 1):
        # argmin_i ||t * mean - acc - x_i||^2 = argmin_i ||x_i||^2 - 2 x_i . (t * mean - acc)
        target = (t * mean - acc).to(x.dtype)
        score = torch.addmv(sq, x, target, alpha=-2.0).masked_fill_(taken, torch.inf)
        i = int(torch.argmin(score))
        picks[t - 1] = i
        taken[i] = True
        acc += x[i].double()
    return picks.cpu().numpy()


def herding(
    embeddings: np.ndarray,
    labels: np.ndarray,
    rate: float,
    *,
    real_rate: float | None = None,
    fake_rate: float | None = None,
    fake_mode: str = "class",
    metric: str = "euclidean",
    seed: int = 0,
    attacks: Sequence[str] | np.ndarray | None = None,
    utt_ids: Sequence[str] | np.ndarray | None = None,
) -> Selection:
    """Herding per class: greedily match the class mean with the mean of the chosen samples."""
    import torch

    _class_mode_only("herding", fake_mode)
    ctx = _prepare(embeddings, labels, rate, real_rate, fake_rate, metric, seed, attacks, utt_ids)

    def choose(ctx: _Context, c: int, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        x = _class_tensor(ctx, rows)
        # With cosine the target is the mean of the normalised vectors, the class mean on that sphere.
        if ctx.metric == "cosine":
            mean = x.double().mean(dim=0)
        else:
            mean = torch.from_numpy(ctx.means[c]).to(x.device)
        picks = greedy_herding(x, k, mean)
        return rows[picks], ctx.dist[rows[picks]]

    return _per_class(ctx, choose)


STRATEGIES: dict[str, Strategy] = {
    "nc": nc,
    "random": random,
    "farthest": farthest,
    "kcenter": kcenter,
    "herding": herding,
}


def get_strategy(name: str) -> Strategy:
    try:
        return STRATEGIES[name]
    except KeyError:
        raise ConfigError(f"unknown strategy {name!r}; choose one of {', '.join(STRATEGIES)}") from None


# ---------------------------------------------------------------------------------------------------
# folders -> manifest


def summary_path(out: str | Path) -> Path:
    """``<out stem>.summary.json`` beside the manifest."""
    out = Path(out)
    return out.parent / f"{out.stem}.summary.json"


def sample_folders(
    emb_dirs: Sequence[str | Path],
    strategy: str = "nc",
    rate: float = 0.1,
    real_rate: float | None = None,
    fake_rate: float | None = None,
    fake_mode: str = "class",
    metric: str = "euclidean",
    seed: int = 0,
    out: str | Path | None = None,
    progress: bool = False,
) -> pd.DataFrame:
    """Select from each embedding folder separately (class means are per source) and take the union.

    The union is deduplicated by (dataset, utt_id), keeping the first occurrence in folder order, so
    the earlier folder's ``source`` and ``distance`` win. The result holds the manifest columns of the
    folders' ``index.csv`` (without the source model's ``score``) plus ``source`` (the index's source
    name when it has one, else the folder name), ``distance`` and ``strategy``. With ``out`` it is written
    as a manifest, and the summary (``df.attrs["summary"]``) goes to ``<out stem>.summary.json``.
    """
    from ..data.manifest import write_manifest
    from ..fileio import ensure_writable_dir, write_json
    from .embeddings import load_embeddings

    select = get_strategy(strategy)
    # Check every option before any long work, with the names the command line uses.
    check_rate(rate, "rate")
    if real_rate is not None:
        check_rate(real_rate, "real_rate")
    if fake_rate is not None:
        check_rate(fake_rate, "fake_rate")
    if fake_mode not in FAKE_MODES:
        raise ConfigError(f"fake_mode must be one of {', '.join(FAKE_MODES)}, got {fake_mode!r}")
    if strategy != "nc":
        _class_mode_only(strategy, fake_mode)
    if metric not in METRICS:
        raise ConfigError(f"metric must be one of {', '.join(METRICS)}, got {metric!r}")
    if not emb_dirs:
        raise ConfigError("no embedding folders given")
    if out is not None:
        ensure_writable_dir(Path(out).parent)

    parts, every_row, sources, notices = [], [], [], []
    for emb_dir in tqdm(list(emb_dirs), desc=f"sample ({strategy})", unit="folder", disable=not progress):
        es = load_embeddings(emb_dir, mmap=True, require_head=False)
        index = es.index
        try:
            sel = select(
                es.embeddings, es.labels, rate, real_rate=real_rate, fake_rate=fake_rate,
                fake_mode=fake_mode, metric=metric, seed=seed,
                attacks=index["attack"].to_numpy(), utt_ids=index["utt_id"].to_numpy(),
            )
        except ConfigError:
            raise
        except NcdetectError as err:
            raise NcdetectError(f"{es.path}: {err}") from None
        name = es.name
        notices += [f"{es.path}: {note}" for note in sel.notices]
        rows = index.iloc[sel.indices].drop(columns=["score"], errors="ignore").reset_index(drop=True)
        rows["source"] = name
        rows["distance"] = sel.distances
        rows["strategy"] = strategy
        parts.append(rows)
        every_row.append(index[["dataset", "utt_id", "label", "attack"]])
        sources.append(_source_summary(name, es.path, index, rows))

    selected = pd.concat(parts, ignore_index=True)
    dup = selected.duplicated(subset=["dataset", "utt_id"], keep="first")
    selected = selected.loc[~dup].reset_index(drop=True)
    population = pd.concat(every_row, ignore_index=True)
    population = population.loc[~population.duplicated(subset=["dataset", "utt_id"], keep="first")]

    summary = {
        "strategy": strategy,
        "rate": rate,
        "real_rate": rate if real_rate is None else real_rate,
        "fake_rate": rate if fake_rate is None else fake_rate,
        "fake_mode": fake_mode,
        "metric": metric,
        "seed": seed,
        "per_class": _counts_table(population["label"], selected["label"]),
        "per_attack": _counts_table(population["attack"], selected["attack"]),
        "per_source": sources,
        "overall": _rate_entry(len(population), len(selected)),
        "duplicates_dropped": int(dup.sum()),
        "notices": notices,
    }
    selected.attrs["summary"] = summary
    if out is not None:
        write_manifest(selected, out)
        write_json(summary_path(out), summary)
    return selected


def _rate_entry(total: int, chosen: int) -> dict[str, Any]:
    return {"total": int(total), "selected": int(chosen), "rate": round(chosen / total, 6) if total else 0.0}


def _counts_table(population: pd.Series, chosen: pd.Series) -> dict[str, dict[str, Any]]:
    totals = population.value_counts()
    picked = chosen.value_counts()
    return {str(key): _rate_entry(int(totals[key]), int(picked.get(key, 0))) for key in sorted(totals.index)}


def _source_summary(name: str, path: Path, index: pd.DataFrame, rows: pd.DataFrame) -> dict[str, Any]:
    return {
        "source": name,
        "emb_dir": str(path),
        "per_class": _counts_table(index["label"], rows["label"]),
        "overall": _rate_entry(len(index), len(rows)),
    }


def format_summary(summary: dict[str, Any]) -> str:
    """The summary as a few readable lines for the terminal."""

    def line(name: str, entry: dict[str, Any]) -> str:
        return f"  {name:<24} {entry['selected']:>9} / {entry['total']:<9} ({100 * entry['rate']:.2f}%)"

    out = [
        f"strategy {summary['strategy']}, real rate {summary['real_rate']:g}, "
        f"fake rate {summary['fake_rate']:g}, fake mode {summary['fake_mode']}, "
        f"metric {summary['metric']}, seed {summary['seed']}",
        "per class:",
    ]
    out += [line(k, v) for k, v in summary["per_class"].items()]
    out.append("per attack:")
    out += [line(k, v) for k, v in summary["per_attack"].items()]
    out.append("per source (before deduplication):")
    out += [line(s["source"], s["overall"]) for s in summary["per_source"]]
    out.append(line("overall", summary["overall"]))
    if summary["duplicates_dropped"]:
        n_dup = summary["duplicates_dropped"]
        out.append(f"  {n_dup} duplicate (dataset, utt_id) rows dropped across folders")
    return "\n".join(out)
