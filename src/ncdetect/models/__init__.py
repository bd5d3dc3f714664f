"""Model registry: ``create_model(name, n_features, embedding_dim=256, **kwargs) -> SpoofModel``.

A family registers a factory ``f(n_features, embedding_dim=256, *, option=default, ...)`` with
``@register_model(name)``; its keyword-only parameters are the options a config may set, so an unknown
option is caught here with the list of valid ones instead of deep inside a constructor.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from ncdetect.errors import ConfigError

from .base import DropPath, SpoofModel, check_float, check_int, check_ints, stats_pool

Factory = Callable[..., SpoofModel]
_REGISTRY: dict[str, Factory] = {}


def register_model(name: str) -> Callable[[Factory], Factory]:
    """Decorator adding a factory to the registry under ``name``."""

    def decorate(factory: Factory) -> Factory:
        if name in _REGISTRY and _REGISTRY[name] is not factory:
            raise ValueError(f"model {name!r} is already registered")
        _REGISTRY[name] = factory
        return factory

    return decorate


def list_models() -> list[str]:
    return sorted(_REGISTRY)


def _factory(name: str) -> Factory:
    if name not in _REGISTRY:
        raise ConfigError(f"unknown model {name!r}; valid models: {', '.join(list_models())}")
    return _REGISTRY[name]


def model_options(name: str) -> dict[str, Any]:
    """The options ``name`` accepts, with their defaults."""
    params = inspect.signature(_factory(name)).parameters.values()
    return {p.name: p.default for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY}


def create_model(name: str, n_features: int, embedding_dim: int = 256, **kwargs: Any) -> SpoofModel:
    """Build a registered model for ``(B, 1, n_features, T)`` input.

    ``model.spec`` records the resolved construction arguments (defaults filled in) so a run folder can
    rebuild the same model.
    """
    factory = _factory(name)
    options = model_options(name)
    unknown = sorted(set(kwargs) - set(options))
    if unknown:
        raise ConfigError(
            f"model {name!r} got unknown option(s) {', '.join(unknown)}; valid options: {', '.join(options)}"
        )
    model = factory(n_features, embedding_dim, **kwargs)
    resolved = {**options, **kwargs}
    model.spec = {
        "name": name,
        "n_features": n_features,
        "embedding_dim": embedding_dim,
        "kwargs": {k: list(v) if isinstance(v, tuple) else v for k, v in resolved.items()},
    }
    return model


# Imported last: the family modules register themselves through register_model above.
from . import attn_mlp, convnext, lcnn, resnet  # noqa: E402

__all__ = [
    "DropPath",
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
