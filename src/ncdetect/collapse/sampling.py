"""Sampling from embedding folders: the selection of every source, their union, a summary and coverage.

The strategies and the frame they share live in :mod:`.strategies` and :mod:`.frame` (re-exported here).
Each class c of a source with N_c samples keeps k_c = max(1, round(r_c * N_c)) of them, with Python's
``round`` (half to even: 0.5 * 5 keeps 2, 0.5 * 7 keeps 4), ties broken by utt_id; see :mod:`.frame`.

**Pools and views.** Without ``cross_source`` every folder is its own pool, selected with the class
means of its own source (never pooled across folders). With ``cross_source=True``, folders whose
``index.csv`` rows are the same (dataset, utt_id) sequence are views of one pool: the same training set
embedded by different source models. The first such folder (in the order given) is the pool's primary
view; its rows, labels, attacks, speakers and model scores are the pool's, and its space holds the
geometric steps (k-means clusters, k-center, herding). Every row's score combines its distances to the
class means of all views (``combine``: mean of per-space rank-normalised or z-scored distances). A pool
with a single folder is scored in its own space, with a notice. The union over pools is deduplicated by
(dataset, utt_id), keeping the first occurrence in folder order.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm import tqdm

from ..errors import ConfigError, NcdetectError, ProtocolError
from .coverage import counts_table, format_coverage, rate_entry, shares, space_coverage
from .frame import (
    COMBINES,
    DEFAULT_ORDER_SWITCH,
    DEFAULT_POOL_FACTOR,
    FAKE_MODES,
    METRICS,
    ORDERS,
    REAL_MODES,
    Selection,
    check_rate,
    distance_to,
    make_options,
    n_keep,
)
from .strategies import STRATEGIES, Strategy, check_takes, greedy_herding, greedy_kcenter, select, uses_seed

__all__ = [
    "COMBINES", "DEFAULT_ORDER_SWITCH", "DEFAULT_POOL_FACTOR", "FAKE_MODES", "METRICS", "ORDERS",
    "REAL_MODES", "STRATEGIES", "Selection", "Strategy", "check_options", "check_rate", "distance_to",
    "format_summary", "greedy_herding", "greedy_kcenter", "n_keep", "sample_folders", "select",
    "summary_path", "uses_seed",
]


def check_options(strategy: str, rate: float = 0.1, *, cross_source: bool = False, **options: Any) -> None:
    """Check a strategy name and ``sample_folders`` options without any data (a recipe, before work).

    Raises the ConfigError that ``sample_folders`` would: an unknown strategy ("valid: ..."), a value
    out of its choices or range, or an option that the strategy does not take.
    """
    chosen = STRATEGIES.get(strategy)
    make_options(rate, **options)
    check_takes(chosen, {**options, "cross_source": cross_source})


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
    *,
    real_mode: str = "class",
    order: str = "near",
    order_switch: float = DEFAULT_ORDER_SWITCH,
    min_margin: float | None = None,
    pool_factor: float = DEFAULT_POOL_FACTOR,
    cross_source: bool = False,
    combine: str = "rank",
    coverage: bool = True,
) -> pd.DataFrame:
    """Select from each pool separately (class means are per source) and take the union.

    The result holds the manifest columns of the folders' ``index.csv`` (without the source model's
    ``score``) plus ``source`` (the pool's primary folder: the index's source name when it has one, else
    the folder name), ``distance`` (the score each row was chosen by) and ``strategy``. With ``out`` it is
    written as a manifest, and the summary (``df.attrs["summary"]``, with the ``coverage`` of
    :mod:`.coverage` unless ``coverage=False``) goes to ``<out stem>.summary.json``.
    """
    from ..data.manifest import write_manifest
    from ..fileio import ensure_writable_dir, write_json
    from .embeddings import load_embeddings

    options = dict(real_rate=real_rate, fake_rate=fake_rate, fake_mode=fake_mode, real_mode=real_mode,
                   metric=metric, seed=seed, order=order, order_switch=order_switch, min_margin=min_margin,
                   pool_factor=pool_factor, combine=combine)
    # Check every option before any long work, with the names the command line uses.
    check_options(strategy, rate, cross_source=cross_source, **options)
    if not emb_dirs:
        raise ConfigError("no embedding folders given")
    if out is not None:
        ensure_writable_dir(Path(out).parent)

    sets = [load_embeddings(d, mmap=True, require_head=False) for d in emb_dirs]
    pools = _pools(sets, cross_source)
    notices: list[str] = []
    streams = _stream_names([views[0].name for views in pools])
    parts, sources = [], []
    for views, stream in tqdm(list(zip(pools, streams, strict=True)), desc=f"sample ({strategy})",
                              unit="pool", disable=not progress):
        es = views[0]
        if cross_source and len(views) == 1:
            notices.append(f"{es.path}: no other folder holds the same rows; scored in its own space only")
        index = es.index
        scores = None if min_margin is None else _model_scores(es)
        try:
            sel = select(
                strategy, es.embeddings, es.labels, rate, attacks=index["attack"].to_numpy(),
                speakers=index["speaker"].to_numpy(), utt_ids=index["utt_id"].to_numpy(), scores=scores,
                views=[v.embeddings for v in views[1:]], stream=stream, **options,
            )
        except ConfigError:
            raise
        except NcdetectError as err:
            raise NcdetectError(f"{es.path}: {err}") from None
        notices += [f"{es.path}: {note}" for note in sel.notices]
        rows = index.iloc[sel.indices].drop(columns=["score"], errors="ignore").reset_index(drop=True)
        rows["source"] = es.name
        rows["distance"] = sel.distances
        rows["strategy"] = strategy
        parts.append(rows)
        sources.append(_source_summary(views, rows))

    selected = pd.concat(parts, ignore_index=True)
    dup = selected.duplicated(subset=["dataset", "utt_id"], keep="first")
    selected = selected.loc[~dup].reset_index(drop=True)
    population = pd.concat([views[0].index for views in pools], ignore_index=True)
    population = population.loc[~population.duplicated(subset=["dataset", "utt_id"], keep="first")]
    population = population.reset_index(drop=True)

    summary = {
        "strategy": strategy,
        "rate": rate,
        "real_rate": rate if real_rate is None else real_rate,
        "fake_rate": rate if fake_rate is None else fake_rate,
        "fake_mode": fake_mode,
        "real_mode": real_mode,
        "order": order,
        "order_switch": order_switch,
        "min_margin": min_margin,
        "pool_factor": pool_factor,
        "cross_source": cross_source,
        "combine": combine,
        "metric": metric,
        "seed": seed,
        "per_class": counts_table(population["label"], selected["label"]),
        "per_attack": counts_table(population["attack"], selected["attack"]),
        "per_source": sources,
        "overall": rate_entry(len(population), len(selected)),
        "duplicates_dropped": int(dup.sum()),
        "notices": notices,
    }
    if coverage:
        summary["coverage"] = _coverage(sets, population, selected, metric, progress, notices)
    selected.attrs["summary"] = summary
    if out is not None:
        write_manifest(selected, out)
        write_json(summary_path(out), summary)
    return selected


def _pools(sets: list[Any], cross_source: bool) -> list[list[Any]]:
    """Folders grouped into pools: one each, or (cross_source) by their (dataset, utt_id) sequence."""
    if not cross_source:
        return [[es] for es in sets]
    groups: dict[str, list[Any]] = {}
    for es in sets:
        ids = es.index["dataset"].astype(str) + "\t" + es.index["utt_id"].astype(str)
        key = hashlib.sha256("\n".join(ids).encode()).hexdigest()
        groups.setdefault(key, []).append(es)
    for views in groups.values():
        first = views[0]
        for other in views[1:]:
            differ = np.flatnonzero(first.index["label"].to_numpy() != other.index["label"].to_numpy())
            if differ.size:
                i = int(differ[0])
                raise ProtocolError(
                    other.path / "index.csv", i + 2, f"utt_id {other.index['utt_id'].iloc[i]} is labelled "
                    f"{other.index['label'].iloc[i]} here but {first.index['label'].iloc[i]} in "
                    f"{first.path / 'index.csv'}")
    return list(groups.values())


def _stream_names(names: list[str]) -> list[str]:
    """The source name keys its random streams; a repeated name gets its occurrence number."""
    seen: dict[str, int] = {}
    out = []
    for name in names:
        out.append(name if name not in seen else f"{name}#{seen[name]}")
        seen[name] = seen.get(name, 0) + 1
    return out


def _model_scores(es: Any) -> np.ndarray:
    """The source model's index.csv ``score`` (logit(bonafide) - logit(spoof)), checked line by line."""
    path = es.path / "index.csv"
    if "score" not in es.index.columns:
        raise ProtocolError(path, 1, "min_margin needs the source model's score column")
    scores = pd.to_numeric(es.index["score"], errors="coerce").to_numpy(dtype=np.float64)
    bad = np.flatnonzero(~np.isfinite(scores))
    if bad.size:
        i = int(bad[0])
        raise ProtocolError(path, i + 2, f"score {es.index['score'].iloc[i]!r} is not a finite number")
    return scores


