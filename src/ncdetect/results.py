"""The statistics of a finished run: everything ``results.json`` and the report show.

:func:`collect_results` reads what the stages of :mod:`ncdetect.pipeline` produced (kept on the experiment as
data: each compact model's run, its stage key and its scores) and computes the table over seeds, the
paired-bootstrap comparisons, the choice on validation targets and the headline.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from . import __version__
from .recipe import FULL
from .runs import METRICS_FILE
from .sysinfo import machine_info

if TYPE_CHECKING:
    from .pipeline import Experiment


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


def _mean_std_known(values: list[float | None]) -> tuple[float | None, float | None]:
    """:func:`_mean_std`, or (None, None) when a seed lacks the value (an uncalibrated model)."""
    return (None, None) if any(v is None for v in values) else _mean_std(values)  # type: ignore[arg-type]


def _mean_layer_weights(mixes: list[dict | None]) -> dict | None:
    """The learned layer weights of one table row, mean and std over its seeds; None when its models have
    no weighting (every seed of a row trains the same config, so the same layers)."""
    if not mixes or any(m is None for m in mixes):
        return None
    per_layer = [_mean_std(list(col)) for col in zip(*(m["weights"] for m in mixes), strict=True)]
    return {"layers": mixes[0]["layers"], "weights": [round(mean, 6) for mean, _ in per_layer],
            "std": [round(std, 6) for _, std in per_layer]}


def _calibrated(compact: Any, target: str, key: str) -> float | None:
    return ((compact.calibration or {}).get("targets") or {}).get(target, {}).get(key)


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
        "strategies": [v.name for v in recipe.sampling.variants()],
        "variants": {v.name: {"strategy": v.strategy, **v.options} for v in recipe.sampling.variants()},
        "validation_targets": recipe.report.validation,
        "overlap": {"allowed": exp.allow_overlap, "found": exp.overlaps},
        "targets": targets,
        "datasets": {name: _dataset_summary(path) for name, path in exp.manifests.items()},
        "sources": {},
        "runs": [],
        "table": [],
    }
    for src in recipe.sources:
        metrics = json.loads((exp.source_runs[src.name] / METRICS_FILE).read_text())
        results["sources"][src.name] = {
            "model": metrics.get("model"),
            "layer_weights": metrics.get("layer_weights"),
            "dev_eer": exp.scores.get((src.name, f"{src.name}/dev"), {}).get("eer"),
            "target_eer": {t: exp.scores[(src.name, t)]["eer"] for t in targets},
            "collapse": exp.collapse[src.name],
        }
    for (strategy, rate, seed), compact in sorted(exp.compact_runs.items(), key=lambda kv: kv[0]):
        cal = (compact.calibration or {}).get("calibration")
        results["runs"].append({
            "strategy": strategy, "rate": rate, "seed": seed, **compact.summary(),
            "eer": {ev: score["eer"] for ev, score in compact.scores.items()},
            "min_dcf": {ev: score.get("min_dcf") for ev, score in compact.scores.items()},
            # actDCF of the LLRs that the map fitted on the sources' dev sets gives on each target
            "act_dcf": {t: _calibrated(compact, t, "act_dcf") for t in targets},
            "calibration": None if cal is None else {k: cal[k] for k in ("slope", "offset", "dev")},
            "calibration_targets": (compact.calibration or {}).get("targets") or {},
            "calibration_error": (compact.calibration or {}).get("error"),
        })
    rows: dict[tuple[str, float], list[dict]] = {}
    for run in results["runs"]:
        rows.setdefault((run["strategy"], run["rate"]), []).append(run)
    order = {FULL: -1, **{s: i for i, s in enumerate(results["strategies"])}}
    for (strategy, rate), runs in sorted(rows.items(), key=lambda kv: (-kv[0][1], order[kv[0][0]])):
        row: dict[str, Any] = {"strategy": strategy, "rate": rate, "n_seeds": len(runs)}
        for t in targets:
            row[f"eer_{t}_mean"], row[f"eer_{t}_std"] = _mean_std([r["eer"][t] for r in runs])
            for metric in ("min_dcf", "act_dcf"):
                row[f"{metric}_{t}_mean"], row[f"{metric}_{t}_std"] = _mean_std_known(
                    [r[metric][t] for r in runs])
            for key in ("act_dcf_gap", "act_dcf_raw", "cllr", "min_cllr"):
                row[f"{key}_{t}_mean"], _ = _mean_std_known(
                    [r["calibration_targets"].get(t, {}).get(key) for r in runs])
        row["n_train"] = int(np.mean([r["n_train"] for r in runs]))
        row["train_seconds"] = float(np.mean([r["train_seconds"] for r in runs]))
        row["steps"] = int(np.mean([r["steps"] for r in runs]))
        row["epochs"] = float(np.mean([r["epochs"] for r in runs]))
        row["layer_weights"] = _mean_layer_weights([r["layer_weights"] for r in runs])
        results["table"].append(row)
    results["budget"] = _budget(recipe, results["runs"])
    results["conditions"] = _conditions(exp, results)
    results["coverage"] = _coverage_at_middle_rate(exp, results)
    results["comparisons"] = _comparisons(exp, results)
    results["choice"] = _choose_on_validation(results)
    results["headline"] = _headline(results, recipe.sampling.headline)
    return results


def _budget(recipe, runs: list[dict]) -> dict:
    """How long each compact model trained: the recipe's budget and the full-data model's steps."""
    full = [r["steps"] for r in runs if r["strategy"] == FULL]
    return {"kind": recipe.compact.budget, "max_epochs": recipe.compact.max_epochs,
            "full_steps": full[0] if full else None}


def _conditions(exp: Experiment, results: dict) -> dict:
    """EER, minDCF and counts per value of the target's attack column and of each column the recipe names
    (``targets[].by``), each value's spoofs against all bonafide trials, for the source models, full-data
    training and the headline selection at the middle rate (first seed)."""
    from .evaluate import attach_columns, metrics_by, read_scores

    seed = exp.recipe.seeds[0]
    rate = sorted(results["rates"])[len(results["rates"]) // 2]
    out: dict[str, Any] = {}
    for tgt in exp.recipe.targets:
        columns = list(dict.fromkeys(["attack", *tgt.by]))
        systems = {f"source {s.name}": exp.scores[(s.name, tgt.name)]["scores_csv"]
                   for s in exp.recipe.sources}
        for strategy, r in ((FULL, 1.0), (exp.recipe.sampling.headline, rate)):
            compact = exp.compact_runs.get((strategy, r, seed))
            if compact is not None and tgt.name in compact.scores:
                systems[f"{strategy}@{r:g}"] = compact.scores[tgt.name]["scores_csv"]
        tables: dict[str, dict] = {c: {} for c in columns}
        for name, path in systems.items():
            df = attach_columns(read_scores(path), columns, exp.manifests[tgt.name], path)
            for column in columns:
                tables[column][name] = metrics_by(df, column)["values"]
        out[tgt.name] = {"seed": seed, "columns": columns, "tables": tables}
    return out


def _seed_scores(exp: Experiment, strategy: str, rate: float, target: str) -> pd.DataFrame:
    """Scores of one selection on one target, one column per seed, rows indexed by utt_id."""
    frames = {seed: pd.read_csv(exp.compact_runs[(strategy, rate, seed)].scores[target]["scores_csv"],
                                dtype={"utt_id": str}).set_index("utt_id") for seed in exp.recipe.seeds}
    labels = next(iter(frames.values()))["label"]  # the same target manifest for every seed
    return pd.DataFrame({**{seed: df["score"] for seed, df in frames.items()}, "label": labels})


def _comparisons(exp: Experiment, results: dict) -> dict:
    """Every selection against random at the same rate and against full data, on every target: the mean
    over seeds of the EER difference with a 95% paired-bootstrap interval and a verdict; and each
    selection's mean EER over log rate (the area under its EER-versus-rate curve per unit of log rate)."""
    from .evaluate import PairedBootstrap, mean_over_log_rate

    recipe = exp.recipe
    out: dict[str, Any] = {}
    systems = [(r["strategy"], r["rate"]) for r in results["table"] if r["n_seeds"] == len(recipe.seeds)]
    for target in results["targets"]:
        frames = {key: _seed_scores(exp, *key, target) for key in systems}
        any_frame = next(iter(frames.values()))
        order = any_frame.index
        boot = PairedBootstrap((any_frame["label"] == "bonafide").to_numpy(), len(recipe.seeds),
                               recipe.report.bootstrap, seed=recipe.seeds[0])
        resampled = {key: boot.resample(frame.loc[order, list(recipe.seeds)].to_numpy().T)
                     for key, frame in frames.items()}
        rows = []
        for (strategy, rate), res in resampled.items():
            if strategy == FULL:
                continue
            row: dict[str, Any] = {"strategy": strategy, "rate": rate}
            for other, key in [("random", ("random", rate)), (FULL, (FULL, 1.0))]:
                if key in resampled and key != (strategy, rate):
                    diff = boot.difference(res, resampled[key])
                    row.update(diff.as_dict(f"minus_{other}"))
                    row[f"verdict_vs_{other}"] = diff.verdict
            rows.append(row)
        table = {(r["strategy"], r["rate"]): r[f"eer_{target}_mean"] for r in results["table"]}
        area = {}
        for strategy in results["strategies"]:
            rates = [rate for rate in results["rates"] if (strategy, rate) in table]
            if rates:
                area[strategy] = mean_over_log_rate(rates, [table[(strategy, r)] for r in rates])
        out[target] = {"pairs": rows, "mean_eer_over_log_rate": area}
    return out


