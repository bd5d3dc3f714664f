"""Coverage of a selection against its pool: what a selection kept, so a reader sees why two differ.

``sample`` writes it into the summary JSON (key ``coverage``) and :func:`format_coverage` prints it. The
pool is the union of the embedding folders' rows, deduplicated by (dataset, utt_id) like the selection.
``mode`` (``--coverage``): ``estimate`` (the default) computes the nearest-neighbour means on seeded
samples of the pool, each with its sample size and 95% interval; ``exact`` uses every row; ``off``
(``sample_folders(coverage="off")``) leaves coverage out of the summary.

- **Shares kept** (``per_attack``, ``per_speaker``, ``per_language``, ``per_duration_quartile``): for
  each value, ``{total, selected, rate}``. ``language`` comes from a ``language`` column when the index
  has one (the demo corpus' manifests do), else it is left out. The duration is the ``duration`` column
  (seconds) when there is one, else the audio header (``soundfile.info``, no decoding), read for at most
  ``MAX_HEADER_ROWS`` rows drawn with a fixed seed (every row under ``exact``); rows whose header cannot
  be read count as ``unknown``, with a notice. Quartiles are those of the pool's known durations.
- **Spaces** (one entry per embedding folder: ``source`` is its model, ``data`` the datasets it embeds;
  Euclidean, or on L2-normalised vectors under ``metric="cosine"``), per class:
  ``kept_nn``: the mean distance from a kept sample to its nearest other kept sample (how spread out the
  kept set is); ``pool_to_kept``: the mean distance from a pool sample to its nearest kept sample (how
  well the kept set covers the pool; 0 when everything is kept). Each mean is over ``<name>_points``
  query rows (under ``estimate`` at most ``ESTIMATE_POINTS``, drawn without replacement with a fixed
  seed), always against the whole kept set, and ``<name>_ci95`` is its 95% interval (normal
  approximation with the finite-population correction: zero width when every row is a query).
  ``nc1_kept`` and ``nc1_pool``: NC1 (see :mod:`.metrics`) of the kept rows and of the pool (under
  ``estimate`` each on at most ``ESTIMATE_NC1_ROWS`` rows drawn with a fixed seed: ``nc1_kept_rows``,
  ``nc1_pool_rows``); None when a class is missing.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pandas as pd

from .. import BONAFIDE, SPOOF
from ..errors import ConfigError
from .embeddings import read_rows
from .metrics import class_name, class_sums

COVERAGE_MODES = ("estimate", "exact", "off")
DEFAULT_COVERAGE = "estimate"
# Estimate: query rows per nearest-neighbour mean and class, and rows of the pool's NC1 (see the doc).
ESTIMATE_POINTS = 200
ESTIMATE_NC1_ROWS = 20_000
# Audio headers read for the duration quartiles (every row under exact).
MAX_HEADER_ROWS = 5_000
# Rows per block of the nearest-neighbour search: 1,024 x 4,096 float32 distances are 16 MiB (4,096 is
# as fast as 16,384 here and touches a quarter of the fresh memory, see nearest_rows).
QUERY_ROWS = 1_024
REF_ROWS = 4_096
# Rows per block of the NC1 passes (16 MiB of 256-d float32).
NC1_BLOCK = 16_384
Z95 = 1.959963984540054  # the standard normal's 97.5% quantile
SEED = 0
_HEADER_CACHE: dict[str, tuple[np.ndarray, int, str]] = {}


def rate_entry(total: int, chosen: int) -> dict[str, Any]:
    return {"total": int(total), "selected": int(chosen), "rate": round(chosen / total, 6) if total else 0.0}


def counts_table(population: pd.Series, chosen: pd.Series) -> dict[str, dict[str, Any]]:
    """Per value of the population: how many there are, how many were chosen, and the share."""
    totals = population.value_counts()
    picked = chosen.value_counts()
    return {str(key): rate_entry(int(totals[key]), int(picked.get(key, 0))) for key in sorted(totals.index)}


# ---------------------------------------------------------------------------------------------------
# shares kept


def durations(
    pool: pd.DataFrame, progress: bool = False, max_rows: int | None = MAX_HEADER_ROWS
) -> tuple[np.ndarray, list[str], np.ndarray]:
    """Seconds per row (NaN when unknown): the ``duration`` column, else the audio headers.

    Headers are read for at most ``max_rows`` rows drawn with a fixed seed (every row below that, or
    with None); the others stay NaN and are left out of the quartile table, which is then an estimate.
    Results are cached in the process, so the many selections of one experiment read them once.
    """
    if "duration" in pool.columns:
        values = pd.to_numeric(pool["duration"], errors="coerce").to_numpy(dtype=np.float64)
        bad = int(np.count_nonzero(~np.isfinite(values)))
        notes = [f"duration column: {bad} rows without a number count as unknown"] if bad else []
        return values, notes, np.arange(len(pool))
    import soundfile as sf

    from ..progress import progress_bar

    rows = _draw(len(pool), max_rows, np.random.default_rng(SEED))
    paths = pool["path"].iloc[rows].to_numpy().astype(str)
    key = hashlib.sha256("\n".join(paths).encode()).hexdigest()
    if key not in _HEADER_CACHE:
        read = np.full(rows.size, np.nan)
        failed, first = 0, ""
        for i, path in enumerate(progress_bar(paths, desc="durations", unit="file", enabled=progress)):
            try:
                # A missing file fails here, far faster than libsndfile's open.
                if not os.path.isfile(path):
                    raise OSError("file not found")
                read[i] = sf.info(path).duration
            except (RuntimeError, OSError, sf.LibsndfileError) as err:
                failed += 1
                first = first or f"{path}: {' '.join(str(err).split())}"
        _HEADER_CACHE[key] = (read, failed, first)
    read, failed, first = _HEADER_CACHE[key]
    out = np.full(len(pool), np.nan)
    out[rows] = read
    notes = []
    if rows.size < len(pool):
        notes.append(f"duration quartiles estimated from the audio headers of {rows.size} of {len(pool)} "
                     "pool rows (drawn with a fixed seed)")
    if failed:
        notes.append(f"duration of {failed} of {rows.size} pool rows unknown "
                     f"(unreadable audio header; first: {first})")
    return out, notes, rows


def duration_quartiles(seconds: np.ndarray) -> pd.Series:
    """Each row's quartile of the known durations, labelled with its range ("Q1 0.61-1.20 s")."""
    labels = np.full(seconds.size, "unknown", dtype=object)
    known = np.isfinite(seconds)
    if known.any():
        edges = np.quantile(seconds[known], [0.0, 0.25, 0.5, 0.75, 1.0])
        # side="left" on the inner edges puts a value equal to an edge in the lower quartile.
        q = np.clip(np.searchsorted(edges[1:-1], seconds[known], side="left"), 0, 3)
        names = [f"Q{j + 1} {edges[j]:.2f}-{edges[j + 1]:.2f} s" for j in range(4)]
        labels[known] = np.asarray(names, dtype=object)[q]
    return pd.Series(labels)


