"""Neural collapse: embedding folders, NC1-NC4 metrics, sampling strategies and embedding plots."""

from .embeddings import EmbeddingSet, load_embeddings
from .metrics import nc_metrics
from .sampling import STRATEGIES, Selection, sample_folders

__all__ = ["STRATEGIES", "EmbeddingSet", "Selection", "load_embeddings", "nc_metrics", "sample_folders"]
