"""The experiment report: ``report.md`` and a self-contained ``report.html`` (images embedded), both
rendered from ``results.json`` so that every number in them can be checked against that file."""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd

from .fileio import write_png, write_text

TRIVIAL_CUE_FLOOR = 30.0  # a trivial feature must not separate the classes better than this EER (%)


# --- figures -------------------------------------------------------------------------------------


def plot_eer_vs_rate(results: dict, target: str, out_png: str | Path) -> None:
    """Target EER (mean ± std over seeds) against the sampling rate, one line per strategy, with the
    full-data baseline as a horizontal band."""
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    mean_key, std_key = f"eer_{target}_mean", f"eer_{target}_std"
    for strategy in results["strategies"]:
        rows = sorted((r for r in results["table"] if r["strategy"] == strategy), key=lambda r: r["rate"])
        if rows:
            ax.errorbar([r["rate"] for r in rows], [r[mean_key] for r in rows],
                        yerr=[r[std_key] for r in rows], marker="o", capsize=3, label=strategy)
    full = next((r for r in results["table"] if r["strategy"] == "full"), None)
    if full is not None:
        ax.axhline(full[mean_key], color="k", ls="--", lw=1, label="full data")
        if full[std_key] > 0:
            ax.axhspan(full[mean_key] - full[std_key], full[mean_key] + full[std_key], color="k", alpha=0.08)
    ax.set_xscale("log")
    ax.minorticks_off()  # the log axis's minor labels would overprint the rates
    ax.set_xticks(results["rates"], [f"{r:g}" for r in results["rates"]])
    ax.set_xlabel("sampling rate (fraction of each class kept)")
    ax.set_ylabel(f"EER on {target} (%)")
    ax.grid(alpha=0.3)
    ax.legend()
    _save(fig, out_png)


def plot_det_curves(systems: dict[str, str | Path], out_png: str | Path) -> None:
    """DET curves of several scored systems (``name -> scores.csv``) on one plot."""
    from .evaluate import plot_det

    curves = {}
    for name, path in systems.items():
        df = pd.read_csv(path)
        curves[name] = (df.loc[df["label"] == "bonafide", "score"].to_numpy(),
                        df.loc[df["label"] == "spoof", "score"].to_numpy())
    plot_det(curves, out_png)


def _save(fig, out_png: str | Path) -> None:
    fig.tight_layout()
    write_png(fig, out_png, dpi=110)
    plt.close(fig)


# --- the document --------------------------------------------------------------------------------


@dataclass
class Table:
    header: list[str]
    rows: list[list[str]]


@dataclass
class Figure:
    caption: str
    path: Path


Block = str | Table | Figure  # a str is a paragraph; "## " starts a heading


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{x:.2f}"


def _pm(mean: float, std: float, n: int) -> str:
    return f"{mean:.2f} ± {std:.2f}" if n > 1 else f"{mean:.2f}"


def _pm3(mean: float | None, std: float | None, n: int) -> str:
    if mean is None:
        return "–"
    return f"{mean:.3f} ± {std:.3f}" if n > 1 and std is not None else f"{mean:.3f}"


def _row_name(row: dict) -> str:
    return "full data" if row["strategy"] == "full" else f"{row['strategy']}@{row['rate']:g}"


