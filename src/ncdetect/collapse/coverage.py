"""Coverage of a selection against its pool: what a selection kept, so a reader sees why two differ.

``sample`` writes it into the summary JSON (key ``coverage``) and :func:`format_coverage` prints it. The
pool is the union of the embedding folders' rows, deduplicated by (dataset, utt_id) like the selection.

- **Shares kept** (``per_attack``, ``per_speaker``, ``per_language``, ``per_duration_quartile``): for
  each value, ``{total, selected, rate}``. ``language`` comes from a ``language`` column when the index
  has one (the demo corpus' manifests do), else it is left out. The duration is the ``duration`` column
  (seconds) when there is one, else the audio header (``soundfile.info``, no decoding); rows whose header
  cannot be read count as ``unknown``, with a notice. Quartiles are those of the pool's known durations.
- **Spaces** (one entry per embedding folder: ``source`` is its model, ``data`` the datasets it embeds;
  Euclidean, or on L2-normalised vectors under ``metric="cosine"``), per class:
  ``kept_nn``: the mean distance from a kept sample to its nearest other kept sample (how spread out the
  kept set is); ``pool_to_kept``: the mean distance from a pool sample to its nearest kept sample (how
  well the kept set covers the pool; 0 when everything is kept). Each mean is over at most
  ``max_points`` samples drawn with a fixed seed (exact below that), against the whole kept set.
  ``nc1_kept`` and ``nc1_pool``: NC1 (see :mod:`.metrics`) of the kept rows and of the pool (on at most
  ``max_nc1_rows`` rows drawn with a fixed seed); None when a class is missing.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

import numpy as np
import pandas as pd

from .. import BONAFIDE, SPOOF
from .metrics import class_name, class_sums

MAX_POINTS = 500
MAX_HEADER_ROWS = 20_000
MAX_NC1_ROWS = 200_000
# Rows per block of the nearest-neighbour search: 1,024 x 16,384 float32 distances are 64 MiB.
QUERY_ROWS = 1_024
REF_ROWS = 16_384
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


def durations(pool: pd.DataFrame, progress: bool = False) -> tuple[np.ndarray, list[str], np.ndarray]:
    """Seconds per row (NaN when unknown): the ``duration`` column, else the audio headers.

    Headers are read for at most ``MAX_HEADER_ROWS`` rows drawn with a fixed seed (every row below
    that); the others stay NaN and are left out of the quartile table, which is then an estimate.
    Results are cached in the process, so the many selections of one experiment read them once.
    """
    if "duration" in pool.columns:
        values = pd.to_numeric(pool["duration"], errors="coerce").to_numpy(dtype=np.float64)
        bad = int(np.count_nonzero(~np.isfinite(values)))
        notes = [f"duration column: {bad} rows without a number count as unknown"] if bad else []
        return values, notes, np.arange(len(pool))
    import soundfile as sf

    from ..progress import progress_bar

    rows = _draw(len(pool), MAX_HEADER_ROWS, np.random.default_rng(SEED))
    paths = pool["path"].to_numpy()[rows].astype(str)
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


def shares(pool: pd.DataFrame, kept: np.ndarray, progress: bool = False) -> tuple[dict[str, Any], list[str]]:
    """Share kept per attack, speaker, language (when present) and duration quartile."""
    out = {
        "per_attack": counts_table(pool["attack"], pool["attack"][kept]),
        "per_speaker": counts_table(pool["speaker"], pool["speaker"][kept]),
    }
    if "language" in pool.columns:
        lang = pool["language"].astype(str)
        out["per_language"] = counts_table(lang, lang[kept])
    seconds, notices, rows = durations(pool, progress)
    quart = duration_quartiles(seconds[rows])
    out["per_duration_quartile"] = counts_table(quart, quart[kept[rows]])
    return out, notices


# ---------------------------------------------------------------------------------------------------
# spaces


def nearest_distance(query: np.ndarray, ref: np.ndarray, exclude: np.ndarray | None = None) -> np.ndarray:
    """Distance from each query row to its nearest ref row; ``exclude[i]`` is a ref row query i skips.

    The nearest row is found with float32 matrix products on centred data (||r||^2 - 2 q.r, blockwise),
    and its distance is then computed exactly, in float64 from the difference, so exact duplicates give
    0 and near-ties can only swap neighbours at equal distance.
    """
    import torch

    q = torch.from_numpy(np.ascontiguousarray(query, dtype=np.float32))
    r = torch.from_numpy(np.ascontiguousarray(ref, dtype=np.float32))
    centre = r.mean(dim=0)
    q, r = q - centre, r - centre
    r_sq = (r * r).sum(dim=1)
    best = torch.full((q.shape[0],), float("inf"))
    arg = torch.zeros(q.shape[0], dtype=torch.int64)
    for s in range(0, r.shape[0], REF_ROWS):
        block, block_sq = r[s : s + REF_ROWS], r_sq[s : s + REF_ROWS]
        for t in range(0, q.shape[0], QUERY_ROWS):
            score = torch.addmm(block_sq[None, :], q[t : t + QUERY_ROWS], block.T, alpha=-2.0)
            if exclude is not None:
                own = torch.from_numpy(exclude[t : t + QUERY_ROWS] - s)
                hit = (own >= 0) & (own < block.shape[0])
                score[torch.nonzero(hit).squeeze(1), own[hit]] = float("inf")
            value, index = score.min(dim=1)
            better = value < best[t : t + QUERY_ROWS]
            best[t : t + QUERY_ROWS] = torch.where(better, value, best[t : t + QUERY_ROWS])
            arg[t : t + QUERY_ROWS] = torch.where(better, index + s, arg[t : t + QUERY_ROWS])
    diff = np.asarray(query, dtype=np.float64) - np.asarray(ref[arg.numpy()], dtype=np.float64)
    return np.sqrt(np.einsum("ij,ij->i", diff, diff))


def _draw(n: int, limit: int, rng: np.random.Generator) -> np.ndarray:
    return np.arange(n) if n <= limit else np.sort(rng.choice(n, size=limit, replace=False))


def space_coverage(
    embeddings: np.ndarray,
    labels: np.ndarray,
    kept_rows: np.ndarray,
    metric: str = "euclidean",
    max_points: int = MAX_POINTS,
    max_nc1_rows: int = MAX_NC1_ROWS,
) -> dict[str, Any]:
    """Per class nearest-neighbour distances of the kept rows, and NC1 of kept and pool, in one space."""
    rng = np.random.default_rng(SEED)
    kept_rows = np.sort(np.asarray(kept_rows, dtype=np.int64))
    is_kept = np.zeros(labels.size, dtype=bool)
    is_kept[kept_rows] = True
    per_class: dict[str, Any] = {}
    for c in (SPOOF, BONAFIDE):
        rows = np.flatnonzero(labels == c)
        kept_c = rows[is_kept[rows]]
        entry: dict[str, Any] = {"pool": int(rows.size), "kept": int(kept_c.size), "kept_nn": None,
                                 "pool_to_kept": None}
        if kept_c.size:
            ref = _points(embeddings, kept_c, metric)
            if kept_c.size >= 2:
                q = _draw(kept_c.size, max_points, rng)
                entry["kept_nn"] = float(nearest_distance(ref[q], ref, exclude=q).mean())
            q = rows[_draw(rows.size, max_points, rng)]
            entry["pool_to_kept"] = float(nearest_distance(_points(embeddings, q, metric), ref).mean())
        if rows.size:
            per_class[class_name(c)] = entry
    pool_rows = _draw(labels.size, max_nc1_rows, rng)
    return {
        "per_class": per_class,
        "nc1_kept": _nc1(embeddings, labels, kept_rows),
        "nc1_pool": _nc1(embeddings, labels, pool_rows),
        "nc1_pool_rows": int(pool_rows.size),
    }


def _points(embeddings: np.ndarray, rows: np.ndarray, metric: str) -> np.ndarray:
    x = np.asarray(embeddings[rows], dtype=np.float32)
    if metric == "cosine":
        from .frame import l2_normalise

        x = l2_normalise(x)
    return x


def _nc1(embeddings: np.ndarray, labels: np.ndarray, rows: np.ndarray) -> float | None:
    """NC1 as :mod:`.metrics` defines it, trace(Sigma_W pinv(Sigma_B)) / K, without Sigma_W itself.

    Sigma_B has rank at most K - 1, so with its eigenpairs (lambda_j, v_j) above the same cut-off as
    ``nc_metrics`` (D * eps * the largest), the trace is the sum of v_j' Sigma_W v_j / lambda_j, and
    v_j' Sigma_W v_j is the mean square of the within-class deviations projected on v_j: O(N D K)
    instead of the O(N D^2) of the full matrix, which matters for a kept set of 100k rows.
    """
    lab = labels[rows]
    x = np.asarray(embeddings[rows])
    if x.shape[0] == 0:
        return None
    sums, counts = class_sums(x, lab, 2)
    present = np.flatnonzero(counts > 0)
    k = present.size
    if k < 2:
        return None
    mu = np.zeros_like(sums)
    mu[present] = sums[present] / counts[present, None]
    centred = mu[present] - sums.sum(axis=0) / x.shape[0]
    evals, evecs = np.linalg.eigh(centred.T @ centred / k)
    keep = evals > max(evals.shape[0], 1) * np.finfo(np.float64).eps * evals.max()
    if not keep.any():
        return None
    basis, evals = evecs[:, keep], evals[keep]
    # Project first, then subtract the projected class means: K numbers per row instead of D.
    mean_proj = mu @ basis
    squares = np.zeros(basis.shape[1])
    for start in range(0, x.shape[0], QUERY_ROWS * 16):
        block = x[start : start + QUERY_ROWS * 16]
        proj = block.astype(np.float64) @ basis - mean_proj[lab[start : start + block.shape[0]]]
        squares += np.einsum("ij,ij->j", proj, proj)
    return float(np.sum(squares / x.shape[0] / evals) / k)


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
    for space in cov.get("spaces", []):
        nc1 = ", ".join(f"{name} {_fmt(space[name])}" for name in ("nc1_kept", "nc1_pool"))
        on = f" on {space['data']}" if space.get("data") else ""
        out.append(f"  space of {space['source']}{on}: {nc1}")
        for c, e in space["per_class"].items():
            out.append(f"    {c:<9} kept {e['kept']}/{e['pool']}, mean NN distance of kept "
                       f"{_fmt(e['kept_nn'])}, pool to nearest kept {_fmt(e['pool_to_kept'])}")
    return out


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4g}"
