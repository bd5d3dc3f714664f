"""``ncdetect run`` end to end on toy corpora: every stage, the cache, and a failing stage."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from conftest import make_corpus
from ncdetect.errors import NcdetectError
from ncdetect.pipeline import run_recipe
from ncdetect.recipe import load_recipe

TINY = {
    "model.kwargs.width": 8,
    "optim.epochs": 2,
    "data.num_samples": 8000,
    "data.batch_size": 8,
    "data.num_workers": 0,
}


def write_recipe(root: Path, rates=(0.25, 0.5), seeds=(0, 1), extra_strategies=()) -> Path:
    src_a = make_corpus(root / "a", n_bonafide=8, n_spoof=16, attacks=("A01", "A02"), dataset="a", seed=1,
                        seconds=0.6)
    dev_a = make_corpus(root / "a_dev", n_bonafide=4, n_spoof=8, attacks=("A01", "A02"), dataset="adev",
                        seed=2, seconds=0.6)
    src_b = make_corpus(root / "b", n_bonafide=8, n_spoof=16, attacks=("B01",), dataset="b", seed=3,
                        seconds=0.6)
    target = make_corpus(root / "t", n_bonafide=6, n_spoof=12, attacks=("A01", "B01", "C01"), dataset="t",
                         seed=4, seconds=0.6)
    recipe = {
        "name": "toy",
        "variables": {"ROOT": str(root)},
        "sources": [
            {"name": "src_a", "train": str(src_a), "dev": str(dev_a),
             "set": {**TINY, "model.name": "tiny_resnet"}},
            {"name": "src_b", "train": str(src_b), "set": {**TINY, "model.name": "lcnn"}},
        ],
        "targets": [{"name": "tgt", "data": str(target), "by": ["speaker"]}],
        "sampling": {"rates": list(rates), "strategies": ["nc", "random", *extra_strategies],
                     "fake_mode": "attack"},
        "compact": {"set": {**TINY, "model.name": "tiny_resnet"}},
        "seeds": list(seeds),
        "report": {"bootstrap": 20},
    }
    path = root / "recipe.yaml"
    path.write_text(json.dumps(recipe))  # JSON is YAML
    return path


def results_runs(out: Path) -> dict:
    """Each compact model's run folder and target scores file, by (selection, rate, seed), read back
    from the output folder the way a user finds them."""
    found = {}
    for run in out.glob("compact/*/*"):
        if (run / "model.safetensors").is_file():
            name = run.name  # e.g. nc-r0.5-s1
            strategy, rate, seed = name.rsplit("-r", 1)[0], *name.rsplit("-r", 1)[1].split("-s")
            scores = next(out.glob(f"scores/{name}__tgt-*/scores.csv"))
            found[(strategy, float(rate), int(seed))] = {"run": run, "scores_csv": scores}
    return found


@pytest.mark.slow
def test_run_end_to_end_and_cache(tmp_path):
    cross = {"name": "nc-cross", "strategy": "nc", "options": {"cross_source": True}}
    # near at both rates (below the switch): the same rows as nc, so trained and scored once
    auto = {"name": "nc-auto", "strategy": "nc", "options": {"fake_mode": "attack", "order": "auto",
                                                             "order_switch": 0.9}}
    recipe = load_recipe(write_recipe(tmp_path / "data", extra_strategies=[cross, auto]))
    out = tmp_path / "out"
    lines: list[str] = []
    results = run_recipe(recipe, out, log=lines.append)

    for name in ["report.md", "report.html", "results.json"]:
        assert (out / name).is_file()
    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk["table"] == results["table"]

    # rows: full data, then nc and random at each rate
    names = [(r["strategy"], r["rate"]) for r in results["table"]]
    assert names == [("full", 1.0), ("nc", 0.5), ("random", 0.5), ("nc-cross", 0.5), ("nc-auto", 0.5),
                     ("nc", 0.25), ("random", 0.25), ("nc-cross", 0.25), ("nc-auto", 0.25)]
    rows = {(r["strategy"], r["rate"]): r for r in results["table"]}
    assert rows[("nc-auto", 0.5)]["eer_tgt_mean"] == rows[("nc", 0.5)]["eer_tgt_mean"]
    assert not list(out.glob("compact/nc-auto-*")) and not list(out.glob("scores/nc-auto-*"))
    assert any("nc-auto-r0.5-s1: the same training set as nc-r0.5-s1; reused" in line for line in lines)
    # cross-source scoring: each source model also embedded the other source's training set, and the
    # selection ranked every row in both spaces
    views = sorted(p.name for p in out.glob("embeddings/*-on-*/*-on-*"))
    assert views == ["src_a-on-src_b", "src_b-on-src_a"]
    summary = json.loads(next(out.glob("samples/nc-cross-r0.5-s0-*/manifest.summary.json")).read_text())
    assert summary["cross_source"] is True
    for row in results["table"]:
        assert row["n_seeds"] == 2
        assert 0 <= row["eer_tgt_mean"] <= 100 and math.isfinite(row["eer_tgt_std"])
    full = next(r for r in results["table"] if r["strategy"] == "full")
    assert full["n_train"] == 48  # the union of both sources (24 + 24 rows, no duplicates)
    nc_half = next(r for r in results["table"] if r["strategy"] == "nc" and r["rate"] == 0.5)
    assert nc_half["n_train"] == 24  # round(0.5 * N_c) per class and source: (4 + 8) * 2

    # each source: dev EER only where a dev set exists, a target EER and its NC metrics
    assert results["sources"]["src_a"]["dev_eer"] is not None
    assert results["sources"]["src_b"]["dev_eer"] is None
    for src in results["sources"].values():
        assert 0 <= src["target_eer"]["tgt"] <= 100
        assert math.isfinite(src["collapse"]["nc1"])

    # the headline: paired differences with intervals and a verdict per rate (docs/formats.md)
    head = on_disk["headline"]
    assert [p["rate"] for p in head["per_rate"]] == [0.25, 0.5]
    for p in head["per_rate"]:
        lo, hi = p["nc_minus_random_ci95"]
        assert lo <= hi and p["verdict"] in ("better", "worse", "not separated")
        assert (p["verdict"] == "better") == (hi < 0) and (p["verdict"] == "worse") == (lo > 0)
        assert p["nc_minus_random"] == pytest.approx(p["nc"] - p["random"])
        assert p["nc_minus_full"] == pytest.approx(p["nc"] - head["full_eer"])
        assert len(p["nc_minus_full_ci95"]) == 2
    area = on_disk["comparisons"]["tgt"]["mean_eer_over_log_rate"]
    assert set(area) == {"nc", "random", "nc-cross", "nc-auto"}

    html = (out / "report.html").read_text()
    assert "data:image/png;base64," in html and 'src="figures' not in html
    assert "Embeddings of src_a (nc selection at rate 0.5 ringed)" in on_disk["figures"]
    # every compact model's scores are kept with it: a shared model has one object and one set of scores
    assert results["runs"][0]["eer"].keys() == {"tgt", "src_a/dev"}
    assert "95% paired-bootstrap intervals" in html
    # what each selection kept, at the middle rate: shares per attack and each source space's statistics
    kept = on_disk["coverage"]["selections"]
    assert on_disk["coverage"]["rate"] == 0.5 and set(kept) == {"nc", "random", "nc-cross", "nc-auto"}
    assert kept["random"]["per_attack"]["A01"]["total"] == 8
    assert [s["source"] for s in kept["nc"]["spaces"]] == ["src_a", "src_b"]
    md = (out / "report.md").read_text()
    assert "What each selection kept (rate 0.5, seed 0)" in md
    assert f"{full['eer_tgt_mean']:.2f}" in md
    assert set(results["trivial_cues"]["tgt"]) == {"duration", "rms", "rolloff95", "leading_silence"}

    # minDCF beside the EER; each compact model calibrated on the sources' dev sets (src_a/dev), its map
    # in its run folder and its actDCF on the target that of those LLRs
    from ncdetect.calibration import load_calibration
    from ncdetect.evaluate import act_dcf, compute_eer, min_dcf, read_scores

    for row in results["table"]:
        assert 0 <= row["min_dcf_tgt_mean"] <= 1
    calibrated = [r for r in results["runs"] if r["calibration"] is not None]
    assert calibrated and all(r["calibration"]["dev"] == "src_a/dev" for r in calibrated)
    by_key = {(r["strategy"], r["rate"], r["seed"]): r for r in results["runs"]}
    for key, compact in sorted(results_runs(out).items()):
        run = by_key[key]
        if run["calibration"] is None:
            assert load_calibration(compact["run"]) is None
            continue
        cal = load_calibration(compact["run"])
        assert (cal.slope, cal.offset) == (run["calibration"]["slope"], run["calibration"]["offset"])
        df = read_scores(compact["scores_csv"])
        b, sp = (df.loc[df.label == lab, "score"].to_numpy() for lab in ("bonafide", "spoof"))
        assert run["act_dcf"]["tgt"] == pytest.approx(act_dcf(cal.llr(b), cal.llr(sp))[0], abs=1e-12)
        assert run["min_dcf"]["tgt"] == pytest.approx(min_dcf(b, sp)[0], abs=1e-12)
    # per condition: the attack column and the recipe's `by: [speaker]`, spoofs against all bonafide
    cond = on_disk["conditions"]["tgt"]
    assert cond["columns"] == ["attack", "speaker"]
    assert set(cond["tables"]["attack"]["full@1"]) == {"A01", "B01", "C01"}
    full_run = next(r for r in results_runs(out).values() if "full-r1-s0" in str(r["run"]))
    df = read_scores(full_run["scores_csv"])
    bona = df.loc[df.label == "bonafide", "score"].to_numpy()
    c01 = df.loc[df.attack == "C01", "score"].to_numpy()
    assert cond["tables"]["attack"]["full@1"]["C01"]["eer"] == compute_eer(bona, c01)[0]
    assert len(cond["tables"]["speaker"]["source src_a"]) == 4
    assert "## Calibration" in md and "**tgt, by speaker**" in md and "actDCF tgt" in md

    # a rerun finds every stage complete and retrains nothing
    before = {p: p.stat().st_mtime_ns for p in out.rglob("model.safetensors")}
    again = run_recipe(load_recipe(write_recipe(tmp_path / "data", extra_strategies=[cross, auto])), out,
                       log=lines.append)
    assert again["table"] == results["table"]
    assert {p: p.stat().st_mtime_ns for p in out.rglob("model.safetensors")} == before


def test_failing_stage_names_itself_and_keeps_earlier_output(tmp_path, monkeypatch):
    import ncdetect.train

    real_train = ncdetect.train.train

    def train_failing_for_compact(cfg, train_manifest, out, **kwargs):
        if "compact" in Path(out).parts:
            raise RuntimeError("no space for compact models")
        return real_train(cfg, train_manifest, out, **kwargs)

    monkeypatch.setattr(ncdetect.train, "train", train_failing_for_compact)
    path = write_recipe(tmp_path / "data", rates=(0.5,), seeds=(0,))
    out = tmp_path / "out"
    with pytest.raises(NcdetectError, match=r"stage 'compact' \(nc-r0.5-s0\) failed: .*no space for compact"):
        run_recipe(load_recipe(path), out, log=lambda m: None)
    # the sources, embeddings and samples stay on disk, complete
    assert len(list(out.glob("sources/*/DONE"))) == 2
    assert len(list(out.glob("embeddings/*/DONE"))) == 2
    assert list(out.glob("samples/nc-r0.5-s0-*/manifest.csv"))


def _recipe_with(path: Path, edit) -> Path:
    text = json.loads(path.read_text())
    edit(text)
    path.write_text(json.dumps(text))
    return path


def test_a_target_that_shares_audio_with_a_source_is_refused_before_training(tmp_path):
    import shutil

    import pandas as pd

    root = tmp_path / "data"
    path = write_recipe(root, rates=(0.5,), seeds=(0,))
    # The same corpus again under another name and folder: every file is a byte-identical copy.
    shutil.copytree(root / "a_dev", root / "copy")
    copy = root / "copy" / "manifest.csv"
    df = pd.read_csv(copy)
    df["utt_id"] = "renamed_" + df["utt_id"]
    df.to_csv(copy, index=False)
    _recipe_with(path, lambda r: r["targets"].append({"name": "tgt2", "data": str(copy)}))
    out = tmp_path / "out"
    with pytest.raises(NcdetectError, match=r"target tgt2 shares audio with src_a/dev: 12 utterance\(s\), "
                       r"e\.g\. renamed_\S+ \(.*copy.*\) is \S+ \(.*a_dev.*\); a target must be unseen"):
        run_recipe(load_recipe(path), out, log=lambda m: None)
    assert not (out / "sources").exists()  # refused before any training

    from ncdetect.pipeline import Experiment, stage_prepare
    from ncdetect.report import build_blocks

    exp = Experiment(recipe=load_recipe(path), out=out, log=lambda m: None, allow_overlap=True)
    stage_prepare(exp)
    assert [(f["target"], f["set"], f["utterances"]) for f in exp.overlaps] == [("tgt2", "src_a/dev", 12)]
    notice = build_blocks.__globals__["_overlap_notice"]({"overlap": {"found": exp.overlaps}})
    assert notice and notice[0].startswith("**In-domain check") and "tgt2 shares 12" in notice[0]


def test_a_source_without_spoof_rows_is_refused_before_training(tmp_path):
    def bonafide_only(recipe: dict) -> None:
        src = recipe["sources"][1]
        src["train"] = {"manifest": src["train"], "filter": "label == 'bonafide'"}

    path = _recipe_with(write_recipe(tmp_path / "data", rates=(0.5,), seeds=(0,)), bonafide_only)
    out = tmp_path / "out"
    with pytest.raises(NcdetectError, match=r"source src_b: its train set \(8 rows\) has no spoof rows"):
        run_recipe(load_recipe(path), out, log=lambda m: None)
    assert not (out / "sources").exists()


def test_demo_hands_the_recipe_absolute_manifest_paths(tmp_path, monkeypatch):
    """`make demo` runs with a relative --out; the corpus manifests must not resolve against the recipe."""
    import ncdetect.demo.run as demo_run
    import ncdetect.pipeline as pipeline

    keys = ["demo_tts_en_train", "demo_tts_en_dev", "demo_voc_es_train", "demo_voc_es_dev", "demo_target"]
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(demo_run, "build_demo_corpus",
                        lambda out, quick=False: {k: Path(out) / f"{k}.csv" for k in keys})
    seen = {}
    monkeypatch.setattr(pipeline, "run_recipe", lambda recipe, out, log: seen.setdefault("recipe", recipe))
    demo_run.run_demo("demo_out", quick=True, log=lambda m: None)
    recipe = seen["recipe"]
    assert recipe.sources[0].train.manifest == tmp_path / "demo_out/corpus/demo_tts_en_train.csv"
    assert recipe.targets[0].data.manifest == tmp_path / "demo_out/corpus/demo_target.csv"


def test_sampling_plan_draws_seed_free_selections_once(tmp_path):
    from ncdetect.pipeline import _sampling_plan

    recipe = load_recipe(write_recipe(tmp_path / "data", rates=(0.5,), seeds=(0, 1)))
    plan = [(v.name, rate, seed) for v, rate, seed in _sampling_plan(recipe)]
    assert plan == [("nc", 0.5, 0), ("random", 0.5, 0), ("random", 0.5, 1)]
    recipe.sampling.fake_mode = "kmeans"  # clustering makes nc depend on the seed
    plan = [(v.name, rate, seed) for v, rate, seed in _sampling_plan(recipe)]
    assert plan == [("nc", 0.5, 0), ("nc", 0.5, 1), ("random", 0.5, 0), ("random", 0.5, 1)]


def test_the_embedding_figures_ring_the_headline_selection(tmp_path, monkeypatch):
    import ncdetect.collapse.plot as plot
    import ncdetect.report as report
    from ncdetect.pipeline import Experiment, _figures

    recipe = load_recipe(write_recipe(tmp_path / "data", rates=(0.25, 0.5), seeds=(0,)))
    exp = Experiment(recipe=recipe, out=tmp_path / "out", log=lambda m: None)
    exp.embeddings = {s.name: tmp_path / s.name for s in recipe.sources}
    exp.samples = {("nc", 0.5, 0): tmp_path / "nc.csv", ("random", 0.5, 0): tmp_path / "random.csv"}
    ringed = []
    monkeypatch.setattr(plot, "plot_embeddings", lambda emb, out, sampled, method: ringed.append(sampled))
    monkeypatch.setattr(report, "plot_eer_vs_rate", lambda *a: None)
    monkeypatch.setattr(report, "plot_det_curves", lambda *a: None)
    results = {"targets": [], "rates": [0.25, 0.5], "headline": {"strategy": "random"}}
    figures = _figures(exp, results)
    assert ringed == [tmp_path / "random.csv"] * 2
    assert list(figures) == ["Embeddings of src_a (random selection at rate 0.5 ringed)",
                             "Embeddings of src_b (random selection at rate 0.5 ringed)"]
    # a headline without a drawn selection at that rate rings nothing, and the caption says nothing
    ringed.clear()
    figures = _figures(exp, {**results, "headline": {"strategy": "kcenter"}})
    assert ringed == [None, None] and list(figures) == ["Embeddings of src_a", "Embeddings of src_b"]


def test_a_step_budget_gives_every_compact_model_the_full_data_steps(tmp_path):
    import yaml

    def steps_budget(recipe: dict, **extra) -> None:
        recipe["compact"].update({"budget": "steps", **extra})

    path = _recipe_with(write_recipe(tmp_path / "data", rates=(0.25, 0.5), seeds=(0,)), steps_budget)
    out = tmp_path / "out"
    results = run_recipe(load_recipe(path), out, log=lambda m: None)
    # the full data: 48 rows in batches of 8 for 2 epochs = 12 steps; nc and random at 0.25 have 12 rows
    # (1 step an epoch) and at 0.5 24 rows (3 steps an epoch)
    runs = {(r["strategy"], r["rate"]): r for r in results["runs"]}
    assert {key: r["steps"] for key, r in runs.items()} == {key: 12 for key in runs}
    assert {key: r["epochs"] for key, r in runs.items()} == {
        ("full", 1.0): 2, ("nc", 0.5): 4, ("random", 0.5): 4, ("nc", 0.25): 12, ("random", 0.25): 12}
    assert results["budget"] == {"kind": "steps", "max_epochs": None, "full_steps": 12}
    assert all(r["steps"] == 12 for r in results["table"])

    def config_of(name: str) -> dict:
        return yaml.safe_load(next(out.glob(f"compact/{name}-*/{name}/config.yaml")).read_text())["optim"]

    # the warm-up follows: one full-data epoch is 6 steps, for every rate
    assert config_of("random-r0.25-s0")["warmup_steps"] == 6
    assert config_of("full-r1-s0")["steps"] is None  # its own epochs are the budget
    assert "Training budget **steps**: each compact model takes the full-data model's 12 optimiser steps" \
        in (out / "report.md").read_text()

    # a cap of 6 epochs: rate 0.25 stops at 6 steps with half the warm-up; rate 0.5 is under the cap, and
    # its model (the same config) comes from the cache
    before = {p: p.stat().st_mtime_ns for p in out.glob("compact/*-r0.5-s0-*/*/model.safetensors")}
    capped = run_recipe(load_recipe(_recipe_with(path, lambda r: steps_budget(r, max_epochs=6))), out,
                        log=lambda m: None)
    runs = {(r["strategy"], r["rate"]): r for r in capped["runs"]}
    assert {key: (r["steps"], r["epochs"]) for key, r in runs.items()} == {
        ("full", 1.0): (12, 2), ("nc", 0.5): (12, 4), ("random", 0.5): (12, 4), ("nc", 0.25): (6, 6),
        ("random", 0.25): (6, 6)}
    assert {p: p.stat().st_mtime_ns for p in out.glob("compact/*-r0.5-s0-*/*/model.safetensors")} == before
    both = [yaml.safe_load(p.read_text())["optim"]
            for p in out.glob("compact/random-r0.25-s0-*/*/config.yaml")]
    assert sorted((c["steps"], c["warmup_steps"]) for c in both) == [(6, 3), (12, 6)]


def test_learned_layer_weights_reach_results_json_and_the_report(tmp_path):
    """Compact models on two layers of the PyTorch Whisper encoder: each run's learned weights, their mean
    over the seeds of its table row, and a report section with one row per model that has them."""
    configs = Path(__file__).parents[1] / "src/ncdetect/configs"

    def whisper_compact(recipe: dict) -> None:
        recipe["sampling"].update(strategies=["random"], headline="random")
        recipe["compact"] = {"config": str(configs / "whisper_attn_mlp.yaml"), "set": {
            "optim.epochs": 1, "data.num_samples": 8000, "data.batch_size": 8, "model.kwargs.hidden": 32,
            "model.embedding_dim": 16, "model.kwargs.attention_dim": 16, "frontend.kwargs.backend": "torch",
            "frontend.kwargs.layers": [0, 1], "frontend.kwargs.threads": 1, "train.threads": 1,
            "optim.layer_weights_lr": 0.2}}

    path = _recipe_with(write_recipe(tmp_path / "data", rates=(0.5,), seeds=(0, 1)), whisper_compact)
    out = tmp_path / "out"
    results = run_recipe(load_recipe(path), out, log=lambda m: None)
    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk["sources"]["src_a"]["layer_weights"] is None  # tiny_resnet on log-mel: no weighting
    runs = {(r["strategy"], r["rate"], r["seed"]): r for r in on_disk["runs"]}
    for key, compact in results_runs(out).items():
        mix = json.loads((compact["run"] / "metrics.json").read_text())["layer_weights"]
        assert runs[key]["layer_weights"] == mix and mix["layers"] == [0, 1]
    md = (out / "report.md").read_text()
    assert "## Learned layer weights" in md
    for row in results["table"]:
        seeds = [runs[(row["strategy"], row["rate"], s)]["layer_weights"]["weights"] for s in (0, 1)]
        mean = [(a + b) / 2 for a, b in zip(*seeds, strict=True)]
        assert row["layer_weights"]["weights"] == pytest.approx(mean, abs=1e-6)
        assert row["layer_weights"]["layers"] == [0, 1] and seeds[0] != seeds[1]
        name = "full data" if row["strategy"] == "full" else f"{row['strategy']}@{row['rate']:g}"
        assert f"| {name} | 2 | {mean[0]:.3f} ± " in md
    assert "source src_a" not in md.split("## Learned layer weights")[1].split("##")[0]
