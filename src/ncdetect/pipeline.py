"""``ncdetect run``: the paper's experiment end to end, as cached, resumable stages.

Stages, in order:
  1. prepare   - manifests for every source, dev and target set (filtered and capped as the recipe says)
  2. source    - train each source model on its own corpus
  3. embed     - penultimate embeddings of each source's training set
  4. collapse  - NC1-NC4 of each source
  5. sample    - every strategy at every rate (and seed, for the seeded strategies)
  6. compact   - the compact model on every sampled set, and on 100% of the union (full-data baseline)
  7. evaluate  - score every model on the targets and the sources' dev sets
  8. report    - report.md, report.html and results.json

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

import numpy as np
import pandas as pd

from . import __version__
from .errors import NcdetectError
from .fileio import ensure_writable_dir, write_json, write_yaml
from .recipe import DataSpec, Recipe, SourceSpec
from .sysinfo import machine_info

T = TypeVar("T")

FULL = "full"
# Strategies whose selection does not depend on the seed (ties are broken by utt_id).
SEED_FREE = {"nc", "farthest", "herding", FULL}


def _seed_free(strategy: str, recipe: Recipe) -> bool:
    # k-means clustering of the spoof class makes nc depend on the seed.
    return strategy in SEED_FREE and not (strategy == "nc" and recipe.sampling.fake_mode == "kmeans")


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


@dataclass
class Experiment:
    """The state of one ``ncdetect run``: the recipe, its output folder and what each stage produced."""

    recipe: Recipe
    out: Path
    log: Callable[[str], None]
    manifests: dict[str, Path] = field(default_factory=dict)
    source_runs: dict[str, Path] = field(default_factory=dict)
    source_keys: dict[str, str] = field(default_factory=dict)
    embeddings: dict[str, Path] = field(default_factory=dict)
    collapse: dict[str, dict] = field(default_factory=dict)
    samples: dict[tuple[str, float, int], Path] = field(default_factory=dict)
    compact_runs: dict[tuple[str, float, int], tuple[Path, dict]] = field(default_factory=dict)
    scores: dict[tuple[str, str], dict] = field(default_factory=dict)

    def stage(self, kind: str, name: str, payload: Any) -> Stage:
        key = _key(payload)
        return Stage(kind, name, self.out / kind / f"{name}-{key}", key)

    def run_stage(self, kind: str, name: str, fn: Callable[[], T]) -> T:
        started = time.perf_counter()
        try:
            result = fn()
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


# --- 2. source models ----------------------------------------------------------------------------


def _train_config(config: Path | None, overrides: dict[str, Any], seed: int):
    from .config import load_config

    sets = [f"{k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in overrides.items()]
    return load_config(config, [*sets, f"train.seed={seed}"])


def _train(stage: Stage, cfg, train_manifest: Path, dev_manifest: Path | None) -> dict:
    """Train into ``stage.dir/<stage name>``, resuming an interrupted run; returns its metrics."""
    from .train import train

    run = stage.run_dir
    if stage.done:
        return json.loads((run / "metrics.json").read_text())
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
            cfg = _train_config(src.config, src.set, seed)
            stage = exp.stage("sources", src.name, {"config": cfg.model_dump(mode="json"),
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
                embed_manifest(exp.source_runs[name], exp.manifests[f"{name}/train"], emb_dir)
                emb = load_embeddings(emb_dir)
                metrics = nc_metrics(emb.embeddings, label_ids(emb.index["label"]), emb.W, emb.b)
                write_json(stage.dir / "collapse.json", metrics)
                stage.finish()
            return json.loads((stage.dir / "collapse.json").read_text())

        exp.collapse[src.name] = exp.run_stage("embed", src.name, embed)
        exp.embeddings[src.name] = emb_dir


# --- 5. sample -----------------------------------------------------------------------------------


def _sampling_plan(recipe: Recipe) -> list[tuple[str, float, int]]:
    """(strategy, rate, seed) triples; selections that ignore the seed are drawn once, under the first."""
    plan = []
    for strategy in recipe.sampling.strategies:
        seeds = recipe.seeds[:1] if _seed_free(strategy, recipe) else recipe.seeds
        plan += [(strategy, rate, seed) for rate in recipe.sampling.rates for seed in seeds]
    return plan


def stage_sample(exp: Experiment) -> None:
    from .collapse.sampling import sample_folders
    from .data.manifest import read_manifest, write_manifest

    sp = exp.recipe.sampling
    folders = [exp.embeddings[s.name] for s in exp.recipe.sources]
    emb_keys = [exp.source_keys[s.name] for s in exp.recipe.sources]
    for strategy, rate, seed in _sampling_plan(exp.recipe):
        name = f"{strategy}-r{_rate_label(rate)}-s{seed}"
        payload = {"emb": emb_keys, "strategy": strategy, "rate": rate, "seed": seed,
                   "fake_mode": sp.fake_mode, "metric": sp.metric}
        stage = exp.stage("samples", name, payload)
        out = stage.dir / "manifest.csv"

        def sample(stage: Stage = stage, out: Path = out, strategy: str = strategy, rate: float = rate,
                   seed: int = seed) -> None:
            if not stage.done:
                # The fake-class variants are variants of nc; the baselines take the whole spoof class.
                fake_mode = sp.fake_mode if strategy == "nc" else "class"
                sample_folders(folders, strategy=strategy, rate=rate, fake_mode=fake_mode,
                               metric=sp.metric, seed=seed, out=out)
                stage.finish()

        exp.run_stage("sample", name, sample)
        exp.samples[(strategy, rate, seed)] = out

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


def stage_compact(exp: Experiment) -> None:
    compact = exp.recipe.compact
    for seed in exp.recipe.seeds:
        for (strategy, rate, sample_seed), manifest in exp.samples.items():
            # A selection that does not depend on the seed is drawn once and shared by every seed.
            if sample_seed != seed and not _seed_free(strategy, exp.recipe):
                continue
            name = f"{strategy}-r{_rate_label(rate)}-s{seed}"

            def train_compact(manifest: Path = manifest, seed: int = seed, name: str = name) -> tuple:
                cfg = _train_config(compact.config, compact.set, seed)
                stage = exp.stage("compact", name, {"config": cfg.model_dump(mode="json"),
                                                    "train": _file_digest(manifest)})
                metrics = _train(stage, cfg, manifest, None)
                return stage.run_dir, {"n_train": int(metrics["n_train"]),
                                           "train_seconds": float(stage.info()["train_seconds"])}

            exp.compact_runs[(strategy, rate, seed)] = exp.run_stage("compact", name, train_compact)


# --- 7. evaluate ---------------------------------------------------------------------------------


def _score(exp: Experiment, model_name: str, run: Path, run_key: str, eval_name: str) -> dict:
    from .evaluate import evaluate_scores
    from .score import score_manifest

    manifest = exp.manifests[eval_name]
    stage = exp.stage("scores", f"{model_name}__{eval_name.replace('/', '-')}",
                      {"run": run_key, "manifest": _file_digest(manifest)})
    scores_csv = stage.dir / "scores.csv"
    if not stage.done:
        df = score_manifest(run, manifest, scores_csv)
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
    for (strategy, rate, seed), (run, _) in exp.compact_runs.items():
        name = f"{strategy}-r{_rate_label(rate)}-s{seed}"
        run_key = run.parent.name.rsplit("-", 1)[-1]
        for ev in [*targets, *devs]:
            exp.scores[(name, ev)] = exp.run_stage(
                "evaluate", f"{name} on {ev}", lambda n=name, r=run, k=run_key, e=ev: _score(exp, n, r, k, e))


# --- 8. results and report -----------------------------------------------------------------------


def _dataset_summary(path: Path) -> dict:
    from .data.manifest import read_manifest

    df = read_manifest(path, resolve_paths=False)
    return {
        "rows": len(df),
        "bonafide": int((df["label"] == "bonafide").sum()),
        "spoof": int((df["label"] == "spoof").sum()),
        "attacks": sorted(a for a in df["attack"].unique() if a != "-"),
    }


def _mean_std(values: list[float]) -> tuple[float, float]:
    arr = np.asarray(values, dtype=float)
    return float(arr.mean()), float(arr.std(ddof=1)) if len(arr) > 1 else 0.0


def collect_results(exp: Experiment) -> dict:
    """Everything the report shows, as one JSON-serialisable dict."""
    recipe = exp.recipe
    targets = [t.name for t in recipe.targets]
    results: dict[str, Any] = {
        "recipe": recipe.name,
        "ncdetect_version": __version__,
        "created": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "machine": machine_info(),
        "seeds": recipe.seeds,
        "rates": recipe.sampling.rates,
        "strategies": recipe.sampling.strategies,
        "targets": targets,
        "datasets": {name: _dataset_summary(path) for name, path in exp.manifests.items()},
        "sources": {},
        "runs": [],
        "table": [],
    }
    for src in recipe.sources:
        results["sources"][src.name] = {
            "model": json.loads((exp.source_runs[src.name] / "metrics.json").read_text()).get("model"),
            "dev_eer": exp.scores.get((src.name, f"{src.name}/dev"), {}).get("eer"),
            "target_eer": {t: exp.scores[(src.name, t)]["eer"] for t in targets},
            "collapse": exp.collapse[src.name],
        }
    for (strategy, rate, seed), (_run, info) in sorted(exp.compact_runs.items(), key=lambda kv: kv[0]):
        name = f"{strategy}-r{_rate_label(rate)}-s{seed}"
        results["runs"].append({
            "strategy": strategy, "rate": rate, "seed": seed, **info,
            "eer": {ev: exp.scores[(name, ev)]["eer"] for (n, ev) in exp.scores if n == name},
        })
    rows: dict[tuple[str, float], list[dict]] = {}
    for run in results["runs"]:
        rows.setdefault((run["strategy"], run["rate"]), []).append(run)
    order = {FULL: -1, **{s: i for i, s in enumerate(recipe.sampling.strategies)}}
    for (strategy, rate), runs in sorted(rows.items(), key=lambda kv: (-kv[0][1], order[kv[0][0]])):
        row: dict[str, Any] = {"strategy": strategy, "rate": rate, "n_seeds": len(runs)}
        for t in targets:
            row[f"eer_{t}_mean"], row[f"eer_{t}_std"] = _mean_std([r["eer"][t] for r in runs])
        row["n_train"] = int(np.mean([r["n_train"] for r in runs]))
        row["train_seconds"] = float(np.mean([r["train_seconds"] for r in runs]))
        results["table"].append(row)
    results["headline"] = _headline(results)
    return results


def _headline(results: dict) -> dict:
    """NC against random at each rate, and the gap to full-data training, on the first target."""
    target = results["targets"][0]
    key = f"eer_{target}_mean"
    by = {(r["strategy"], r["rate"]): r[key] for r in results["table"]}
    full = next((r[key] for r in results["table"] if r["strategy"] == FULL), None)
    per_rate = []
    for rate in results["rates"]:
        nc, rnd = by.get(("nc", rate)), by.get(("random", rate))
        if nc is not None and rnd is not None:
            per_rate.append({"rate": rate, "nc": nc, "random": rnd, "nc_minus_random": nc - rnd,
                             "nc_minus_full": None if full is None else nc - full})
    wins = sum(1 for p in per_rate if p["nc_minus_random"] < 0)
    return {"target": target, "full_eer": full, "per_rate": per_rate, "nc_wins": wins,
            "rates_compared": len(per_rate)}


def stage_report(exp: Experiment) -> dict:
    from .report import write_report

    results = collect_results(exp)
    results["trivial_cues"] = _trivial_cues(exp)
    results["figures"] = _figures(exp, results)
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
    for src in exp.recipe.sources:
        sampled = exp.samples.get(("nc", rate, exp.recipe.seeds[0]))
        path = fig_dir / f"embeddings_{src.name}.png"
        plot_embeddings(exp.embeddings[src.name], path, sampled=sampled, method=exp.recipe.report.projection)
        figures[f"Embeddings of {src.name} (nc selection at rate {rate:g} ringed)"] = str(path)
    return figures


def _det_systems(exp: Experiment, results: dict, target: str) -> dict[str, Path]:
    """Scores files for the DET plot: the source models, full data, and nc/random at the middle rate."""
    seed = exp.recipe.seeds[0]
    rate = sorted(results["rates"])[len(results["rates"]) // 2]
    systems = {f"source {s.name}": exp.scores[(s.name, target)]["scores_csv"] for s in exp.recipe.sources}
    for strategy, r in [(FULL, 1.0), *[(s, rate) for s in exp.recipe.sampling.strategies]]:
        key = (f"{strategy}-r{_rate_label(r)}-s{seed}", target)
        if key in exp.scores:
            systems[f"{strategy}@{r:g}"] = exp.scores[key]["scores_csv"]
    return systems


# --- entry points --------------------------------------------------------------------------------

STAGES = [stage_prepare, stage_sources, stage_embed_and_collapse, stage_sample, stage_compact,
          stage_evaluate, stage_report]


def run_recipe(recipe: Recipe, out: str | Path, log: Callable[[str], None] = print) -> dict:
    """Run every stage of ``recipe`` into ``out``; returns the results dict (also in results.json)."""
    out = ensure_writable_dir(out)
    write_yaml(out / "recipe.resolved.yaml", recipe.model_dump(mode="json"))
    exp = Experiment(recipe=recipe, out=out, log=log)
    results: dict = {}
    for stage_fn in STAGES:
        results = stage_fn(exp) or results
    log(f"report: {out / 'report.html'}")
    return results


def demo_recipe_path() -> Path:
    return Path(__file__).parent / "recipes" / "demo.yaml"


def run_demo(out: str | Path, quick: bool = False, corpus: str | Path | None = None,
             log: Callable[[str], None] = print) -> Path:
    """Build the demo corpus if it is missing, then run ``recipes/demo.yaml`` on it."""
    from .data.demo_corpus import build_demo_corpus
    from .recipe import load_recipe

    out = ensure_writable_dir(out)
    corpus = Path(corpus) if corpus is not None else out / "corpus"
    started = time.perf_counter()
    manifests = build_demo_corpus(corpus, quick=quick)
    log(f"[demo-corpus] {corpus}: {time.perf_counter() - started:.1f} s")
    # Absolute: relative paths in a recipe resolve against the recipe's folder, not the working directory.
    variables = {name.upper(): str(Path(path).resolve()) for name, path in manifests.items()}
    recipe = load_recipe(demo_recipe_path(), variables, profile="quick" if quick else None)
    run_recipe(recipe, out, log=log)
    return out / "report.html"
