"""Corpus adapters: read a corpus as it is distributed and return its manifest.

Each adapter is ``adapter(root: Path, partition: str | None) -> DataFrame`` and is listed in
:data:`ADAPTERS`. The frame has the manifest columns (``utt_id, path, label, dataset, attack, speaker``)
followed by corpus-specific extra columns; ``path`` is absolute.

Rules shared by every adapter:

- Protocols are parsed line by line with ``str.split``; blank lines are skipped, line numbers are 1-based.
  A line with the wrong number of columns, an unknown label, an unsafe file name (one holding ``/``,
  ``\\``, NUL, or being ``.``/``..``), or an utterance id seen before raises
  :class:`~ncdetect.errors.ProtocolError` naming the file and line. An empty protocol is an error.
- A protocol entry whose audio file is missing raises ``ProtocolError`` naming the expected file and the
  protocol line (with the count of entries lacking audio). Entries are never dropped silently.
- ``attack`` is ``-`` for bonafide rows, whatever the protocol writes there (ASVspoof 2021 LA writes
  ``bonafide``, ASVspoof 5 writes ``bonafide``); a spoof row without an attack id (``-``) gets ``unknown``.
- Audio folders are listed once (``os.scandir``) and entries are looked up in that index, so a
  million-line protocol costs one directory listing rather than a million ``stat`` calls.
"""

from __future__ import annotations

import csv
import gc
import io
import os
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import pandas as pd

from ..errors import ConfigError, NcdetectError, ProtocolError
from ..fileio import ensure_writable_dir
from ..progress import progress_bar
from ..registry import Registry
from .manifest import COLUMNS, write_manifest

BONAFIDE_ATTACK = "-"
UNKNOWN_ATTACK = "unknown"
#: What libsndfile decodes; files with other extensions are not audio to the folder and wavefake adapters.
AUDIO_EXTENSIONS = frozenset({".wav", ".flac", ".ogg", ".oga", ".mp3", ".opus", ".aif", ".aiff", ".au"})

_ASVSPOOF_LABELS = {"bonafide": "bonafide", "spoof": "spoof"}


# --- shared helpers -------------------------------------------------------------------------------


def _choose(partition: str | None, choices: Sequence[str], default: str | None, corpus: str) -> str | None:
    if partition is None:
        return default
    if partition not in choices:
        raise ConfigError(f"{corpus}: unknown --partition {partition!r}; choose one of {', '.join(choices)}")
    return partition


def _no_partition(partition: str | None, corpus: str) -> None:
    if partition is not None:
        raise ConfigError(f"{corpus} has no partitions; drop --partition {partition!r}")


def _first_file(candidates: Iterable[Path], what: str) -> Path:
    candidates = list(candidates)
    for path in candidates:
        if path.is_file():
            return path
    tried = ", ".join(str(p) for p in candidates)
    raise NcdetectError(f"{candidates[0]}: {what} not found (looked for {tried})")


