"""``ncdetect score``: a trained run over a manifest -> ``utt_id,score,label,attack``.

score = logit(bonafide) - logit(spoof), so a higher score means more likely bonafide (the ASVspoof
convention). Each utterance is scored on its first window, tile-padded when shorter (the AASIST
convention), the same window the dev EER is measured on during training. Runs that read stored features
(``data.feature_cache``) can score from the feature store (``store``; the pipeline does), which holds that
same window's features.

The raw scores only: ``ncdetect score`` of a calibrated run adds its LLRs and probabilities through
:func:`ncdetect.calibration.score_calibrated`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from .fileio import atomic_path, ensure_writable_dir
from .progress import progress_bar

if TYPE_CHECKING:
    from .runs import LoadedRun

SCORE_COLUMNS = ["utt_id", "score", "label", "attack"]


def infer_batches(
    frontend: nn.Module,
    model: nn.Module,
    dataset: Dataset,
    indices: Sequence[int],
    *,
    batch_size: int,
    device: torch.device,
    skip_bad: bool,
    skipped: list,
    num_workers: int = 0,
    progress: bool = True,
    desc: str = "scoring",
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Run ``frontend -> model`` over ``dataset[indices]`` in batches, in order.

    Yields ``(indices, logits [b, 2], embeddings [b, D])`` per batch as float32 numpy arrays. Unreadable
    items stop the run naming the file, or with ``skip_bad`` are appended to ``skipped`` and left out.
    """
    from .data.loader import collate, raise_or_skip

    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=list(indices),
        num_workers=num_workers,
        collate_fn=collate,
        pin_memory=device.type == "cuda",
    )
    model.eval()
    bar = progress_bar(loader, desc=desc, unit="batch", enabled=progress)
    for batch in bar:
        raise_or_skip(batch["errors"], skip_bad, skipped)
        stored = "features" in batch  # rows of the feature store: the front-end has run already
        x = batch["features" if stored else "wave"]
        if x.shape[0] == 0:
            continue
        with torch.inference_mode():
            x = x.to(device, non_blocking=True)
            emb = model.embed(x if stored else frontend(x))
            logits = model.head(emb)
        yield (
            batch["index"].numpy().astype(np.int64),
            logits.float().cpu().numpy(),
            emb.float().cpu().numpy(),
        )


def eval_dataset(
    run: LoadedRun, df: pd.DataFrame, store: str | Path | None = None, batch_size: int = 64,
    num_workers: int = 0, progress: bool = True,
) -> Dataset:
    """The evaluation windows of ``df`` for ``run``: waves, or, when ``store`` is given and the run reads
    stored features (``data.feature_cache``), the rows of the feature store under ``store`` (computing the
    missing ones). Both give the same features (the store's up to its dtype's rounding)."""
    if store is not None and run.config.data.feature_cache:
        from .data.features import FeatureStore, WindowPolicy

        feature_store = FeatureStore(store, run.frontend)
        policy = WindowPolicy.of(run.config)
        feature_store.build(df, policy, batch_size=batch_size, num_workers=num_workers, device=run.device,
                            progress=progress)
        return feature_store.dataset(df, policy)
    from .data.dataset import AudioDataset

    return AudioDataset(df, num_samples=run.num_samples, train=False,
                        trim_silence=run.config.data.trim_silence)


def score_manifest(
    run_dir: str | Path,
    manifest: str | Path,
    out_csv: str | Path,
    batch_size: int = 64,
    skip_bad: bool = False,
    device: str = "auto",
    num_workers: int = 0,
    progress: bool = True,
    store: str | Path | None = None,
) -> pd.DataFrame:
    """Score every utterance of ``manifest`` with the run's model and write ``out_csv``.

    With ``skip_bad``, unreadable files are left out of the CSV and listed in ``skipped.csv`` beside it.
    ``store``: read the features from the feature store in that folder (see :func:`eval_dataset`).
    """
    from .data.dataset import write_skipped
    from .data.manifest import read_manifest
    from .runs import load_run

    out_csv = Path(out_csv)
    run = load_run(run_dir, device)
    df = read_manifest(manifest)
    ensure_writable_dir(out_csv.parent)
    dataset = eval_dataset(run, df, store, batch_size, num_workers, progress)
    skipped: list = []
    kept: list[np.ndarray] = []
    scores: list[np.ndarray] = []
    for idx, logits, _ in infer_batches(
        run.frontend, run.model, dataset, range(len(df)), batch_size=batch_size, device=run.device,
        skip_bad=skip_bad, skipped=skipped, num_workers=num_workers, progress=progress,
    ):
        kept.append(idx)
        scores.append(logits[:, 1] - logits[:, 0])
    order = np.concatenate(kept) if kept else np.zeros(0, dtype=np.int64)
    rows = df.iloc[order]
    out = pd.DataFrame(
        {
            "utt_id": rows["utt_id"].to_numpy(),
            "score": np.concatenate(scores).astype(np.float64) if scores else np.zeros(0),
            "label": rows["label"].to_numpy(),
            "attack": rows["attack"].to_numpy(),
        }
    )
    with atomic_path(out_csv) as tmp:
        out.to_csv(tmp, index=False)
    if skip_bad:  # written even when empty: a record that nothing was left out
        write_skipped(skipped, out_csv.parent, df)
    return out
