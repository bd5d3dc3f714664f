"""The model registry: ``create_model(name, n_features, embedding_dim=256, **kwargs) -> SpoofModel``.

A family registers a factory ``f(n_features, embedding_dim=256, *, option=default, ...)`` with
``@register_model(name)``; its keyword-only parameters are the options a config may set, so an unknown
option is caught here with the list of valid ones instead of deep inside a constructor.

The registry has its own module (as timm's ``_registry.py``) so the family modules can import it without
importing the package that imports them back.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from ..errors import ConfigError
from ..registry import Registry
from .base import SpoofModel

Factory = Callable[..., SpoofModel]
MODELS: Registry[Factory] = Registry("model")


def register_model(name: str) -> Callable[[Factory], Factory]:
    """Decorator adding a factory to :data:`MODELS` under ``name``."""
    return MODELS.register(name)


def list_models() -> list[str]:
    return MODELS.names()


def model_options(name: str) -> dict[str, Any]:
    """The options ``name`` accepts, with their defaults."""
    params = inspect.signature(MODELS.get(name)).parameters.values()
    return {p.name: p.default for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY}


def create_model(name: str, n_features: int, embedding_dim: int = 256, **kwargs: Any) -> SpoofModel:
    """Build a registered model for ``(B, 1, n_features, T)`` input.

    ``model.spec`` records the resolved construction arguments (defaults filled in) so a run folder can
    rebuild the same model.
    """
    factory = MODELS.get(name)
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
