"""Selection strategies: each is only its choice, registered in :data:`STRATEGIES`.

The frame they share (validation, scores, per-class budgets k_c = max(1, round(r_c * N_c)) with Python's
half-to-even ``round``, modes, order, margin, ties by utt_id, random streams per source) is described
in :mod:`.frame`. Every registered strategy is callable with one signature::

    nc(embeddings, labels, rate, *, real_rate=None, fake_rate=None, fake_mode="class", real_mode="class",
       metric="euclidean", seed=0, order="near", order_switch=0.2, min_margin=None, pool_factor=2.0,
       combine="rank", attacks=None, speakers=None, utt_ids=None, scores=None, views=(), stream=None)
       -> Selection

and ``select(name, embeddings, labels, rate, **options)`` calls one by name. An option that a strategy
does not take (a mode for ``random``, say) is an error unless it has its default value.

- ``nc``: the samples nearest their class mean (Algorithms 1 and 2), with the modes, the order
  (``near``/``far``/``auto``) and cross-source ``views``.
- ``farthest``: the reverse of ``nc`` (the largest scores).
- ``nc-kcenter``: representative and diverse: the ``ceil(pool_factor * k)`` best-ranked samples by the nc
  score (under ``order``), then greedy k-center within that pool down to k, starting from the pool's
  best-ranked sample (so it does not depend on the seed). ``pool_factor=1`` gives ``nc``.
- ``random``: a seeded uniform draw of k_c per class.
- ``kcenter``: greedy k-center (Gonzalez) per class in torch (GPU when present), from a seeded random
  start. The nearest-centre distances are updated lazily in blocks (matrix products instead of one pass
  over the data per centre), which picks the same centres as the plain loop, so 100k points to 10k
  centres takes seconds on a CPU.
- ``herding``: mean-matching herding (Welling 2009; the iCaRL exemplar rule) per class in torch: each
  step adds the sample that brings the mean of the chosen set closest to the class mean.

``metric="cosine"`` makes kcenter, nc-kcenter and herding work on L2-normalised embeddings, where
Euclidean order equals cosine order. ``random``, ``kcenter`` and ``herding`` do not choose by the score;
they report it, so selections compare. ``min_margin`` applies to every strategy.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import ConfigError
from ..registry import Registry
from .frame import (
    DEFAULT_ORDER_SWITCH,
    DEFAULT_POOL_FACTOR,
    Choose,
    ClassView,
    RowData,
    Selection,
    make_options,
    prepare,
    ranked,
    run,
    sorted_order,
)

# Options a strategy takes only when it says so; the value each must keep otherwise.
GATED = {
    "fake_mode": ("modes", "class"),
    "real_mode": ("modes", "class"),
    "order": ("order", "near"),
    "order_switch": ("order", DEFAULT_ORDER_SWITCH),
    "views": ("views", ()),
    "pool_factor": ("pool", DEFAULT_POOL_FACTOR),
}


@dataclass(frozen=True)
class Strategy:
    """A registered choice and what it takes: ``modes``, ``order``, ``views`` (cross-source), ``pool``."""

    name: str
    choose: Choose
    takes: frozenset[str] = frozenset()
    fixed_order: str | None = None
    seeded: bool = False  # the choice itself draws from the seed (k-means modes add to this)
    summary: str = ""  # one line for --help and docs/commands.md

    def __call__(self, embeddings: np.ndarray, labels: np.ndarray, rate: float, **options: Any) -> Selection:
        return select(self.name, embeddings, labels, rate, **options)

    def uses_seed(self, fake_mode: str = "class", real_mode: str = "class") -> bool:
        """Whether the selection changes with the seed (k-means clusters are seeded)."""
        return self.seeded or ("modes" in self.takes and "kmeans" in (fake_mode, real_mode))


class StrategyRegistry(Registry[Strategy]):
    """The registry, also readable as a mapping (``STRATEGIES["nc"]``, ``.items()``)."""

    def __getitem__(self, name: str) -> Strategy:
        return self.get(name)

    def items(self) -> list[tuple[str, Strategy]]:
        return [(name, self.get(name)) for name in self.names()]


# "full" is the full-data baseline of `ncdetect run`, not a selection.
STRATEGIES: StrategyRegistry = StrategyRegistry("strategy", reserved=("full",))


def strategy(name: str, *, takes: Sequence[str] = (), **kwargs: Any) -> Any:
    """Decorator: register a choice function as the strategy ``name``; returns the Strategy."""

    def decorate(choose: Choose) -> Strategy:
        obj = Strategy(name, choose, frozenset(takes), **kwargs)
        STRATEGIES.add(name, obj)
        return obj

    return decorate


def takers(capability: str) -> list[str]:
    return [name for name, s in STRATEGIES.items() if capability in s.takes]


def select(
    name: str,
    embeddings: np.ndarray,
    labels: np.ndarray,
    rate: float,
    *,
    attacks: Sequence[str] | np.ndarray | None = None,
    speakers: Sequence[str] | np.ndarray | None = None,
    utt_ids: Sequence[str] | np.ndarray | None = None,
    scores: Sequence[float] | np.ndarray | None = None,
    views: Sequence[np.ndarray] = (),
    stream: str | None = None,
    **options: Any,
) -> Selection:
    """Run the registered strategy ``name``: the frame around its choice (see :mod:`.frame`)."""
    chosen = STRATEGIES.get(name)
    check_takes(chosen, {**options, "views": tuple(views)})
    opts = make_options(rate, **options)
    data = RowData(attacks=attacks, speakers=speakers, utt_ids=utt_ids, scores=scores, views=views,
                   stream=stream)
    ctx = prepare(embeddings, labels, opts, data)
    return run(chosen.choose, ctx, fixed_order=chosen.fixed_order)


def check_takes(chosen: Strategy, options: dict[str, Any]) -> None:
    """An option away from its default, for a strategy that does not take it, is a ConfigError.

    ``options`` are keyword options of ``select`` or of ``sample_folders`` (``cross_source=True`` counts
    as views); other keys are not looked at.
    """
    if options.get("cross_source"):
        options = {**options, "views": ("cross-source",)}
    for option, (capability, default) in GATED.items():
        value = options.get(option, default)
        if capability in chosen.takes or value == default:
            continue
        names = takers(capability)
        which = f"strategy {names[0]}" if len(names) == 1 else f"strategies {', '.join(names)}"
        if option == "views":
            raise ConfigError(f"cross-source views apply to {which} only; {chosen.name} does not rank by "
                              "the distance to the class mean")
        raise ConfigError(f"{option} {value!r} applies to {which} only; "
                          f"{chosen.name} takes {option} {default!r}")


def uses_seed(name: str, fake_mode: str = "class", real_mode: str = "class") -> bool:
    """Whether strategy ``name`` with these modes depends on the seed (a pipeline draws it once if not)."""
    return STRATEGIES.get(name).uses_seed(fake_mode, real_mode)


# ---------------------------------------------------------------------------------------------------
# the choices


@strategy("nc", takes=("modes", "order", "views"),
          summary="nearest the class mean (the paper), with modes, order and cross-source views")
def nc(view: ClassView, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    d = view.score[rows]
    if view.mode == "spread":
        order = sorted_order(d, view.keys(rows))
        # Midpoints of k equal-width rank bins: distinct for k <= n, and symmetric in the ranks.
        picks = order[((np.arange(k) + 0.5) * rows.size / k).astype(np.int64)]
    else:
        picks = ranked(d, k, view.keys(rows), view.order)
    return rows[picks], d[picks]


# The reverse of nc: the same choice with the order fixed to far.
farthest = Strategy("farthest", nc.choose, frozenset({"views"}), fixed_order="far",
                    summary="farthest from the class mean (the reverse of nc)")
STRATEGIES.add("farthest", farthest)


@strategy("nc-kcenter", takes=("order", "views", "pool"),
          summary="nc-nearest pool of pool_factor * k, then greedy k-center within it down to k")
def nc_kcenter(view: ClassView, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    d = view.score[rows]
    keys = view.keys(rows)
    size = min(rows.size, max(k, math.ceil(view.ctx.options.pool_factor * k)))
    pool = ranked(d, size, keys, view.order)
    # Best-ranked first, so the k-center start (position 0) is the most representative sample.
    best = sorted_order(d[pool] if view.order == "near" else -d[pool], None if keys is None else keys[pool])
    pool = pool[best]
    picks = pool[greedy_kcenter(_tensor(view.points(rows[pool])), k, start=0)]
    return rows[picks], d[picks]


@strategy("random", seeded=True, summary="uniform, class-stratified, seeded")
def random_uniform(view: ClassView, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    picks = view.rng().choice(rows.size, size=k, replace=False)
    return rows[picks], view.score[rows[picks]]


@strategy("kcenter", seeded=True, summary="greedy k-center from a seeded random start")
def kcenter(view: ClassView, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    start = int(view.rng().integers(rows.size))
    picks = greedy_kcenter(_tensor(view.points(rows)), k, start)
    return rows[picks], view.score[rows[picks]]


@strategy("herding", summary="mean-matching herding towards the class mean")
def herding(view: ClassView, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    import torch

    x = _tensor(view.points(rows))
    if view.ctx.options.metric == "cosine":
        # The target is the mean of the class's normalised vectors, the class mean on that sphere.
        class_rows = np.flatnonzero(view.ctx.labels == view.c)
        same = class_rows.size == rows.size
        mean = (x if same else _tensor(view.points(class_rows))).double().mean(dim=0)
    else:
        mean = torch.from_numpy(view.ctx.means[view.c]).to(x.device)
    picks = greedy_herding(x, k, mean)
    return rows[picks], view.score[rows[picks]]


# ---------------------------------------------------------------------------------------------------
# torch pieces of kcenter and herding


def _device() -> Any:
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _tensor(x: np.ndarray) -> Any:
    import torch

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
