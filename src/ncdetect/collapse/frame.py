"""The sampling frame: everything the selection strategies share (docs/method.md, "Selections").

A strategy is only its choice, ``choose(view, rows, k) -> (rows, distances)``: pick k of the given rows
of one class. The frame around it validates the inputs, scores every row, walks the classes of one
source, works out each class's budget, splits a class into groups where a mode asks for it, puts the
samples the source model classifies with a margin first, breaks ties and assembles the
:class:`Selection`. The strategies themselves and their registry are in :mod:`.strategies`.

**Budget.** ``labels`` are class ids (0 = spoof, 1 = bonafide); ``real_rate`` (bonafide) and
``fake_rate`` (spoof) default to ``rate``. Each class c with N_c samples keeps
k_c = max(1, round(r_c * N_c)) of them, where ``round`` is Python's built-in (round half to even:
2.5 -> 2, 3.5 -> 4) applied to the float product exactly as written, so 0.5 * 5 keeps 2, 0.5 * 7 keeps 4
and 0.3 * 5 (1.5 in floating point) keeps 2. A class with no samples is skipped with a notice in
``Selection.notices``.

**Score.** Every row is scored by its distance to its own class mean mu_c (the mean over the whole class
of this source, never pooled across sources): Euclidean, or with ``metric="cosine"`` 1 - cos(h, mu_c)
(a zero vector has distance 1). With ``views`` (the same rows embedded by other source models: cross-source
scoring) the score is the mean over all spaces (this one first) of the per-space distance normalised
within the class, each space with its own class means: ``combine="rank"`` (default) maps a space's
distances to their rank in the class scaled to [0, 1] (0 = nearest; ties share their mean rank, as
``scipy.stats.rankdata(method="average")``), ``combine="z"`` z-scores them (a class of equal distances
scores 0). ``Selection.distances`` is the score each row was chosen by.

**Modes** (strategies that take them: nc), ``fake_mode`` for spoof and ``real_mode`` for bonafide:

- ``class``: the class is one group with budget k_c (Algorithms 1 and 2).
- ``attack`` (spoof) / ``speaker`` (bonafide): one group per attack / speaker, each with its own
  k_g = max(1, round(r_c * N_g)), so every generator / voice stays represented. The score stays the one
  to the class mean, so the modes differ only in how the budget is spread; the total can exceed k_c by
  the rounding of each group.
- ``kmeans``: k-means clusters of the class in the first space (seeded; as many clusters as the class has
  attacks / speakers when there are at least two, else 8; never more than k_c), k_c shared in proportion
  to cluster size (largest remainder), and within a cluster the score is the distance to its centroid.
- ``spread``: k_c samples at evenly spaced ranks of the score (the midpoints of k_c equal bins), near and
  far alike; the order does not apply.

**Order** (nc, nc-kcenter): ``near`` keeps the lowest scores (the paper), ``far`` the highest, ``auto``
near when the class's rate is below ``order_switch`` (default 0.2) and far at or above it (Sorscher et
al. 2022, "Beyond neural scaling laws": keep the easy samples at small budgets, the hard ones at large).

**Margin.** With ``min_margin`` M and the source model's ``scores`` (logit(bonafide) - logit(spoof), the
index.csv ``score``), the rows it classifies correctly with the margin (score > M for bonafide, score < -M
for spoof) are eligible. A group with at least k_g eligible rows chooses among them only; one with fewer
keeps them all and fills the rest from its other rows by the same rule, with a notice, so the budget does
not change.

**Ties** in the score are broken by utt_id (lexicographic), then by row.

**Random streams.** Seeded choices draw from a stream keyed by (seed, stream, class), where ``stream``
names the source (``sample_folders`` passes the source name), so two sources of equal class sizes draw
different rows; ``stream=None`` keys it by (seed, class).

Distances are computed in float64 from differences (never the expanded ||h||^2 - 2 h.mu + ||mu||^2),
chunk by chunk, so a memory-mapped 1M x 256 float32 array is read twice and never copied whole.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .. import BONAFIDE, SPOOF
from ..errors import ConfigError, NcdetectError
from .metrics import class_name, class_sums

# Rows per block in the distance pass: the float64 differences of 4,096 x 256 stay in the CPU cache.
CHUNK_ROWS = 4_096
FAKE_MODES = ("class", "attack", "kmeans", "spread")
REAL_MODES = ("class", "speaker", "kmeans", "spread")
METRICS = ("euclidean", "cosine")
ORDERS = ("near", "far", "auto")
COMBINES = ("rank", "z")
DEFAULT_ORDER_SWITCH = 0.2
DEFAULT_POOL_FACTOR = 2.0
DEFAULT_KMEANS_CLUSTERS = 8
# The column that groups each class in the group modes.
GROUP_MODE = {SPOOF: "attack", BONAFIDE: "speaker"}
# The modes that read a class's group column (kmeans counts its groups for the number of clusters).
GROUPED_MODES = ("attack", "speaker", "kmeans")


@dataclass
class Selection:
    """Chosen rows (ascending row indices into the embeddings) and the score each was chosen by."""

    indices: np.ndarray
    distances: np.ndarray
    notices: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.indices.size)


@dataclass(frozen=True)
class Options:
    """The validated options of one selection (see the module doc for their meaning)."""

    rates: dict[int, float]
    modes: dict[int, str]
    metric: str = "euclidean"
    seed: int = 0
    order: str = "near"
    order_switch: float = DEFAULT_ORDER_SWITCH
    min_margin: float | None = None
    pool_factor: float = DEFAULT_POOL_FACTOR
    combine: str = "rank"


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


def check_choice(value: str, choices: Sequence[str], name: str) -> str:
    if value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
    return value


def make_options(
    rate: float,
    *,
    real_rate: float | None = None,
    fake_rate: float | None = None,
    fake_mode: str = "class",
    real_mode: str = "class",
    metric: str = "euclidean",
    seed: int = 0,
    order: str = "near",
    order_switch: float = DEFAULT_ORDER_SWITCH,
    min_margin: float | None = None,
    pool_factor: float = DEFAULT_POOL_FACTOR,
    combine: str = "rank",
) -> Options:
    """Check every option's value (not yet whether the strategy takes it) and bundle them."""
    check_choice(metric, METRICS, "metric")
    rates = {
        BONAFIDE: check_rate(rate, "rate") if real_rate is None else check_rate(real_rate, "real_rate"),
        SPOOF: check_rate(rate, "rate") if fake_rate is None else check_rate(fake_rate, "fake_rate"),
    }
    check_choice(fake_mode, FAKE_MODES, "fake_mode")
    check_choice(real_mode, REAL_MODES, "real_mode")
    check_choice(order, ORDERS, "order")
    check_choice(combine, COMBINES, "combine")
    order_switch = check_rate(order_switch, "order_switch")
    if min_margin is not None:
        min_margin = float(min_margin)
        if not np.isfinite(min_margin):
            raise ConfigError(f"min_margin must be a finite number, got {min_margin!r}")
    pool_factor = float(pool_factor)
    if not pool_factor >= 1.0:  # also rejects NaN
        raise ConfigError(f"pool_factor must be at least 1 (the pool holds pool_factor * k), "
                          f"got {pool_factor:g}")
    return Options(
        rates=rates, modes={SPOOF: fake_mode, BONAFIDE: real_mode}, metric=metric, seed=int(seed),
        order=order, order_switch=order_switch, min_margin=min_margin, pool_factor=pool_factor,
        combine=combine,
    )


