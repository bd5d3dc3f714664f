"""The bonafide material: Allison Smith's Asterisk prompts (en-US and es-MX) paired with their texts.

The sounds come from ``asterisk-core-sounds-{en,es}-g722`` (raw G.722 at 64 kbit/s, so the duration is
the byte count / 8000) and the texts from ``asterisk-core-sounds-{en,es}`` (``name: text`` lines in
``core-sounds-{en,es}.txt.gz``). Both are CC BY-SA 3.0.
"""

from __future__ import annotations

import gzip
import re
import unicodedata
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from ..errors import NcdetectError, ProtocolError

SOUNDS_ROOT = Path("/usr/share/asterisk/sounds")
DOC_ROOT = Path("/usr/share/doc")
G722_BYTES_PER_SECOND = 8000  # 64 kbit/s

MIN_SECONDS = 0.6  # shorter prompts are single letters and digits: too little speech to judge
MAX_SECONDS = 6.0  # longer ones are menus that cost synthesis time and exceed the 4 s model window


@dataclass(frozen=True)
class Language:
    code: str
    sounds_dir: str
    sounds_package: str
    texts_package: str
    espeak_voice: str

    @property
    def sounds(self) -> Path:
        return SOUNDS_ROOT / self.sounds_dir

    @property
    def texts(self) -> Path:
        return DOC_ROOT / self.texts_package / f"core-sounds-{self.code}.txt.gz"


# espeak-ng's female variant f3 sits in Allison's F0 range (~180-230 Hz), so pitch is no class cue.
LANGUAGES = {
    code: Language(code, sounds, f"asterisk-core-sounds-{code}-g722", f"asterisk-core-sounds-{code}", voice)
    for code, sounds, voice in (("en", "en_US_f_Allison", "en-us+f3"), ("es", "es_MX_f_Allison", "es-419+f3"))
}


@dataclass(frozen=True)
class Prompt:
    language: str
    name: str  # e.g. "vm-password" or "digits/20"
    text: str
    g722: Path
    seconds: float

    @property
    def slug(self) -> str:
        return self.name.replace("/", "-")


_LINE = re.compile(r"^([^:\s]+):\s*(.*)$")
# "[ascending tones]", "(1 second of silence)", "dash [-]": annotations, not words that were read.
_ANNOTATION = re.compile(r"[\[\]()]")


def read_texts(path: Path) -> dict[str, str]:
    """Parse a ``core-sounds-*.txt.gz``: ``name: text`` lines, ``;`` comments, blank lines."""
    texts: dict[str, str] = {}
    try:
        with gzip.open(path, "rt", encoding="utf-8") as f:
            lines = f.read().splitlines()
    except OSError as err:
        raise ProtocolError(path, None, f"cannot read prompt texts ({err})") from None
    for i, line in enumerate(lines, start=1):
        line = line.strip()
        if not line or line.startswith(";"):
            continue
        m = _LINE.match(line)
        if m is None:
            raise ProtocolError(path, i, f"expected 'name: text', got {line[:60]!r}")
        texts[m.group(1)] = m.group(2).strip()
    return texts


def normalise_text(text: str) -> str:
    """Lower-case, accents folded, punctuation dropped: identical prompts compare equal."""
    folded = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    return " ".join(re.sub(r"[^a-z0-9]+", " ", folded.lower()).split())


def load_prompts(lang: Language) -> tuple[list[Prompt], Counter]:
    """Every usable prompt of one language, sorted by name, and the count of the others by reason.

    A prompt is used when it has both a sound and a text, the text is plain words (no ``[..]`` or
    ``(..)`` annotation), it lasts MIN_SECONDS..MAX_SECONDS, and no earlier prompt (by name) has the
    same normalised text (so a text never lands on both sides of a split).
    """
    if not lang.sounds.is_dir():
        raise NcdetectError(
            f"{lang.sounds}: prompt recordings not found; install the Debian package "
            f"{lang.sounds_package} (`sudo apt-get install {lang.sounds_package}` or `make demo`)"
        )
    if not lang.texts.is_file():
        raise NcdetectError(
            f"{lang.texts}: prompt texts not found; install the Debian package "
            f"{lang.texts_package} (`sudo apt-get install {lang.texts_package}` or `make demo`)"
        )
    texts = read_texts(lang.texts)
    sounds = {
        p.relative_to(lang.sounds).with_suffix("").as_posix(): p for p in sorted(lang.sounds.rglob("*.g722"))
    }
    skipped: Counter = Counter()
    skipped["text without a recording"] = len(set(texts) - set(sounds))
    prompts: list[Prompt] = []
    seen: set[str] = set()
    for name in sorted(sounds):
        path = sounds[name]
        text = texts.get(name)
        if text is None:
            skipped["recording without a text"] += 1
            continue
        norm = normalise_text(text)
        if _ANNOTATION.search(text) or not re.search(r"[a-z]", norm):
            skipped["annotated or non-speech text"] += 1
            continue
        seconds = path.stat().st_size / G722_BYTES_PER_SECOND
        if seconds < MIN_SECONDS:
            skipped[f"shorter than {MIN_SECONDS} s"] += 1
            continue
        if seconds > MAX_SECONDS:
            skipped[f"longer than {MAX_SECONDS} s"] += 1
            continue
        if norm in seen:
            skipped["duplicate text"] += 1
            continue
        seen.add(norm)
        prompts.append(Prompt(lang.code, name, text, path, seconds))
    return prompts, +skipped