def build_blocks(results: dict) -> list[Block]:
    targets = results["targets"]
    head = results["headline"]
    blocks: list[Block] = [f"# ncdetect report: {results['recipe']}", *_overlap_notice(results),
                           _verdict(head)]
    m = results["machine"]
    blocks.append(f"ncdetect {results['ncdetect_version']}, {results['created']}; {m['processor']}, "
                  f"{m['cpu_count']} CPUs{', ' + m['gpu'] if m.get('gpu') else ''}; torch {m['torch']}; "
                  f"seeds {results['seeds']}.")

    blocks.append("## Main table")
    blocks.append("Compact model trained on each selection; EER (%) on the target, mean ± std over seeds. "
                  "Lower is better. `nc` keeps the samples nearest to their class mean in each source "
                  "model's embedding space; `random` is a class-stratified random draw of the same size.")
    named = {name: v for name, v in (results.get("variants") or {}).items() if name != v["strategy"]}
    if named:
        described = [", ".join([v["strategy"], *[f"{k} {x}" for k, x in v.items() if k != "strategy"]])
                     for v in named.values()]
        blocks.append("Selections with options: " + "; ".join(
            f"`{name}` = {text}" for name, text in zip(named, described, strict=True)) + ".")
    blocks.append(_budget_line(results))
    blocks.append("minDCF and actDCF: the ASVspoof 5 detection costs (C_miss 1, C_fa 10, P(spoof) 0.05; "
                  "0 is perfect, 1 no better than a fixed decision); actDCF after calibrating the model on "
                  "the sources' dev sets (see Calibration).")
    header = ["training set", *[f"EER {t} (%)" for t in targets], "train size", "steps", "epochs",
              "train time (s)", *[f"{m} {t}" for t in targets for m in ("minDCF", "actDCF")]]
    rows = [[_row_name(r), *[_pm(r[f"eer_{t}_mean"], r[f"eer_{t}_std"], r["n_seeds"]) for t in targets],
             str(r["n_train"]), str(r["steps"]), f"{r['epochs']:g}", f"{r['train_seconds']:.1f}",
             *[_pm3(r.get(f"{m}_{t}_mean"), r.get(f"{m}_{t}_std"), r["n_seeds"])
               for t in targets for m in ("min_dcf", "act_dcf")]] for r in results["table"]]
    blocks.append(Table(header, rows))
    for caption, path in results["figures"].items():
        if caption.startswith("EER versus"):
            blocks.append(Figure(caption, Path(path)))
    blocks += _comparison_blocks(results)
    blocks += _calibration_blocks(results)
    blocks += _condition_blocks(results)
    blocks += _coverage_blocks(results)

    blocks.append("## Datasets")
    blocks.append(Table(["set", "utterances", "bonafide", "spoof", "attacks"], [
        [name, str(d["rows"]), str(d["bonafide"]), str(d["spoof"]), ", ".join(d["attacks"]) or "–"]
        for name, d in results["datasets"].items()]))

    blocks.append("## Source models")
    blocks.append(Table(["source", "model", "EER own dev (%)", *[f"EER {t} (%)" for t in targets]], [
        [name, str(s["model"]), _pct(s["dev_eer"]), *[_pct(s["target_eer"][t]) for t in targets]]
        for name, s in results["sources"].items()]))

    blocks += _layer_weight_blocks(results)

    blocks.append("## Neural collapse of the source models")
    blocks.append("Over each source model's embeddings of its own training set. NC1 is the within-class "
                  "variability relative to the between-class spread (lower = more collapsed); NC2 measures "
                  "the equinorm and equiangular geometry of the class means; NC3 the alignment of the "
                  "classifier with the class means; NC4 the disagreement with the nearest-class-mean rule.")
    keys = ["nc1", "nc2_equinorm", "nc2_equiangularity", "nc3", "nc4"]
    blocks.append(Table(["source", *keys], [
        [name, *[_fmt(s["collapse"].get(k)) for k in keys]] for name, s in results["sources"].items()]))
    for caption, path in results["figures"].items():
        if caption.startswith("Embeddings"):
            blocks.append(Figure(caption, Path(path)))

    blocks.append("## DET curves")
    for caption, path in results["figures"].items():
        if caption.startswith("DET"):
            blocks.append(Figure(caption, Path(path)))

    blocks.append("## Trivial-cue check")
    blocks.append(f"Each single feature used as a score, in its better orientation. A corpus without "
                  f"trivial cues keeps every EER at or above {TRIVIAL_CUE_FLOOR:.0f}%.")
    cue_rows = []
    for target, cues in results.get("trivial_cues", {}).items():
        for feature, eer in cues.items():
            verdict = "ok" if eer >= TRIVIAL_CUE_FLOOR else "CUE"
            cue_rows.append([target, feature, f"{eer:.2f}", verdict])
    blocks.append(Table(["target", "feature", "EER (%)", f">= {TRIVIAL_CUE_FLOOR:.0f}%"], cue_rows))
    return blocks


def _budget_line(results: dict) -> str:
    budget = results["budget"]
    if budget["kind"] == "steps":
        cap = ("" if budget["max_epochs"] is None
               else f", or {budget['max_epochs']} epochs of its own rows where those are fewer")
        return (f"Training budget **steps**: each compact model takes the full-data model's "
                f"{budget['full_steps']} optimiser steps{cap} (its epochs scaled by about 1 / rate, warm-up "
                "and decay with them), so the selections differ in data, not in training.")
    return ("Training budget **epochs**: every compact model trains the config's epochs over its own rows, "
            "so a smaller selection also takes fewer optimiser steps (less data and less compute).")


