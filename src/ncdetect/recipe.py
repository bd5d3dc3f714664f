"""Recipes: the paper's experiment as one validated YAML file.

A recipe names the source corpora (each with its own architecture), the target corpora, the sampling
rates and strategies, the compact model and the seeds. Paths are written once as ``${VARIABLES}``, whose
values come from the recipe's ``variables`` block, a named profile (``profiles: {quick: {EPOCHS: 2}}``,
chosen with ``--profile``), the environment, or ``--var NAME=VALUE``, in rising order of precedence.
"""

from __future__ import annotations

import ast
import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import ConfigError

_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
FULL = "full"  # the full-data baseline's name in a run


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
    by: list[str] = Field(default_factory=list, description="manifest columns the report gives EER and "
                          "minDCF per value of (the attack column always), e.g. [language, channel]")

    _coerce = field_validator("data", mode="before")(_as_data_spec)


class VariantSpec(_Strict):
    """A named selection: a registered strategy with its options (keyword options of ``sample_folders``,
    e.g. ``fake_mode``, ``metric``, ``order``)."""

    name: str
    strategy: str
    options: dict[str, Any] = Field(default_factory=dict)


class SamplingSpec(_Strict):
    rates: list[float] = Field(default_factory=lambda: [0.05, 0.1, 0.25, 0.5])
    # A strategy name, or a variant {name, strategy, options}; plain names take fake_mode and metric below.
    strategies: list[str | VariantSpec] = Field(default_factory=lambda: ["nc", "random"])
    fake_mode: str = "class"
    metric: str = "euclidean"
    headline: str = Field("nc", description="the selection the report's headline compares with random")

    @field_validator("rates")
    @classmethod
    def _rates_in_range(cls, rates: list[float]) -> list[float]:
        bad = [r for r in rates if not 0 < r <= 1]
        if bad or not rates:
            raise ValueError(f"rates must be in (0, 1], got {rates}")
        return sorted(set(rates))

    def variants(self) -> list[VariantSpec]:
        """Every selection as a variant; a plain name gets the section's fake_mode (nc only) and metric."""
        out = []
        for item in self.strategies:
            if isinstance(item, VariantSpec):
                out.append(item)
                continue
            options: dict[str, Any] = {"metric": self.metric}
            if item == "nc":
                options["fake_mode"] = self.fake_mode
            out.append(VariantSpec(name=item, strategy=item, options=options))
        return out


class CompactSpec(_Strict):
    config: Path | None = None
    set: dict[str, Any] = Field(default_factory=dict)
    # epochs: every compact model trains the config's epochs over its own rows, so a smaller set also gets
    # fewer optimiser steps (the "less compute" comparison). steps: each trains for the optimiser steps of
    # the full-data model under the same config (epochs scaled by about 1 / rate, warm-up and cosine decay
    # stretched with them), so only the data differs.
    budget: Literal["epochs", "steps"] = Field(
        "epochs", description="epochs: the config's epochs on each selection; steps: the full-data steps")
    max_epochs: int | None = Field(None, ge=1, description="with budget steps: at most this many epochs")


class ReportSpec(_Strict):
    projection: str = "pca"
    bootstrap: int = Field(1000, ge=0)
    # Targets used to choose between selections; the report marks them, and never chooses on the others.
    validation: list[str] = Field(default_factory=list)


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
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must be unique, got {self.seeds}")
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
    recipe = _resolve_paths(recipe, path.resolve().parent)
    check_recipe(recipe, path)
    return recipe


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


# --- checks that need the registries and the configs: all done at load, before any work ----------------


def check_recipe(recipe: Recipe, path: str | Path = "<recipe>") -> None:
    """Everything a stage would otherwise find only after hours of training, as one-line ConfigErrors
    naming the recipe file, the key and the valid values."""
    _check_sampling(recipe, path)
    from .collapse.plot import METHODS

    if recipe.report.projection not in METHODS:
        raise ConfigError(f"{path}: report.projection: {recipe.report.projection!r} is not one of "
                          f"{', '.join(METHODS)}")
    targets = [t.name for t in recipe.targets]
    for name in recipe.report.validation:
        if name not in targets:
            raise ConfigError(f"{path}: report.validation: {name!r} is not a target; targets: "
                              f"{', '.join(targets)}")
    if recipe.report.validation and set(recipe.report.validation) == set(targets):
        raise ConfigError(f"{path}: report.validation: every target is a validation target; keep at "
                          "least one test target that no choice is made on")
    for i, src in enumerate(recipe.sources):
        _check_config(src.config, src.set, f"{path}: sources[{i}] ({src.name})")
        for key, spec in [("train", src.train), ("dev", src.dev)]:
            _check_filter(spec, f"{path}: sources[{i}].{key}.filter")
    for i, tgt in enumerate(recipe.targets):
        _check_filter(tgt.data, f"{path}: targets[{i}].data.filter")
        _check_by(tgt, f"{path}: targets[{i}].by")
    _check_config(recipe.compact.config, recipe.compact.set, f"{path}: compact")
    _check_budget(recipe.compact, f"{path}: compact")


