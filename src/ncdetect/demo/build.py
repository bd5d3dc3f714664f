"""Plan, synthesise, equalise and write the demo corpus (see the package docstring for the design)."""

from __future__ import annotations

import json
import logging
import multiprocessing
import shutil
import time
import zlib
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import soundfile as sf

from ..data.audio import SAMPLE_RATE
from ..data.manifest import make_manifest, write_manifest
from ..errors import NcdetectError
from ..fileio import atomic_path, ensure_writable_dir, write_json
from ..progress import progress_bar
from . import channel, generators
from .equalise import Draws, draw, equalise
from .prompts import LANGUAGES, Prompt, load_prompts

log = logging.getLogger("ncdetect.demo")

RECIPE_VERSION = 1  # bump when a change alters the audio, so that caches of older builds are not reused
QUICK_PROMPTS = 60  # per language
TARGET_FRACTION = 0.3  # of each language's prompts, held out for the target
DEV_FRACTION = 0.2  # of the remaining prompts
MARKER = "demo_corpus.json"
WORK = ".work"

DEMO_KEYS = ("demo_tts_en_train", "demo_tts_en_dev", "demo_voc_es_train", "demo_voc_es_dev", "demo_target")
# (language, split) -> (manifest key, dataset, spoof generators)
PLAN = {
    ("en", "train"): ("demo_tts_en_train", "demo_tts_en", ("espeak-ng", "festival-kal")),
    ("en", "dev"): ("demo_tts_en_dev", "demo_tts_en", ("espeak-ng", "festival-kal")),
    ("es", "train"): ("demo_voc_es_train", "demo_voc_es", ("world", "griffin-lim")),
    ("es", "dev"): ("demo_voc_es_dev", "demo_voc_es", ("world", "griffin-lim")),
    # The target crosses generator families and languages: each family is seen by one source, never
    # in this language, and a channel codec is drawn per clip.
    ("en", "target"): ("demo_target", "demo_target", ("world", "griffin-lim")),
    ("es", "target"): ("demo_target", "demo_target", ("espeak-ng", "festival-kal")),
}
BONAFIDE = "bonafide"


@dataclass(frozen=True)
class Clip:
    key: str
    dataset: str
    prompt: Prompt
    source: str  # "bonafide" or a generator name
    draws: Draws

    @property
    def utt_id(self) -> str:
        return clip_id(self.prompt, self.source)

    @property
    def label(self) -> str:
        return "bonafide" if self.source == BONAFIDE else "spoof"

    @property
    def rel_path(self) -> str:
        return f"audio/{self.key}/{self.utt_id}.flac"

    @property
    def speaker(self) -> str:
        if self.source == "espeak-ng":
            return f"espeak-ng-{LANGUAGES[self.prompt.language].espeak_voice}"
        if self.source == "festival-kal":
            return "festival-kal"
        return f"allison-{self.prompt.language}"  # the recording, or WORLD / Griffin-Lim copies of it

    def row(self) -> dict:
        return dict(
            utt_id=self.utt_id, path=self.rel_path, label=self.label, dataset=self.dataset,
            attack="-" if self.source == BONAFIDE else self.source, speaker=self.speaker,
            prompt=self.prompt.name, language=self.prompt.language, codec=self.draws.codec,
        )


def clip_id(prompt: Prompt, source: str) -> str:
    return f"demo-{prompt.language}-{prompt.slug}-{source}"


def split_prompts(prompts: Sequence[Prompt], seed: int, max_prompts: int | None) -> dict[str, list[Prompt]]:
    """Seeded split of one language's prompts into target / dev / train (a prompt is in one only)."""
    lang_key = zlib.crc32(prompts[0].language.encode()) if prompts else 0
    order = np.random.default_rng([seed, lang_key]).permutation(len(prompts))
    chosen = [prompts[i] for i in order[: max_prompts or len(prompts)]]
    n_target = round(TARGET_FRACTION * len(chosen))
    n_dev = round(DEV_FRACTION * (len(chosen) - n_target))
    return {
        "target": chosen[:n_target],
        "dev": chosen[n_target : n_target + n_dev],
        "train": chosen[n_target + n_dev :],
    }