def _fmt(x) -> str:
    if x is None:
        return "–"
    return f"{x:.4g}" if isinstance(x, float) else str(x)


def _ci(pair: list[float] | None) -> str:
    return "–" if pair is None else f"[{pair[0]:+.2f}, {pair[1]:+.2f}]"


def _verdict(head: dict) -> str:
    """The headline: the paired-bootstrap verdicts, not raw differences of means."""
    name = head.get("strategy", "nc")
    if not head["per_rate"]:
        return f"No rate has both a {name} and a random selection to compare."
    counts = head["verdicts"]
    parts = []
    for p in head["per_rate"]:
        gap = ("" if p["nc_minus_full"] is None else
               f"; {p['nc_minus_full']:+.2f} {_ci(p['nc_minus_full_ci95'])} points from full data")
        parts.append(f"rate {p['rate']:g}: {name} {p['nc']:.2f}% vs random {p['random']:.2f}%, "
                     f"{p['nc_minus_random']:+.2f} {_ci(p['nc_minus_random_ci95'])} ({p['verdict']}){gap}")
    full = "" if head["full_eer"] is None else f" Full-data training reaches {head['full_eer']:.2f}%."
    return (f"**On {head['target']}, {name} sampling is better than random sampling at {counts['better']} of "
            f"{head['rates_compared']} rates, worse at {counts['worse']}, and not separated at "
            f"{counts['not separated']}** (EER differences in points, mean over seeds, with 95% paired-"
            f"bootstrap intervals over target utterances and seeds).{full} " + "; ".join(parts) + ".")


def _overlap_notice(results: dict) -> list[Block]:
    overlap = results.get("overlap") or {}
    if not overlap.get("found"):
        return []
    sets = "; ".join(f"{f['target']} shares {f['utterances']} utterance(s) with {f['set']}"
                     for f in overlap["found"])
    return [f"**In-domain check, not a test on unseen data:** this run was allowed to overlap ({sets})."]


def _comparison_blocks(results: dict) -> list[Block]:
    blocks: list[Block] = []
    comparisons = results.get("comparisons") or {}
    validation = results.get("validation_targets") or []
    choice = results.get("choice")
    if choice and choice.get("chosen"):
        ranking = ", ".join(f"{r['strategy']} {r['value']:.2f}" for r in choice["ranking"])
        rnd = "" if choice.get("random") is None else f" (random: {choice['random']:.2f})"
        blocks.append("## Choosing the selection on the validation target")
        blocks.append(f"The selection is chosen on `{choice['validation_target']}` only, by "
                      f"{choice['criterion']}: {ranking}{rnd}. Chosen: **{choice['chosen']}**. The other "
                      "targets play no part in the choice; they report it.")
    for target, comp in comparisons.items():
        role = "validation target" if target in validation else "test target"
        blocks.append(f"## Paired comparisons on {target} ({role})")
        blocks.append("EER difference in points (mean over seeds) with its 95% paired-bootstrap interval; "
                      "negative means fewer errors. The verdict is better or worse only when the interval "
                      "excludes zero.")
        rows = []
        for pair in comp["pairs"]:
            rows.append([f"{pair['strategy']}@{pair['rate']:g}",
                         _signed(pair.get("minus_random")), _ci(pair.get("minus_random_ci95")),
                         pair.get("verdict_vs_random", "–"),
                         _signed(pair.get("minus_full")), _ci(pair.get("minus_full_ci95")),
                         pair.get("verdict_vs_full", "–")])
        blocks.append(Table(["selection", "− random", "95% CI", "vs random", "− full", "95% CI", "vs full"],
                            rows))
        area = comp["mean_eer_over_log_rate"]
        blocks.append("Mean EER over log rate (the area under the EER-versus-rate curve divided by its "
                      "width in log10 rate; lower is better): " +
                      ", ".join(f"{name} {value:.2f}" for name, value in sorted(area.items(),
                                                                               key=lambda kv: kv[1])) + ".")
    return blocks