def stream_key(name: str) -> int:
    """A stable 63-bit integer for a source name (Python's hash() changes between processes)."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "little") >> 1


# ---------------------------------------------------------------------------------------------------
# context: validated inputs and scores


@dataclass
class Context:
    """What every choice needs: validated inputs, class means and the score of every row."""

    embeddings: np.ndarray  # the first space
    labels: np.ndarray
    options: Options
    keys: np.ndarray | None  # utt_ids as an object array, for tie-breaking
    groups: dict[int, np.ndarray | None]  # class -> its attack (spoof) / speaker (bonafide) column
    means: np.ndarray  # 2 x D float64 in the first space (rows of absent classes are zero)
    counts: np.ndarray
    score: np.ndarray  # N float64: distance to the own class mean, or the cross-source combination
    eligible: np.ndarray | None  # N bool with min_margin, else None
    stream: int | None
    notices: list[str]

    def keys_of(self, rows: np.ndarray) -> np.ndarray | None:
        return None if self.keys is None else self.keys[rows]


@dataclass(frozen=True)
class RowData:
    """What comes with the embeddings: per-row columns (N long, or None), other views, the stream name."""

    attacks: Sequence[str] | np.ndarray | None = None
    speakers: Sequence[str] | np.ndarray | None = None
    utt_ids: Sequence[str] | np.ndarray | None = None
    scores: Sequence[float] | np.ndarray | None = None  # the source model's logit(bonafide) - logit(spoof)
    views: Sequence[np.ndarray] = ()
    stream: str | None = None


def prepare(embeddings: np.ndarray, labels: np.ndarray, options: Options, data: RowData) -> Context:
    check_embeddings(embeddings, "embeddings")
    n = embeddings.shape[0]
    labels = np.asarray(labels)
    if labels.shape != (n,):
        raise NcdetectError(f"{labels.size} labels for {n} embeddings; they must match row for row")
    if n and not np.isin(labels, (SPOOF, BONAFIDE)).all():
        raise NcdetectError("labels must be 0 (spoof) or 1 (bonafide)")
    labels = labels.astype(np.int64, copy=False)
    keys = as_column(data.utt_ids, n, "utt_ids")
    groups = {SPOOF: as_column(data.attacks, n, "attacks"), BONAFIDE: as_column(data.speakers, n, "speakers")}
    for c, mode in options.modes.items():
        if mode == GROUP_MODE[c] and groups[c] is None:
            name = "fake_mode" if c == SPOOF else "real_mode"
            raise ConfigError(f"{name} {mode!r} needs the {mode} of every row ({mode}s=...)")

    means, counts = class_means(embeddings, labels, keys)
    notices = [
        f"class {class_name(c)} has no samples; skipped" for c in (SPOOF, BONAFIDE) if counts[c] == 0
    ]
    score = distances_to_own_mean(embeddings, labels, means, options.metric)
    if data.views:
        spaces = [score]
        for i, view in enumerate(data.views):
            check_embeddings(view, f"views[{i}]")
            if view.shape[0] != n:
                raise NcdetectError(f"views[{i}] has {view.shape[0]} rows for {n} embeddings; "
                                    "a view holds the same rows embedded by another model")
            view_means, _ = class_means(view, labels, keys, name=f"views[{i}] ")
            spaces.append(distances_to_own_mean(view, labels, view_means, options.metric))
        score = combine_spaces(spaces, labels, options.combine)
    eligible = None
    if options.min_margin is not None:
        eligible = margin_mask(data.scores, labels, options.min_margin)
    stream = None if data.stream is None else stream_key(data.stream)
    return Context(embeddings, labels, options, keys, groups, means, counts, score, eligible, stream, notices)


def check_embeddings(x: Any, name: str) -> None:
    if not isinstance(x, np.ndarray) or x.ndim != 2:
        raise NcdetectError(f"{name} must be a 2-D array (N x D), got shape {getattr(x, 'shape', None)}")
    if not np.issubdtype(x.dtype, np.floating):
        raise NcdetectError(f"{name} must be floating point, got {x.dtype}")


def as_column(values: Any, n: int, name: str) -> np.ndarray | None:
    if values is None:
        return None
    arr = np.asarray(values, dtype=object)
    if arr.shape != (n,):
        raise NcdetectError(f"{name} has {arr.size} entries for {n} embeddings; they must match row for row")
    return arr


def margin_mask(scores: Any, labels: np.ndarray, margin: float) -> np.ndarray:
    """Rows classified correctly with the margin: score > M for bonafide, score < -M for spoof."""
    if scores is None:
        raise ConfigError("min_margin needs the source model's score of every row (scores=...)")
    scores = np.asarray(scores, dtype=np.float64)
    if scores.shape != labels.shape:
        raise NcdetectError(f"scores has {scores.size} entries for {labels.size} embeddings")
    bad = np.flatnonzero(~np.isfinite(scores))
    if bad.size:
        raise NcdetectError(f"score of row {int(bad[0])} is not a finite number")
    return np.where(labels == BONAFIDE, scores > margin, scores < -margin)


def class_means(
    embeddings: np.ndarray, labels: np.ndarray, keys: np.ndarray | None, name: str = ""
) -> tuple[np.ndarray, np.ndarray]:
    sums, counts = class_sums(embeddings, labels, 2)
    if not np.isfinite(sums).all():
        from .embeddings import first_nonfinite_row

        bad = first_nonfinite_row(embeddings)
        where = f" (utt_id {keys[bad]})" if keys is not None and bad is not None else ""
        raise NcdetectError(f"{name}embeddings row {bad}{where} holds NaN or Inf values")
    means = np.zeros_like(sums)
    present = counts > 0
    means[present] = sums[present] / counts[present, None]
    return means, counts


def distances_to_own_mean(
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


def combine_spaces(spaces: list[np.ndarray], labels: np.ndarray, combine: str) -> np.ndarray:
    """Mean over spaces of each space's distances normalised within each class (rank or z-score)."""
    from scipy.stats import rankdata

    out = np.zeros_like(spaces[0])
    for c in (SPOOF, BONAFIDE):
        rows = np.flatnonzero(labels == c)
        if rows.size == 0:
            continue
        for d in spaces:
            dc = d[rows]
            if combine == "rank":
                norm = (rankdata(dc, method="average") - 1) / max(rows.size - 1, 1)
            else:
                std = dc.std()
                norm = (dc - dc.mean()) / std if std > 0 else np.zeros_like(dc)
            out[rows] += norm
    return out / len(spaces)