def shares(
    pool: pd.DataFrame, kept: np.ndarray, progress: bool = False, mode: str = DEFAULT_COVERAGE
) -> tuple[dict[str, Any], list[str]]:
    """Share kept per attack, speaker, language (when present) and duration quartile."""
    out = {
        "per_attack": counts_table(pool["attack"], pool["attack"][kept]),
        "per_speaker": counts_table(pool["speaker"], pool["speaker"][kept]),
    }
    if "language" in pool.columns:
        lang = pool["language"].astype(str)
        out["per_language"] = counts_table(lang, lang[kept])
    seconds, notices, rows = durations(pool, progress, None if mode == "exact" else MAX_HEADER_ROWS)
    quart = duration_quartiles(seconds[rows])
    out["per_duration_quartile"] = counts_table(quart, quart[kept[rows]])
    return out, notices


# ---------------------------------------------------------------------------------------------------
# spaces


def nearest_distance(query: np.ndarray, ref: np.ndarray, exclude: np.ndarray | None = None) -> np.ndarray:
    """Distance from each query row to its nearest ref row; ``exclude[i]`` is a ref row query i skips
    (none where it is negative).

    The nearest row is found with float32 matrix products on centred data (:func:`nearest_rows`), and
    its distance is then computed exactly, in float64 from the difference, so exact duplicates give 0
    and near-ties can only swap neighbours at equal distance.
    """
    ref = np.asarray(ref)
    return exact_distance(query, ref[nearest_rows(query, ref, exclude)])


def exact_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    diff = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    return np.sqrt(np.einsum("ij,ij->i", diff, diff))