def _calibration_blocks(results: dict) -> list[Block]:
    """How far each compact model's decisions are from its best threshold once calibrated on the
    sources' dev sets: the calibration loss that the shift from dev to target leaves."""
    if not any(r.get(f"act_dcf_{t}_mean") is not None for r in results["table"] for t in results["targets"]):
        return []
    rows_by_target = {t: results["table"] for t in results["targets"]}
    blocks: list[Block] = ["## Calibration"]
    blocks.append("Each compact model maps its scores to log-likelihood ratios with an affine map fitted on "
                  "the sources' dev sets (prior-weighted logistic regression) and decides at the Bayes "
                  "threshold. actDCF − minDCF is what those decisions lose against the best threshold "
                  "chosen on the target itself: near 0 when the dev sets are like the target, larger under "
                  "domain shift. Uncalibrated: the raw scores taken as LLRs. Cllr in bits, means over seeds.")
    skipped = [f"{_row_name(r)} seed {r['seed']}" for r in results.get("runs", [])
               if r.get("calibration_error")]
    if skipped:
        blocks.append("Left uncalibrated (e.g. dev scores that run the wrong way; the reason is in "
                      "results.json, `runs[].calibration_error`), so their rows show no actDCF: "
                      + ", ".join(skipped) + ".")
    for target, rows in rows_by_target.items():
        blocks.append(Table(
            ["training set", f"minDCF {target}", "actDCF", "actDCF − minDCF", "actDCF uncalibrated", "Cllr",
             "min Cllr"],
            [[_row_name(r), *[_fmt3(r.get(f"{k}_{target}_mean")) for k in (
                "min_dcf", "act_dcf", "act_dcf_gap", "act_dcf_raw", "cllr", "min_cllr")]] for r in rows]))
    return blocks


def _layer_weight_blocks(results: dict) -> list[Block]:
    """The softmax weights that the models with a layer weighting learned over the front-end's layers."""
    models = [(f"source {name}", s.get("layer_weights"), 1) for name, s in results["sources"].items()]
    models += [(_row_name(r), r.get("layer_weights"), r["n_seeds"]) for r in results["table"]]
    models = [(name, mix, n) for name, mix, n in models if mix]
    if not models:
        return []
    layers = sorted({layer for _, mix, _ in models for layer in mix["layers"]})
    rows = []
    for name, mix, n in models:
        std = mix.get("std") or [0.0] * len(mix["layers"])
        cells = {layer: f"{w:.3f}" + (f" ± {sd:.3f}" if n > 1 else "")
                 for layer, w, sd in zip(mix["layers"], mix["weights"], std, strict=True)}
        rows.append([name, str(n), *[cells.get(layer, "–") for layer in layers]])
    return ["## Learned layer weights",
            "The softmax weights that each model learned over its front-end's layers (layer 0 = the "
            "encoder's stem; 1 / number of layers each at the start), mean ± std over seeds.",
            Table(["model", "seeds", *[f"layer {layer}" for layer in layers]], rows)]


def _fmt3(x: float | None) -> str:
    return "–" if x is None else f"{x:.3f}"


def _condition_blocks(results: dict) -> list[Block]:
    """EER and minDCF per value of the target's attack column and the recipe's ``by`` columns."""
    blocks: list[Block] = []
    for target, cond in (results.get("conditions") or {}).items():
        for column in cond["columns"]:
            tables = cond["tables"][column]
            if not tables:
                continue
            if not blocks:
                blocks.append("## Per condition")
                blocks.append("EER (%) / minDCF of each value's spoofs against all bonafide trials of the "
                              f"target (seed {cond['seed']}); the count is the value's spoof trials.")
            systems = list(tables)
            values = list(next(iter(tables.values())))
            rows = [[v, str(tables[systems[0]][v]["n_spoof"]),
                     *[f"{tables[s][v]['eer']:.2f} / {tables[s][v]['min_dcf']:.3f}" for s in systems]]
                    for v in values]
            blocks.append(f"**{target}, by {column}**")
            blocks.append(Table([column, "spoofs", *systems], rows))
    return blocks