def _check_budget(compact: CompactSpec, where: str) -> None:
    if compact.max_epochs is not None and compact.budget != "steps":
        raise ConfigError(f"{where}.max_epochs: caps the epochs of budget steps; this recipe's budget is "
                          f"{compact.budget!r} (set compact.budget: steps, or remove max_epochs)")
    if compact.budget == "steps":
        from .config import load_config

        optim = load_config(compact.config, values=compact.set).optim
        taken = [k for k in ("steps", "warmup_steps") if getattr(optim, k) is not None]
        if taken:
            raise ConfigError(f"{where}: optim.{taken[0]} is what budget steps sets for each compact model; "
                              "remove it from the compact config and set (or use budget: epochs)")


def _check_sampling(recipe: Recipe, path: str | Path) -> None:
    import inspect

    from .collapse import sampling

    where = f"{path}: sampling"
    for key, choices in (("fake_mode", sampling.FAKE_MODES), ("metric", sampling.METRICS)):
        value = getattr(recipe.sampling, key)
        if value not in choices:
            raise ConfigError(f"{where}.{key}: {value!r} is not one of {', '.join(choices)}")
    not_options = {"emb_dirs", "strategy", "rate", "seed", "out", "progress"}
    valid_options = [n for n in inspect.signature(sampling.sample_folders).parameters if n not in not_options]
    names = []
    for variant in recipe.sampling.variants():
        if FULL in (variant.strategy, variant.name):
            raise ConfigError(f"{where}.strategies: {FULL!r} is reserved for the full-data baseline, which "
                              f"every run trains; valid strategies: {', '.join(sampling.STRATEGIES.names())}")
        unknown = sorted(set(variant.options) - set(valid_options))
        if unknown:
            raise ConfigError(f"{where}.strategies ({variant.name}): unknown option {unknown[0]!r}; valid: "
                              f"{', '.join(valid_options)}")
        try:
            sampling.check_options(variant.strategy, **variant.options)
        except ConfigError as err:
            raise ConfigError(f"{where}.strategies ({variant.name}): {err}") from None
        names.append(variant.name)
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ConfigError(f"{where}.strategies: selection names must be unique; repeated: {', '.join(dupes)}")
    if recipe.sampling.headline not in names:
        raise ConfigError(f"{where}.headline: {recipe.sampling.headline!r} is not one of the selections: "
                          f"{', '.join(names)}")


def _check_config(config: Path | None, overrides: dict[str, Any], where: str) -> None:
    from .config import load_config

    if config is not None and not Path(config).is_file():
        raise ConfigError(f"{where}: config file {config} not found")
    try:
        load_config(config, values=overrides)  # as the pipeline applies a source's `set:`
    except ConfigError as err:
        raise ConfigError(f"{where}: {err}") from None


def _check_by(target: TargetSpec, where: str) -> None:
    """The ``by`` columns of a target given as a manifest on disk must be columns of it (a corpus to
    prepare is checked once it is prepared, by the report's per-condition tables)."""
    dupes = sorted({c for c in target.by if target.by.count(c) > 1})
    if dupes:
        raise ConfigError(f"{where}: column {dupes[0]!r} is named twice")
    manifest = target.data.manifest
    if not target.by or manifest is None or not Path(manifest).is_file():
        return
    from .data.manifest import read_manifest

    columns = list(read_manifest(manifest, resolve_paths=False).columns)
    for column in target.by:
        if column not in columns:
            raise ConfigError(f"{where}: column {column!r} is not in {manifest} (its columns: "
                              f"{', '.join(columns)})")


def _check_filter(spec: DataSpec | None, where: str) -> None:
    """A filter is a pandas query; its Python syntax is checked here (columns only once data is read)."""
    if spec is None or spec.filter is None:
        return
    # Backtick-quoted column names are pandas syntax, not Python: stand in a plain name for each.
    text = re.sub(r"`[^`]*`", "_column", spec.filter)
    try:
        ast.parse(text.strip(), mode="eval")
    except SyntaxError as err:
        raise ConfigError(f"{where}: {spec.filter!r} does not parse ({err.msg})") from None
