"""Corpus adapters and `ncdetect prepare`, on tiny copies of the real layouts built in tmp_path.

Folder names, file names, header lines, label spellings and attack ids follow the distributed corpora
(ASVspoof 2019 LA, ASVspoof 2021 LA/DF keys, ASVspoof 5 track-1 protocols, In-the-Wild, WaveFake).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
from typer.testing import CliRunner

from ncdetect.cli import Corpus, app
from ncdetect.data import corpora
from ncdetect.data.manifest import COLUMNS, read_manifest
from ncdetect.errors import ConfigError, NcdetectError, ProtocolError


def audio(path: Path, seconds: float = 0.05, sr: int = 16_000) -> Path:
    """A short tone; the format follows the extension (FLAC or WAV)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * sr)) / sr
    sf.write(str(path), (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), sr)
    return path


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def check_manifest(df: pd.DataFrame, n: int) -> None:
    """What every adapter's frame must satisfy."""
    assert list(df.columns[: len(COLUMNS)]) == COLUMNS
    assert len(df) == n
    assert df["utt_id"].is_unique
    assert set(df["label"]) <= {"bonafide", "spoof"}
    assert ((df["attack"] == "-") == (df["label"] == "bonafide")).all()
    for p in df["path"]:
        assert Path(p).is_absolute() and Path(p).is_file(), p


# --- ASVspoof 2019 LA -----------------------------------------------------------------------------

ASV19 = {
    "train": (
        "train.trn",
        [
            "LA_0079 LA_T_1138215 - - bonafide",
            "LA_0079 LA_T_1271820 - A01 spoof",
            "LA_0080 LA_T_1485512 - A06 spoof",
            "LA_0080 LA_T_1552200 - - bonafide",
        ],
    ),
    "dev": ("dev.trl", ["LA_0069 LA_D_1047731 - - bonafide", "LA_0070 LA_D_1105538 - A04 spoof"]),
    "eval": (
        "eval.trl",
        [
            "LA_0039 LA_E_2834763 - A11 spoof",
            "LA_0018 LA_E_1000147 - - bonafide",
            "LA_0040 LA_E_5849185 - A19 spoof",
        ],
    ),
}


@pytest.fixture
def asv19(tmp_path: Path) -> Path:
    la = tmp_path / "LA"
    for part, (suffix, lines) in ASV19.items():
        write(
            la / "ASVspoof2019_LA_cm_protocols" / f"ASVspoof2019.LA.cm.{suffix}.txt", "\n".join(lines) + "\n"
        )
        for line in lines:
            audio(la / f"ASVspoof2019_LA_{part}" / "flac" / f"{line.split()[1]}.flac")
    return tmp_path


def protocol19(root: Path, part: str = "train") -> Path:
    return root / "LA" / "ASVspoof2019_LA_cm_protocols" / f"ASVspoof2019.LA.cm.{ASV19[part][0]}.txt"


def test_asvspoof2019_train(asv19: Path):
    df = corpora.asvspoof2019(asv19)
    check_manifest(df, 4)
    assert list(df["utt_id"]) == ["LA_T_1138215", "LA_T_1271820", "LA_T_1485512", "LA_T_1552200"]
    assert list(df["label"]) == ["bonafide", "spoof", "spoof", "bonafide"]
    assert list(df["attack"]) == ["-", "A01", "A06", "-"]
    assert list(df["speaker"]) == ["LA_0079", "LA_0079", "LA_0080", "LA_0080"]
    assert set(df["dataset"]) == {"asvspoof2019_la_train"}
    assert df["path"][1].endswith("LA/ASVspoof2019_LA_train/flac/LA_T_1271820.flac")