def plan_clips(prompts: dict[str, list[Prompt]], seed: int, max_prompts: int | None) -> list[Clip]:
    clips = []
    for lang in sorted(prompts):
        for split, chosen in split_prompts(prompts[lang], seed, max_prompts).items():
            key, dataset, spoofers = PLAN[(lang, split)]
            for prompt in chosen:
                for source in (BONAFIDE, *spoofers):
                    d = draw(seed, clip_id(prompt, source), with_codec=split == "target")
                    clips.append(Clip(key, dataset, prompt, source, d))
    return clips


# --- stage A: raw material (the recording decoded, or one generator's output), cached per file -----


def raw_path(work: Path, prompt: Prompt, source: str, seed: int) -> Path:
    # Griffin-Lim's initial phase is seeded, so its output depends on the corpus seed; the others do not.
    tag = f"{source}-s{seed}" if source == "griffin-lim" else source
    return work / f"raw-v{RECIPE_VERSION}" / tag / prompt.language / f"{prompt.slug}.flac"


def _write_flac(path: Path, x: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        sf.write(str(tmp), np.clip(x, -1.0, 1.0), SAMPLE_RATE, format="FLAC", subtype="PCM_16")


def _gl_seed(seed: int, prompt: Prompt) -> int:
    return zlib.crc32(f"{seed}:{prompt.language}:{prompt.name}".encode()) & 0x7FFFFFFF


def _decode_batch(items: list[tuple[Prompt, Path]]) -> int:
    for (_, out), x in zip(items, channel.decode_g722([p.g722 for p, _ in items]), strict=True):
        _write_flac(out, x)
    return len(items)


def _tts_batch(source: str, lang: str, items: list[tuple[Prompt, Path]]) -> int:
    texts = [p.text for p, _ in items]
    if source == "espeak-ng":
        raw = generators.espeak(texts, lang, LANGUAGES[lang].espeak_voice)
    else:
        raw = generators.festival(texts, lang)
    # Through G.722 like the bonafide recordings, so every clip's speech has been coded the same way.
    for (_, out), x in zip(items, channel.roundtrip(raw, "g722"), strict=True):
        _write_flac(out, x)
    return len(items)


def _vocoder_batch(source: str, items: list[tuple[str, str, int]]) -> int:
    """Runs in a worker process: (bonafide raw path, output path, Griffin-Lim seed) per item."""
    outs = []
    for src, _, gl_seed in items:
        x, _ = sf.read(src, dtype="float32")
        outs.append(generators.world(x) if source == "world" else generators.griffin_lim(x, gl_seed))
    for (_, out, _), y in zip(items, channel.roundtrip(outs, "g722"), strict=True):
        _write_flac(Path(out), y)
    return len(items)


def _batches(items: list, size: int) -> Iterable[list]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _run_jobs(jobs: list[tuple[Executor, Callable, tuple]], total: int, desc: str, progress: bool) -> None:
    """Run (pool, function, arguments) jobs; each returns how many clips it made."""
    if not jobs:
        return
    with progress_bar(total=total, desc=desc, unit="clip", enabled=progress) as bar:
        futures = [pool.submit(fn, *args) for pool, fn, args in jobs]
        try:
            for fut in as_completed(futures):
                bar.update(fut.result())
        except BaseException:
            for fut in futures:
                fut.cancel()
            raise


def build_raw(clips: Sequence[Clip], work: Path, seed: int, workers: int, progress: bool) -> None:
    """Make every clip's raw material that is not cached yet."""
    needed: dict[tuple[str, str, str], tuple[Prompt, Path]] = {}
    for c in clips:
        for source in {BONAFIDE, c.source}:  # vocoders need the recording as their input
            path = raw_path(work, c.prompt, source, seed)
            if not path.is_file():
                needed[(source, c.prompt.language, c.prompt.name)] = (c.prompt, path)
    groups: dict[tuple[str, str], list[tuple[Prompt, Path]]] = {}
    for (source, lang, _), item in sorted(needed.items()):
        groups.setdefault((source, lang), []).append(item)

    with ThreadPoolExecutor(workers) as threads:
        bona = [item for (s, _), items in groups.items() if s == BONAFIDE for item in items]
        jobs = [(threads, _decode_batch, (b,)) for b in _batches(bona, 64)]
        _run_jobs(jobs, len(bona), "recordings", progress)

        # Processes for WORLD and Griffin-Lim (Python-side numerical work that holds the GIL), threads
        # for the external synthesisers; both at once, so neither kind of wait leaves a core idle.
        voc = {k: v for k, v in groups.items() if k[0] in generators.VOCODERS}
        tts = {k: v for k, v in groups.items() if k[0] in generators.TTS}
        procs = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) if voc else None
        try:
            jobs = []
            for (s, _), items in voc.items():
                args = [(str(raw_path(work, p, BONAFIDE, seed)), str(o), _gl_seed(seed, p)) for p, o in items]
                jobs += [(procs, _vocoder_batch, (s, b)) for b in _batches(args, 16)]
            jobs += [(threads, _tts_batch, (s, lang, b)) for (s, lang), items in tts.items()
                     for b in _batches(items, 32)]
            total = sum(len(v) for v in voc.values()) + sum(len(v) for v in tts.values())
            _run_jobs(jobs, total, "generators", progress)
        finally:
            if procs is not None:
                procs.shutdown(cancel_futures=True)


