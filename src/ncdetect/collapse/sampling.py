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
from concurrent.futures import ThreadPoolExecutor
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm import tqdm

from ..errors import ConfigError, NcdetectError, ProtocolError
from .coverage import (
    COVERAGE_MODES,
    DEFAULT_COVERAGE,
    ESTIMATE_POINTS,
    SEED,
    counts_table,
    coverage_mode,
    format_coverage,
    rate_entry,
    shares,
    space_coverage,
)
from .frame import (
    COMBINES,
    DEFAULT_ORDER_SWITCH,
    DEFAULT_POOL_FACTOR,
    FAKE_MODES,
    GROUPED_MODES,
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
    "COMBINES", "COVERAGE_MODES", "DEFAULT_ORDER_SWITCH", "DEFAULT_POOL_FACTOR", "FAKE_MODES", "METRICS",
    "ORDERS", "REAL_MODES", "STRATEGIES", "Selection", "Strategy", "check_options", "check_rate",
    "distance_to", "format_summary", "greedy_herding", "greedy_kcenter", "n_keep", "sample_folders", "select",
    "summary_path", "uses_seed",
]


def check_options(strategy: str, rate: float = 0.1, *, cross_source: bool = False, **options: Any) -> None:
    """Check a strategy name and ``sample_folders`` options without any data (a recipe, before work).

    Raises the ConfigError that ``sample_folders`` would: an unknown strategy ("valid: ..."), a value
    out of its choices or range, or an option that the strategy does not take. ``coverage`` is checked
    too (it is no option of the selection itself).
    """
    chosen = STRATEGIES.get(strategy)
    if "coverage" in options:
        options = dict(options)
        coverage_mode(options.pop("coverage"))
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
    coverage: bool | str = DEFAULT_COVERAGE,
) -> pd.DataFrame:
    """Select from each pool separately (class means are per source) and take the union.

    The result holds the manifest columns of the folders' ``index.csv`` (without the source model's
    ``score``) plus ``source`` (the pool's primary folder: the index's source name when it has one, else
    the folder name), ``distance`` (the score each row was chosen by) and ``strategy``. With ``out`` it is
    written as a manifest, and the summary (``df.attrs["summary"]``, with the ``coverage`` of
    :mod:`.coverage` unless ``coverage="off"``) goes to ``<out stem>.summary.json``. ``coverage`` is
    ``estimate`` (default), ``exact`` or ``off`` (True and False mean estimate and off).
    """
    from ..data.manifest import write_manifest
    from ..fileio import ensure_writable_dir, write_json
    from .embeddings import load_embeddings

    options = dict(real_rate=real_rate, fake_rate=fake_rate, fake_mode=fake_mode, real_mode=real_mode,
                   metric=metric, seed=seed, order=order, order_switch=order_switch, min_margin=min_margin,
                   pool_factor=pool_factor, combine=combine)
    # Check every option before any long work, with the names the command line uses.
    check_options(strategy, rate, cross_source=cross_source, **options)
    coverage = coverage_mode(coverage)
    if not emb_dirs:
        raise ConfigError("no embedding folders given")
    if out is not None:
        ensure_writable_dir(Path(out).parent)

    # The NaN/Inf check is left to the class sums of the selection (a float32 row cannot make a float64
    # sum non-finite unless it holds NaN or Inf), which saves a pass over every array; a failure is
    # then traced to its folder and row (_nonfinite).
    sets = [load_embeddings(d, mmap=True, require_head=False, check_finite=False) for d in emb_dirs]
    pools = _pools(sets, cross_source)
    # The keys are factorised on a second thread while the selection runs (Arrow's hashing releases the
    # GIL), and before the coverage, whose reads then follow the selection's passes while the arrays'
    # pages are still in memory.
    background = ThreadPoolExecutor(max_workers=1)
    pending_keys = background.submit(Keys, [views[0].index for views in pools])
    background.shutdown(wait=False)
    notices: list[str] = []
    streams = _stream_names([views[0].name for views in pools])
    selections = []
    for views, stream in tqdm(list(zip(pools, streams, strict=True)), desc=f"sample ({strategy})",
                              unit="pool", disable=not progress):
        es = views[0]
        if cross_source and len(views) == 1:
            notices.append(f"{es.path}: no other folder holds the same rows; scored in its own space only")
        index = es.index
        scores = None if min_margin is None else _model_scores(es)
        try:
            # A million-row column costs 0.2 s to convert: the group columns only where a mode reads them.
            sel = select(
                strategy, es.embeddings, es.labels, rate,
                attacks=index["attack"].to_numpy() if fake_mode in GROUPED_MODES else None,
                speakers=index["speaker"].to_numpy() if real_mode in GROUPED_MODES else None,
                utt_ids=index["utt_id"].to_numpy(), scores=scores,
                views=[v.embeddings for v in views[1:]], stream=stream, **options,
            )
        except ConfigError:
            raise
        except NcdetectError as err:
            _nonfinite(views)
            raise NcdetectError(f"{es.path}: {err}") from None
        notices += [f"{es.path}: {note}" for note in sel.notices]
        selections.append(sel)
    keys = pending_keys.result()
    keys.choose([sel.indices for sel in selections])
    spaces = _spaces(sets, pools, keys, metric, coverage) if coverage != "off" else []

    parts, sources = [], []
    for views, sel in zip(pools, selections, strict=True):
        es = views[0]
        rows = es.index.iloc[sel.indices].drop(columns=["score"], errors="ignore").reset_index(drop=True)
        rows["source"] = es.name
        rows["distance"] = sel.distances
        rows["strategy"] = strategy
        parts.append(rows)
        sources.append(_source_summary(views, rows))
    selected = pd.concat(parts, ignore_index=True) if len(parts) > 1 else parts[0]
    dup = ~keys.chosen_first
    if dup.any():
        selected = selected.loc[~dup].reset_index(drop=True)
    population = keys.population([views[0].index for views in pools])

    summary = {
        **_settings(strategy, rate, options, cross_source),
        "per_class": counts_table(population["label"], selected["label"]),
        "per_attack": counts_table(population["attack"], selected["attack"]),
        "per_source": sources,
        "overall": rate_entry(len(population), len(selected)),
        "duplicates_dropped": int(dup.sum()),
        "notices": notices,
    }
    if coverage != "off":
        summary["coverage"] = _coverage(keys, population, spaces, coverage, progress, notices)
    selected.attrs["summary"] = summary
    if out is not None:
        write_manifest(selected, out)
        write_json(summary_path(out), summary)
    return selected


