"""One registry pattern for every pluggable piece: models, front-ends, corpora and sampling strategies.

A registry maps names to objects (factories, classes, functions). It lives in its own module, apart from
the packages that fill it, so a family module can import ``Registry`` without importing the package that
imports the family back (timm keeps ``_registry.py`` apart for the same reason).

    MODELS = Registry("model")

    @MODELS.register("resnet18")
    def resnet18(...): ...

    MODELS.get("resnet18")        # the factory
    MODELS.get("resnet81")        # ConfigError: unknown model 'resnet81'; valid: lcnn, resnet18, ...
    MODELS.names()                # sorted names, for CLI choices and recipe validation
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from .errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """Names to objects of one kind; ``kind`` names them in error messages ("model", "strategy")."""

    def __init__(self, kind: str, reserved: tuple[str, ...] = ()) -> None:
        self.kind = kind
        self.reserved = reserved
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator adding ``obj`` under ``name``; registering a second object under one name fails."""

        def decorate(obj: T) -> T:
            self.add(name, obj)
            return obj

        return decorate

    def add(self, name: str, obj: T) -> None:
        if name in self.reserved:
            raise ValueError(f"{self.kind} name {name!r} is reserved")
        if name in self._items and self._items[name] is not obj:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._items[name] = obj

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            raise ConfigError(f"unknown {self.kind} {name!r}; valid: {', '.join(self.names())}") from None

    def check(self, name: str) -> str:
        """``name`` itself when registered; the same ConfigError as :meth:`get` otherwise."""
        self.get(name)
        return name

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {self.names()})"