def test_asvspoof2019_partitions_and_la_root(asv19: Path):
    dev = corpora.asvspoof2019(asv19, "dev")
    check_manifest(dev, 2)
    assert set(dev["dataset"]) == {"asvspoof2019_la_dev"}
    ev = corpora.asvspoof2019(asv19 / "LA", "eval")  # ROOT may be the LA folder itself
    check_manifest(ev, 3)
    assert sorted(ev.loc[ev.label == "spoof", "attack"]) == ["A11", "A19"]
    with pytest.raises(ConfigError, match="train, dev, eval"):
        corpora.asvspoof2019(asv19, "test")


def test_asvspoof2019_missing_protocol(tmp_path: Path):
    with pytest.raises(NcdetectError, match=r"ASVspoof2019\.LA\.cm\.train\.trn\.txt"):
        corpora.asvspoof2019(tmp_path)


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("LA_0079 LA_T_9999999 - bonafide", "expected 5 columns"),
        ("LA_0079 LA_T_9999999 - - - bonafide", "expected 5 columns"),
        ("LA_0079 LA_T_9999999 - - bona-fide", "unknown label 'bona-fide'"),
        ("LA_0079 LA_T_9999999 - A01 SPOOF", "unknown label 'SPOOF'"),
        ("LA_0079 ../../etc/passwd - - bonafide", "unsafe file name"),
        ("LA_0079 /etc/passwd - - bonafide", "unsafe file name"),
        ("LA_0079 LA_T_1138215 - - bonafide", "'LA_T_1138215' repeats line 1"),
        ("LA_0079 LA_T_0000001 - A01 spoof", "LA_T_0000001.flac not found (1 of 5 entries lack audio)"),
    ],
)
def test_asvspoof2019_bad_line_names_file_and_line(asv19: Path, line: str, reason: str):
    protocol = protocol19(asv19)
    lines = ASV19["train"][1]
    # A blank line before the bad one: line numbers count every line, blank or not.
    write(protocol, "\n".join([*lines[:2], "", *lines[2:], line]) + "\n")
    with pytest.raises(ProtocolError) as err:
        corpora.asvspoof2019(asv19)
    assert err.value.path == str(protocol) and err.value.line == 6
    assert str(err.value).startswith(f"{protocol}:6: ")
    assert reason in str(err.value)


def test_protocol_ids_cannot_reach_outside_root(tmp_path: Path):
    """An id that would resolve to a real file outside the corpus is refused, not read."""
    root = tmp_path / "corpus"
    outside = audio(tmp_path / "secret.flac")
    flac = root / "LA" / "ASVspoof2019_LA_train" / "flac"
    audio(flac / "LA_T_1138215.flac")
    escape = "../../../../secret"
    assert (flac / f"{escape}.flac").resolve() == outside.resolve()
    write(protocol19(root), f"LA_0079 LA_T_1138215 - - bonafide\nLA_0079 {escape} - A01 spoof\n")
    with pytest.raises(ProtocolError, match="unsafe file name") as err:
        corpora.asvspoof2019(root)
    assert err.value.line == 2


@pytest.mark.parametrize("text", ["", "\n\n   \n", "\r\n"])
def test_empty_protocol_is_an_error(asv19: Path, text: str):
    write(protocol19(asv19), text)
    with pytest.raises(ProtocolError, match="protocol is empty"):
        corpora.asvspoof2019(asv19)


def test_crlf_bom_and_blank_lines_are_fine(asv19: Path):
    lines = ASV19["train"][1]
    protocol19(asv19).write_bytes(b"\xef\xbb\xbf" + "\r\n".join(["", *lines, "", ""]).encode())
    df = corpora.asvspoof2019(asv19)
    check_manifest(df, 4)
    assert df["label"].tolist() == ["bonafide", "spoof", "spoof", "bonafide"]


def test_undecodable_bytes_name_the_line(asv19: Path):
    lines = ASV19["train"][1]
    protocol19(asv19).write_bytes(
        ("\n".join(lines[:3]) + "\n").encode() + b"LA_0080 LA_T_\xff\xfe - - bonafide\n"
    )
    with pytest.raises(ProtocolError, match="not UTF-8") as err:
        corpora.asvspoof2019(asv19)
    assert err.value.line == 4