def _coverage_at_middle_rate(exp: Experiment, results: dict) -> dict:
    """What each selection kept of its pool (the ``coverage`` of its summary), at the middle rate and the
    first seed: the report shows why selections differ."""
    from .collapse.sampling import summary_path

    rate = sorted(results["rates"])[len(results["rates"]) // 2]
    out = {"rate": rate, "seed": exp.recipe.seeds[0], "selections": {}}
    for name in results["strategies"]:
        manifest = exp.samples.get((name, rate, exp.recipe.seeds[0]))
        if manifest is not None and summary_path(manifest).is_file():
            summary = json.loads(summary_path(manifest).read_text())
            if "coverage" in summary:
                out["selections"][name] = summary["coverage"]
    return out


def _choose_on_validation(results: dict) -> dict | None:
    """With validation targets, the selection with the lowest mean EER over log rate on the first one;
    the test targets are reported for it but play no part in the choice."""
    validation = results.get("validation_targets") or []
    if not validation:
        return None
    area = results["comparisons"][validation[0]]["mean_eer_over_log_rate"]
    ranking = sorted((name for name in area if name != "random"), key=lambda n: (area[n], n))
    return {"validation_target": validation[0], "criterion": "mean EER over log rate (lowest wins)",
            "ranking": [{"strategy": n, "value": area[n]} for n in ranking],
            "random": area.get("random"), "chosen": ranking[0] if ranking else None}


def _headline(results: dict, headline: str) -> dict:
    """The headline selection against random at each rate, and its gap to full-data training, with
    paired-bootstrap intervals, on the first test target (the first target that is not for validation)."""
    tests = [t for t in results["targets"] if t not in (results.get("validation_targets") or [])]
    target = tests[0]
    key = f"eer_{target}_mean"
    by = {(r["strategy"], r["rate"]): r[key] for r in results["table"]}
    full = by.get((FULL, 1.0))
    pairs = {(p["strategy"], p["rate"]): p for p in results["comparisons"][target]["pairs"]}
    per_rate = []
    for rate in results["rates"]:
        nc, rnd, pair = by.get((headline, rate)), by.get(("random", rate)), pairs.get((headline, rate), {})
        if nc is None or rnd is None or "minus_random" not in pair:
            continue
        per_rate.append({
            "rate": rate, "strategy": headline, "nc": nc, "random": rnd,
            "nc_minus_random": pair["minus_random"], "nc_minus_random_ci95": pair["minus_random_ci95"],
            "nc_minus_full": pair.get("minus_full"), "nc_minus_full_ci95": pair.get("minus_full_ci95"),
            "verdict": pair["verdict_vs_random"], "verdict_vs_full": pair.get("verdict_vs_full"),
        })
    counts = {v: sum(1 for p in per_rate if p["verdict"] == v) for v in ("better", "worse", "not separated")}
    return {"target": target, "strategy": headline, "full_eer": full, "per_rate": per_rate,
            "verdicts": counts, "rates_compared": len(per_rate)}


