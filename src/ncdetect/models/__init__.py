"""Detector models: one module per family, registered by name in :mod:`ncdetect.models.registry`.

Importing the package imports every family, which registers its factories; :func:`create_model` then
builds any of them by name.
"""

from __future__ import annotations

from . import attn_mlp, convnext, lcnn, resnet
from .base import DropPath, LayerWeights, SpoofModel, check_float, check_int, check_ints, stats_pool
from .registry import MODELS, create_model, list_models, model_options, register_model

__all__ = [
    "MODELS",
    "DropPath",
    "LayerWeights",
    "SpoofModel",
    "attn_mlp",
    "check_float",
    "check_int",
    "check_ints",
    "convnext",
    "create_model",
    "lcnn",
    "list_models",
    "model_options",
    "register_model",
    "resnet",
    "stats_pool",
]