# --- ASVspoof 2021 LA / DF ------------------------------------------------------------------------

LA21 = [
    "LA_0009 LA_E_9332881 alaw ita_tx A07 spoof notrim eval",
    "LA_0020 LA_E_7294490 g722 loc_tx bonafide bonafide notrim eval",
    "LA_0012 LA_E_5013670 none loc_tx A19 spoof notrim progress",
    "LA_0031 LA_E_1000003 opus sin_tx bonafide bonafide trim hidden",
]
DF21 = [
    "LA_0023 DF_E_2000011 nocodec asvspoof A14 spoof notrim progress traditional_vocoder - - - -",
    "TEF2 DF_E_2000013 low_m4a vcc2020 Task1-team20 spoof notrim eval neural_vocoder_nonautoregressive "
    "Task1 team20 FF E",
    "LA_0054 DF_E_2088017 high_m4a asvspoof - bonafide notrim progress bonafide - - - -",
    "VCC2TM2 DF_E_2000024 mp3m4a vcc2018 - bonafide notrim eval bonafide - - - -",
]


def make_la21(root: Path) -> Path:
    write(root / "keys" / "LA" / "CM" / "trial_metadata.txt", "\n".join(LA21) + "\n")
    for line in LA21:
        audio(root / "ASVspoof2021_LA_eval" / "flac" / f"{line.split()[1]}.flac")
    return root


def make_df21(root: Path) -> Path:
    write(root / "keys" / "DF" / "CM" / "trial_metadata.txt", "\n".join(DF21) + "\n")
    for i, line in enumerate(DF21):  # the DF audio ships in parts
        audio(
            root
            / f"ASVspoof2021_DF_eval_part0{i % 2}"
            / "ASVspoof2021_DF_eval"
            / "flac"
            / f"{line.split()[1]}.flac"
        )
    return root


def test_asvspoof2021_la(tmp_path: Path):
    df = corpora.asvspoof2021(make_la21(tmp_path))  # the track is inferred from the keys present
    check_manifest(df, 4)
    assert list(df["attack"]) == ["A07", "-", "A19", "-"]  # the keys write "bonafide" as the attack
    assert list(df["label"]) == ["spoof", "bonafide", "spoof", "bonafide"]
    assert list(df["codec"]) == ["alaw", "g722", "none", "opus"]
    assert list(df["transmission"]) == ["ita_tx", "loc_tx", "loc_tx", "sin_tx"]
    assert list(df["phase"]) == ["eval", "eval", "progress", "hidden"]
    assert list(df["trim"]) == ["notrim", "notrim", "notrim", "trim"]
    assert set(df["dataset"]) == {"asvspoof2021_la"}
    ev = corpora.asvspoof2021(tmp_path, "LA-eval")
    check_manifest(ev, 2)
    assert list(ev["utt_id"]) == ["LA_E_9332881", "LA_E_7294490"]
    assert set(ev["dataset"]) == {"asvspoof2021_la_eval"}


def test_asvspoof2021_df_in_parts(tmp_path: Path):
    df = corpora.asvspoof2021(make_df21(tmp_path), "DF")
    check_manifest(df, 4)
    assert list(df["attack"]) == ["A14", "Task1-team20", "-", "-"]
    assert list(df["source"]) == ["asvspoof", "vcc2020", "asvspoof", "vcc2018"]
    assert list(df["vocoder"])[:2] == ["traditional_vocoder", "neural_vocoder_nonautoregressive"]
    assert list(df["codec"]) == ["nocodec", "low_m4a", "high_m4a", "mp3m4a"]
    assert "_part01" in df["path"][1] and "_part00" in df["path"][0]
    progress = corpora.asvspoof2021(tmp_path, "DF-progress")
    assert list(progress["utt_id"]) == ["DF_E_2000011", "DF_E_2088017"]