# --- stage B: equalise, G.722, channel codec, final FLAC --------------------------------------------


def _final_batch(clips: list[Clip], out: Path, work: Path, seed: int) -> int:
    signals = []
    for c in clips:
        x, _ = sf.read(str(raw_path(work, c.prompt, c.source, seed)), dtype="float32")
        signals.append(equalise(x, c.draws))
    signals = channel.roundtrip(signals, "g722")
    for codec in sorted({c.draws.codec for c in clips} - {"none"}):
        idx = [i for i, c in enumerate(clips) if c.draws.codec == codec]
        for i, y in zip(idx, channel.roundtrip([signals[i] for i in idx], codec), strict=True):
            signals[i] = y
    for c, y in zip(clips, signals, strict=True):
        _write_flac(out / c.rel_path, y)
    return len(clips)


def build_final(
    clips: Sequence[Clip], out: Path, work: Path, seed: int, workers: int, progress: bool
) -> None:
    todo = [c for c in clips if not (out / c.rel_path).is_file()]
    with ThreadPoolExecutor(workers) as threads:
        jobs = [(threads, _final_batch, (b, out, work, seed)) for b in _batches(todo, 48)]
        _run_jobs(jobs, len(todo), "equalise + channel", progress)


# --- entry point -------------------------------------------------------------------------------------


def check_requirements() -> None:
    """Every external tool and data package, with the command that installs what is missing."""
    generators.check_generators()
    channel.check_encoders()


