"""Recipes: the paper's experiment as one validated YAML file.

A recipe names the source corpora (each with its own architecture), the target corpora, the sampling
rates and strategies, the compact model and the seeds. Paths are written once as ``${VARIABLES}``, whose
values come from the recipe's ``variables`` block, a named profile (``profiles: {quick: {EPOCHS: 2}}``,
chosen with ``--profile``), the environment, or ``--var NAME=VALUE``, in rising order of precedence.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import ConfigError

_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DataSpec(_Strict):
    """A manifest on disk, or a corpus to ``prepare``; optionally filtered and capped."""

    manifest: Path | None = None
    corpus: str | None = None
    root: Path | None = None
    partition: str | None = None
    filter: str | None = Field(None, description="a pandas query, e.g. \"attack in ['-', 'A01']\"")
    limit: int | None = Field(None, ge=2, description="keep at most this many rows, class-stratified")

    @model_validator(mode="after")
    def _one_source(self) -> DataSpec:
        if (self.manifest is None) == (self.corpus is None):
            raise ValueError("give either 'manifest' or 'corpus' (with 'root')")
        if self.corpus is not None and self.root is None:
            raise ValueError(f"corpus {self.corpus!r} needs a 'root'")
        return self


def _as_data_spec(value: Any) -> Any:
    return {"manifest": value} if isinstance(value, str | Path) else value


class SourceSpec(_Strict):
    name: str
    train: DataSpec
    dev: DataSpec | None = None
    config: Path | None = None
    set: dict[str, Any] = Field(default_factory=dict)

    _coerce = field_validator("train", "dev", mode="before")(_as_data_spec)


class TargetSpec(_Strict):
    name: str
    data: DataSpec

    _coerce = field_validator("data", mode="before")(_as_data_spec)


class SamplingSpec(_Strict):
    rates: list[float] = Field(default_factory=lambda: [0.05, 0.1, 0.25, 0.5])
    strategies: list[str] = Field(default_factory=lambda: ["nc", "random"])
    fake_mode: str = "class"
    metric: str = "euclidean"

    @field_validator("rates")
    @classmethod
    def _rates_in_range(cls, rates: list[float]) -> list[float]:
        bad = [r for r in rates if not 0 < r <= 1]
        if bad or not rates:
            raise ValueError(f"rates must be in (0, 1], got {rates}")
        return sorted(set(rates))


class CompactSpec(_Strict):
    config: Path | None = None
    set: dict[str, Any] = Field(default_factory=dict)


class ReportSpec(_Strict):
    projection: str = "pca"
    bootstrap: int = Field(1000, ge=0)


class Recipe(_Strict):
    name: str
    variables: dict[str, str] = Field(default_factory=dict)
    profiles: dict[str, dict[str, str]] = Field(default_factory=dict)
    sources: list[SourceSpec]
    targets: list[TargetSpec]
    sampling: SamplingSpec = Field(default_factory=SamplingSpec)
    compact: CompactSpec = Field(default_factory=CompactSpec)
    seeds: list[int] = Field(default_factory=lambda: [0])
    report: ReportSpec = Field(default_factory=ReportSpec)

    @model_validator(mode="after")
    def _unique_names(self) -> Recipe:
        names = [s.name for s in self.sources] + [t.name for t in self.targets]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"source and target names must be unique; repeated: {dupes}")
        if not self.sources or not self.targets or not self.seeds:
            raise ValueError("a recipe needs at least one source, one target and one seed")
        return self


def load_recipe(
    path: str | Path, variables: dict[str, str] | None = None, profile: str | None = None
) -> Recipe:
    """Read a recipe, substitute ``${VARIABLES}`` and validate it. Relative paths resolve against the
    recipe's folder."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: recipe not found")
    try:
        text = path.read_text(encoding="utf-8")
    except (UnicodeDecodeError, OSError) as err:
        raise ConfigError(f"{path}: cannot be read as UTF-8 text ({err})") from None
    try:
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a recipe is a YAML mapping")
    values = {k: str(v) for k, v in (raw.get("variables") or {}).items()}
    if profile is not None:
        profiles = raw.get("profiles") or {}
        if profile not in profiles:
            raise ConfigError(f"{path}: no profile {profile!r}; the recipe has {sorted(profiles)}")
        values.update({k: str(v) for k, v in (profiles[profile] or {}).items()})
    values.update({k: os.environ[k] for k in values if k in os.environ})
    unknown = sorted(set(variables or {}) - set(values) - set(_VARIABLE.findall(text)))
    if unknown:
        raise ConfigError(f"{path}: --var names variables the recipe does not use: {unknown}")
    values.update(variables or {})

    def substitute(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: substitute(v) for k, v in value.items()}
        if isinstance(value, list):
            return [substitute(v) for v in value]
        if isinstance(value, str):
            return _VARIABLE.sub(lambda m: lookup(m.group(1)), value)
        return value

    def lookup(name: str) -> str:
        if name in values:
            return values[name]
        if name in os.environ:
            return os.environ[name]
        line = text[: text.index("${" + name + "}")].count("\n") + 1
        raise ConfigError(f"{path}:{line}: variable ${{{name}}} is not set (set it in 'variables', "
                          f"the environment, or with --var {name}=VALUE)")

    resolved = substitute({k: v for k, v in raw.items() if k not in ("variables", "profiles")})
    resolved["variables"] = values
    try:
        recipe = Recipe.model_validate(resolved)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ConfigError(f"{path}: {where}: {first['msg']}") from None
    return _resolve_paths(recipe, path.resolve().parent)


def _resolve_paths(recipe: Recipe, base: Path) -> Recipe:
    def fix(p: Path | None) -> Path | None:
        return None if p is None or p.is_absolute() else (base / p).resolve()

    specs: list[DataSpec] = [s.train for s in recipe.sources] + [s.dev for s in recipe.sources if s.dev]
    specs += [t.data for t in recipe.targets]
    for spec in specs:
        spec.manifest = fix(spec.manifest) or spec.manifest
        spec.root = fix(spec.root) or spec.root
    for holder in [*recipe.sources, recipe.compact]:
        holder.config = fix(holder.config) or holder.config
    return recipe