# ---------------------------------------------------------------------------------------------------
# ranking with ties broken by utt_id


def smallest(dist: np.ndarray, k: int, keys: np.ndarray | None) -> np.ndarray:
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


def ranked(dist: np.ndarray, k: int, keys: np.ndarray | None, order: str) -> np.ndarray:
    """Positions of the k best by ``order``: the smallest for near, the largest for far (ties by key)."""
    return smallest(dist if order == "near" else -dist, k, keys)


def sorted_order(dist: np.ndarray, keys: np.ndarray | None) -> np.ndarray:
    """Full order by (distance, key, position)."""
    if keys is None:
        return np.argsort(dist, kind="stable")
    order = np.argsort(keys, kind="stable")
    return order[np.argsort(dist[order], kind="stable")]


# ---------------------------------------------------------------------------------------------------
# per class: the view a choice sees, groups, margin, assembly


@dataclass
class ClassView:
    """One class of one source as a choice sees it."""

    ctx: Context
    c: int
    rate: float
    mode: str
    order: str  # near or far (auto resolved by the class's rate)
    score: np.ndarray  # N float64; the class's rows hold the score they are chosen by

    def keys(self, rows: np.ndarray) -> np.ndarray | None:
        return self.ctx.keys_of(rows)

    def rng(self) -> np.random.Generator:
        """The seeded stream of this (seed, source, class)."""
        o, s = self.ctx.options, self.ctx.stream
        return np.random.default_rng([o.seed, self.c] if s is None else [o.seed, s, self.c])

    def points(self, rows: np.ndarray) -> np.ndarray:
        """The rows in the first space as float32, L2-normalised under the cosine metric."""
        x = np.asarray(self.ctx.embeddings[rows], dtype=np.float32)
        return l2_normalise(x) if self.ctx.options.metric == "cosine" else x