def test_asvspoof2021_partition_errors(tmp_path: Path):
    make_df21(make_la21(tmp_path))
    with pytest.raises(ConfigError, match="both LA and DF"):
        corpora.asvspoof2021(tmp_path)
    with pytest.raises(ConfigError, match="unknown --partition 'PA'"):
        corpora.asvspoof2021(tmp_path, "PA")
    with pytest.raises(ConfigError, match="unknown --partition 'LA-dev'"):
        corpora.asvspoof2021(tmp_path, "LA-dev")
    assert len(corpora.asvspoof2021(tmp_path, "LA")) == 4
    assert len(corpora.asvspoof2021(tmp_path, "DF")) == 4


def test_asvspoof2021_column_count_per_track(tmp_path: Path):
    make_df21(tmp_path)
    keys = tmp_path / "keys" / "DF" / "CM" / "trial_metadata.txt"
    write(keys, DF21[0] + "\n" + LA21[0] + "\n")  # an 8-column LA line in the DF keys
    with pytest.raises(ProtocolError, match=r"expected 13 columns .*found 8") as err:
        corpora.asvspoof2021(tmp_path, "DF")
    assert err.value.line == 2


def test_asvspoof2021_missing_audio_part_is_reported(tmp_path: Path):
    make_df21(tmp_path)
    missing = tmp_path / "ASVspoof2021_DF_eval_part01" / "ASVspoof2021_DF_eval" / "flac" / "DF_E_2000013.flac"
    missing.unlink()
    with pytest.raises(ProtocolError, match=r"DF_E_2000013\.flac not found \(1 of 4") as err:
        corpora.asvspoof2021(tmp_path, "DF")
    assert err.value.line == 2


# --- ASVspoof 5 -----------------------------------------------------------------------------------

ASV5_TRAIN = [
    "T_4850 T_0000000000 F - - - AC3 A05 spoof -",
    "T_3734 T_0000000011 F - - - - bonafide bonafide -",
    "T_4850 T_0000000001 F - - - AC1 A02 spoof -",
]
ASV5_DEV = [
    "D_0062 D_0000000001 F - - - AC1 A11 spoof -",
    "D_0461 D_0000000190 M - - - - bonafide bonafide -",
]
# Eval is the only partition with codecs: CODEC C01-C11 with CODEC_Q 1-8, or "-" with CODEC_Q 0.
ASV5_EVAL = [
    "E_0133 E_0000000007 M C05 3 E_0000000005 AC2 A23 spoof -",
    "E_0412 E_0000000002 F - 0 - - bonafide bonafide -",
]


@pytest.fixture
def asv5(tmp_path: Path) -> Path:
    protocols = tmp_path / "ASVspoof5_protocols"
    for name, folder, lines in [
        ("ASVspoof5.train.tsv", "flac_T", ASV5_TRAIN),
        ("ASVspoof5.dev.track_1.tsv", "flac_D", ASV5_DEV),
        ("ASVspoof5.eval.track_1.tsv", "flac_E_eval", ASV5_EVAL),
    ]:
        write(protocols / name, "\n".join(lines) + "\n")
        for line in lines:
            audio(tmp_path / folder / f"{line.split()[1]}.flac")
    return tmp_path


def test_asvspoof5_partitions(asv5: Path):
    df = corpora.asvspoof5(asv5)
    check_manifest(df, 3)
    assert list(df["attack"]) == ["A05", "-", "A02"]
    assert list(df["attack_tag"]) == ["AC3", "-", "AC1"]
    assert list(df["gender"]) == ["F", "F", "F"]
    assert list(df["speaker"]) == ["T_4850", "T_3734", "T_4850"]
    assert set(df["dataset"]) == {"asvspoof5_train"}
    dev = corpora.asvspoof5(asv5, "dev")
    check_manifest(dev, 2)
    assert list(dev["label"]) == ["spoof", "bonafide"]
    ev = corpora.asvspoof5(asv5, "eval")
    check_manifest(ev, 2)
    assert ev.loc[0, ["codec", "codec_q", "codec_seed", "attack"]].tolist() == [
        "C05",
        "3",
        "E_0000000005",
        "A23",
    ]
    assert "flac_E_eval" in ev["path"][0]


