"""``ncdetect run``: the paper's experiment end to end, as cached, resumable stages.

Stages, in order:
  1. prepare   - manifests for every source, dev and target set (filtered and capped as the recipe says)
     features  - every front-end window that later stages read, computed once into the feature store
                 (models with ``data.feature_cache``; see feature_stage.py and data/features.py)
  2. source    - train each source model on its own corpus
  3. embed     - penultimate embeddings of each source's training set
  4. collapse  - NC1-NC4 of each source
  5. sample    - every strategy at every rate (and seed, for the seeded strategies)
  6. compact   - the compact model on every sampled set, and on 100% of the union (full-data baseline)
  7. evaluate  - score every model on the targets and the sources' dev sets
  8. calibrate - each compact model's score -> LLR map, fitted on the sources' pooled dev sets, and its
                 actDCF on every target
  9. report    - report.md, report.html and results.json (the statistics: :mod:`ncdetect.results`)

Every stage writes into a folder named by a hash of its inputs and config, and marks it complete with a
``DONE`` file written last. A rerun skips complete stages; an interrupted training resumes from its last
epoch. A stage that fails names itself and keeps what the earlier stages produced.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pandas as pd

from .errors import NcdetectError
from .feature_stage import build_stores, counted, feature_counts, run_store, with_store
from .fileio import ensure_writable_dir, write_json, write_yaml
from .recipe import FULL, CompactSpec, DataSpec, Recipe, SourceSpec, VariantSpec
from .runs import METRICS_FILE

T = TypeVar("T")

def _seed_free(variant: VariantSpec) -> bool:
    """A selection that does not depend on the seed (ties are broken by utt_id) is drawn once."""
    from .collapse.sampling import uses_seed

    if variant.strategy == FULL:
        return True
    modes = {k: variant.options[k] for k in ("fake_mode", "real_mode") if k in variant.options}
    return not uses_seed(variant.strategy, **modes)


def _cross_source(recipe: Recipe) -> bool:
    """Whether some selection scores samples in every source model's space (each model embeds every
    source's training set)."""
    return any(v.options.get("cross_source") for v in recipe.sampling.variants())


@dataclass
class Stage:
    """A cached unit of work: ``dir`` holds its outputs, ``DONE`` says they are complete."""

    kind: str
    name: str
    dir: Path
    key: str

    @property
    def done(self) -> bool:
        marker = self.dir / "DONE"
        return marker.is_file() and json.loads(marker.read_text()).get("key") == self.key

    def finish(self, info: dict[str, Any] | None = None) -> None:
        write_json(self.dir / "DONE", {"key": self.key, **(info or {})})

    @property
    def run_dir(self) -> Path:
        """Where a training stage keeps its run folder; the folder's name is the model's name."""
        return self.dir / self.name

    def info(self) -> dict[str, Any]:
        return json.loads((self.dir / "DONE").read_text())


def _key(payload: Any) -> str:
    blob = json.dumps(payload, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:10]


