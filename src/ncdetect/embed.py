"""``ncdetect embed``: the penultimate embeddings of a trained run over a manifest.

The embedding folder holds ``embeddings.npy`` (float32, N x D, the vectors that enter the final linear
layer), ``index.csv`` (the manifest rows in the same order, absolute paths, plus ``score`` and ``source``,
the run's name) and ``head.npz`` (the classifier: ``W`` 2 x D and ``b``; class 0 spoof, 1 bonafide).
Each utterance is embedded on its first window, tile-padded (the window it is scored on).

Large corpora: under ``torchrun`` every process embeds a contiguous share of the manifest into a shard
file; process 0 concatenates the shards in order through a memory map, so neither the output nor the
merge needs N x D floats in memory.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from .fileio import atomic_path, ensure_writable_dir, open_npy_for_writing, write_text

EMBEDDINGS_FILE = "embeddings.npy"
INDEX_FILE = "index.csv"
HEAD_FILE = "head.npz"
_MERGE_ROWS = 65_536  # rows copied per chunk while merging shards


def _shard_paths(out_dir: Path, rank: int) -> tuple[Path, Path, Path]:
    stem = out_dir / f".embed-shard-{rank:04d}"
    return Path(f"{stem}.npy"), Path(f"{stem}.npz"), Path(f"{stem}.json")


def embed_manifest(
    run_dir: str | Path,
    manifest: str | Path,
    out_dir: str | Path,
    batch_size: int = 64,
    skip_bad: bool = False,
    device: str = "auto",
    num_workers: int = 0,
    progress: bool = True,
    store: str | Path | None = None,
) -> Path:
    """Write the embedding folder of ``manifest`` under ``run_dir``'s model; returns ``out_dir``.

    With ``skip_bad``, unreadable files are left out (of all three files consistently) and listed in
    ``out_dir/skipped.csv``; without it the first one stops the run, naming the file. ``store``: read the
    features from the feature store in that folder (see :func:`~ncdetect.score.eval_dataset`).
    """
    from .data.dataset import write_skipped
    from .data.manifest import read_manifest
    from .distributed import barrier, init_distributed
    from .runs import load_run, resolve_device
    from .score import eval_dataset

    out_dir = Path(out_dir)
    env = init_distributed(device)
    run = load_run(run_dir, resolve_device(device, env.local_rank))
    df = read_manifest(manifest)
    if env.is_main:
        ensure_writable_dir(out_dir)
        # The folder's files go together: an interrupted re-embed must not leave new embeddings beside an
        # old index (same length, wrong rows). Without the old set, a partial folder fails to load.
        for name in (INDEX_FILE, "embed.json", EMBEDDINGS_FILE, HEAD_FILE):
            (out_dir / name).unlink(missing_ok=True)
    barrier(env)

    # ---- this process's contiguous share, embedded into its shard file
    n, dim = len(df), run.model.embedding_dim
    lo, hi = env.rank * n // env.world, (env.rank + 1) * n // env.world
    # The store's missing rows are computed once, by process 0; the others then read them.
    dataset = eval_dataset(run, df, store, batch_size, num_workers, progress) if env.is_main else None
    barrier(env)
    if dataset is None:
        dataset = eval_dataset(run, df, store, batch_size, num_workers, False)
    try:
        _embed_shard(run, dataset, lo, hi, env.rank, out_dir, batch_size, skip_bad, num_workers,
                     progress and env.is_main)
    except BaseException:
        for p in _shard_paths(out_dir, env.rank):  # no stray shard files after a failure
            p.unlink(missing_ok=True)
        raise
    barrier(env)

    # ---- process 0 merges the shards in order
    if env.is_main:
        masks, all_scores, all_skipped = [], [], []
        for rank in range(env.world):
            _, npz, js = _shard_paths(out_dir, rank)
            with np.load(npz) as z:
                masks.append(z["kept"])
                all_scores.append(z["scores"][z["kept"]])
            all_skipped += [tuple(x) for x in json.loads(js.read_text(encoding="utf-8"))]
        total = int(sum(int(m.sum()) for m in masks))
        with atomic_path(out_dir / EMBEDDINGS_FILE) as tmp:
            merged = open_npy_for_writing(tmp, np.float32, (total, dim), name=out_dir / EMBEDDINGS_FILE)
            row = 0
            for rank, mask in enumerate(masks):
                shard = np.load(_shard_paths(out_dir, rank)[0], mmap_mode="r")
                keep_rows = np.flatnonzero(mask)
                for start in range(0, len(keep_rows), _MERGE_ROWS):
                    chunk = keep_rows[start : start + _MERGE_ROWS]
                    merged[row : row + len(chunk)] = shard[chunk]
                    row += len(chunk)
                del shard
            merged.flush()
            del merged
        head = run.model.head
        with atomic_path(out_dir / HEAD_FILE) as tmp, open(tmp, "wb") as f:
            np.savez(
                f,
                W=head.weight.detach().cpu().numpy().astype(np.float32),
                b=head.bias.detach().cpu().numpy().astype(np.float32),
            )
        kept_all = np.concatenate(masks) if masks else np.zeros(0, dtype=bool)
        index = df[kept_all].reset_index(drop=True)
        index["score"] = np.concatenate(all_scores) if all_scores else np.zeros(0)
        index["source"] = run.name
        with atomic_path(out_dir / INDEX_FILE) as tmp:
            index.to_csv(tmp, index=False)
        if skip_bad:  # written even when empty: a record that nothing was left out
            write_skipped(sorted(all_skipped), out_dir, df)
        write_text(out_dir / "embed.json", json.dumps(
            {"run": str(Path(run_dir).resolve()), "manifest": str(Path(manifest).resolve()), "n": total,
             "dim": dim, "skipped": len(all_skipped), "processes": env.world}, indent=2) + "\n")
        for rank in range(env.world):
            for p in _shard_paths(out_dir, rank):
                p.unlink(missing_ok=True)
    barrier(env)
    return out_dir


def _embed_shard(run, dataset, lo: int, hi: int, rank: int, out_dir: Path, batch_size: int, skip_bad: bool,
                 num_workers: int, progress: bool) -> None:
    """Embed rows ``lo:hi`` into process ``rank``'s shard files: the vectors, the kept mask and scores,
    and the skipped files."""
    from .score import infer_batches

    shard_npy, shard_npz, shard_json = _shard_paths(out_dir, rank)
    dim = run.model.embedding_dim
    emb = open_npy_for_writing(shard_npy, np.float32, (hi - lo, dim), name=out_dir / EMBEDDINGS_FILE)
    kept = np.zeros(hi - lo, dtype=bool)
    scores = np.zeros(hi - lo, dtype=np.float64)
    skipped: list[tuple[int, str]] = []
    for idx, logits, vectors in infer_batches(
        run.frontend, run.model, dataset, range(lo, hi), batch_size=batch_size, device=run.device,
        skip_bad=skip_bad, skipped=skipped, num_workers=num_workers, progress=progress, desc="embedding",
    ):
        emb[idx - lo] = vectors
        kept[idx - lo] = True
        scores[idx - lo] = logits[:, 1] - logits[:, 0]
    emb.flush()
    del emb
    with atomic_path(shard_npz) as tmp, open(tmp, "wb") as f:  # a path would get ".npz" appended
        np.savez(f, kept=kept, scores=scores)
    write_text(shard_json, json.dumps(skipped))


def read_index(out_dir: str | Path) -> pd.DataFrame:
    """The ``index.csv`` of an embedding folder, every column as text except ``score``."""
    df = pd.read_csv(Path(out_dir) / INDEX_FILE, dtype=str, keep_default_na=False)
    df["score"] = df["score"].astype(float)
    return df