def test_asvspoof5_six_column_release(tmp_path: Path):
    write(
        tmp_path / "ASVspoof5.train.metadata.txt",
        "T_4850 T_0000000000 F - A05 spoof\nT_3734 T_0000000011 F - bonafide bonafide\n",
    )
    for utt in ("T_0000000000", "T_0000000011"):
        audio(tmp_path / "flac_T" / f"{utt}.flac")
    df = corpora.asvspoof5(tmp_path)
    check_manifest(df, 2)
    assert list(df["attack"]) == ["A05", "-"]
    assert list(df["codec"]) == ["-", "-"]


def test_asvspoof5_widths_cannot_mix(asv5: Path):
    write(
        asv5 / "ASVspoof5_protocols" / "ASVspoof5.train.tsv",
        ASV5_TRAIN[0] + "\nT_4850 T_0000000001 F - A02 spoof\n",
    )
    with pytest.raises(ProtocolError, match="found 6 columns where earlier lines have 10") as err:
        corpora.asvspoof5(asv5)
    assert err.value.line == 2
    write(asv5 / "ASVspoof5_protocols" / "ASVspoof5.train.tsv", "T_4850 T_0000000001 F - A02 spoof -\n")
    with pytest.raises(ProtocolError, match="expected 10 or 6 columns"):
        corpora.asvspoof5(asv5)


# --- In-the-Wild ----------------------------------------------------------------------------------

ITW_META = (
    "file,speaker,label\n0.wav,Alec Guinness,spoof\n1.wav,Alec Guinness,spoof\n2.wav,Barack Obama,bona-fide\n"
)


@pytest.fixture
def itw(tmp_path: Path) -> Path:
    folder = tmp_path / "release_in_the_wild"
    write(folder / "meta.csv", ITW_META + '3.wav,"Ali, Muhammad",bona-fide\n')
    for n in range(4):
        audio(folder / f"{n}.wav")
    return tmp_path


def test_in_the_wild(itw: Path):
    df = corpora.in_the_wild(itw)
    check_manifest(df, 4)
    assert list(df["utt_id"]) == ["0", "1", "2", "3"]
    assert list(df["label"]) == ["spoof", "spoof", "bonafide", "bonafide"]
    assert list(df["attack"]) == ["itw", "itw", "-", "-"]
    assert list(df["speaker"]) == ["Alec Guinness", "Alec Guinness", "Barack Obama", "Ali, Muhammad"]
    assert set(df["dataset"]) == {"in_the_wild"}
    same = corpora.in_the_wild(itw / "release_in_the_wild")  # ROOT may be the folder itself
    assert same["path"].tolist() == df["path"].tolist()
    with pytest.raises(ConfigError, match="no partitions"):
        corpora.in_the_wild(itw, "eval")


@pytest.mark.parametrize(
    ("row", "reason"),
    [
        ("4.wav,Barack Obama,real", "unknown label 'real'"),
        ("../4.wav,Barack Obama,spoof", "unsafe file name"),
        ("4.wav,Barack Obama", "expected 3 fields"),
        ("5.wav,Barack Obama,spoof", "5.wav not found"),
        ("2.wav,Barack Obama,spoof", "'2' repeats line 4"),
    ],
)
def test_in_the_wild_bad_rows(itw: Path, row: str, reason: str):
    meta = itw / "release_in_the_wild" / "meta.csv"
    write(meta, ITW_META + row + "\n")
    with pytest.raises(ProtocolError, match=reason) as err:
        corpora.in_the_wild(itw)
    assert err.value.line == 5


