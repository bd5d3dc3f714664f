"""The demo end to end: build the corpus (:mod:`.build`), run ``recipes/demo_whisper.yaml`` on it, and
the one-paragraph summary of a built corpus that ``ncdetect demo-corpus`` prints.

The recipe stays data (``src/ncdetect/recipes/demo_whisper.yaml``; the log-mel paper setting is
``recipes/demo.yaml``); this module only hands it the manifests and a feature-cache folder.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

from ..fileio import ensure_writable_dir
from .build import MARKER, build_demo_corpus


def demo_recipe_path() -> Path:
    return Path(__file__).resolve().parents[1] / "recipes" / "demo_whisper.yaml"


def run_demo(out: str | Path, quick: bool = False, corpus: str | Path | None = None,
             log: Callable[[str], None] = print) -> Path:
    """Build the demo corpus if it is missing, then run ``recipes/demo_whisper.yaml`` on it; returns the
    report. The feature store is ``out/feature_cache``: each Whisper window and codec copy is encoded once
    for every stage, selection and seed."""
    from ..pipeline import run_recipe
    from ..recipe import load_recipe

    out = ensure_writable_dir(out)
    corpus = Path(corpus) if corpus is not None else out / "corpus"
    started = time.perf_counter()
    manifests = build_demo_corpus(corpus, quick=quick)
    log(f"[demo-corpus] {corpus}: {time.perf_counter() - started:.1f} s")
    # Absolute: relative paths in a recipe resolve against the recipe's folder, not the working directory.
    variables = {name.upper(): str(Path(path).resolve()) for name, path in manifests.items()}
    variables["CACHE_DIR"] = str((out / "feature_cache").resolve())
    recipe = load_recipe(demo_recipe_path(), variables, profile="quick" if quick else None)
    run_recipe(recipe, out, log=log)
    return out / "report.html"


def describe_corpus(out: str | Path, manifests: dict[str, Path]) -> str:
    """Prompts used and skipped per language, clips per manifest and the trivial-cue EERs on the target,
    from the corpus's ``demo_corpus.json``."""
    summary = json.loads((Path(out) / MARKER).read_text(encoding="utf-8"))
    lines = []
    for lang, p in summary["prompts"].items():
        skipped = ", ".join(f"{n} {why}" for why, n in p["skipped"].items()) or "none"
        lines.append(f"{lang} prompts: {p['used']} used of {p['available']} usable (not usable: {skipped})")
    for key, path in manifests.items():
        c = summary["counts"][key]
        lines.append(f"{path}: {c['clips']} clips ({c['bonafide']} bonafide, {c['spoof']} spoof)")
    eers = summary["trivial_cue_eers"]["demo_target"]
    shown = ", ".join(f"{name} {eer:.1f}%" for name, eer in eers.items())
    lines.append(f"trivial-cue EERs on demo_target (50% = no cue, the floor is 30%): {shown}")
    return "\n".join(lines)


def build_and_describe(
    out: str | Path, quick: bool = False, seed: int = 0, max_prompts: int | None = None
) -> str:
    """``ncdetect demo-corpus``: build (or find complete) the corpus in ``out`` and describe it."""
    manifests = build_demo_corpus(out, quick=quick, seed=seed, max_prompts=max_prompts)
    return describe_corpus(out, manifests)
