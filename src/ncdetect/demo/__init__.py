"""The demo: a small, licence-clean anti-spoofing corpus built on this machine in minutes, and the
experiment of ``recipes/demo_whisper.yaml`` run on it (:func:`run_demo`, in :mod:`.run`).

Bonafide: Allison Smith's Asterisk prompts in US English and Mexican Spanish (Debian packages
``asterisk-core-sounds-{en,es}-g722`` for the G.722 recordings and ``asterisk-core-sounds-{en,es}`` for
their texts; CC BY-SA 3.0). A prompt is used when it has a text of plain words, lasts 0.6-6 s and its
text is not a duplicate; the build records how many were skipped and why in ``demo_corpus.json``.

Spoofs are content-matched: the same prompt, read or re-synthesised by four generators in two families.
- text-to-speech (reads the text): espeak-ng (en-us+f3 / es-419+f3) and festival's ``voice_kal_diphone``
  (Debian ``festvox-kallpc16k``), speaking rates set so their durations match the recordings' and F0
  in the speaker's range;
- vocoders (re-synthesise the recording): WORLD analysis/synthesis (pyworld) and Griffin-Lim from an
  80-band mel spectrogram (librosa).

Datasets and splits (the keys of :func:`build_demo_corpus`'s result; prompts are split, never shared):
- ``demo_tts_en_train`` / ``_dev``: English prompts, bonafide + espeak-ng + festival-kal (source 1);
- ``demo_voc_es_train`` / ``_dev``: Spanish prompts, bonafide + WORLD + Griffin-Lim (source 2);
- ``demo_target``: 30% of each language's prompts held out, generators crossed over languages
  (vocoders on English, text-to-speech on Spanish), and a channel codec drawn per clip independently of
  the label (none, MP3 32 kbit/s, GSM, Opus 12 kbit/s; column ``codec``).

No trivial cues: every clip goes through the same equalisation (see :mod:`.equalise`): one silence
trim, random padding and noise floor, one 50-7000 Hz band, random RMS level, and G.722 coding for
both classes, so duration, level, bandwidth and leading silence carry no label. ``demo_corpus.json``
records each trivial feature's EER as a detector on every split (:mod:`ncdetect.cues`); on the target
each must stay at or above 30%. The spectral roll-off remains a cue inside ``demo_tts_en``: espeak-ng's
formant voice is brighter than a human one, a property of the generator rather than of the channel.

Manifests ``<key>.csv`` hold the manifest columns (docs/formats.md) plus ``prompt, language, codec``, with
audio as 16 kHz mono FLAC under ``audio/<key>/`` (paths relative to the manifest). Everything is seeded
and deterministic; external tools run two at a time, ffmpeg codes many files per process, each file is
written atomically and cached so that a killed build resumes, and ``demo_corpus.json`` is written last.
"""

from .build import DEMO_KEYS, QUICK_PROMPTS, build_demo_corpus, check_requirements
from .run import build_and_describe, demo_recipe_path, describe_corpus, run_demo

__all__ = [
    "DEMO_KEYS",
    "QUICK_PROMPTS",
    "build_and_describe",
    "build_demo_corpus",
    "check_requirements",
    "demo_recipe_path",
    "describe_corpus",
    "run_demo",
]