def nearest_rows(
    query: np.ndarray, ref: np.ndarray, exclude: np.ndarray | None = None,
    prepare: Callable[[np.ndarray], np.ndarray] | None = None, rows: np.ndarray | None = None,
) -> np.ndarray:
    """The nearest ref row of each query row by ||r||^2 - 2 q.r, blockwise with numpy's BLAS (so the
    command never imports torch); with ``rows`` (ascending), the ref is ``ref[rows]`` and the result
    indexes ``rows``. ``prepare`` maps a block of ref rows as read to the query's space (cosine:
    L2-normalised). Everything is centred on the queries' mean, which keeps the float32 products
    accurate far from the origin.

    The ref is read block by block and never gathered whole, and the centred block and the scores go
    into two buffers allocated once. Fresh memory is what costs on the 2-vCPU VM the project runs on:
    first-touched pages fault in the kernel, and gathering 90k kept rows into a new 92 MB array took
    0.8-1.0 s of system time in a new process against 0.04-0.1 s for the copy itself.
    """
    prepare = prepare or (lambda block: block)
    q = np.array(query, dtype=np.float32)
    centre = q.mean(axis=0, dtype=np.float64).astype(np.float32)
    q -= centre
    q *= -2.0  # scaling by a power of two is exact: the products come out as -2 q.r
    best = np.full(q.shape[0], np.inf, dtype=np.float32)
    arg = np.zeros(q.shape[0], dtype=np.int64)
    n_ref = ref.shape[0] if rows is None else rows.size
    block_rows, query_rows = min(REF_ROWS, n_ref), min(QUERY_ROWS, q.shape[0])
    block_buffer = np.empty((block_rows, q.shape[1]), dtype=np.float32)
    score_buffer = np.empty(query_rows * block_rows, dtype=np.float32)
    for s in range(0, n_ref, REF_ROWS):
        read = ref[s : s + REF_ROWS] if rows is None else read_rows(ref, rows[s : s + REF_ROWS])
        prepared = prepare(np.asarray(read, dtype=np.float32))
        block = np.subtract(prepared, centre, out=block_buffer[: prepared.shape[0]])
        block_sq = np.einsum("ij,ij->i", block, block)
        for t in range(0, q.shape[0], QUERY_ROWS):
            part = q[t : t + QUERY_ROWS]
            score = np.matmul(part, block.T, out=score_buffer[: part.shape[0] * block.shape[0]].reshape(
                part.shape[0], block.shape[0]))
            score += block_sq
            if exclude is not None:
                skip = np.asarray(exclude[t : t + QUERY_ROWS], dtype=np.int64)
                own = skip - s
                hit = np.flatnonzero((skip >= 0) & (own >= 0) & (own < block.shape[0]))
                score[hit, own[hit]] = np.inf
            index = score.argmin(axis=1)
            value = score[np.arange(index.size), index]
            better = value < best[t : t + QUERY_ROWS]
            best[t : t + QUERY_ROWS][better] = value[better]
            arg[t : t + QUERY_ROWS][better] = index[better] + s
    return arg


def _draw(n: int, limit: int | None, rng: np.random.Generator) -> np.ndarray:
    """All of 0..n-1, or (above ``limit``) ``limit`` of them without replacement, sorted."""
    return np.arange(n) if limit is None or n <= limit else np.sort(rng.choice(n, size=limit, replace=False))


def mean_interval(values: np.ndarray, population: int) -> tuple[float, list[float]]:
    """The mean of a simple random sample (without replacement) of ``population`` values, and its 95%
    interval: normal approximation with the finite-population correction, so a sample of the whole
    population gives the exact mean with an interval of zero width."""
    n = values.size
    mean = float(values.mean())
    if n < 2 or n >= population:
        return mean, [mean, mean]
    se = float(values.std(ddof=1)) / np.sqrt(n) * np.sqrt(1.0 - n / population)
    return mean, [mean - Z95 * se, mean + Z95 * se]


def space_coverage(
    embeddings: np.ndarray,
    labels: np.ndarray,
    kept_rows: np.ndarray,
    metric: str = "euclidean",
    mode: str = "estimate",
    points: int = ESTIMATE_POINTS,
    nc1_rows: int = ESTIMATE_NC1_ROWS,
) -> dict[str, Any]:
    """Per class nearest-neighbour distances of the kept rows, and NC1 of kept and pool, in one space.

    ``mode="estimate"``: each mean is over at most ``points`` query rows drawn with a fixed seed (exact
    below that), against the whole kept set, with its 95% interval; the NC1 of the pool and of the kept
    set are each on at most ``nc1_rows`` of their rows, drawn with the same seed. ``mode="exact"``: every
    row (O(pool x kept x D) for the distances).
    """
    if mode not in ("estimate", "exact"):
        raise ConfigError(f"coverage must be one of {', '.join(COVERAGE_MODES)}, got {mode!r}")
    limit = None if mode == "exact" else points
    rng = np.random.default_rng(SEED)
    kept_rows = np.sort(np.asarray(kept_rows, dtype=np.int64))
    is_kept = np.zeros(labels.size, dtype=bool)
    is_kept[kept_rows] = True
    per_class: dict[str, Any] = {}
    for c in (SPOOF, BONAFIDE):
        rows = np.flatnonzero(labels == c)
        if rows.size:
            per_class[class_name(c)] = _class_nn(embeddings, rows, rows[is_kept[rows]], metric, limit, rng)
    if mode == "exact":
        pool_rows, nc1_kept_rows = np.arange(labels.size), kept_rows
    else:
        pool_rows = _draw(labels.size, nc1_rows, rng)
        nc1_kept_rows = kept_rows[_draw(kept_rows.size, nc1_rows, rng)]
    return {
        "per_class": per_class,
        "nc1_kept": _nc1(embeddings, labels, nc1_kept_rows),
        "nc1_kept_rows": int(nc1_kept_rows.size),
        "nc1_pool": _nc1(embeddings, labels, pool_rows),
        "nc1_pool_rows": int(pool_rows.size),
    }


