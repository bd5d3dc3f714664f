"""Distributed training and embedding under torchrun: 2 processes, gloo backend, CPU.

Which single-process run do 2 processes equal? All our models use BatchNorm, which normalises each
process's own micro-batch (SyncBatchNorm needs GPUs). So 2 processes x batch B equal 1 process with batch
B and ``optim.accumulate=2`` (two micro-batches of B, gradients averaged): the same global batch of 2B,
the same items in each micro-batch (epoch_batches gives slot ``rank * accumulate + a`` the same items),
the same BatchNorm statistics. The trained parameters then agree to float rounding; we allow 1e-5 (we
measured 0.0: DDP's average of the two gradients and accumulation's sum of two halves are the same
operations). BatchNorm *running* statistics differ by design (DDP keeps process 0's, accumulation sees
both micro-batches), so they are compared only loosely, and model selection uses the last epoch.
Against 1 process with a single batch of 2B, the parameters would differ by BatchNorm's batch statistics
alone, not by a tolerance one could state in advance.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from ncdetect.config import load_config
from ncdetect.distributed import DistEnv
from ncdetect.train import epoch_batches, train

BASE = ["data.num_samples=16000", "data.num_workers=0", "model.kwargs.width=8", "model.embedding_dim=32",
        "optim.epochs=2", "train.threads=1", "train.select_by=last"]
PARAM_TOLERANCE = 1e-5


def _torchrun(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "ncdetect.cli", *args],
        env=env, capture_output=True, text=True, timeout=400,
    )


def test_ranks_split_each_global_batch_like_accumulation():
    labels = np.array([1] * 12 + [0] * 28)
    single = epoch_batches(labels, 2, 0, "weighted", 4, DistEnv(), accumulate=2)
    ranks = [epoch_batches(labels, 2, 0, "weighted", 4, DistEnv(rank=r, world=2), accumulate=1)
             for r in (0, 1)]
    assert len(single) == 2 * len(ranks[0]) == 2 * len(ranks[1])
    for step in range(len(ranks[0])):
        assert ranks[0][step] == single[2 * step] and ranks[1][step] == single[2 * step + 1]
    # Together the ranks cover each global batch once, without overlap.
    for step in range(len(ranks[0])):
        assert not set(ranks[0][step]) & set(ranks[1][step])


@pytest.mark.slow
def test_two_process_training_matches_single_process(tmp_path, toy_manifest, toy_dev_manifest):
    sets = [a for s in BASE for a in ("--set", s)]
    ddp = tmp_path / "ddp"
    proc = _torchrun("train", "--train", str(toy_manifest), "--dev", str(toy_dev_manifest), "--out", str(ddp),
                     *sets, "--set", "data.batch_size=4")
    assert proc.returncode == 0, proc.stderr[-3000:]

    single = tmp_path / "single"
    cfg = load_config(None, [*BASE, "data.batch_size=4", "optim.accumulate=2"])
    metrics = train(cfg, toy_manifest, single, dev_manifest=toy_dev_manifest, progress=False)

    import json

    ddp_metrics = json.loads((ddp / "metrics.json").read_text())
    assert ddp_metrics["world_size"] == 2 and ddp_metrics["global_batch"] == metrics["global_batch"] == 8
    # Training loss and accuracy are all-reduced over the processes: they equal the single process's.
    for a, b in zip(ddp_metrics["epochs"], metrics["epochs"], strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], abs=1e-6)
        assert a["train_acc"] == b["train_acc"] and a["samples"] == b["samples"] == 32
    assert ddp_metrics["n_dev"] == 24 and all(e["dev_eer"] is not None for e in ddp_metrics["epochs"])

    a, b = load_file(ddp / "model.safetensors"), load_file(single / "model.safetensors")
    assert a.keys() == b.keys()
    from ncdetect.runs import load_run

    params = {name for name, _ in load_run(single).model.named_parameters()}
    worst = max((a[k] - b[k]).abs().max().item() for k in params)
    assert worst < PARAM_TOLERANCE, worst
    # The parameters did move: the comparison is not between two initialisations.
    from ncdetect.runs import build_frontend, build_model

    torch.manual_seed(cfg.train.seed)
    fresh = build_model(cfg, build_frontend(cfg).n_features).state_dict()
    assert max((fresh[k] - b[k]).abs().max().item() for k in params) > 1e-3


@pytest.mark.slow
def test_two_process_embedding_matches_single_process(tmp_path, toy_manifest):
    from ncdetect.embed import embed_manifest

    run = tmp_path / "run"
    cfg = load_config(None, [*BASE, "data.batch_size=8", "optim.epochs=1"])
    train(cfg, toy_manifest, run, progress=False)
    embed_manifest(run, toy_manifest, tmp_path / "one", batch_size=5, device="cpu", progress=False)
    proc = _torchrun("embed", str(run), str(toy_manifest), "--out", str(tmp_path / "two"),
                     "--batch-size", "5", "--device", "cpu")
    assert proc.returncode == 0, proc.stderr[-3000:]

    one = np.load(tmp_path / "one" / "embeddings.npy")
    two = np.load(tmp_path / "two" / "embeddings.npy")
    assert one.shape == two.shape == (36, 32)
    np.testing.assert_allclose(two, one, atol=1e-5, rtol=0)
    ia = pd.read_csv(tmp_path / "one" / "index.csv", dtype=str, keep_default_na=False)
    ib = pd.read_csv(tmp_path / "two" / "index.csv", dtype=str, keep_default_na=False)
    assert ia.drop(columns="score").equals(ib.drop(columns="score"))
    np.testing.assert_allclose(ia["score"].astype(float), ib["score"].astype(float), atol=1e-5)
    assert not list(Path(tmp_path / "two").glob(".embed-shard-*"))  # shards merged and removed