def _read_lines(path: Path) -> list[str]:
    """The lines of a text file; undecodable bytes become a ProtocolError naming the line."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ProtocolError(path, None, "file not found") from None
    except OSError as err:
        raise ProtocolError(path, None, f"cannot read ({err.strerror or err})") from None
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise ProtocolError(path, line, "not UTF-8 text") from None
    return text.split("\n")


@contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector: building a million small lists otherwise triggers collection
    passes that cost 5x the parsing itself (measured on CPython 3.11); these lists hold no cycles.
    Usable as a decorator."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


@_gc_paused()
def _table(path: Path, widths: Sequence[int], layout: str) -> tuple[list[int], list[list[str]]]:
    """Line numbers and whitespace-split columns of every non-blank line, checking the column count."""
    numbered = [(n, parts) for n, parts in enumerate(map(str.split, _read_lines(path)), start=1) if parts]
    if not numbered:
        raise ProtocolError(path, None, "protocol is empty")
    for n, parts in numbered:
        if len(parts) not in widths:
            expected = " or ".join(str(w) for w in widths)
            raise ProtocolError(path, n, f"expected {expected} columns ({layout}), found {len(parts)}")
    lines, rows = zip(*numbered, strict=True)
    return list(lines), list(rows)


def _column(rows: list[list[str]], i: int) -> list[str]:
    return [r[i] for r in rows]


@_gc_paused()
def _csv_rows(path: Path, required: Sequence[str]) -> tuple[list[str], list[tuple[int, dict[str, str]]]]:
    """Header and ``(line_number, row)`` pairs of a CSV file with a header line; blank lines are skipped."""
    reader = csv.reader(io.StringIO("\n".join(_read_lines(path)), newline=""), strict=True)
    header: list[str] | None = None
    header_line = 0
    rows: list[tuple[int, dict[str, str]]] = []
    while True:
        try:
            values = next(reader)
        except StopIteration:
            break
        except csv.Error as err:
            raise ProtocolError(path, reader.line_num, f"malformed CSV ({err})") from None
        if not values or (len(values) == 1 and not values[0].strip()):
            continue
        if header is None:
            header, header_line = [h.strip() for h in values], reader.line_num
            missing = [c for c in required if c not in header]
            if missing:
                raise ProtocolError(path, header_line, f"header lacks columns {missing} (found {header})")
            repeated = sorted({h for h in header if header.count(h) > 1})
            if repeated:
                raise ProtocolError(path, header_line, f"header repeats columns {repeated}")
            continue
        if len(values) != len(header):
            found = f"expected {len(header)} fields like the header (line {header_line}), found {len(values)}"
            raise ProtocolError(path, reader.line_num, found)
        rows.append((reader.line_num, dict(zip(header, values, strict=True))))
    if header is None:
        raise ProtocolError(path, None, "CSV file is empty (it needs a header line)")
    if not rows:
        raise ProtocolError(path, None, "no entries below the header")
    return header, rows


def _label_error(path: Path, line: int, token: str, spellings: dict[str, str]) -> ProtocolError:
    return ProtocolError(path, line, f"unknown label {token!r} (expected {' or '.join(sorted(spellings))})")


def _attack(label: str, token: str) -> str:
    """The contract: ``-`` marks bonafide and nothing else, whatever the protocol writes in that column."""
    if label == "bonafide":
        return BONAFIDE_ATTACK
    return UNKNOWN_ATTACK if token in ("", "-") else token


def _is_plain_name(name: str) -> bool:
    """True for a bare file name: one that cannot reach outside the folder it is joined to."""
    return (
        bool(name) and name not in (".", "..") and "/" not in name and "\\" not in name and "\x00" not in name
    )


def _index_audio(folders: Sequence[Path]) -> dict[str, str]:
    """File name -> path over ``folders`` (the first folder holding a name wins)."""
    index: dict[str, str] = {}
    for folder in folders:
        if not folder.is_dir():
            continue
        with os.scandir(folder) as entries:
            listing = progress_bar(entries, desc=f"listing {folder.name}", unit="files")
            for entry in listing:
                if entry.name not in index and entry.is_file():
                    index[entry.name] = entry.path
    return index


class _Entries:
    """Protocol entries held as columns (lists per column beat a dict per row at 1M lines), each entry
    remembering its line so that every check can name it. Checks run in bulk when the entries are made:
    labels (mapped through ``spellings``), file names (:func:`_is_plain_name`) and utterance ids (unique).
    """

    def __init__(
        self,
        source: Path,
        line: list[int],
        utt_id: list[str],
        file: list[str],
        label: list[str],
        attack: list[str],
        speaker: list[str],
        spellings: dict[str, str],
        extra: dict[str, list[str]] | None = None,
    ):
        self.source = source
        self.line = line
        unknown = set(label) - spellings.keys()
        if unknown:
            i = next(i for i, token in enumerate(label) if token in unknown)
            raise _label_error(source, line[i], label[i], spellings)
        self.label = [spellings[token] for token in label]
        self.attack = [_attack(lab, tok) for lab, tok in zip(self.label, attack, strict=True)]
        for i, name in enumerate(file):
            if not _is_plain_name(name):
                self._fail(
                    i,
                    f"unsafe file name {name!r}: protocol entries must name a file inside the "
                    "corpus folder (no '/', '\\', '..' or absolute paths)",
                )
        if len(set(utt_id)) != len(utt_id):
            first: dict[str, int] = {}
            for i, utt in enumerate(utt_id):
                j = first.setdefault(utt, i)
                if j != i:
                    self._fail(i, f"utterance {utt!r} repeats line {line[j]}")
        self.utt_id, self.file, self.speaker = utt_id, file, speaker
        self.extra = extra or {}

    def _fail(self, i: int, reason: str) -> None:
        raise ProtocolError(self.source, self.line[i], reason)

    def __len__(self) -> int:
        return len(self.utt_id)

    def keep(self, mask: Sequence[bool]) -> None:
        """Keep only the entries where ``mask`` is true (used for explicit phase filters)."""

        def kept(values: list) -> list:
            return [v for v, k in zip(values, mask, strict=True) if k]

        for attr in ("line", "utt_id", "file", "label", "attack", "speaker"):
            setattr(self, attr, kept(getattr(self, attr)))
        self.extra = {name: kept(values) for name, values in self.extra.items()}

    def frame(self, dataset: str, audio_folders: Sequence[Path]) -> pd.DataFrame:
        """Resolve every entry's audio in ``audio_folders`` and build the manifest frame."""
        if not any(f.is_dir() for f in audio_folders):
            tried = ", ".join(str(f) for f in audio_folders)
            raise NcdetectError(f"{audio_folders[0]}: audio folder not found (looked for {tried})")
        index = _index_audio(audio_folders)
        paths = [index.get(name) for name in self.file]
        missing = [i for i, p in enumerate(paths) if p is None]
        if missing:
            i = missing[0]
            self._fail(
                i,
                f"audio file {audio_folders[0] / self.file[i]} not found "
                f"({len(missing)} of {len(paths)} entries lack audio)",
            )
        return _frame(self.utt_id, paths, self.label, dataset, self.attack, self.speaker, self.extra)


