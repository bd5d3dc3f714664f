"""``ncdetect run`` killed with SIGKILL in the middle of a stage, twice (during a source model's training,
then during a compact model's), and rerun: it resumes the interrupted trainings from their last epoch and
ends with the same results.json as a run that was never interrupted, and the same weights and scores,
byte for byte (CPU, fixed seeds). After each kill no file under its final name is partial."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from safetensors.torch import load_file

from conftest import comparable_results
from test_pipeline import write_recipe

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]



def _slower(recipe: Path) -> Path:
    """The toy recipe with trainings long enough to be killed in the middle: 4 epochs with RawBoost."""
    data = json.loads(recipe.read_text())
    for part in [*data["sources"], data["compact"]]:
        part["set"].update({"optim.epochs": 4, "augment.rawboost": True, "data.num_samples": 12000})
    recipe.write_text(json.dumps(data))
    return recipe


def _cmd(recipe: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "ncdetect.cli", "run", str(recipe), "--out", str(out)]


def _env() -> dict[str, str]:
    # One thread in every process: CPU reductions are then the same in the killed and the whole runs.
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _kill_during(recipe: Path, out: Path, stage: str, log: Path) -> Path:
    """Start the run and SIGKILL it while a training of ``stage`` is between epochs 1 and the last;
    returns the run folder that was being trained."""
    with open(log, "w") as err:
        proc = subprocess.Popen(_cmd(recipe, out), env=_env(), stdout=subprocess.DEVNULL, stderr=err)
        deadline = time.monotonic() + 600
        found: list[Path] = []
        while proc.poll() is None and time.monotonic() < deadline:
            found = [p for p in out.glob(f"{stage}/*/*/checkpoint/LATEST")
                     if not (p.parents[2] / "DONE").exists()]
            if found:
                break
            time.sleep(0.005)
        time.sleep(0.02)  # into the next epoch
        running = proc.poll() is None
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    assert found and running, f"the run was not caught inside a {stage} training:\n{log.read_text()[-3000:]}"
    run = found[0].parents[1]
    assert not (run.parent / "DONE").exists()
    assert not (out / "results.json").exists()
    return run


def _no_partial_files(out: Path) -> None:
    """Every file under a final (non-hidden) name is complete: JSON parses, weights load, CSVs read."""
    for path in out.rglob("*"):
        if any(part.startswith(".") for part in path.relative_to(out).parts) or not path.is_file():
            continue
        if path.suffix == ".json" or path.name == "DONE":
            json.loads(path.read_text())
        elif path.suffix == ".safetensors":
            load_file(path)
        elif path.suffix == ".csv":
            pd.read_csv(path)
        elif path.suffix == ".yaml":
            yaml.safe_load(path.read_text())
        elif path.suffix == ".npy":
            np.load(path, mmap_mode="r")


def _files(out: Path, pattern: str) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.glob(pattern))}


def test_run_killed_mid_stage_resumes_to_the_same_results(tmp_path):
    recipe = _slower(write_recipe(tmp_path / "data", rates=(0.5,), seeds=(0,)))
    whole, broken = tmp_path / "whole", tmp_path / "broken"
    done = subprocess.run(_cmd(recipe, whole), env=_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]

    source_run = _kill_during(recipe, broken, "sources", tmp_path / "kill1.log")
    _no_partial_files(broken)
    compact_run = _kill_during(recipe, broken, "compact", tmp_path / "kill2.log")
    _no_partial_files(broken)
    # The second start resumed the killed source training from its checkpoint instead of starting over.
    assert "resuming from epoch" in (tmp_path / "kill2.log").read_text()
    assert (source_run.parent / "DONE").exists()

    final = subprocess.run(_cmd(recipe, broken), env=_env(), capture_output=True, text=True, timeout=600)
    assert final.returncode == 0, final.stderr[-3000:]
    assert "resuming from epoch" in final.stderr
    assert (compact_run.parent / "DONE").exists()

    a = json.loads((whole / "results.json").read_text())
    b = json.loads((broken / "results.json").read_text())
    assert comparable_results(a, whole) == comparable_results(b, broken)
    assert [r["eer"] for r in a["runs"]] == [r["eer"] for r in b["runs"]]
    # The same stages, the same weights and scores, byte for byte.
    for pattern in ("*/*/DONE", "**/model.safetensors", "scores/*/scores.csv", "samples/*/manifest.csv",
                    "embeddings/*/*/embeddings.npy"):
        fa, fb = _files(whole, pattern), _files(broken, pattern)
        assert fa.keys() == fb.keys() and fa, pattern
        if pattern != "*/*/DONE":  # DONE files hold timings
            assert fa == fb, pattern
    assert not list(broken.rglob("checkpoint"))