Choose = Callable[[ClassView, np.ndarray, int], tuple[np.ndarray, np.ndarray]]


def l2_normalise(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.divide(x, norms, out=np.zeros_like(x), where=norms > 0)


def resolve_order(order: str, rate: float, switch: float) -> str:
    if order == "auto":
        return "near" if rate < switch else "far"
    return order


def run(choose: Choose, ctx: Context, fixed_order: str | None = None) -> Selection:
    """Per class: budget, groups, margin, the strategy's choice; then the assembled Selection."""
    o = ctx.options
    chosen: list[tuple[np.ndarray, np.ndarray]] = []
    for c in (SPOOF, BONAFIDE):
        rows = np.flatnonzero(ctx.labels == c)
        if rows.size == 0:
            continue
        k = n_keep(o.rates[c], rows.size)
        order = fixed_order or resolve_order(o.order, o.rates[c], o.order_switch)
        view = ClassView(ctx, c, o.rates[c], o.modes[c], order, ctx.score)
        filled = 0
        for group, k_g in split(view, rows, k):
            picked, dist, n_filled = _choose_eligible(choose, view, group, k_g)
            chosen.append((picked, dist))
            filled += n_filled
        if ctx.eligible is not None:
            n_ok = int(np.count_nonzero(ctx.eligible[rows]))
            note = (f"min_margin {o.min_margin:g}: {n_ok} of {rows.size} {class_name(c)} rows are "
                    "classified correctly with the margin")
            if filled:
                ctx.notices.append(f"{note}; {filled} chosen rows come from the others (too few eligible)")
    return finish(ctx, chosen)


def _choose_eligible(
    choose: Choose, view: ClassView, rows: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray, int]:
    elig = view.ctx.eligible
    if elig is None:
        return (*choose(view, rows, k), 0)
    ok, rest = rows[elig[rows]], rows[~elig[rows]]
    if ok.size >= k:
        return (*choose(view, ok, k), 0)
    parts = [choose(view, ok, ok.size)] if ok.size else []
    parts.append(choose(view, rest, k - ok.size))
    return (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]), k - ok.size)