def _class_nn(
    embeddings: np.ndarray, rows: np.ndarray, kept: np.ndarray, metric: str, limit: int | None,
    rng: np.random.Generator,
) -> dict[str, Any]:
    """kept_nn and pool_to_kept of one class (``rows`` and ``kept`` ascending), in one search: both
    query sets against the kept rows.

    A kept pool row is its own nearest kept row (distance 0), so pool_to_kept is the share of rows not
    kept times their mean distance, and only those rows are drawn: the 0s add no sampling noise.
    """
    entry: dict[str, Any] = {"pool": int(rows.size), "kept": int(kept.size)}
    for name in ("kept_nn", "pool_to_kept"):
        entry.update({name: None, f"{name}_ci95": None, f"{name}_points": 0})
    if not kept.size:
        return entry
    own = _draw(kept.size, limit, rng) if kept.size >= 2 else np.empty(0, dtype=np.int64)
    others = np.setdiff1d(rows, kept, assume_unique=True)
    pool = others[_draw(others.size, limit, rng)]
    query_x = _metric(read_rows(embeddings, np.concatenate([kept[own], pool])), metric)
    exclude = np.concatenate([own, np.full(pool.size, -1, dtype=np.int64)])
    arg = nearest_rows(query_x, embeddings, exclude, prepare=lambda b: _metric(b, metric), rows=kept)
    dist = exact_distance(query_x, _metric(read_rows(embeddings, kept[arg]), metric))
    if own.size:
        mean, interval = mean_interval(dist[: own.size], kept.size)
        entry.update(kept_nn=mean, kept_nn_ci95=interval, kept_nn_points=int(own.size))
    share = others.size / rows.size
    mean, interval = mean_interval(dist[own.size :], others.size) if pool.size else (0.0, [0.0, 0.0])
    entry.update(pool_to_kept=share * mean, pool_to_kept_ci95=[share * v for v in interval],
                 pool_to_kept_points=int(pool.size))
    return entry


def _metric(x: np.ndarray, metric: str) -> np.ndarray:
    """The rows as the metric sees them: L2-normalised (a new array) under cosine, else unchanged."""
    if metric == "cosine":
        from .frame import l2_normalise

        return l2_normalise(x)
    return x