def _coverage_blocks(results: dict) -> list[Block]:
    """What each selection kept at the middle rate: shares per attack, language and duration quartile,
    and in each source's space how spread out the kept set is and how collapsed."""
    cov = results.get("coverage") or {}
    selections = cov.get("selections") or {}
    if not selections:
        return []
    blocks: list[Block] = [f"## What each selection kept (rate {cov['rate']:g}, seed {cov['seed']})"]
    blocks.append("Share of the pool kept per attack (`-` is bonafide), language and duration quartile "
                  "(Q1 shortest); a selection that empties a group cannot learn from it.")
    first = next(iter(selections.values()))
    groups = [(key, value) for key in ("per_attack", "per_language", "per_duration_quartile")
              for value in (first.get(key) or {})]
    header = ["selection", *[value for _, value in groups]]
    rows = [[name, *[f"{100 * c.get(key, {}).get(value, {}).get('rate', 0):.0f}%" for key, value in groups]]
            for name, c in selections.items()]
    blocks.append(Table(header, rows))
    blocks.append("In each source model's space: `kept NN`, the mean distance from a kept sample to its "
                  "nearest other kept sample (spread); `pool→kept`, the mean distance from a pool sample to "
                  "its nearest kept one (coverage; lower covers better); and NC1 of the kept set (lower = "
                  "more collapsed, i.e. more typical samples).")
    header = ["selection", "space", "kept NN spoof", "kept NN bonafide", "pool→kept spoof",
              "pool→kept bonafide", "NC1 kept", "NC1 pool"]
    rows = []
    for name, c in selections.items():
        for space in c.get("spaces", []):
            per = space["per_class"]
            rows.append([name, space["source"],
                         *[_fmt((per.get(cls) or {}).get(k)) for k in ("kept_nn", "pool_to_kept")
                           for cls in ("spoof", "bonafide")],
                         _fmt(space.get("nc1_kept")), _fmt(space.get("nc1_pool"))])
    blocks.append(Table(header, rows))
    return blocks


def _signed(x: float | None) -> str:
    return "–" if x is None else f"{x:+.2f}"


# --- rendering -----------------------------------------------------------------------------------


def render_markdown(blocks: list[Block], base: Path) -> str:
    out = []
    for b in blocks:
        if isinstance(b, Table):
            out.append("| " + " | ".join(b.header) + " |")
            out.append("|" + "|".join(" --- " for _ in b.header) + "|")
            out += ["| " + " | ".join(r) + " |" for r in b.rows]
        elif isinstance(b, Figure):
            # Relative to the report, whatever the working directory was.
            out.append(f"![{b.caption}]({Path(b.path).resolve().relative_to(base.resolve())})")
        else:
            out.append(b)
        out.append("")
    return "\n".join(out)


def render_html(blocks: list[Block]) -> str:
    body = []
    for b in blocks:
        if isinstance(b, Table):
            cells = "".join(f"<th>{html.escape(h)}</th>" for h in b.header)
            rows = "".join(
                "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in b.rows
            )
            body.append(f"<table><thead><tr>{cells}</tr></thead><tbody>{rows}</tbody></table>")
        elif isinstance(b, Figure):
            data = base64.b64encode(Path(b.path).read_bytes()).decode()
            body.append(f'<figure><img alt="{html.escape(b.caption)}" src="data:image/png;base64,{data}">'
                        f"<figcaption>{html.escape(b.caption)}</figcaption></figure>")
        elif b.startswith("## "):
            body.append(f"<h2>{html.escape(b[3:])}</h2>")
        elif b.startswith("# "):
            body.append(f"<h1>{html.escape(b[2:])}</h1>")
        else:
            text = html.escape(b)
            while "**" in text:  # the verdict line is bold
                text = text.replace("**", "<strong>", 1).replace("**", "</strong>", 1)
            body.append(f"<p>{text.replace('`', '')}</p>")
    return _HTML.format(body="\n".join(body))


_HTML = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>ncdetect report</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 60rem; margin: 2rem auto; padding: 0 1rem;
       color: #222; }}
table {{ border-collapse: collapse; margin: 1rem 0; }}
th, td {{ border: 1px solid #ccc; padding: 0.3rem 0.6rem; text-align: right; }}
th:first-child, td:first-child {{ text-align: left; }}
thead {{ background: #f3f3f3; }}
figure {{ margin: 1rem 0; }} img {{ max-width: 100%; }}
figcaption {{ color: #555; font-size: 0.9rem; }}
</style></head>
<body>
{body}
</body></html>
"""


def write_report(results: dict, out_dir: str | Path) -> tuple[Path, Path]:
    """Write ``report.md`` and ``report.html`` into ``out_dir``."""
    out_dir = Path(out_dir)
    blocks = build_blocks(results)
    md, page = out_dir / "report.md", out_dir / "report.html"
    write_text(md, render_markdown(blocks, out_dir))
    write_text(page, render_html(blocks))
    return md, page