def build_demo_corpus(
    out: str | Path,
    quick: bool = False,
    seed: int = 0,
    max_prompts: int | None = None,
    workers: int = 2,
    progress: bool = True,
    keep_work: bool = False,
) -> dict[str, Path]:
    """Build (or find complete) the demo corpus under ``out``; return the manifest path per key.

    ``quick`` uses QUICK_PROMPTS prompts per language; ``max_prompts`` sets that number directly.
    The result depends only on ``seed`` (and the installed packages). Files are written atomically and
    cached, so a build that was killed resumes where it stopped; ``demo_corpus.json`` is written last
    and marks a complete build, which a second call returns at once. The generators' raw outputs
    (``.work/``) are deleted at the end unless ``keep_work``; kept, they make a rebuild with another
    seed or equalisation much faster.
    """
    out = Path(out)
    limit = max_prompts if max_prompts is not None else (QUICK_PROMPTS if quick else None)
    if limit is not None and limit < 4:
        raise NcdetectError(f"max_prompts must be at least 4 (one prompt per split), got {limit}")
    config = {"recipe": RECIPE_VERSION, "seed": seed, "max_prompts": limit}
    manifests = {key: out / f"{key}.csv" for key in DEMO_KEYS}
    marker = out / MARKER
    if marker.is_file() and all(p.is_file() for p in manifests.values()):
        try:
            done = json.loads(marker.read_text(encoding="utf-8"))
        except ValueError:
            done = {}
        if done.get("config") == config:
            log.info("demo corpus already complete in %s", out)
            return manifests

    check_requirements()
    ensure_writable_dir(out)
    started = time.perf_counter()
    work = out / WORK
    _reset_if_config_changed(out, work, config)

    prompts, skipped = {}, {}
    for code, lang in LANGUAGES.items():
        prompts[code], why = load_prompts(lang)
        skipped[code] = dict(why)
        log.info("%s: %d prompts usable; skipped %s", code, len(prompts[code]), dict(why) or "none")
    clips = plan_clips(prompts, seed, limit)

    build_raw(clips, work, seed, workers, progress)
    build_final(clips, out, work, seed, workers, progress)

    from ..cues import trivial_cue_eers
    from ..data.manifest import read_manifest

    counts, cue_eers = {}, {}
    for key in DEMO_KEYS:
        df = make_manifest([c.row() for c in clips if c.key == key])
        write_manifest(df, manifests[key])
        counts[key] = _counts(df)
        cue_eers[key] = {k: round(v, 2) for k, v in trivial_cue_eers(read_manifest(manifests[key])).items()}
    log.info("trivial-cue EERs on demo_target: %s", cue_eers["demo_target"])
    used = {code: len({c.prompt.name for c in clips if c.prompt.language == code}) for code in prompts}
    summary = {
        "config": config,
        "manifests": {k: p.name for k, p in manifests.items()},
        "counts": counts,
        "prompts": {
            code: {"available": len(prompts[code]), "used": used[code], "skipped": skipped[code]}
            for code in prompts
        },
        # Each feature alone as a score, in its better orientation (ncdetect.cues); 50% = no cue.
        "trivial_cue_eers": cue_eers,
        "build_seconds": round(time.perf_counter() - started, 1),
        "license": "bonafide: Asterisk core sounds recorded by Allison Smith (c) 2003-2010, CC BY-SA 3.0; "
        "the spoofs are derived from them and shared under the same licence",
    }
    if not keep_work:
        shutil.rmtree(work, ignore_errors=True)
    write_json(marker, summary)  # last: its presence means the build is complete
    return manifests


def _counts(df: pd.DataFrame) -> dict:
    return {
        "clips": len(df),
        "bonafide": int((df["label"] == "bonafide").sum()),
        "spoof": int((df["label"] == "spoof").sum()),
        "attacks": {str(k): int(v) for k, v in df["attack"].value_counts().sort_index().items()},
        "codecs": {str(k): int(v) for k, v in df["codec"].value_counts().sort_index().items()},
    }


def _reset_if_config_changed(out: Path, work: Path, config: dict) -> None:
    """Finished clips from a build with another seed or size must not be reused: drop them.

    Only an ``audio/`` folder that a demo build made (its marker or state file is there) is removed.
    """
    state = work / "state.json"
    ours = state.is_file() or (out / MARKER).is_file()
    if state.is_file():
        try:
            previous = json.loads(state.read_text(encoding="utf-8"))
        except ValueError:
            previous = None
        if previous == config:
            return
    if (out / "audio").exists():
        if not ours:
            raise NcdetectError(
                f"{out}: holds an audio/ folder that no demo build made; choose an empty or new --out folder"
            )
        shutil.rmtree(out / "audio")
    (out / MARKER).unlink(missing_ok=True)
    write_json(state, config)
