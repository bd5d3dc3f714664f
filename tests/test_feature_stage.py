"""The ``features`` stage of ``ncdetect run``: over a two-strategy, two-seed Whisper recipe every distinct
window is encoded once (counted at the encoder, against ``results.json``), and settings that do not change
results (``data.cache_dir``, ``data.num_workers``, ``train.threads``) reuse the finished stages."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest

from ncdetect.data.whisper import WhisperFrontend
from ncdetect.pipeline import run_recipe
from ncdetect.recipe import load_recipe
from test_pipeline import _recipe_with, write_recipe

CONFIGS = Path(__file__).parents[1] / "src/ncdetect/configs"
WHISPER = {  # the bundled tiny.en cut after its first layer, a small attentive MLP, half-second windows
    "model.kwargs.hidden": 16, "model.kwargs.attention_dim": 8, "model.embedding_dim": 16,
    "optim.epochs": 2, "data.num_samples": 8000, "data.batch_size": 8, "data.num_workers": 0,
    "train.threads": 1, "frontend.kwargs.threads": 1,
}


def _whisper(recipe: dict) -> None:
    config = str(CONFIGS / "whisper_attn_mlp.yaml")
    for src in recipe["sources"]:
        src["config"], src["set"] = config, dict(WHISPER)
    recipe["compact"] = {"config": config, "set": dict(WHISPER)}
    recipe["sampling"]["rates"] = [0.5]


@pytest.mark.slow
def test_a_whisper_recipe_encodes_each_distinct_window_once(tmp_path, monkeypatch):
    calls: Counter[str] = Counter()
    real = WhisperFrontend._features

    def counting(self, wave, *args, **kwargs):
        calls["windows"] += int(wave.shape[0])  # every window that reaches the encoder
        return real(self, wave, *args, **kwargs)

    monkeypatch.setattr(WhisperFrontend, "_features", counting)
    path = _recipe_with(write_recipe(tmp_path / "data", rates=(0.5,), seeds=(0, 1)), _whisper)
    out = tmp_path / "out"
    lines: list[str] = []
    results = run_recipe(load_recipe(path), out, log=lines.append)

    assert {(r["strategy"], r["seed"]) for r in results["runs"]} >= {("nc", 0), ("nc", 1), ("random", 0),
                                                                     ("random", 1)}
    (identity,) = results["features"]
    counts = json.loads((out / "results.json").read_text())["features"][identity]
    assert identity.startswith("whisper-") and counts["windows_encoded"] == calls["windows"]
    assert counts["windows_encoded"] <= 1.2 * counts["windows_distinct"]
    # each distinct window once: the stores hold no row twice and the encoder computed no other window
    rows = pd.concat([pd.read_csv(f) for f in out.glob("features/whisper-*/*/shards/*/rows.csv")])
    windows = rows[rows.kind == "window"]
    assert windows.key.is_unique and len(windows) == counts["windows_distinct"] == calls["windows"]
    assert any(f"[features] {identity}: {calls['windows']} windows encoded" in line for line in lines)
    # the sources and every compact model trained (and were scored) from the store, encoding nothing
    ledger = json.loads((out / "features" / "windows_encoded.json").read_text())
    assert ledger and all(label.startswith("features/") for label in ledger)


@pytest.mark.slow
def test_cache_dir_workers_and_threads_reuse_the_finished_stages(tmp_path):
    def stored(recipe: dict) -> None:
        recipe["compact"]["set"]["data.feature_cache"] = True

    path = _recipe_with(write_recipe(tmp_path / "data", rates=(0.5,), seeds=(0,)), stored)
    out = tmp_path / "out"
    first = run_recipe(load_recipe(path), out, log=lambda m: None)
    models = {p: p.stat().st_mtime_ns for p in out.rglob("model.safetensors")}
    scores = {p: p.stat().st_mtime_ns for p in out.rglob("scores.csv")}
    assert models and list((out / "features").glob("logmel-*/float32/shards/*/meta.json"))

    def moved(recipe: dict) -> None:
        for part in [*(s["set"] for s in recipe["sources"]), recipe["compact"]["set"]]:
            part.update({"data.cache_dir": str(tmp_path / "shared"), "data.num_workers": 1,
                         "train.threads": 2})

    again = run_recipe(load_recipe(_recipe_with(path, moved)), out, log=lambda m: None)
    assert {p: p.stat().st_mtime_ns for p in out.rglob("model.safetensors")} == models  # nothing retrained
    assert {p: p.stat().st_mtime_ns for p in out.rglob("scores.csv")} == scores  # nothing rescored
    assert again["table"] == first["table"]
    assert list((tmp_path / "shared").glob("logmel-*/float32/shards/*/meta.json"))  # the store moved