def split(view: ClassView, rows: np.ndarray, k: int) -> list[tuple[np.ndarray, int]]:
    """The class's groups under its mode, each with its budget (groups with no budget are left out)."""
    if view.mode == GROUP_MODE[view.c]:
        column = view.ctx.groups[view.c]
        assert column is not None  # checked in prepare
        names = column[rows].astype(str)
        out = []
        for name in sorted(set(names)):
            members = rows[names == name]
            out.append((members, n_keep(view.rate, members.size)))
        return out
    if view.mode == "kmeans":
        return _clusters(view, rows, k)
    return [(rows, k)]


def allocate(k: int, sizes: np.ndarray) -> np.ndarray:
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


def _clusters(view: ClassView, rows: np.ndarray, k: int) -> list[tuple[np.ndarray, int]]:
    """k-means clusters of the class; the view's score becomes the distance to the own centroid."""
    from sklearn.cluster import KMeans, MiniBatchKMeans

    ctx = view.ctx
    x = view.points(rows)
    column = ctx.groups[view.c]
    n_groups = len(set(column[rows].astype(str))) if column is not None else 0
    n_clusters = n_groups if n_groups >= 2 else DEFAULT_KMEANS_CLUSTERS
    n_clusters = max(1, min(n_clusters, k, rows.size))
    if n_clusters == 1:
        assign = np.zeros(rows.size, dtype=np.int64)
        centroids = x.astype(np.float64).mean(axis=0, keepdims=True)
    else:
        # Full k-means up to 50k points; mini-batch beyond, where Lloyd iterations would dominate.
        seed = ctx.options.seed
        if rows.size <= 50_000:
            model = KMeans(n_clusters=n_clusters, n_init=3, random_state=seed)
        else:
            model = MiniBatchKMeans(n_clusters=n_clusters, n_init=3, random_state=seed, batch_size=4096)
        assign = model.fit_predict(x).astype(np.int64)
        centroids = model.cluster_centers_.astype(np.float64)
    alloc = allocate(k, np.bincount(assign, minlength=n_clusters))
    view.score = view.score.copy()  # the class-mean scores stay intact in the context
    out = []
    for j in range(n_clusters):
        members = np.flatnonzero(assign == j)
        if members.size == 0 or alloc[j] == 0:
            continue
        view.score[rows[members]] = distance_to(x[members], centroids[j], ctx.options.metric)
        out.append((rows[members], int(alloc[j])))
    return out


def finish(ctx: Context, chosen: list[tuple[np.ndarray, np.ndarray]]) -> Selection:
    if chosen:
        idx = np.concatenate([c[0] for c in chosen]).astype(np.int64)
        dist = np.concatenate([c[1] for c in chosen]).astype(np.float64)
    else:
        idx, dist = np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float64)
    order = np.argsort(idx, kind="stable")
    return Selection(indices=idx[order], distances=dist[order], notices=list(ctx.notices))
