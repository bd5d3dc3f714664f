"""The ``features`` stage of ``ncdetect run``: every front-end window the experiment will read, computed
once into the feature store (:mod:`ncdetect.data.features`) before any model trains.

For each model whose config reads stored features (``data.feature_cache``) the stage builds, in the store
of its front-end's identity:

* a source model: the training windows of its training set (with its codec copies), and the evaluation
  windows of its training set (``embed``; with cross-source selections, of every source's), of its dev
  set (the dev EER and ``evaluate``) and of every target;
* the compact model: the training windows of the union of the source training sets, of which every
  sampled subset of every seed takes its rows, and the evaluation windows of the targets and dev sets.

The stores live in ``<out>/features`` unless the recipe sets ``data.cache_dir`` (then runs share them).
Later stages find their rows there and compute none. Every window a front-end computes in any stage is
counted (:func:`~ncdetect.data.spectral.windows_encoded`) into ``<out>/features/windows_encoded.json``, per
stage, so that ``results.json`` can set ``windows_encoded`` against the ``windows_distinct`` of the stores.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from .fileio import write_json

if TYPE_CHECKING:
    from .config import TrainConfig
    from .pipeline import Experiment

T = TypeVar("T")
LEDGER = "windows_encoded.json"


def store_root(exp: Experiment, cfg: TrainConfig) -> Path:
    """Where ``cfg``'s feature store lives in this experiment: ``data.cache_dir``, else ``<out>/features``."""
    return Path(cfg.data.cache_dir) if cfg.data.cache_dir else exp.out / "features"


def with_store(exp: Experiment, cfg: TrainConfig) -> TrainConfig:
    """``cfg`` pointed at the experiment's store (``data.cache_dir`` is not part of any stage key)."""
    if cfg.data.feature_cache and not cfg.data.cache_dir:
        cfg.data.cache_dir = str(store_root(exp, cfg))
    return cfg


def run_store(run: Path) -> Path | None:
    """The feature store a trained run read its features from; None when it read waves."""
    from .runs import read_run_config

    cfg = read_run_config(run)
    if not cfg.data.feature_cache:
        return None
    return Path(cfg.data.cache_dir) if cfg.data.cache_dir else run / "features"


def counted(exp: Experiment, label: str, fn: Callable[[], T]) -> T:
    """Run ``fn`` and record the windows each front-end encoded meanwhile under ``label`` in the ledger
    (a stage that runs again replaces its entry; one that finds its outputs done encodes nothing)."""
    from .data.spectral import windows_encoded

    before = windows_encoded()
    try:
        return fn()
    finally:
        after = windows_encoded()
        delta = {k: v - before.get(k, 0) for k, v in after.items() if v > before.get(k, 0)}
        exp.counted_stages.add(label)
        if delta:
            ledger = _read_ledger(exp)
            ledger[label] = delta
            write_json(_ledger_path(exp), ledger)


def _ledger_path(exp: Experiment) -> Path:
    return exp.out / "features" / LEDGER


def _read_ledger(exp: Experiment) -> dict[str, dict[str, int]]:
    path = _ledger_path(exp)
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def build_stores(exp: Experiment, configs: list[tuple[TrainConfig, list[str], list[str], str]]) -> None:
    """Build the rows of every ``(config, training sets, evaluation sets, who)``; ``training sets`` and
    ``evaluation sets`` name manifests of ``exp.manifests`` (or ``union``: every source's training set)."""
    import pandas as pd

    from .data.features import FeatureStore, WindowPolicy
    from .data.manifest import read_manifest
    from .runs import build_frontend

    frames: dict[str, pd.DataFrame] = {}

    def manifest(name: str) -> pd.DataFrame:
        if name not in frames:
            if name == "union":
                union = pd.concat([read_manifest(exp.manifests[f"{s.name}/train"])
                                   for s in exp.recipe.sources])
                frames[name] = union.drop_duplicates(["dataset", "utt_id"]).reset_index(drop=True)
            else:
                frames[name] = read_manifest(exp.manifests[name])
        return frames[name]

    stores: dict[tuple[str, str], tuple[FeatureStore, set[str]]] = {}
    for cfg, train_sets, eval_sets, who in configs:
        if not cfg.data.feature_cache:
            continue
        frontend = build_frontend(cfg)
        store = FeatureStore(store_root(exp, cfg), frontend)
        store, keys = stores.setdefault((str(store.path), store.identity), (store, set()))
        policy = WindowPolicy.of(cfg)

        def build(store: FeatureStore = store, keys: set[str] = keys, policy: WindowPolicy = policy,
                  cfg: TrainConfig = cfg, train_sets: list[str] = train_sets,
                  eval_sets: list[str] = eval_sets) -> None:
            for name, train in [*((n, True) for n in train_sets), *((n, False) for n in eval_sets)]:
                df = manifest(name)
                codec = cfg.augment.codec if train else None
                store.build(df, policy, train=train, codec=codec, batch_size=cfg.data.batch_size,
                            num_workers=cfg.data.num_workers, progress=False)
                keys.update(store.keys(df, policy, train, codec))

        exp.run_stage("features", f"{who} ({store.identity})", build)
    for store, keys in stores.values():
        entry = exp.features.setdefault(store.identity, {
            "frontend": store.frontend.config, "store": str(store.path), "windows_distinct": 0})
        entry["windows_distinct"] += len(keys)
        exp.log(f"[features] {store.identity}: {len(keys)} distinct windows in {store.path}")


def feature_counts(exp: Experiment) -> dict[str, dict[str, Any]]:
    """``results.json``'s ``features``: per front-end identity, the windows its stores hold for this
    experiment (``windows_distinct``) and the windows its front-end computed over every stage of it
    (``windows_encoded``, codec copies included, whether into the store or not)."""
    ledger = _read_ledger(exp)
    encoded: dict[str, int] = {}
    for label, counts in ledger.items():
        if label in exp.counted_stages:
            for identity, n in counts.items():
                encoded[identity] = encoded.get(identity, 0) + int(n)
    out: dict[str, dict[str, Any]] = {}
    for identity in sorted({*encoded, *exp.features}):
        entry = dict(exp.features.get(identity, {"frontend": None, "store": None, "windows_distinct": None}))
        entry["windows_encoded"] = encoded.get(identity, 0)
        distinct = entry["windows_distinct"]
        entry["encoded_per_distinct"] = round(entry["windows_encoded"] / distinct, 3) if distinct else None
        out[identity] = entry
        exp.log(f"[features] {identity}: {entry['windows_encoded']} windows encoded, "
                f"{distinct if distinct is not None else 'no store:'} distinct"
                + (f" ({entry['encoded_per_distinct']}x)" if distinct else ""))
    return out
