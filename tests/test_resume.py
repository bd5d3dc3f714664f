"""Resumption: a run killed with SIGKILL in the middle of an epoch, continued with --resume, ends with the
same weights, bit for bit, as a run that was never interrupted (CPU). Checkpoints are atomic."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import resume_after_epoch_1
from ncdetect.config import load_config
from ncdetect.errors import ConfigError
from ncdetect.train import load_checkpoint, save_checkpoint, train

# RawBoost and SpecAugment on: their draws must replay too. RawBoost also makes an epoch slow enough
# (about a second here) to kill the process in the middle of one.
SETTINGS = ["data.num_samples=16000", "data.batch_size=8", "data.num_workers=0", "model.kwargs.width=8",
            "model.embedding_dim=32", "optim.epochs=4", "train.threads=1", "augment.specaugment=true",
            "augment.rawboost=true"]


def _cmd(toy_manifest: Path, toy_dev_manifest: Path, out: Path, *extra: str) -> list[str]:
    sets = [a for s in SETTINGS for a in ("--set", s)]
    return [sys.executable, "-m", "ncdetect.cli", "train", "--train", str(toy_manifest), "--dev",
            str(toy_dev_manifest), "--out", str(out), *sets, *extra]


def _env() -> dict[str, str]:
    # The same thread count in every process: CPU reductions are then deterministic.
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


@pytest.mark.slow
def test_resume_after_sigkill_is_bit_identical(tmp_path, toy_manifest, toy_dev_manifest):
    whole, broken = tmp_path / "whole", tmp_path / "broken"
    subprocess.run(_cmd(toy_manifest, toy_dev_manifest, whole), env=_env(), check=True, capture_output=True,
                   timeout=300)

    proc = subprocess.Popen(_cmd(toy_manifest, toy_dev_manifest, broken), env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    latest = broken / "checkpoint" / "LATEST"
    deadline = time.monotonic() + 240
    while not latest.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.3)  # into the next epoch
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert not (broken / "metrics.json").exists(), "the run finished before it could be killed"
    done = int(latest.read_text().strip().split("-")[1])
    assert 1 <= done < 4

    # A half-written checkpoint from the crash must be ignored (LATEST names a complete one).
    partial = broken / "checkpoint" / ".tmp-epoch-0009-12345"
    partial.mkdir()
    (partial / "state.safetensors").write_bytes(b"\x00" * 10)

    # Without --resume the existing run is refused.
    refused = subprocess.run(_cmd(toy_manifest, toy_dev_manifest, broken), env=_env(), capture_output=True,
                             text=True, timeout=300)
    assert refused.returncode == 1 and "--resume" in refused.stderr

    resumed = subprocess.run(_cmd(toy_manifest, toy_dev_manifest, broken, "--resume"), env=_env(),
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming from epoch {done}" in resumed.stderr

    a, b = load_file(whole / "model.safetensors"), load_file(broken / "model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    ma = json.loads((whole / "metrics.json").read_text())
    mb = json.loads((broken / "metrics.json").read_text())
    strip = ("seconds", "samples_per_s")
    assert [{k: v for k, v in e.items() if k not in strip} for e in ma["epochs"]] == [
        {k: v for k, v in e.items() if k not in strip} for e in mb["epochs"]
    ]
    assert ma["best_epoch"] == mb["best_epoch"]
    assert not (broken / "checkpoint").exists()


def test_resume_in_process_matches(tmp_path, toy_manifest, monkeypatch):
    """The same property in-process and fast: a 2-epoch run is rolled back to its epoch-1 checkpoint, as
    if it had crashed during epoch 2, and resumed."""
    # ConvNeXt with stochastic depth: its drop masks come from the global torch RNG, which must be restored.
    cfg = load_config(None, [*SETTINGS[:3], "model.name=convnext_atto", "model.kwargs.dims=[8, 16, 32, 64]",
                             "model.kwargs.depths=[1, 1, 1, 1]", "model.kwargs.drop_path=0.3",
                             "model.embedding_dim=32", "optim.epochs=2", "train.threads=1",
                             "augment.specaugment=true"])
    resume_after_epoch_1(cfg, toy_manifest, tmp_path, monkeypatch)


def test_resume_refuses_a_changed_config(tmp_path, toy_manifest):
    cfg = load_config(None, [*SETTINGS[:6], "optim.epochs=1"])
    run = tmp_path / "run"
    tensors = {"x": torch.zeros(1)}
    save_checkpoint(run, tensors, {"epoch": 1, "config": cfg.to_dict()})
    (run / "config.yaml").write_text("{}")
    changed = load_config(None, [*SETTINGS[:6], "optim.epochs=1", "optim.lr=0.5"])
    with pytest.raises(ConfigError, match=r"optim\.lr"):
        train(changed, toy_manifest, run, resume=True, progress=False)


def test_checkpoint_replacement_is_atomic(tmp_path):
    run = tmp_path / "run"
    save_checkpoint(run, {"w": torch.ones(3)}, {"epoch": 1})
    save_checkpoint(run, {"w": torch.full((3,), 2.0)}, {"epoch": 2})
    names = sorted(p.name for p in (run / "checkpoint").iterdir())
    assert names == ["LATEST", "epoch-0002"]  # the older one is gone only after LATEST moved on
    tensors, meta = load_checkpoint(run)
    assert meta["epoch"] == 2 and torch.equal(tensors["w"], torch.full((3,), 2.0))
