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


def write_recipe(root: Path, rates=(0.25, 0.5), seeds=(0, 1)) -> Path:
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
        "targets": [{"name": "tgt", "data": str(target)}],
        "sampling": {"rates": list(rates), "strategies": ["nc", "random"], "fake_mode": "attack"},
        "compact": {"set": {**TINY, "model.name": "tiny_resnet"}},
        "seeds": list(seeds),
        "report": {"bootstrap": 20},
    }
    path = root / "recipe.yaml"
    path.write_text(json.dumps(recipe))  # JSON is YAML
    return path


@pytest.mark.slow
def test_run_end_to_end_and_cache(tmp_path):
    recipe = load_recipe(write_recipe(tmp_path / "data"))
    out = tmp_path / "out"
    lines: list[str] = []
    results = run_recipe(recipe, out, log=lines.append)

    for name in ["report.md", "report.html", "results.json"]:
        assert (out / name).is_file()
    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk["table"] == results["table"]

    # rows: full data, then nc and random at each rate
    names = [(r["strategy"], r["rate"]) for r in results["table"]]
    assert names == [("full", 1.0), ("nc", 0.5), ("random", 0.5), ("nc", 0.25), ("random", 0.25)]
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

    html = (out / "report.html").read_text()
    assert "data:image/png;base64," in html and 'src="figures' not in html
    md = (out / "report.md").read_text()
    assert f"{full['eer_tgt_mean']:.2f}" in md
    assert set(results["trivial_cues"]["tgt"]) == {"duration", "rms", "rolloff95", "leading_silence"}

    # a rerun finds every stage complete and retrains nothing
    before = {p: p.stat().st_mtime_ns for p in out.rglob("model.safetensors")}
    again = run_recipe(load_recipe(write_recipe(tmp_path / "data")), out, log=lines.append)
    assert again["table"] == results["table"]
    assert {p: p.stat().st_mtime_ns for p in out.rglob("model.safetensors")} == before


def test_failing_stage_names_itself_and_keeps_earlier_output(tmp_path):
    path = write_recipe(tmp_path / "data", rates=(0.5,), seeds=(0,))
    text = json.loads(path.read_text())
    text["compact"]["set"]["model.name"] = "no_such_model"
    path.write_text(json.dumps(text))
    out = tmp_path / "out"
    with pytest.raises(NcdetectError, match=r"stage 'compact' \(nc-r0.5-s0\) failed: .*no_such_model"):
        run_recipe(load_recipe(path), out, log=lambda m: None)
    # the sources, embeddings and samples stay on disk, complete
    assert len(list(out.glob("sources/*/DONE"))) == 2
    assert len(list(out.glob("embeddings/*/DONE"))) == 2
    assert list(out.glob("samples/nc-r0.5-s0-*/manifest.csv"))


def test_demo_hands_the_recipe_absolute_manifest_paths(tmp_path, monkeypatch):
    """`make demo` runs with a relative --out; the corpus manifests must not resolve against the recipe."""
    import ncdetect.data.demo_corpus as demo_corpus
    import ncdetect.pipeline as pipeline

    keys = ["demo_tts_en_train", "demo_tts_en_dev", "demo_voc_es_train", "demo_voc_es_dev", "demo_target"]
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(demo_corpus, "build_demo_corpus",
                        lambda out, quick=False: {k: Path(out) / f"{k}.csv" for k in keys})
    seen = {}
    monkeypatch.setattr(pipeline, "run_recipe", lambda recipe, out, log: seen.setdefault("recipe", recipe))
    pipeline.run_demo("demo_out", quick=True, log=lambda m: None)
    recipe = seen["recipe"]
    assert recipe.sources[0].train.manifest == tmp_path / "demo_out/corpus/demo_tts_en_train.csv"
    assert recipe.targets[0].data.manifest == tmp_path / "demo_out/corpus/demo_target.csv"


def test_sampling_plan_draws_seed_free_selections_once(tmp_path):
    from ncdetect.pipeline import _sampling_plan

    recipe = load_recipe(write_recipe(tmp_path / "data", rates=(0.5,), seeds=(0, 1)))
    assert _sampling_plan(recipe) == [("nc", 0.5, 0), ("random", 0.5, 0), ("random", 0.5, 1)]
    recipe.sampling.fake_mode = "kmeans"  # clustering makes nc depend on the seed
    assert _sampling_plan(recipe) == [("nc", 0.5, 0), ("nc", 0.5, 1), ("random", 0.5, 0), ("random", 0.5, 1)]