def _frame(
    utt_id: list[str],
    path: list[str],
    label: list[str],
    dataset: str,
    attack: list[str],
    speaker: list[str],
    extra: dict[str, list[str]] | None = None,
) -> pd.DataFrame:
    data = {
        "utt_id": utt_id,
        "path": path,
        "label": label,
        "dataset": [dataset] * len(utt_id),
        "attack": attack,
        "speaker": speaker,
    }
    data.update(extra or {})
    return pd.DataFrame(data, columns=list(data))


def _walk_audio(folder: Path) -> list[Path]:
    """Audio files below ``folder`` (recursive, symlinked folders not followed), in sorted order."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames.sort()
        audio = [f for f in sorted(filenames) if Path(f).suffix.lower() in AUDIO_EXTENSIONS]
        found.extend(Path(dirpath) / f for f in audio)
    return found


def _rel_id(path: Path, base: Path) -> str:
    return path.relative_to(base).with_suffix("").as_posix()


def _unique_ids(ids: list[str], files: list[Path]) -> None:
    seen: dict[str, Path] = {}
    for utt, f in zip(ids, files, strict=True):
        if utt in seen:
            raise ProtocolError(
                f,
                None,
                f"utterance id {utt!r} is shared with {seen[utt]} (two audio files differ only by extension)",
            )
        seen[utt] = f


# --- ASVspoof 2019 LA -----------------------------------------------------------------------------

_2019_PROTOCOLS = {"train": "train.trn", "dev": "dev.trl", "eval": "eval.trl"}


def asvspoof2019(root: Path, partition: str | None = None) -> pd.DataFrame:
    """ASVspoof 2019 logical access (LA).

    Layout (``root`` is the folder holding ``LA/``, or ``LA/`` itself)::

        LA/ASVspoof2019_LA_cm_protocols/ASVspoof2019.LA.cm.{train.trn,dev.trl,eval.trl}.txt
        LA/ASVspoof2019_LA_{train,dev,eval}/flac/<UTT>.flac

    Protocol lines: ``SPEAKER UTT - SYSTEM KEY``, e.g. ``LA_0079 LA_T_1138215 - - bonafide`` or
    ``LA_0039 LA_E_2834763 - A11 spoof``. Partition ``train`` (default), ``dev`` or ``eval``.
    Columns: utt_id = UTT, attack = SYSTEM (A01-A19, ``-`` for bonafide), speaker = SPEAKER,
    dataset = ``asvspoof2019_la_<partition>``. No extra columns.
    """
    part = _choose(partition, tuple(_2019_PROTOCOLS), "train", "asvspoof2019")
    la = root / "LA" if (root / "LA").is_dir() else root
    protocol = la / "ASVspoof2019_LA_cm_protocols" / f"ASVspoof2019.LA.cm.{_2019_PROTOCOLS[part]}.txt"
    if not protocol.is_file():
        raise NcdetectError(
            f"{protocol}: ASVspoof 2019 LA protocol not found (ROOT must hold LA/ or be the LA folder itself)"
        )
    lines, rows = _table(protocol, (5,), "SPEAKER UTT - SYSTEM KEY")
    speaker, utt, _, system, key = (_column(rows, i) for i in range(5))
    entries = _Entries(
        protocol, lines, utt, [f"{u}.flac" for u in utt], key, system, speaker, _ASVSPOOF_LABELS
    )
    return entries.frame(f"asvspoof2019_la_{part}", [la / f"ASVspoof2019_LA_{part}" / "flac"])


# --- ASVspoof 2021 LA / DF ------------------------------------------------------------------------

# Column layouts of keys/<TRACK>/CM/trial_metadata.txt (asvspoof-challenge/2021 eval-package/config.py).
_2021_LAYOUT = {
    "LA": (
        "SPEAKER TRIAL CODEC TRANSMISSION ATTACK KEY TRIM PHASE",
        {"codec": 2, "transmission": 3, "trim": 6, "phase": 7},
    ),
    "DF": (
        "SPEAKER TRIAL CODEC SOURCE ATTACK KEY TRIM PHASE VOCODER TASK TEAM GENDER_PAIR LANGUAGE",
        {"codec": 2, "source": 3, "trim": 6, "phase": 7, "vocoder": 8},
    ),
}
_2021_PHASES = ("eval", "progress", "hidden")


def _2021_keys(root: Path, track: str, explicit: bool) -> list[Path]:
    candidates = [
        root / "keys" / track / "CM" / "trial_metadata.txt",
        root / f"{track}-keys-full" / "keys" / track / "CM" / "trial_metadata.txt",
        root / f"{track}-keys-stage-1" / "keys" / "CM" / "trial_metadata.txt",
    ]
    if explicit:
        candidates.append(root / "trial_metadata.txt")
    return candidates


def asvspoof2021(root: Path, partition: str | None = None) -> pd.DataFrame:
    """ASVspoof 2021 LA or DF evaluation data with the released keys.

    Layout (``root`` holds the eval folders and the keys; the DF audio may be split into parts)::

        keys/{LA,DF}/CM/trial_metadata.txt           (also {LA,DF}-keys-full/keys/..., or
                                                      ROOT/trial_metadata.txt with an explicit --partition)
        ASVspoof2021_{LA,DF}_eval/flac/<TRIAL>.flac
        ASVspoof2021_DF_eval_part0N/ASVspoof2021_DF_eval/flac/<TRIAL>.flac
        flac/<TRIAL>.flac                            (ROOT being ASVspoof2021_{LA,DF}_eval itself)

    Key lines, the KEY in column 6:

    - LA (8 columns): ``LA_0009 LA_E_9332881 alaw ita_tx A07 spoof notrim eval``
    - DF (13 columns): ``LA_0023 DF_E_2000011 nocodec asvspoof A14 spoof notrim progress
      traditional_vocoder - - - -``

    Partition: ``LA`` or ``DF`` (inferred when only one track's keys are found), optionally with a phase
    filter ``LA-eval``, ``DF-progress``, ``LA-hidden``. Without a phase all phases are kept.
    Extra columns: LA ``codec, transmission, trim, phase``; DF ``codec, source, trim, phase, vocoder``.
    dataset = ``asvspoof2021_<track>[_<phase>]``; attack = column 5 (``-`` for bonafide).
    """
    track, phase = _2021_partition(root, partition)
    keys = _first_file(_2021_keys(root, track, partition is not None), f"ASVspoof 2021 {track} keys")
    layout, extra = _2021_LAYOUT[track]
    lines, rows = _table(keys, (len(layout.split()),), layout)
    trial = _column(rows, 1)
    entries = _Entries(
        keys,
        lines,
        trial,
        [f"{t}.flac" for t in trial],
        _column(rows, 5),
        _column(rows, 4),
        _column(rows, 0),
        _ASVSPOOF_LABELS,
        {name: _column(rows, i) for name, i in extra.items()},
    )
    if phase is not None:
        entries.keep([p == phase for p in entries.extra["phase"]])
        if not len(entries):
            raise ProtocolError(keys, None, f"no trials in phase {phase!r}")
    folders = [
        root / f"ASVspoof2021_{track}_eval" / "flac",
        *sorted(root.glob(f"ASVspoof2021_{track}_eval_part*/ASVspoof2021_{track}_eval/flac")),
        root / "flac",
    ]
    dataset = f"asvspoof2021_{track.lower()}" + (f"_{phase}" if phase else "")
    return entries.frame(dataset, folders)


def _2021_partition(root: Path, partition: str | None) -> tuple[str, str | None]:
    if partition is None:
        found = [t for t in _2021_LAYOUT if any(p.is_file() for p in _2021_keys(root, t, False))]
        if len(found) != 1:
            where = "both LA and DF keys" if found else "no keys/<TRACK>/CM/trial_metadata.txt"
            raise ConfigError(f"asvspoof2021: {root} holds {where}; pass --partition LA or DF")
        return found[0], None
    track, _, phase = partition.partition("-")
    track = track.upper()
    if track not in _2021_LAYOUT or (phase and phase not in _2021_PHASES):
        choices = ", ".join(["LA", "DF"] + [f"{t}-{p}" for t in _2021_LAYOUT for p in _2021_PHASES])
        raise ConfigError(f"asvspoof2021: unknown --partition {partition!r}; choose one of {choices}")
    return track, phase or None


# --- ASVspoof 5 -----------------------------------------------------------------------------------

_ASV5_FILES = {
    "train": (("ASVspoof5.train.tsv", "ASVspoof5.train.metadata.txt"), ("flac_T",)),
    "dev": (("ASVspoof5.dev.track_1.tsv", "ASVspoof5.dev.metadata.txt"), ("flac_D",)),
    "eval": (("ASVspoof5.eval.track_1.tsv",), ("flac_E_eval", "flac_E")),
}
_ASV5_LAYOUT_10 = "SPEAKER FLAC_NAME GENDER CODEC CODEC_Q CODEC_SEED ATTACK_TAG ATTACK_LABEL KEY TMP"
_ASV5_LAYOUT_6 = "SPEAKER FLAC_NAME GENDER ATTACK_TAG ATTACK_LABEL KEY"
_ASV5_EXTRA = ("gender", "codec", "codec_q", "codec_seed", "attack_tag")


def asvspoof5(root: Path, partition: str | None = None) -> pd.DataFrame:
    """ASVspoof 5 (track 1 protocols).

    Layout (protocols in ROOT or in ``ROOT/{ASVspoof5_protocols,protocols,cm_protocols}/``; each audio
    folder may also be nested in itself, as ``flac_T/flac_T/``)::

        ASVspoof5.train.tsv        flac_T/<FLAC_NAME>.flac       (older: ASVspoof5.train.metadata.txt)
        ASVspoof5.dev.track_1.tsv  flac_D/<FLAC_NAME>.flac       (older: ASVspoof5.dev.metadata.txt)
        ASVspoof5.eval.track_1.tsv flac_E_eval/<FLAC_NAME>.flac

    The ``.tsv`` files are whitespace-separated with 10 columns
    ``SPEAKER FLAC_NAME GENDER CODEC CODEC_Q CODEC_SEED ATTACK_TAG ATTACK_LABEL KEY TMP``
    (e.g. ``T_4850 T_0000000000 F - - - AC3 A05 spoof -``) or, in the older release, 6 columns
    ``SPEAKER FLAC_NAME GENDER ATTACK_TAG ATTACK_LABEL KEY``; the first line fixes the width for the file.
    Partition ``train`` (default), ``dev`` or ``eval``. attack = ATTACK_LABEL (A01-A32, ``-`` for
    bonafide); extra columns ``gender, codec, codec_q, codec_seed, attack_tag`` (``-`` where the 6-column
    form lacks them). dataset = ``asvspoof5_<partition>``.
    """
    part = _choose(partition, tuple(_ASV5_FILES), "train", "asvspoof5")
    names, audio = _ASV5_FILES[part]
    places = (root, root / "ASVspoof5_protocols", root / "protocols", root / "cm_protocols")
    protocol = _first_file((d / n for n in names for d in places), f"ASVspoof 5 {part} protocol")
    lines, rows = _table(protocol, (10, 6), f"{_ASV5_LAYOUT_10}, or {_ASV5_LAYOUT_6}")
    width = len(rows[0])
    for n, r in zip(lines, rows, strict=True):
        if len(r) != width:
            raise ProtocolError(protocol, n, f"found {len(r)} columns where earlier lines have {width}")
    # Column positions of GENDER CODEC CODEC_Q CODEC_SEED ATTACK_TAG, then ATTACK_LABEL and KEY.
    if width == 10:
        extra = {name: _column(rows, i) for name, i in zip(_ASV5_EXTRA, (2, 3, 4, 5, 6), strict=True)}
        attack, key = _column(rows, 7), _column(rows, 8)
    else:
        dash = ["-"] * len(rows)
        extra = dict(zip(_ASV5_EXTRA, (_column(rows, 2), dash, dash, dash, _column(rows, 3)), strict=True))
        attack, key = _column(rows, 4), _column(rows, 5)
    name = _column(rows, 1)
    entries = _Entries(
        protocol,
        lines,
        name,
        [f"{n}.flac" for n in name],
        key,
        attack,
        _column(rows, 0),
        _ASVSPOOF_LABELS,
        extra,
    )
    folders = [p for a in audio for p in (root / a, root / a / a)]
    return entries.frame(f"asvspoof5_{part}", folders)


# --- In-the-Wild ----------------------------------------------------------------------------------

_ITW_LABELS = {"bona-fide": "bonafide", "bonafide": "bonafide", "spoof": "spoof"}
ITW_ATTACK = "itw"


def in_the_wild(root: Path, partition: str | None = None) -> pd.DataFrame:
    """In-the-Wild (Müller et al. 2022): celebrity and politician clips, real and deepfaked.

    Layout (``root`` holds ``release_in_the_wild/`` or is that folder)::

        release_in_the_wild/meta.csv       header ``file,speaker,label``, e.g. ``0.wav,Alec Guinness,spoof``
        release_in_the_wild/<n>.wav

    Labels ``bona-fide`` / ``spoof`` become ``bonafide`` / ``spoof``. utt_id = the file name without
    ``.wav``; speaker = the ``speaker`` column; attack = ``itw`` for spoof (the generators are not
    documented), ``-`` for bonafide. dataset = ``in_the_wild``. No partitions, no extra columns.
    """
    _no_partition(partition, "in-the-wild")
    folder = root / "release_in_the_wild" if (root / "release_in_the_wild").is_dir() else root
    meta = folder / "meta.csv"
    if not meta.is_file():
        raise NcdetectError(
            f"{meta}: In-the-Wild meta.csv not found (ROOT must hold release_in_the_wild/ or be that folder)"
        )
    _, rows = _csv_rows(meta, ("file", "speaker", "label"))
    lines = [n for n, _ in rows]
    files = [row["file"].strip() for _, row in rows]
    labels = [row["label"].strip() for _, row in rows]
    utt = [f[:-4] if f.lower().endswith(".wav") else f for f in files]
    attack = [ITW_ATTACK] * len(rows)  # becomes "-" on bonafide rows
    speaker = [row["speaker"].strip() for _, row in rows]
    return _Entries(meta, lines, utt, files, labels, attack, speaker, _ITW_LABELS).frame(
        "in_the_wild", [folder]
    )


# --- WaveFake -------------------------------------------------------------------------------------

# Real audio is not part of the WaveFake release; these are where it is unpacked beside generated_audio/.
_WAVEFAKE_REAL = {
    "ljspeech": (("real_audio/LJSpeech-1.1/wavs", "LJSpeech-1.1/wavs"), "LJ", "LJSpeech 1.1"),
    "jsut": (
        ("real_audio/jsut_ver1.1/basic5000/wav", "jsut_ver1.1/basic5000/wav"),
        "jsut",
        "JSUT 1.1 (basic5000)",
    ),
}


def _wavefake_subset(generator: str) -> str:
    return "jsut" if generator.startswith("jsut_") else "ljspeech"


def wavefake(root: Path, partition: str | None = None) -> pd.DataFrame:
    """WaveFake (Frank & Schönherr 2021): vocoder re-syntheses of LJSpeech and JSUT.

    Layout (``root`` holds ``generated_audio/``)::

        generated_audio/<corpus>_<vocoder>/*.wav     e.g. ljspeech_melgan/LJ001-0001_gen.wav,
                                                     ljspeech_hifiGAN/..., jsut_multi_band_melgan/...,
                                                     common_voices_prompts_from_conformer_fastspeech2_pwg_ljspeech/
        real_audio/LJSpeech-1.1/wavs/*.wav           (or ROOT/LJSpeech-1.1/wavs)
        real_audio/jsut_ver1.1/basic5000/wav/*.wav   (or ROOT/jsut_ver1.1/basic5000/wav)

    Every generator folder is a spoof attack: attack = the folder name, utt_id = ``<folder>/<file stem>``
    (stems repeat across folders). Real clips are bonafide with utt_id = the file stem. Generators whose
    folder starts with ``jsut_`` belong to the ``jsut`` subset, all others to ``ljspeech``; the real audio
    of every included subset must be present (WaveFake ships only generated audio). Partition ``ljspeech``
    or ``jsut`` keeps one subset; default both. speaker = ``LJ`` or ``jsut``; extra column ``subset``.
    dataset = ``wavefake[_<partition>]``.
    """
    part = _choose(partition, tuple(_WAVEFAKE_REAL), None, "wavefake")
    base = root.parent if root.name == "generated_audio" and not (root / "generated_audio").is_dir() else root
    generated = base / "generated_audio"
    if not generated.is_dir():
        raise NcdetectError(f"{generated}: WaveFake generated_audio folder not found")
    generators = sorted(
        d for d in generated.iterdir() if d.is_dir() and part in (None, _wavefake_subset(d.name))
    )
    if not generators:
        raise NcdetectError(f"{generated}: no generator folders" + (f" for {part}" if part else ""))
    files: list[Path] = []
    ids, attacks, subsets = [], [], []
    for gen in generators:
        clips = _walk_audio(gen)
        if not clips:
            raise NcdetectError(f"{gen}: generator folder holds no audio files")
        files += clips
        ids += [f"{gen.name}/{_rel_id(c, gen)}" for c in clips]
        attacks += [gen.name] * len(clips)
        subsets += [_wavefake_subset(gen.name)] * len(clips)
    labels = ["spoof"] * len(files)
    for subset in sorted(set(subsets)):
        places, _, corpus = _WAVEFAKE_REAL[subset]
        candidates = [base / p for p in places]
        real = next((c for c in candidates if c.is_dir()), None)
        clips = _walk_audio(real) if real else []
        if not clips:
            raise NcdetectError(
                f"{candidates[0]}: real {corpus} audio not found or empty; WaveFake ships only generated "
                f"audio, so unpack {corpus} there (or use --partition to pick the other subset)"
            )
        files += clips
        ids += [_rel_id(c, real) for c in clips]
        attacks += [BONAFIDE_ATTACK] * len(clips)
        subsets += [subset] * len(clips)
        labels += ["bonafide"] * len(clips)
    _unique_ids(ids, files)
    speakers = [_WAVEFAKE_REAL[s][1] for s in subsets]
    dataset = "wavefake" + (f"_{part}" if part else "")
    return _frame(ids, [str(f) for f in files], labels, dataset, attacks, speakers, {"subset": subsets})


# --- plain folder ---------------------------------------------------------------------------------


def folder(root: Path, partition: str | None = None) -> pd.DataFrame:
    """Any corpus sorted into folders by class.

    Layout (``root`` itself, or ``root/<partition>`` when ``--partition`` is given)::

        bonafide/**/<clip>.<ext>
        spoof/<attack>/**/<clip>.<ext>      (clips directly in spoof/ get attack ``unknown``)

    Audio is recognised by extension (wav, flac, ogg, oga, mp3, opus, aif, aiff, au); other files, such
    as READMEs, are not audio and are skipped. An audio file beside ``bonafide/`` and ``spoof/`` is an error.
    utt_id = the path below the corpus folder without extension, with ``/`` separators, e.g.
    ``bonafide/spk1/a`` or ``spoof/tts1/b``, which is unique by construction. speaker = ``-``.
    dataset = the folder name (``<root name>_<partition>`` with a partition). No extra columns.
    """
    base = root
    if partition is not None:
        if partition in ("", ".", "..") or "/" in partition or "\\" in partition:
            raise ConfigError(f"folder: --partition must name a sub-folder of {root}, not {partition!r}")
        base = root / partition
    if not base.is_dir():
        raise NcdetectError(f"{base}: folder not found")
    bona, spoof = base / "bonafide", base / "spoof"
    if not bona.is_dir() and not spoof.is_dir():
        raise NcdetectError(f"{base}: expected bonafide/ and spoof/ folders inside")
    stray = sorted(p for p in base.iterdir() if p.is_file() and p.suffix.lower() in AUDIO_EXTENSIONS)
    if stray:
        raise ProtocolError(stray[0], None, "audio file outside bonafide/ and spoof/: its class is unknown")
    bona_files = _walk_audio(bona) if bona.is_dir() else []
    spoof_files = _walk_audio(spoof) if spoof.is_dir() else []
    files = bona_files + spoof_files
    if not files:
        raise NcdetectError(f"{base}: no audio files in bonafide/ or spoof/")
    ids = [_rel_id(f, base) for f in files]
    _unique_ids(ids, files)
    attacks = [BONAFIDE_ATTACK] * len(bona_files) + [
        f.relative_to(spoof).parts[0] if len(f.relative_to(spoof).parts) > 1 else UNKNOWN_ATTACK
        for f in spoof_files
    ]
    labels = ["bonafide"] * len(bona_files) + ["spoof"] * len(spoof_files)
    dataset = root.name + (f"_{partition}" if partition else "")
    return _frame(ids, [str(f) for f in files], labels, dataset, attacks, ["-"] * len(files))


# --- any CSV --------------------------------------------------------------------------------------

_CSV_LABELS = {"bonafide": "bonafide", "bona-fide": "bonafide", "spoof": "spoof"}


def csv_table(root: Path, partition: str | None = None) -> pd.DataFrame:
    """Any CSV file (``root`` is the file) with at least the columns ``path`` and ``label``.

    ``label`` is ``bonafide``, ``bona-fide`` or ``spoof`` (any case). Relative paths resolve against the
    CSV's folder; absolute paths are taken as they are (the CSV names its files explicitly). Missing
    columns are filled: utt_id = the file stem, dataset = the CSV's stem, attack = ``-`` for bonafide
    and ``unknown`` for spoof, speaker = ``-``; empty cells in present columns are filled the same way.
    A utt_id that repeats (given, or derived from equal stems) is an error naming the line: add a
    ``utt_id`` column to tell such files apart. A bonafide row whose attack is neither empty nor ``-`` is an
    error. Every other column is kept. No partitions.
    """
    _no_partition(partition, "csv")
    if root.is_dir():
        raise NcdetectError(f"{root}: csv takes a CSV file, not a folder")
    header, entries = _csv_rows(root, ("path", "label"))
    base = root.parent
    extra = [h for h in header if h not in COLUMNS]
    out: dict[str, list[str]] = {c: [] for c in COLUMNS + extra}
    seen: dict[str, int] = {}
    for line, row in entries:
        label = _CSV_LABELS.get(row["label"].strip().lower())
        if label is None:
            raise _label_error(root, line, row["label"], _CSV_LABELS)
        given = row["path"].strip()
        if not given:
            raise ProtocolError(root, line, "empty path")
        audio = Path(given) if Path(given).is_absolute() else base / given
        try:
            found = audio.is_file()
        except OSError as err:  # e.g. a name too long for the file system
            raise ProtocolError(root, line, f"unusable path {given!r} ({err.strerror or err})") from None
        if not found:
            raise ProtocolError(root, line, f"audio file {audio} not found")
        utt = row.get("utt_id", "").strip() or audio.stem
        first = seen.setdefault(utt, line)
        if first != line:
            raise ProtocolError(
                root,
                line,
                f"utt_id {utt!r} repeats line {first} (add a utt_id column to tell the files apart)",
            )
        attack = row.get("attack", "").strip()
        if label == "bonafide" and attack not in ("", BONAFIDE_ATTACK):
            raise ProtocolError(root, line, f"bonafide row has attack {attack!r} (bonafide rows take '-')")
        out["utt_id"].append(utt)
        out["path"].append(str(audio))
        out["label"].append(label)
        out["dataset"].append(row.get("dataset", "").strip() or root.stem)
        out["attack"].append(_attack(label, attack))
        out["speaker"].append(row.get("speaker", "").strip() or "-")
        for name in extra:
            out[name].append(row[name])
    return pd.DataFrame(out, columns=list(out))


# --- registry and entry point ---------------------------------------------------------------------

Adapter = Callable[[Path, str | None], pd.DataFrame]

ADAPTERS: Registry[Adapter] = Registry("corpus")
ADAPTERS.add("asvspoof2019", asvspoof2019)
ADAPTERS.add("asvspoof2021", asvspoof2021)
ADAPTERS.add("asvspoof5", asvspoof5)
ADAPTERS.add("in-the-wild", in_the_wild)
ADAPTERS.add("wavefake", wavefake)
ADAPTERS.add("folder", folder)
ADAPTERS.add("csv", csv_table)


def prepare(
    corpus: str, root: str | Path, partition: str | None = None, out: str | Path | None = None
) -> pd.DataFrame:
    """Build the manifest of ``corpus`` found at ``root`` and, when ``out`` is given, write it there
    (``.csv`` or ``.parquet`` by extension)."""
    adapter = ADAPTERS.get(corpus)
    root = Path(root)
    if not root.exists():
        raise NcdetectError(f"{root}: not found")
    if out is not None:
        out = Path(out)
        if out.suffix not in (".csv", ".parquet"):
            raise ConfigError(f"{out}: the manifest must end in .csv or .parquet")
        ensure_writable_dir(out.absolute().parent)
    df = adapter(root.resolve(), partition)
    if out is not None:
        write_manifest(df, out)
    return df


def summarize(df: pd.DataFrame) -> str:
    """One line: row count, class counts and the attacks with their counts."""
    labels = Counter(df["label"])
    attacks = Counter(a for a, lab in zip(df["attack"], df["label"], strict=True) if lab == "spoof")
    listed = ", ".join(f"{a} {n}" for a, n in sorted(attacks.items())) or "none"
    return (
        f"{len(df)} rows: {labels.get('bonafide', 0)} bonafide, {labels.get('spoof', 0)} spoof; "
        f"attacks: {listed}"
    )