def test_in_the_wild_header_must_match(itw: Path):
    write(itw / "release_in_the_wild" / "meta.csv", "file,label\n0.wav,spoof\n")
    with pytest.raises(ProtocolError, match=r"lacks columns \['speaker'\]") as err:
        corpora.in_the_wild(itw)
    assert err.value.line == 1
    write(itw / "release_in_the_wild" / "meta.csv", "file,speaker,label\n")
    with pytest.raises(ProtocolError, match="no entries"):
        corpora.in_the_wild(itw)


# --- WaveFake -------------------------------------------------------------------------------------


@pytest.fixture
def wavefake(tmp_path: Path) -> Path:
    gen = tmp_path / "generated_audio"
    for rel in [
        "ljspeech_melgan/LJ001-0001_gen.wav",
        "ljspeech_melgan/LJ001-0002_gen.wav",
        "ljspeech_hifiGAN/LJ001-0001_generated.wav",
        "ljspeech_waveglow/LJ001-0001.wav",
        "jsut_multi_band_melgan/BASIC5000_0001_gen.wav",
        "common_voices_prompts_from_conformer_fastspeech2_pwg_ljspeech/gen_0.wav",
    ]:
        audio(gen / rel)
    write(gen / "ljspeech_melgan" / "filelist.txt", "not audio\n")
    write(gen / "README.md", "WaveFake\n")
    for rel in [
        "real_audio/LJSpeech-1.1/wavs/LJ001-0001.wav",
        "real_audio/LJSpeech-1.1/wavs/LJ001-0002.wav",
        "real_audio/jsut_ver1.1/basic5000/wav/BASIC5000_0001.wav",
    ]:
        audio(tmp_path / rel)
    write(tmp_path / "real_audio" / "LJSpeech-1.1" / "metadata.csv", "LJ001-0001|text|text\n")
    return tmp_path


def test_wavefake(wavefake: Path):
    df = corpora.wavefake(wavefake)
    check_manifest(df, 9)
    spoof = df[df.label == "spoof"]
    assert sorted(spoof["attack"].unique()) == [
        "common_voices_prompts_from_conformer_fastspeech2_pwg_ljspeech",
        "jsut_multi_band_melgan",
        "ljspeech_hifiGAN",
        "ljspeech_melgan",
        "ljspeech_waveglow",
    ]
    assert "ljspeech_waveglow/LJ001-0001" in set(spoof["utt_id"])  # same stem as the real clip, still unique
    assert sorted(df.loc[df.label == "bonafide", "utt_id"]) == ["BASIC5000_0001", "LJ001-0001", "LJ001-0002"]
    assert (
        dict(zip(df["utt_id"], df["subset"], strict=True))["jsut_multi_band_melgan/BASIC5000_0001_gen"]
        == "jsut"
    )
    assert set(df.loc[df.subset == "jsut", "speaker"]) == {"jsut"}
    assert set(df.loc[df.subset == "ljspeech", "speaker"]) == {"LJ"}
    assert set(df["dataset"]) == {"wavefake"}


def test_wavefake_partitions_and_missing_real_audio(wavefake: Path):
    jsut = corpora.wavefake(wavefake, "jsut")
    check_manifest(jsut, 2)
    assert set(jsut["dataset"]) == {"wavefake_jsut"}
    for f in (wavefake / "real_audio" / "jsut_ver1.1" / "basic5000" / "wav").iterdir():
        f.unlink()
    with pytest.raises(NcdetectError, match=r"jsut_ver1\.1/basic5000/wav: real JSUT"):
        corpora.wavefake(wavefake)
    assert len(corpora.wavefake(wavefake, "ljspeech")) == 7  # the LJSpeech subset needs no JSUT
    with pytest.raises(ConfigError, match="ljspeech, jsut"):
        corpora.wavefake(wavefake, "en")