def _file_digest(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


def _rate_label(rate: float) -> str:
    return f"{rate:g}"


def _run_name(strategy: str, rate: float, seed: int) -> str:
    return f"{strategy}-r{_rate_label(rate)}-s{seed}"


@dataclass
class CompactRun:
    """A trained compact model as the later stages use it: ``key`` is its training stage's key (its scores
    are cached under it) and ``scores`` maps each evaluation set to its evaluation (filled by evaluate)."""

    name: str
    run: Path
    key: str
    n_train: int
    train_seconds: float
    steps: int  # optimiser steps taken
    epochs: int  # epochs started (with a step budget the last may be cut short)
    scores: dict[str, dict] = field(default_factory=dict)
    # {"calibration": the dev-fitted map, "targets": {target: calibrated_metrics}} (filled by calibrate)
    calibration: dict | None = None
    # the learned weighting over the front-end's layers ({"layers", "weights"}); None without one
    layer_weights: dict | None = None

    def summary(self) -> dict[str, Any]:
        """What results.json records of the training."""
        return {"n_train": self.n_train, "train_seconds": self.train_seconds, "steps": self.steps,
                "epochs": self.epochs, "layer_weights": self.layer_weights}


@dataclass
class Experiment:
    """The state of one ``ncdetect run``: the recipe, its output folder and what each stage produced."""

    recipe: Recipe
    out: Path
    log: Callable[[str], None]
    allow_overlap: bool = False
    overlaps: list[dict] = field(default_factory=list)
    manifests: dict[str, Path] = field(default_factory=dict)
    source_runs: dict[str, Path] = field(default_factory=dict)
    source_keys: dict[str, str] = field(default_factory=dict)
    embeddings: dict[str, Path] = field(default_factory=dict)
    cross_embeddings: list[Path] = field(default_factory=list)  # model j on source i's data, i != j
    collapse: dict[str, dict] = field(default_factory=dict)
    samples: dict[tuple[str, float, int], Path] = field(default_factory=dict)
    # (selection, rate, seed) -> its model; two selections with the same rows share one CompactRun
    compact_runs: dict[tuple[str, float, int], CompactRun] = field(default_factory=dict)
    scores: dict[tuple[str, str], dict] = field(default_factory=dict)  # (source model, evaluation set)
    features: dict[str, dict] = field(default_factory=dict)  # front-end identity -> its store's counts
    counted_stages: set[str] = field(default_factory=set)  # the stages whose encoding this run counts

    def stage(self, kind: str, name: str, payload: Any) -> Stage:
        key = _key(payload)
        return Stage(kind, name, self.out / kind / f"{name}-{key}", key)

    def run_stage(self, kind: str, name: str, fn: Callable[[], T]) -> T:
        started = time.perf_counter()
        try:
            result = counted(self, f"{kind}/{name}", fn)
        except NcdetectError as err:
            raise NcdetectError(f"stage '{kind}' ({name}) failed: {err}") from err
        except Exception as err:
            raise NcdetectError(
                f"stage '{kind}' ({name}) failed: {type(err).__name__}: {err}; outputs of earlier stages "
                f"are kept in {self.out}"
            ) from err
        self.log(f"[{kind}] {name}: {time.perf_counter() - started:.1f} s")
        return result


# --- 1. prepare ----------------------------------------------------------------------------------


def _prepare_data(exp: Experiment, name: str, spec: DataSpec, seed: int) -> Path:
    from .data.manifest import read_manifest, write_manifest

    payload = spec.model_dump(mode="json")
    if spec.manifest is not None:
        payload["digest"] = _file_digest(spec.manifest)
    stage = exp.stage("manifests", name, payload)
    out = stage.dir / "manifest.csv"
    if stage.done:
        return out
    if spec.manifest is not None:
        df = read_manifest(spec.manifest)
    else:
        from .data.corpora import prepare

        df = prepare(spec.corpus, spec.root, spec.partition, None)
    n_in = len(df)
    if spec.filter:
        try:
            df = df.query(spec.filter, engine="python")
        except Exception as err:
            raise NcdetectError(f"{name}: filter {spec.filter!r} failed: {err}") from None
    if spec.limit is not None and len(df) > spec.limit:
        df = _stratified_limit(df, spec.limit, seed)
    if df.empty:
        raise NcdetectError(f"{name}: no rows left after filter/limit (of {n_in})")
    write_manifest(df.reset_index(drop=True), out)
    stage.finish({"rows": len(df), "rows_before_filter": n_in})
    return out


def _stratified_limit(df: pd.DataFrame, limit: int, seed: int) -> pd.DataFrame:
    """Keep ``limit`` rows with the class proportions of ``df`` (at least one row per class)."""
    frac = limit / len(df)
    parts = [
        g.sample(n=max(1, round(frac * len(g))), random_state=seed) for _, g in df.groupby("label", sort=True)
    ]
    return pd.concat(parts).sort_index()


def stage_prepare(exp: Experiment) -> None:
    seed = exp.recipe.seeds[0]
    for src in exp.recipe.sources:
        exp.manifests[f"{src.name}/train"] = _prepare_data(exp, f"{src.name}-train", src.train, seed)
        if src.dev is not None:
            exp.manifests[f"{src.name}/dev"] = _prepare_data(exp, f"{src.name}-dev", src.dev, seed)
    for tgt in exp.recipe.targets:
        exp.manifests[tgt.name] = _prepare_data(exp, tgt.name, tgt.data, seed)
    _check_both_classes(exp)
    exp.overlaps = _check_unseen_targets(exp)


def _check_both_classes(exp: Experiment) -> None:
    """A source without bonafide or without spoof rows cannot train a detector: say so before training."""
    from .data.manifest import read_manifest

    for src in exp.recipe.sources:
        df = read_manifest(exp.manifests[f"{src.name}/train"], resolve_paths=False)
        for label in ("bonafide", "spoof"):
            if not (df["label"] == label).any():
                raise NcdetectError(f"source {src.name}: its train set ({len(df)} rows) has no {label} rows "
                                    "after filter and limit; a detector needs both classes")


def _check_unseen_targets(exp: Experiment) -> list[dict]:
    """Refuse a target that shares audio (the same file, or equal contents) with a source's train or dev
    set, unless the run allows it; the overlaps found are returned for the report."""
    from .data.manifest import read_manifest, shared_audio

    seen = [key for key in exp.manifests if "/" in key]  # "<source>/train", "<source>/dev"
    digests = [_file_digest(exp.manifests[k]) for k in [*seen, *[t.name for t in exp.recipe.targets]]]
    stage = exp.stage("manifests", "overlap", {"manifests": digests})
    if not stage.done:
        found = []
        for tgt in exp.recipe.targets:
            target = read_manifest(exp.manifests[tgt.name])
            for key in seen:
                other = read_manifest(exp.manifests[key])
                pairs = shared_audio(target, other)
                if pairs:
                    i, j = pairs[0]
                    found.append({"target": tgt.name, "set": key, "utterances": len(pairs),
                                  "example": [target["utt_id"][i], other["utt_id"][j]],
                                  "example_paths": [target["path"][i], other["path"][j]]})
        write_json(stage.dir / "overlap.json", found)
        stage.finish()
    found = json.loads((stage.dir / "overlap.json").read_text())
    if found and not exp.allow_overlap:
        f = found[0]
        raise NcdetectError(
            f"target {f['target']} shares audio with {f['set']}: {f['utterances']} utterance(s), e.g. "
            f"{f['example'][0]} ({f['example_paths'][0]}) is {f['example'][1]} ({f['example_paths'][1]}); "
            "a target must be unseen (--allow-overlap runs a deliberate in-domain check)")
    for f in found:
        exp.log(f"[prepare] allowed overlap: target {f['target']} shares {f['utterances']} utterance(s) "
                f"with {f['set']}")
    return found


# --- features -------------------------------------------------------------------------------------


def stage_features(exp: Experiment) -> None:
    """The windows every model will read (see feature_stage.py): a source's training and evaluation sets
    (with cross-source selections, every source's training set), and the compact model's union."""
    recipe, seed = exp.recipe, exp.recipe.seeds[0]
    targets = [t.name for t in recipe.targets]
    devs = [f"{s.name}/dev" for s in recipe.sources if f"{s.name}/dev" in exp.manifests]
    plans = []
    for src in recipe.sources:
        own = [f"{src.name}/train"]
        embedded = [f"{s.name}/train" for s in recipe.sources] if _cross_source(recipe) else own
        dev = [f"{src.name}/dev"] if f"{src.name}/dev" in exp.manifests else []
        plans.append((_stage_config(exp, src.config, src.set, seed), own, [*embedded, *dev, *targets],
                      f"source {src.name}"))
    plans.append((_stage_config(exp, recipe.compact.config, recipe.compact.set, seed), ["union"],
                  [*targets, *devs], "compact"))
    build_stores(exp, plans)


# --- 2. source models ----------------------------------------------------------------------------


def _train_config(config: Path | None, overrides: dict[str, Any], seed: int):
    from .config import load_config

    return load_config(config, values={**overrides, "train.seed": seed})


def _stage_config(exp: Experiment, config: Path | None, overrides: dict[str, Any], seed: int):
    """The config a stage trains with, reading its features from the experiment's store."""
    return with_store(exp, _train_config(config, overrides, seed))


def _config_key(cfg) -> dict[str, Any]:
    from .config import result_settings

    return result_settings(cfg)


def _train(stage: Stage, cfg, train_manifest: Path, dev_manifest: Path | None) -> dict:
    """Train into ``stage.dir/<stage name>``, resuming an interrupted run; returns its metrics."""
    from .train import train

    run = stage.run_dir
    if stage.done:
        return json.loads((run / METRICS_FILE).read_text())
    started = time.perf_counter()
    metrics = train(cfg, train_manifest, run, dev_manifest=dev_manifest, resume=run.exists())
    stage.finish({"train_seconds": time.perf_counter() - started})
    return metrics


def stage_sources(exp: Experiment) -> None:
    seed = exp.recipe.seeds[0]
    for src in exp.recipe.sources:
        train_m = exp.manifests[f"{src.name}/train"]
        dev_m = exp.manifests.get(f"{src.name}/dev")

        def train_source(src: SourceSpec = src, train_m: Path = train_m, dev_m: Path | None = dev_m) -> Stage:
            cfg = _stage_config(exp, src.config, src.set, seed)
            stage = exp.stage("sources", src.name, {"config": _config_key(cfg),
                                                    "train": _file_digest(train_m),
                                                    "dev": dev_m and _file_digest(dev_m)})
            _train(stage, cfg, train_m, dev_m)
            return stage

        stage = exp.run_stage("source", src.name, train_source)
        exp.source_runs[src.name] = stage.run_dir
        exp.source_keys[src.name] = stage.key


# --- 3. embed, 4. collapse -----------------------------------------------------------------------


def stage_embed_and_collapse(exp: Experiment) -> None:
    from .collapse.embeddings import load_embeddings
    from .collapse.metrics import nc_metrics
    from .data.manifest import label_ids
    from .embed import embed_manifest

    for src in exp.recipe.sources:
        stage = exp.stage("embeddings", src.name, {"source": exp.source_keys[src.name]})
        emb_dir = stage.dir / src.name

        def embed(stage: Stage = stage, emb_dir: Path = emb_dir, name: str = src.name) -> dict:
            if not stage.done:
                run = exp.source_runs[name]
                embed_manifest(run, exp.manifests[f"{name}/train"], emb_dir, store=run_store(run))
                emb = load_embeddings(emb_dir)
                metrics = nc_metrics(emb.embeddings, label_ids(emb.index["label"]), emb.W, emb.b)
                write_json(stage.dir / "collapse.json", metrics)
                stage.finish()
            return json.loads((stage.dir / "collapse.json").read_text())

        exp.collapse[src.name] = exp.run_stage("embed", src.name, embed)
        exp.embeddings[src.name] = emb_dir
    if _cross_source(exp.recipe):
        _embed_across_sources(exp)


def _embed_across_sources(exp: Experiment) -> None:
    """Every source model embeds every other source's training set, for cross-source scoring."""
    from .embed import embed_manifest

    for model in exp.recipe.sources:
        for data in exp.recipe.sources:
            if model.name == data.name:
                continue
            name = f"{model.name}-on-{data.name}"
            stage = exp.stage("embeddings", name, {"source": exp.source_keys[model.name],
                                                   "data": _file_digest(exp.manifests[f"{data.name}/train"])})
            emb_dir = stage.dir / name

            def embed(stage: Stage = stage, emb_dir: Path = emb_dir, model: str = model.name,
                      data: str = data.name) -> None:
                if not stage.done:
                    run = exp.source_runs[model]
                    embed_manifest(run, exp.manifests[f"{data}/train"], emb_dir, store=run_store(run))
                    stage.finish()

            exp.run_stage("embed", name, embed)
            exp.cross_embeddings.append(emb_dir)


# --- 5. sample -----------------------------------------------------------------------------------


def _sampling_plan(recipe: Recipe) -> list[tuple[VariantSpec, float, int]]:
    """(variant, rate, seed) triples; selections that ignore the seed are drawn once, under the first."""
    plan = []
    for variant in recipe.sampling.variants():
        seeds = recipe.seeds[:1] if _seed_free(variant) else recipe.seeds
        plan += [(variant, rate, seed) for rate in recipe.sampling.rates for seed in seeds]
    return plan


def stage_sample(exp: Experiment) -> None:
    from .collapse.sampling import sample_folders
    from .data.manifest import read_manifest, write_manifest

    folders = [exp.embeddings[s.name] for s in exp.recipe.sources]
    emb_keys = [exp.source_keys[s.name] for s in exp.recipe.sources]
    for variant, rate, seed in _sampling_plan(exp.recipe):
        name = _run_name(variant.name, rate, seed)
        payload = {"emb": emb_keys, "strategy": variant.strategy, "options": variant.options, "rate": rate,
                   "seed": seed, "views": [p.parent.name for p in exp.cross_embeddings]}
        stage = exp.stage("samples", name, payload)
        out = stage.dir / "manifest.csv"

        def sample(stage: Stage = stage, out: Path = out, variant: VariantSpec = variant, rate: float = rate,
                   seed: int = seed) -> None:
            if not stage.done:
                # Own embeddings first: the first view of each pool is its primary one.
                views = exp.cross_embeddings if variant.options.get("cross_source") else []
                sample_folders([*folders, *views], strategy=variant.strategy, rate=rate, seed=seed,
                               out=out, **variant.options)
                stage.finish()

        exp.run_stage("sample", name, sample)
        exp.samples[(variant.name, rate, seed)] = out

    # The full-data baseline: the union of the source training sets, deduplicated by (dataset, utt_id).
    stage = exp.stage("samples", FULL, {"train": [_file_digest(exp.manifests[f"{s.name}/train"])
                                                  for s in exp.recipe.sources]})
    out = stage.dir / "manifest.csv"
    if not stage.done:
        union = pd.concat([read_manifest(exp.manifests[f"{s.name}/train"]).assign(source=s.name)
                           for s in exp.recipe.sources])
        write_manifest(union.drop_duplicates(["dataset", "utt_id"]).reset_index(drop=True), out)
        stage.finish()
    exp.samples[(FULL, 1.0, exp.recipe.seeds[0])] = out  # seed-free, like nc: shared by every seed


# --- 6. compact models ---------------------------------------------------------------------------


def _step_budget(compact: CompactSpec, cfg, n_train: int, n_full: int) -> dict[str, int]:
    """The ``optim`` settings that give a compact model of ``n_train`` rows the full-data model's optimiser
    steps (at most ``max_epochs`` epochs of its own rows), with the full-data schedule's warm-up share;
    empty where the config's own epochs already give that schedule (the full-data model itself)."""
    from .train import schedule

    batch = cfg.data.batch_size * cfg.optim.accumulate  # one process: the pipeline trains in-process
    per_epoch, full_per_epoch = n_train // batch, n_full // batch
    if compact.budget != "steps" or per_epoch == 0 or full_per_epoch == 0:
        return {}  # too few rows for a batch: training itself says so
    full = schedule(cfg.optim, full_per_epoch)
    steps = full.total_steps
    if compact.max_epochs is not None:
        steps = min(steps, compact.max_epochs * per_epoch)
    warmup = round(full.warmup_steps * steps / full.total_steps)
    own = schedule(cfg.optim, per_epoch)
    if (own.total_steps, own.warmup_steps) == (steps, warmup):
        return {}
    return {"optim.steps": steps, "optim.warmup_steps": warmup}


def _rows(manifest: Path) -> int:
    from .data.manifest import read_manifest

    return len(read_manifest(manifest, resolve_paths=False))


def stage_compact(exp: Experiment) -> None:
    compact = exp.recipe.compact
    variants = {v.name: v for v in exp.recipe.sampling.variants()}
    variants[FULL] = VariantSpec(name=FULL, strategy=FULL)
    n_full = _rows(exp.samples[(FULL, 1.0, exp.recipe.seeds[0])])
    # Two selections can be the same rows (nc with order auto is nc below the switch rate): such a
    # training set is trained, and later scored, once.
    trained: dict[str, CompactRun] = {}
    for seed in exp.recipe.seeds:
        base = _stage_config(exp, compact.config, compact.set, seed)
        for (strategy, rate, sample_seed), manifest in exp.samples.items():
            # A selection that does not depend on the seed is drawn once and shared by every seed.
            if sample_seed != seed and not _seed_free(variants[strategy]):
                continue
            name = _run_name(strategy, rate, seed)
            budget = _step_budget(compact, base, _rows(manifest), n_full)
            cfg = _stage_config(exp, compact.config, {**compact.set, **budget}, seed) if budget else base
            stage = exp.stage("compact", name, {"config": _config_key(cfg),
                                                "train": _file_digest(manifest)})
            if stage.key in trained:
                exp.log(f"[compact] {name}: the same training set as {trained[stage.key].name}; reused")
                exp.compact_runs[(strategy, rate, seed)] = trained[stage.key]
                continue

            def train_compact(manifest: Path = manifest, stage: Stage = stage, cfg=cfg,
                              name: str = name) -> CompactRun:
                metrics = _train(stage, cfg, manifest, None)
                return CompactRun(name=name, run=stage.run_dir, key=stage.key,
                                  n_train=int(metrics["n_train"]),
                                  train_seconds=float(stage.info()["train_seconds"]),
                                  steps=int(metrics["steps"]), epochs=len(metrics["epochs"]),
                                  layer_weights=metrics.get("layer_weights"))

            trained[stage.key] = exp.compact_runs[(strategy, rate, seed)] = exp.run_stage(
                "compact", name, train_compact)


# --- 7. evaluate ---------------------------------------------------------------------------------


def _score(exp: Experiment, model_name: str, run: Path, run_key: str, eval_name: str) -> dict:
    from .evaluate import evaluate_scores
    from .score import score_manifest

    manifest = exp.manifests[eval_name]
    stage = exp.stage("scores", f"{model_name}__{eval_name.replace('/', '-')}",
                      {"run": run_key, "manifest": _file_digest(manifest)})
    scores_csv = stage.dir / "scores.csv"
    if not stage.done:
        df = score_manifest(run, manifest, scores_csv, store=run_store(run))
        result = evaluate_scores(df, n_bootstrap=exp.recipe.report.bootstrap, seed=exp.recipe.seeds[0])
        write_json(stage.dir / "evaluation.json", result)
        stage.finish()
    result = json.loads((stage.dir / "evaluation.json").read_text())
    result["scores_csv"] = str(scores_csv)
    return result


def stage_evaluate(exp: Experiment) -> None:
    targets = [t.name for t in exp.recipe.targets]
    devs = [f"{s.name}/dev" for s in exp.recipe.sources if f"{s.name}/dev" in exp.manifests]
    for src in exp.recipe.sources:
        evals = [e for e in [f"{src.name}/dev", *targets] if e in exp.manifests]
        for ev in evals:
            exp.scores[(src.name, ev)] = exp.run_stage(
                "evaluate", f"{src.name} on {ev}",
                lambda n=src.name, e=ev: _score(exp, n, exp.source_runs[n], exp.source_keys[n], e))
    for compact in exp.compact_runs.values():
        for ev in [*targets, *devs]:
            if ev not in compact.scores:  # a model shared by two selections is scored once
                compact.scores[ev] = exp.run_stage(
                    "evaluate", f"{compact.name} on {ev}",
                    lambda c=compact, e=ev: _score(exp, c.name, c.run, c.key, e))


# --- 8. calibrate --------------------------------------------------------------------------------


def stage_calibrate(exp: Experiment) -> None:
    """Each compact model's score -> LLR map, fitted on the pooled dev sets of the sources (its own run
    folder gets calibration.json, so `detect` and `serve` give probabilities), and what that map does on
    each target: actDCF against minDCF, the calibration loss under domain shift."""
    from .calibration import CALIBRATION_FILE, calibrate_scores, calibrated_metrics
    from .evaluate import read_scores

    devs = [f"{s.name}/dev" for s in exp.recipe.sources if f"{s.name}/dev" in exp.manifests]
    if not devs:
        exp.log("[calibrate] no source has a dev set: the compact models stay uncalibrated")
        return
    targets = [t.name for t in exp.recipe.targets]
    for compact in {c.key: c for c in exp.compact_runs.values()}.values():
        stage = exp.stage("calibrate", compact.name, {"run": compact.key, "devs": devs, "targets": targets})

        def fit(compact: CompactRun = compact, stage: Stage = stage) -> dict:
            if not stage.done:
                scores = {ev: read_scores(compact.scores[ev]["scores_csv"]) for ev in [*devs, *targets]}
                try:
                    cal = calibrate_scores(pd.concat([scores[d] for d in devs], ignore_index=True),
                                           " + ".join(devs))
                except NcdetectError as err:  # e.g. a model whose dev scores run the wrong way
                    data: dict = {"calibration": None, "error": str(err), "targets": {}}
                else:
                    data = {"calibration": cal.to_dict(),
                            "targets": {t: calibrated_metrics(cal, scores[t]) for t in targets}}
                write_json(stage.dir / "calibration.json", data)
                stage.finish()
            data = json.loads((stage.dir / "calibration.json").read_text())
            if data["calibration"] is None:
                exp.log(f"[calibrate] {compact.name}: left uncalibrated: {data['error']}")
                (compact.run / CALIBRATION_FILE).unlink(missing_ok=True)
            else:
                write_json(compact.run / CALIBRATION_FILE, data["calibration"])
            return data

        compact.calibration = exp.run_stage("calibrate", compact.name, fit)


# --- 9. results and report -----------------------------------------------------------------------


def stage_report(exp: Experiment) -> dict:
    from .report import write_report
    from .results import collect_results

    results = collect_results(exp)
    results["trivial_cues"] = _trivial_cues(exp)
    results["figures"] = _figures(exp, results)
    results["features"] = feature_counts(exp)
    write_json(exp.out / "results.json", results)
    write_report(results, exp.out)
    return results


def _trivial_cues(exp: Experiment) -> dict:
    from .cues import trivial_cue_eers
    from .data.manifest import read_manifest

    out = {}
    for tgt in exp.recipe.targets:
        stage = exp.stage("cues", tgt.name, {"manifest": _file_digest(exp.manifests[tgt.name])})
        if not stage.done:
            write_json(stage.dir / "cues.json", trivial_cue_eers(read_manifest(exp.manifests[tgt.name])))
            stage.finish()
        out[tgt.name] = json.loads((stage.dir / "cues.json").read_text())
    return out


def _figures(exp: Experiment, results: dict) -> dict[str, str]:
    from .collapse.plot import plot_embeddings
    from .report import plot_det_curves, plot_eer_vs_rate

    fig_dir = exp.out / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)
    figures = {}
    for target in results["targets"]:
        path = fig_dir / f"eer_vs_rate_{target}.png"
        plot_eer_vs_rate(results, target, path)
        figures[f"EER versus sampling rate on {target}"] = str(path)
        path = fig_dir / f"det_{target}.png"
        plot_det_curves(_det_systems(exp, results, target), path)
        figures[f"DET curves on {target}"] = str(path)
    rate = sorted(results["rates"])[len(results["rates"]) // 2]
    headline = results["headline"]["strategy"]
    sampled = exp.samples.get((headline, rate, exp.recipe.seeds[0]))
    ringed = f" ({headline} selection at rate {rate:g} ringed)" if sampled is not None else ""
    for src in exp.recipe.sources:
        path = fig_dir / f"embeddings_{src.name}.png"
        plot_embeddings(exp.embeddings[src.name], path, sampled=sampled, method=exp.recipe.report.projection)
        figures[f"Embeddings of {src.name}{ringed}"] = str(path)
    return figures


def _det_systems(exp: Experiment, results: dict, target: str) -> dict[str, Path]:
    """Scores files for the DET plot: the source models, full data, and nc/random at the middle rate."""
    seed = exp.recipe.seeds[0]
    rate = sorted(results["rates"])[len(results["rates"]) // 2]
    systems = {f"source {s.name}": exp.scores[(s.name, target)]["scores_csv"] for s in exp.recipe.sources}
    for strategy, r in [(FULL, 1.0), *[(s, rate) for s in results["strategies"]]]:
        compact = exp.compact_runs.get((strategy, r, seed))
        if compact is not None and target in compact.scores:
            systems[f"{strategy}@{r:g}"] = compact.scores[target]["scores_csv"]
    return systems


# --- entry points --------------------------------------------------------------------------------

STAGES = [stage_prepare, stage_features, stage_sources, stage_embed_and_collapse, stage_sample, stage_compact,
          stage_evaluate, stage_calibrate, stage_report]


def run_recipe(recipe: Recipe, out: str | Path, log: Callable[[str], None] = print,
               allow_overlap: bool = False) -> dict:
    """Run every stage of ``recipe`` into ``out``; returns the results dict (also in results.json).

    A target that shares audio with a source's train or dev set is refused unless ``allow_overlap``."""
    out = ensure_writable_dir(out)
    write_yaml(out / "recipe.resolved.yaml", recipe.model_dump(mode="json"))
    exp = Experiment(recipe=recipe, out=out, log=log, allow_overlap=allow_overlap)
    results: dict = {}
    for stage_fn in STAGES:
        results = stage_fn(exp) or results
    log(f"report: {out / 'report.html'}")
    return results