def _blocks(embeddings: np.ndarray, rows: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
    """(start, rows[start:start + NC1_BLOCK] of the array), a view where those rows are consecutive:
    a drawn or kept set is never gathered whole."""
    for start in range(0, rows.size, NC1_BLOCK):
        part = rows[start : start + NC1_BLOCK]
        if part[-1] - part[0] + 1 == part.size:
            yield start, embeddings[part[0] : part[-1] + 1]
        else:
            yield start, read_rows(embeddings, part)


def _nc1(embeddings: np.ndarray, labels: np.ndarray, rows: np.ndarray) -> float | None:
    """NC1 of ``embeddings[rows]``, read block by block (twice): see :func:`_nc1_of`."""
    if rows.size == 0:
        return None
    return _nc1_of(lambda: ((labels[rows[start : start + block.shape[0]]], block)
                            for start, block in _blocks(embeddings, rows)))


def _nc1_of(blocks: Callable[[], Iterator[tuple[np.ndarray, np.ndarray]]]) -> float | None:
    """NC1 as :mod:`.metrics` defines it, trace(Sigma_W pinv(Sigma_B)) / K, without Sigma_W itself;
    ``blocks()`` yields the rows as (labels, embeddings) pieces, once per pass (two passes).

    Sigma_B has rank at most K - 1, so with its eigenpairs (lambda_j, v_j) above the same cut-off as
    ``nc_metrics`` (D * eps * the largest), the trace is the sum of v_j' Sigma_W v_j / lambda_j, and
    v_j' Sigma_W v_j is the mean square of the within-class deviations projected on v_j: O(N D K)
    instead of the O(N D^2) of the full matrix, which matters for a kept set of 100k rows.
    """
    sums, counts = None, np.zeros(2, dtype=np.int64)
    for lab, block in blocks():
        s, n = class_sums(block, lab, 2)
        sums = s if sums is None else sums + s
        counts += n
    n_rows = int(counts.sum())
    if sums is None or n_rows == 0:
        return None
    present = np.flatnonzero(counts > 0)
    k = present.size
    if k < 2:
        return None
    mu = np.zeros_like(sums)
    mu[present] = sums[present] / counts[present, None]
    centred = mu[present] - sums.sum(axis=0) / n_rows
    evals, evecs = np.linalg.eigh(centred.T @ centred / k)
    keep = evals > max(evals.shape[0], 1) * np.finfo(np.float64).eps * evals.max()
    if not keep.any():
        return None
    basis, evals = evecs[:, keep], evals[keep]
    # Project first, then subtract the projected class means: K numbers per row instead of D.
    mean_proj = mu @ basis
    squares = np.zeros(basis.shape[1])
    for lab, block in blocks():
        for start in range(0, block.shape[0], NC1_BLOCK):  # float64 copies of NC1_BLOCK rows at most
            part = block[start : start + NC1_BLOCK]
            proj = part.astype(np.float64) @ basis - mean_proj[lab[start : start + part.shape[0]]]
            squares += np.einsum("ij,ij->j", proj, proj)
    return float(np.sum(squares / n_rows / evals) / k)


# ---------------------------------------------------------------------------------------------------
# text


def format_coverage(cov: dict[str, Any]) -> list[str]:
    """A few lines per table; long tables (many speakers) are summarised by their spread."""

    def share(entry: dict[str, Any]) -> str:
        return f"{entry['selected']}/{entry['total']} ({100 * entry['rate']:.1f}%)"

    out = ["coverage of the pool:"]
    for key, title in (("per_attack", "attack"), ("per_speaker", "speaker"), ("per_language", "language"),
                       ("per_duration_quartile", "duration")):
        table = cov.get(key)
        if not table:
            continue
        if len(table) <= 8:
            out.append(f"  {title + ':':<10} " + ", ".join(f"{k} {share(v)}" for k, v in table.items()))
            continue
        rates = np.array([v["rate"] for v in table.values()])
        none = int(np.sum([v["selected"] == 0 for v in table.values()]))
        out.append(f"  {title + ':':<10} {len(table)} values, share kept min {100 * rates.min():.1f}% / "
                   f"median {100 * np.median(rates):.1f}% / max {100 * rates.max():.1f}%, "
                   f"{none} with none kept")
    if cov.get("mode"):
        out.append(f"  nearest-neighbour means: {_mode_text(cov)}")
    for space in cov.get("spaces", []):
        nc1 = ", ".join(f"{name} {_fmt(space[name])}" for name in ("nc1_kept", "nc1_pool"))
        on = f" on {space['data']}" if space.get("data") else ""
        out.append(f"  space of {space['source']}{on}: {nc1}")
        for c, e in space["per_class"].items():
            out.append(f"    {c:<9} kept {e['kept']}/{e['pool']}, mean NN distance of kept "
                       f"{_interval(e, 'kept_nn')}, pool to nearest kept {_interval(e, 'pool_to_kept')}")
    return out


def _mode_text(cov: dict[str, Any]) -> str:
    if cov["mode"] == "exact":
        return "exact (every row a query)"
    return (f"estimated on at most {cov['points']} query rows per mean and class (seed {cov['seed']}), "
            "95% interval in brackets")


def _interval(entry: dict[str, Any], name: str) -> str:
    """The mean, with its 95% interval and query count where it is an estimate of a larger set."""
    interval, n = entry.get(f"{name}_ci95"), entry.get(f"{name}_points")
    if entry.get(name) is None or interval is None or interval[0] == interval[1]:
        return _fmt(entry.get(name))
    return f"{_fmt(entry[name])} [{_fmt(interval[0])}, {_fmt(interval[1])}; n={n}]"


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4g}"


def coverage_mode(value: bool | str) -> str:
    """``estimate``, ``exact`` or ``off``; True and False (the older boolean) mean estimate and off."""
    if value is True or value is False:
        return DEFAULT_COVERAGE if value else "off"
    if value not in COVERAGE_MODES:
        raise ConfigError(f"coverage must be one of {', '.join(COVERAGE_MODES)}, got {value!r}")
    return str(value)