def _settings(strategy: str, rate: float, options: dict[str, Any], cross_source: bool) -> dict[str, Any]:
    """The selection's settings as the summary gives them (rates resolved)."""
    o = options
    return {
        "strategy": strategy, "rate": rate,
        "real_rate": rate if o["real_rate"] is None else o["real_rate"],
        "fake_rate": rate if o["fake_rate"] is None else o["fake_rate"],
        **{key: o[key] for key in ("fake_mode", "real_mode", "order", "order_switch", "min_margin",
                                   "pool_factor")},
        "cross_source": cross_source, "combine": o["combine"], "metric": o["metric"], "seed": o["seed"],
    }


def _nonfinite(views: list[Any]) -> None:
    """The error load_embeddings gives for the first folder of a pool that holds NaN or Inf, if any."""
    from .embeddings import EMBEDDINGS_FILE, first_nonfinite_row

    for es in views:
        bad = first_nonfinite_row(es.embeddings)
        if bad is not None:
            utt = es.index["utt_id"].iloc[bad]
            raise NcdetectError(f"{es.path / EMBEDDINGS_FILE}: row {bad} (utt_id {utt}) holds NaN or Inf "
                                "values")


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


class Keys:
    """The (dataset, utt_id) of every pool's rows as integer codes, for the union and its coverage.

    One factorisation of the pools' keys replaces pandas' duplicated/isin on string pairs (about 0.3 s
    each on a million rows): first occurrences, the rows kept and each folder's kept rows are then
    integer lookups. Pandas assigns codes in order of first appearance, so a row is the first of its key
    exactly where its code exceeds every code before it.
    """

    def __init__(self, indexes: list[pd.DataFrame]) -> None:
        utt = pd.concat([i["utt_id"] for i in indexes], ignore_index=True) if len(indexes) > 1 else (
            indexes[0]["utt_id"])
        data = pd.concat([i["dataset"] for i in indexes], ignore_index=True) if len(indexes) > 1 else (
            indexes[0]["dataset"])
        codes, n_keys = _factorize(utt)
        if data.nunique() > 1:
            data_codes, _ = _factorize(data)
            combined, uniques = pd.factorize(data_codes * n_keys + codes)
            codes, n_keys = combined.astype(np.int64, copy=False), len(uniques)
        self.codes = codes
        self.n_keys = n_keys
        bounds = np.cumsum([0, *[len(i) for i in indexes]])
        self.per_pool = [self.codes[a:b] for a, b in pairwise(bounds)]
        self.first = _first_occurrences(self.codes, n_keys)

    def choose(self, chosen: list[np.ndarray]) -> None:
        """Mark the rows each pool chose (row indices into its index)."""
        chosen_codes = np.concatenate([p[rows] for p, rows in zip(self.per_pool, chosen, strict=True)])
        self.chosen_first = _first_occurrences(chosen_codes, None)
        self.kept_key = np.zeros(self.n_keys, dtype=bool)
        self.kept_key[chosen_codes] = True

    def population(self, indexes: list[pd.DataFrame]) -> pd.DataFrame:
        """The union of the pools' rows, the first of each key kept."""
        frame = pd.concat(indexes, ignore_index=True) if len(indexes) > 1 else indexes[0]
        return frame if self.first.all() else frame.loc[self.first].reset_index(drop=True)

    def kept_in_population(self) -> np.ndarray:
        return self.kept_key[self.codes[self.first]]

    def kept_rows(self, pool: int) -> np.ndarray:
        """Rows of a pool (of each of its views) whose key the union kept, from any pool."""
        return np.flatnonzero(self.kept_key[self.per_pool[pool]])


