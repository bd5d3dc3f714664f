"""Neural collapse: embedding folders, NC1-NC4 metrics, sampling strategies, coverage and embedding plots.

Modules, in import order: ``metrics`` (NC1-NC4), ``embeddings`` (folders), ``frame`` (what every
sampling strategy shares), ``strategies`` (the registered choices, ``STRATEGIES``), ``coverage``
(what a selection kept), ``sampling`` (folders to a manifest), ``plot``. The package imports none of
them, so the command line can read the strategy registry without loading pandas.
"""