# --- plain folder ---------------------------------------------------------------------------------


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "mycorpus"
    for rel in [
        "bonafide/a.wav",
        "bonafide/spk2/b.flac",
        "spoof/tts1/c.wav",
        "spoof/tts2/sub/d.wav",
        "spoof/e.wav",
    ]:
        audio(root / rel)
    write(root / "notes.txt", "about this corpus\n")
    write(root / "bonafide" / "README.md", "readme\n")
    return root


def test_folder(tree: Path):
    df = corpora.folder(tree)
    check_manifest(df, 5)
    assert list(df["utt_id"]) == [
        "bonafide/a",
        "bonafide/spk2/b",
        "spoof/e",
        "spoof/tts1/c",
        "spoof/tts2/sub/d",
    ]
    assert list(df["attack"]) == ["-", "-", "unknown", "tts1", "tts2"]
    assert set(df["dataset"]) == {"mycorpus"}


def test_folder_partition_and_errors(tree: Path, tmp_path: Path):
    audio(tmp_path / "split" / "train" / "bonafide" / "x.wav")
    audio(tmp_path / "split" / "train" / "spoof" / "A1" / "y.wav")
    df = corpora.folder(tmp_path / "split", "train")
    check_manifest(df, 2)
    assert set(df["dataset"]) == {"split_train"}
    with pytest.raises(ConfigError, match="sub-folder"):
        corpora.folder(tmp_path / "split", "../mycorpus")
    audio(tree / "bonafide" / "a.flac")
    with pytest.raises(ProtocolError, match="'bonafide/a' is shared"):
        corpora.folder(tree)
    audio(tree / "stray.wav")
    with pytest.raises(ProtocolError, match="outside bonafide/ and spoof/"):
        corpora.folder(tree)
    with pytest.raises(NcdetectError, match="expected bonafide/ and spoof/"):
        corpora.folder(tmp_path / "split")


# --- any CSV --------------------------------------------------------------------------------------


def test_csv_fills_columns_and_keeps_extras(tmp_path: Path):
    audio(tmp_path / "clips" / "a.wav")
    audio(tmp_path / "clips" / "b.flac")
    absolute = audio(tmp_path / "elsewhere" / "c.wav")
    table = write(
        tmp_path / "lists" / "mine.csv",
        f"path,label,attack,note\n../clips/a.wav,bonafide,,first\n../clips/b.flac,SPOOF,,second\n"
        f"{absolute},spoof,tts9,third\n",
    )
    df = corpora.csv_table(table)
    check_manifest(df, 3)
    assert list(df["utt_id"]) == ["a", "b", "c"]
    assert list(df["attack"]) == ["-", "unknown", "tts9"]
    assert list(df["note"]) == ["first", "second", "third"]
    assert set(df["dataset"]) == {"mine"} and set(df["speaker"]) == {"-"}
    assert df["path"][0] == str(tmp_path / "lists" / ".." / "clips" / "a.wav")


@pytest.mark.parametrize(
    ("row", "reason"),
    [
        ("a.wav,real", "unknown label 'real'"),
        ("missing.wav,spoof", "missing.wav not found"),
        ("sub/a.wav,spoof", "utt_id 'a' repeats line 2"),
        (",spoof", "empty path"),
    ],
)
def test_csv_bad_rows(tmp_path: Path, row: str, reason: str):
    audio(tmp_path / "a.wav")
    audio(tmp_path / "sub" / "a.wav")
    table = write(tmp_path / "list.csv", f"path,label\na.wav,bonafide\n{row}\n")
    with pytest.raises(ProtocolError, match=reason) as err:
        corpora.csv_table(table)
    assert err.value.line == 3


