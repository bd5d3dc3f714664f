"""Property tests of every protocol parser: whatever text or bytes a protocol holds, the adapter returns
a valid manifest or raises ProtocolError, never another exception and never hangs.

Lines are drawn from a mix of well-formed entries (some naming audio that exists), soups of protocol
tokens (labels, attack ids, traversal attempts) and arbitrary text, so both outcomes are exercised.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
from hypothesis import event, given
from hypothesis import strategies as st

from conftest import property_settings
from ncdetect.data import corpora
from ncdetect.data.manifest import COLUMNS
from ncdetect.errors import ProtocolError

pytestmark = pytest.mark.timeout(120)

SETTINGS = property_settings(60)

NASTY = [
    "-",
    "",
    "..",
    ".",
    "../../etc/passwd",
    "/etc/passwd",
    "a/b",
    "a\\b",
    "nul\x00",
    "é",
    "#",
    "\t",
    "\r",
    '"',
    ",",
]
LABELS = ["bonafide", "spoof", "bona-fide", "Bonafide", "genuine"]


def _tone(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), (0.1 * np.sin(np.arange(400) / 5)).astype(np.float32), 16_000)


def _assert_valid(df: pd.DataFrame, root: Path | None) -> None:
    assert list(df.columns[: len(COLUMNS)]) == COLUMNS
    assert len(df) > 0
    assert df["utt_id"].is_unique
    assert set(df["label"]) <= {"bonafide", "spoof"}
    assert ((df["attack"] == "-") == (df["label"] == "bonafide")).all()
    for p in df["path"]:
        assert Path(p).is_file()
        if root is not None:  # protocol entries never reach outside the corpus folder
            assert Path(p).resolve().is_relative_to(root.resolve())


def _outcome(adapter: Callable[[], pd.DataFrame], root: Path | None) -> None:
    try:
        df = adapter()
    except ProtocolError as err:
        assert err.path and str(err)
        event("ProtocolError")
        return
    _assert_valid(df, root)
    event("valid manifest")


def _joined(lines: st.SearchStrategy[list[str]]) -> st.SearchStrategy[bytes]:
    return st.tuples(lines, st.sampled_from(["\n", "\r\n", "\n\n"])).map(
        lambda parts: parts[1].join(parts[0]).encode("utf-8")
    )


def _document(
    line: st.SearchStrategy[str], clean: st.SearchStrategy[str], key: Callable[[str], str]
) -> st.SearchStrategy[bytes]:
    """Protocol files: a mix of any lines, well-formed lines with distinct ids, or raw bytes."""
    mixed = _joined(st.lists(line, max_size=8))
    tidy = _joined(st.lists(clean, min_size=1, max_size=4, unique_by=key))
    return st.one_of(mixed, tidy, st.binary(max_size=200))


def _second(line: str) -> str:
    return line.split()[1]


def _first_field(line: str) -> str:
    return line.split(",")[0]


def _soup(tokens: list[str], sep: str = " ") -> st.SearchStrategy[str]:
    return st.lists(st.sampled_from(tokens + NASTY + LABELS), max_size=14).map(sep.join)


def _lines(structured: st.SearchStrategy[str], tokens: list[str], sep: str = " ") -> st.SearchStrategy[str]:
    return st.one_of(structured, structured, _soup(tokens, sep), st.text(max_size=40))


# --- ASVspoof 2019 --------------------------------------------------------------------------------

IDS19 = ["LA_T_1138215", "LA_T_1271820", "LA_T_1485512"]


@pytest.fixture(scope="module")
def root19(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("asv19")
    for utt in IDS19:
        _tone(root / "LA" / "ASVspoof2019_LA_train" / "flac" / f"{utt}.flac")
    (root / "LA" / "ASVspoof2019_LA_cm_protocols").mkdir(parents=True)
    return root


def _line19(ids: list[str], labels: list[str]) -> st.SearchStrategy[str]:
    return st.builds(
        lambda spk, utt, sys_, key: f"{spk} {utt} - {sys_} {key}",
        st.sampled_from(["LA_0079", "LA_0080"]),
        st.sampled_from(ids),
        st.sampled_from(["-", "A01", "A06"]),
        st.sampled_from(labels),
    )


LINE19 = _line19([*IDS19, "LA_T_0000000", *NASTY[2:6]], LABELS)
GOOD19 = _line19(IDS19, ["bonafide", "spoof"])


@SETTINGS
@given(data=_document(_lines(LINE19, ["LA_0079", *IDS19, "A01"]), GOOD19, _second))
def test_asvspoof2019_protocol_fuzz(root19: Path, data: bytes):
    (root19 / "LA" / "ASVspoof2019_LA_cm_protocols" / "ASVspoof2019.LA.cm.train.trn.txt").write_bytes(data)
    _outcome(lambda: corpora.asvspoof2019(root19, "train"), root19)


# --- ASVspoof 2021 LA and DF ----------------------------------------------------------------------

IDS21 = {"LA": ["LA_E_9332881", "LA_E_7294490"], "DF": ["DF_E_2000011", "DF_E_2000013"]}


@pytest.fixture(scope="module")
def root21(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("asv21")
    for track, ids in IDS21.items():
        (root / "keys" / track / "CM").mkdir(parents=True)
        for utt in ids:
            _tone(root / f"ASVspoof2021_{track}_eval" / "flac" / f"{utt}.flac")
    return root


def _line21(track: str, good: bool = False) -> st.SearchStrategy[str]:
    tail = (
        [] if track == "LA" else [st.sampled_from(["traditional_vocoder", "bonafide"]), *[st.just("-")] * 4]
    )
    ids = IDS21[track] if good else [*IDS21[track], "LA_E_0000000", "../x", "/abs"]
    return st.tuples(
        st.sampled_from(["LA_0009", "TEF2"]),
        st.sampled_from(ids),
        st.sampled_from(["alaw", "nocodec", "low_m4a"]),
        st.sampled_from(["ita_tx", "asvspoof", "vcc2020"]),
        st.sampled_from(["A07", "bonafide", "-", "Task1-team20"]),
        st.sampled_from(["bonafide", "spoof"] if good else LABELS),
        st.sampled_from(["notrim", "trim"]),
        st.sampled_from(["eval", "progress", "hidden"]),
        *tail,
    ).map(" ".join)


@pytest.mark.parametrize("track", ["LA", "DF"])
@SETTINGS
@given(data=st.data())
def test_asvspoof2021_keys_fuzz(root21: Path, track: str, data):
    tokens = [*IDS21[track], "alaw", "notrim", "eval"]
    doc = data.draw(_document(_lines(_line21(track), tokens), _line21(track, good=True), _second))
    partition = data.draw(st.sampled_from([track, f"{track}-eval", f"{track}-progress"]))
    (root21 / "keys" / track / "CM" / "trial_metadata.txt").write_bytes(doc)
    _outcome(lambda: corpora.asvspoof2021(root21, partition), root21)


# --- ASVspoof 5 -----------------------------------------------------------------------------------

IDS5 = ["T_0000000000", "T_0000000011"]


@pytest.fixture(scope="module")
def root5(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("asv5")
    for utt in IDS5:
        _tone(root / "flac_T" / f"{utt}.flac")
    return root


def _line5(ids: list[str], labels: list[str]) -> st.SearchStrategy[str]:
    ten = st.tuples(
        st.sampled_from(["T_4850", "T_3734"]),
        st.sampled_from(ids),
        st.sampled_from(["F", "M"]),
        st.just("-"),
        st.just("-"),
        st.just("-"),
        st.sampled_from(["AC3", "-"]),
        st.sampled_from(["A05", "bonafide", "-"]),
        st.sampled_from(labels),
        st.just("-"),
    ).map(" ".join)
    six = st.tuples(
        st.just("T_4850"),
        st.sampled_from(ids),
        st.just("F"),
        st.just("-"),
        st.sampled_from(["A05", "bonafide"]),
        st.sampled_from(labels),
    ).map(" ".join)
    return st.one_of(ten, six)


LINE5 = _line5([*IDS5, "T_9", "../T_0000000000", "/etc/passwd"], LABELS)
GOOD5 = _line5(IDS5, ["bonafide", "spoof"])


@SETTINGS
@given(data=_document(_lines(LINE5, [*IDS5, "AC1", "A05", "F"]), GOOD5, _second))
def test_asvspoof5_protocol_fuzz(root5: Path, data: bytes):
    (root5 / "ASVspoof5.train.tsv").write_bytes(data)
    _outcome(lambda: corpora.asvspoof5(root5, "train"), root5)


# --- In-the-Wild meta.csv and generic CSV ---------------------------------------------------------


@pytest.fixture(scope="module")
def root_itw(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("itw")
    for n in range(3):
        _tone(root / "release_in_the_wild" / f"{n}.wav")
    return root


def _row_itw(files: list[str], labels: list[str]) -> st.SearchStrategy[str]:
    return st.tuples(
        st.sampled_from(files),
        st.sampled_from(["Alec Guinness", '"Ali, Muhammad"', ""]),
        st.sampled_from(labels),
    ).map(",".join)


ROW_ITW = _row_itw(["0.wav", "1.wav", "9.wav", "../0.wav", "/etc/passwd", '"0.wav"'], LABELS)
GOOD_ITW = _row_itw(["0.wav", "1.wav", "2.wav"], ["bona-fide", "spoof"])
HEADERS = st.sampled_from(["file,label", "path,label", "utt_id,path,label,attack", ""])


@SETTINGS
@given(
    header=st.one_of(st.just("file,speaker,label"), HEADERS),
    data=_document(_lines(ROW_ITW, ["0.wav", "spoof"], sep=","), GOOD_ITW, _first_field),
)
def test_in_the_wild_meta_fuzz(root_itw: Path, header: str, data: bytes):
    (root_itw / "release_in_the_wild" / "meta.csv").write_bytes(header.encode() + b"\n" + data)
    _outcome(lambda: corpora.in_the_wild(root_itw), root_itw)


def _row_csv(paths: list[str], labels: list[str]) -> st.SearchStrategy[str]:
    return st.tuples(
        st.sampled_from(["x", "y", "z", ""]),
        st.sampled_from(paths),
        st.sampled_from(labels),
        st.sampled_from(["", "-", "A01"]),
    ).map(",".join)


ROW_CSV = _row_csv(["a.wav", "sub/a.wav", "missing.wav", "", "../a.wav", "/etc/passwd"], LABELS)
GOOD_CSV = _row_csv(["a.wav", "sub/a.wav", "b.flac"], ["bonafide", "spoof", "SPOOF"])


@pytest.fixture(scope="module")
def root_csv(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("csv")
    for rel in ["a.wav", "sub/a.wav", "b.flac"]:
        _tone(root / rel)
    return root


@SETTINGS
@given(
    header=st.one_of(st.just("utt_id,path,label,attack"), HEADERS),
    data=_document(_lines(ROW_CSV, ["a.wav", "spoof"], sep=","), GOOD_CSV, _first_field),
)
def test_csv_adapter_fuzz(root_csv: Path, header: str, data: bytes):
    table = root_csv / "list.csv"
    table.write_bytes(header.encode() + b"\n" + data)
    # The generic CSV names its files explicitly (absolute paths allowed), so no inside-root check.
    _outcome(lambda: corpora.csv_table(table), None)