def _source_summary(views: list[Any], rows: pd.DataFrame) -> dict[str, Any]:
    es = views[0]
    entry = {
        "source": es.name,
        "emb_dir": str(es.path),
        "per_class": counts_table(es.index["label"], rows["label"]),
        "overall": rate_entry(len(es.index), len(rows)),
    }
    if len(views) > 1:
        entry["views"] = [{"source": v.name, "emb_dir": str(v.path)} for v in views]
    return entry


def _coverage(
    sets: list[Any], population: pd.DataFrame, selected: pd.DataFrame, metric: str, progress: bool,
    notices: list[str],
) -> dict[str, Any]:
    kept_keys = pd.MultiIndex.from_frame(selected[["dataset", "utt_id"]])
    kept = pd.MultiIndex.from_frame(population[["dataset", "utt_id"]]).isin(kept_keys)
    cov, notes = shares(population, kept, progress)
    notices += notes
    spaces = []
    for es in sets:
        rows = np.flatnonzero(pd.MultiIndex.from_frame(es.index[["dataset", "utt_id"]]).isin(kept_keys))
        data = "+".join(sorted(es.index["dataset"].astype(str).unique()))
        spaces.append({"source": es.name, "data": data, "emb_dir": str(es.path),
                       **space_coverage(es.embeddings, es.labels, rows, metric)})
    cov["spaces"] = spaces
    return cov