def _factorize(column: pd.Series) -> tuple[np.ndarray, int]:
    """pandas.factorize's codes (int64, numbered in order of first appearance) and their count.

    An Arrow-backed column (pandas' string dtype) is encoded by Arrow directly, half the time of
    pandas.factorize on a million strings; Arrow numbers the values the same way.
    """
    to_arrow = getattr(column.array, "__arrow_array__", None)
    if to_arrow is not None and column.isna().sum() == 0:
        import pyarrow as pa
        import pyarrow.compute as pc

        encoded = pc.dictionary_encode(to_arrow())
        chunks = encoded.chunks if isinstance(encoded, pa.ChunkedArray) else [encoded]
        if chunks:
            # A chunked array's chunks share one dictionary, grown in order: the last one is whole.
            codes = np.concatenate([c.indices.to_numpy(zero_copy_only=False) for c in chunks])
            return codes.astype(np.int64, copy=False), len(chunks[-1].dictionary)
    codes, uniques = pd.factorize(column)
    return codes.astype(np.int64, copy=False), len(uniques)


def _first_occurrences(codes: np.ndarray, n_keys: int | None) -> np.ndarray:
    """True where a code appears for the first time (codes numbered in order of first appearance when
    ``n_keys`` is given; any integers otherwise)."""
    if n_keys is not None:
        if n_keys == codes.size:
            return np.ones(codes.size, dtype=bool)
        before = np.maximum.accumulate(np.concatenate([[-1], codes[:-1]]))
        return codes > before
    first = np.zeros(codes.size, dtype=bool)
    first[np.unique(codes, return_index=True)[1]] = True
    return first


def _spaces(sets: list[Any], pools: list[list[Any]], keys: Keys, metric: str, mode: str) -> list[dict]:
    """The coverage entry of every folder's space, for the rows of the union (from any pool)."""
    pool_of = {id(es): p for p, views in enumerate(pools) for es in views}
    spaces = []
    for es in sets:
        rows = keys.kept_rows(pool_of[id(es)])
        data = "+".join(sorted(es.index["dataset"].astype(str).unique()))
        spaces.append({"source": es.name, "data": data, "emb_dir": str(es.path),
                       **space_coverage(es.embeddings, es.labels, rows, metric, mode)})
    return spaces


def _coverage(
    keys: Keys, population: pd.DataFrame, spaces: list[dict], mode: str, progress: bool, notices: list[str],
) -> dict[str, Any]:
    cov, notes = shares(population, keys.kept_in_population(), progress, mode)
    notices += notes
    cov["mode"] = mode
    if mode == "estimate":
        cov.update(points=ESTIMATE_POINTS, confidence=0.95, seed=SEED)
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
