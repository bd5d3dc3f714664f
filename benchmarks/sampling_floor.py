"""The numpy floor of `ncdetect sample --strategy nc` (bench_sampling.py times it as a fresh process).

The same job with numpy and pandas alone and nothing else: index.csv read by pyarrow, class means and
float64 distances to them over the memory-mapped array in chunks, ``argpartition`` per class (k =
max(1, round(rate * N_c))), the kept rows written with ``to_csv``. No validation, no ties by utt_id, no
summary: what the command cannot go below. It imports nothing but numpy and pandas, so that its time
holds no imports the command could avoid.

    python benchmarks/sampling_floor.py EMB OUT.csv [RATE]
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np


def numpy_floor(emb_dir: str, out: str, rate: float = 0.1) -> int:
    """The job of `ncdetect sample --strategy nc` with numpy and pandas alone: the floor it is held to."""
    import pandas as pd

    index = pd.read_csv(Path(emb_dir) / "index.csv", dtype=str, keep_default_na=False, engine="pyarrow")
    x = np.load(Path(emb_dir) / "embeddings.npy", mmap_mode="r")
    labels = (index["label"].to_numpy() == "bonafide").astype(np.int64)
    sums = np.zeros((2, x.shape[1]))
    for s in range(0, len(x), 65_536):
        block, lab = x[s : s + 65_536], labels[s : s + 65_536]
        for c in (0, 1):
            sums[c] += block[lab == c].sum(axis=0, dtype=np.float64)
    means = sums / np.bincount(labels, minlength=2)[:, None]
    dist = np.empty(len(x))
    for s in range(0, len(x), 4_096):
        diff = x[s : s + 4_096] - means[labels[s : s + 4_096]]
        dist[s : s + 4_096] = np.sqrt(np.einsum("ij,ij->i", diff, diff))
    keep = []
    for c in (0, 1):
        rows = np.flatnonzero(labels == c)
        k = max(1, round(rate * rows.size))
        keep.append(rows[np.argpartition(dist[rows], k - 1)[:k]])
    kept = np.sort(np.concatenate(keep))
    index.iloc[kept].drop(columns=["score"]).assign(distance=dist[kept]).to_csv(out, index=False)
    return int(kept.size)


if __name__ == "__main__":
    print(numpy_floor(sys.argv[1], sys.argv[2], *(float(r) for r in sys.argv[3:4])))