def format_summary(summary: dict[str, Any]) -> str:
    """The summary as a few readable lines for the terminal."""

    def line(name: str, entry: dict[str, Any]) -> str:
        return f"  {name:<24} {entry['selected']:>9} / {entry['total']:<9} ({100 * entry['rate']:.2f}%)"

    head = (f"strategy {summary['strategy']}, real rate {summary['real_rate']:g}, "
            f"fake rate {summary['fake_rate']:g}, fake mode {summary['fake_mode']}, "
            f"metric {summary['metric']}, seed {summary['seed']}")
    extra = [f"{key.replace('_', ' ')} {summary[key]}" for key, default in (
        ("real_mode", "class"), ("order", "near"), ("min_margin", None), ("cross_source", False))
        if summary.get(key, default) != default]
    if summary.get("order") == "auto":
        extra.append(f"order switch {summary['order_switch']:g}")
    if summary.get("cross_source"):
        extra.append(f"combine {summary['combine']}")
    if summary.get("strategy") == "nc-kcenter":
        extra.append(f"pool factor {summary['pool_factor']:g}")
    out = [head + "".join(f", {e}" for e in extra), "per class:"]
    out += [line(k, v) for k, v in summary["per_class"].items()]
    out.append("per attack:")
    out += [line(k, v) for k, v in summary["per_attack"].items()]
    out.append("per source (before deduplication):")
    for s in summary["per_source"]:
        views = s.get("views", [])
        out.append(line(s["source"] + (f" ({len(views)} views)" if views else ""), s["overall"]))
    out.append(line("overall", summary["overall"]))
    if summary["duplicates_dropped"]:
        n_dup = summary["duplicates_dropped"]
        out.append(f"  {n_dup} duplicate (dataset, utt_id) rows dropped across folders")
    if "coverage" in summary:
        out += format_coverage(summary["coverage"])
    return "\n".join(out)