def test_csv_utt_id_column_and_bonafide_attack(tmp_path: Path):
    audio(tmp_path / "a.wav")
    audio(tmp_path / "sub" / "a.wav")
    table = write(tmp_path / "list.csv", "utt_id,path,label\nx,a.wav,bonafide\ny,sub/a.wav,spoof\n")
    assert corpora.csv_table(table)["utt_id"].tolist() == ["x", "y"]
    write(table, "path,label,attack\na.wav,bonafide,A01\n")
    with pytest.raises(ProtocolError, match="bonafide row has attack 'A01'"):
        corpora.csv_table(table)
    write(table, "file,label\na.wav,bonafide\n")
    with pytest.raises(ProtocolError, match=r"lacks columns \['path'\]"):
        corpora.csv_table(table)
    with pytest.raises(NcdetectError, match="not a folder"):
        corpora.csv_table(tmp_path)


# --- prepare() and the CLI ------------------------------------------------------------------------


def test_cli_choices_come_from_the_registry():
    assert [c.value for c in Corpus] == corpora.ADAPTERS.names() == list(corpora.ADAPTERS)
    assert "in-the-wild" in corpora.ADAPTERS and corpora.ADAPTERS.get("csv") is corpora.csv_table


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_prepare_writes_a_readable_manifest(asv19: Path, tmp_path: Path, suffix: str):
    out = tmp_path / "out" / f"train{suffix}"
    df = corpora.prepare("asvspoof2019", asv19, None, out)
    back = read_manifest(out)
    assert back[COLUMNS].astype(str).equals(df[COLUMNS].astype(str))
    assert corpora.summarize(df) == "4 rows: 2 bonafide, 2 spoof; attacks: A01 1, A06 1"


def test_prepare_rejects_bad_arguments(asv19: Path, tmp_path: Path):
    with pytest.raises(ConfigError, match="unknown corpus 'asvspoof2017'"):
        corpora.prepare("asvspoof2017", asv19, None, tmp_path / "m.csv")
    with pytest.raises(ConfigError, match=r"\.csv or \.parquet"):
        corpora.prepare("asvspoof2019", asv19, None, tmp_path / "m.txt")
    with pytest.raises(NcdetectError, match="not found"):
        corpora.prepare("asvspoof2019", tmp_path / "nowhere", None, tmp_path / "m.csv")


def test_cli_prepare(asv19: Path, tmp_path: Path):
    out = tmp_path / "m.csv"
    result = CliRunner().invoke(
        app, ["prepare", "asvspoof2019", str(asv19), "--partition", "eval", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert "3 rows: 1 bonafide, 2 spoof; attacks: A11 1, A19 1" in result.output
    assert len(read_manifest(out)) == 3

    write(protocol19(asv19, "eval"), "LA_0039 LA_E_2834763 - A11 spoof\nLA_0018 LA_E_1000147 - - genuine\n")
    bad = CliRunner().invoke(
        app, ["prepare", "asvspoof2019", str(asv19), "--partition", "eval", "--out", str(tmp_path / "n.csv")]
    )
    assert bad.exit_code != 0
    assert isinstance(bad.exception, ProtocolError) and bad.exception.line == 2
    assert not (tmp_path / "n.csv").exists()

    unknown = CliRunner().invoke(app, ["prepare", "timit", str(asv19), "--out", str(out)])
    assert unknown.exit_code == 2 and "timit" in unknown.output


def test_cli_subprocess_exit_code_and_message(asv19: Path, tmp_path: Path):
    protocol = write(protocol19(asv19), "LA_0079 LA_T_1138215 - - bonafide\nLA_0079 LA_T_1271820 - A01\n")
    exe = Path(sys.executable).parent / "ncdetect"
    proc = subprocess.run(
        [str(exe), "prepare", "asvspoof2019", str(asv19), "--out", str(tmp_path / "m.csv")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1
    assert proc.stderr == (
        f"ncdetect: error: {protocol}:2: expected 5 columns (SPEAKER UTT - SYSTEM KEY), found 4\n"
    )
    assert not (tmp_path / "m.csv").exists()
