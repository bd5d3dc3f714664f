"""The demo corpus: prompt parsing, splits, equalisation, the channel, and a tiny real build.

Tests marked ``demo`` need the Debian packages (ffmpeg, espeak-ng, festival, festvox-kallpc16k and the
Asterisk en/es prompt packages); they skip, naming what is missing, where those are absent.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from ncdetect.cues import leading_silence
from ncdetect.data.manifest import COLUMNS, read_manifest
from ncdetect.demo import build, channel, equalise, generators, prompts
from ncdetect.demo.build import DEMO_KEYS, PLAN, build_demo_corpus, plan_clips, split_prompts
from ncdetect.demo.equalise import CHANNEL_CODECS, Draws
from ncdetect.errors import NcdetectError, ProtocolError

SR = 16_000


def _demo_missing() -> str | None:
    try:
        build.check_requirements()
        for lang in prompts.LANGUAGES.values():
            prompts.load_prompts(lang)
    except NcdetectError as err:
        return str(err)
    return None


MISSING = _demo_missing()
needs_demo = pytest.mark.skipif(MISSING is not None, reason=f"demo packages missing: {MISSING}")
needs_ffmpeg = pytest.mark.skipif(
    shutil.which("ffmpeg") is None, reason="ffmpeg not installed (Debian package ffmpeg)"
)


# --- prompts ------------------------------------------------------------------------------------------


def _write_texts(path: Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")


def test_read_texts_parses_and_names_bad_line(tmp_path):
    good = tmp_path / "good.txt.gz"
    _write_texts(good, ["; Core sounds", "", "vm-intro: Please leave a message.", "digits/1: one"])
    assert prompts.read_texts(good) == {"vm-intro": "Please leave a message.", "digits/1": "one"}

    bad = tmp_path / "bad.txt.gz"
    _write_texts(bad, ["; header", "ok: fine", "this line has no colon"])
    with pytest.raises(ProtocolError) as err:
        prompts.read_texts(bad)
    assert f"{bad}:3:" in str(err.value)


@pytest.fixture
def fake_packages(tmp_path, monkeypatch):
    """An English prompt package in miniature: G.722 files of chosen sizes (bytes / 8000 = seconds)."""
    monkeypatch.setattr(prompts, "SOUNDS_ROOT", tmp_path / "sounds")
    monkeypatch.setattr(prompts, "DOC_ROOT", tmp_path / "doc")
    lang = prompts.LANGUAGES["en"]
    sizes = {"a-ok": 2.0, "b-dup": 1.5, "c-dup": 1.5, "d-short": 0.3, "e-long": 9.0, "f-tones": 1.0,
             "g-notext": 1.0, "digits/20": 0.8}
    for name, seconds in sizes.items():
        path = lang.sounds / f"{name}.g722"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"\0" * int(seconds * 8000))
    _write_texts(lang.texts, [
        "; Core Asterisk Sounds in English", "",
        "a-ok: Please enter your password.", "b-dup: Thank you.", "c-dup: thank you",
        "d-short: Hi.", "e-long: A very long menu.", "f-tones: [ascending tones]", "digits/20: twenty",
        "missing-sound: Nobody recorded this.",
    ])
    return lang


def test_load_prompts_filters_and_counts_reasons(fake_packages):
    used, skipped = prompts.load_prompts(fake_packages)
    assert [p.name for p in used] == ["a-ok", "b-dup", "digits/20"]
    assert used[2].slug == "digits-20"
    assert used[0].seconds == pytest.approx(2.0)
    assert skipped == {
        "duplicate text": 1, "shorter than 0.6 s": 1, "longer than 6.0 s": 1,
        "annotated or non-speech text": 1, "recording without a text": 1, "text without a recording": 1,
    }


def test_missing_packages_are_named_with_install_command(tmp_path, monkeypatch):
    monkeypatch.setattr(prompts, "SOUNDS_ROOT", tmp_path / "nothing")
    with pytest.raises(NcdetectError, match=r"asterisk-core-sounds-es-g722.*apt-get install"):
        prompts.load_prompts(prompts.LANGUAGES["es"])

    monkeypatch.setattr(prompts, "SOUNDS_ROOT", tmp_path)
    (tmp_path / "en_US_f_Allison").mkdir()
    monkeypatch.setattr(prompts, "DOC_ROOT", tmp_path / "doc")
    with pytest.raises(NcdetectError, match=r"asterisk-core-sounds-en .*make demo"):
        prompts.load_prompts(prompts.LANGUAGES["en"])

    real_which = generators.shutil.which
    monkeypatch.setattr(generators.shutil, "which", lambda b: None if b == "espeak-ng" else real_which(b))
    with pytest.raises(NcdetectError, match=r"espeak-ng not found.*apt-get install espeak-ng"):
        generators.check_generators()

    monkeypatch.setattr(generators.shutil, "which", lambda b: f"/usr/bin/{b}")
    monkeypatch.setattr(generators, "KAL_VOICE_DIR", tmp_path / "no-voice")
    with pytest.raises(NcdetectError, match="festvox-kallpc16k"):
        generators.check_generators()


# --- splits -------------------------------------------------------------------------------------------


def _fake_prompts(lang: str, n: int) -> list[prompts.Prompt]:
    return [prompts.Prompt(lang, f"p{i:03d}", f"text {i}", Path(f"/x/p{i:03d}.g722"), 1.0) for i in range(n)]


def test_splits_are_disjoint_seeded_and_sized():
    ps = _fake_prompts("en", 100)
    a = split_prompts(ps, seed=0, max_prompts=None)
    assert [len(a[k]) for k in ("target", "dev", "train")] == [30, 14, 56]
    names = [{p.name for p in a[k]} for k in a]
    assert sum(len(n) for n in names) == len(set.union(*names)) == 100
    assert split_prompts(ps, seed=0, max_prompts=None) == a
    assert split_prompts(ps, seed=1, max_prompts=None)["target"] != a["target"]
    small = split_prompts(ps, seed=0, max_prompts=20)
    assert sum(len(v) for v in small.values()) == 20
    assert small["target"] == a["target"][:6]  # the same seeded order, cut shorter


def test_plan_crosses_generators_over_languages_and_draws_codecs_for_target_only():
    planned = {"en": _fake_prompts("en", 200), "es": _fake_prompts("es", 200)}
    clips = plan_clips(planned, seed=3, max_prompts=None)
    df = pd.DataFrame([c.row() for c in clips])
    assert len(set(df["utt_id"])) == len(df)
    assert sorted(df["dataset"].unique()) == ["demo_target", "demo_tts_en", "demo_voc_es"]
    for (lang, split), (key, _, spoofers) in PLAN.items():
        part = df[(df["language"] == lang) & (df["path"].str.contains(f"/{key}/"))]
        prompts_in_split = set(part["prompt"])
        assert set(part["attack"]) == {"-", *spoofers}, (lang, split)
        for other_key in set(DEMO_KEYS) - {key}:
            other = df[(df["language"] == lang) & df["path"].str.contains(f"/{other_key}/")]
            assert not prompts_in_split & set(other["prompt"]), (key, other_key)
    target = df[df["dataset"] == "demo_target"]
    assert set(target["codec"]) == set(CHANNEL_CODECS)
    assert set(df.loc[df["dataset"] != "demo_target", "codec"]) == {"none"}
    # Codec draws do not depend on the label: each codec's share is about the same in both classes.
    share = pd.crosstab(target["label"], target["codec"], normalize="index")
    assert (share.max() - share.min()).max() < 0.15


# --- equalisation ---------------------------------------------------------------------------------------


def test_equalise_sets_padding_and_level_whatever_the_input():
    rng = np.random.default_rng(0)
    t = np.arange(SR) / SR
    speech = (0.5 * np.sin(2 * np.pi * 220 * t) * (1 + np.sin(2 * np.pi * 3 * t))).astype(np.float32)
    for lead_in, gain in ((0.0, 1.0), (0.8, 0.05)):  # no leading silence and loud; long silence and quiet
        x = np.concatenate([np.zeros(int(lead_in * SR)), gain * speech, np.zeros(SR // 2)])
        x = x + 1e-4 * rng.standard_normal(len(x))
        d = Draws(lead_s=0.3, trail_s=0.2, floor_db=50.0, rms_dbfs=-27.0, codec="none", noise_seed=1)
        y = equalise.equalise(x, d)
        assert 20 * np.log10(equalise.rms(y)) == pytest.approx(-27.0, abs=0.01)
        assert leading_silence(y) == pytest.approx(0.3, abs=0.03)
        assert len(y) / SR == pytest.approx(0.3 + 1.0 + 0.2, abs=0.05)
        assert np.all(y[: int(0.25 * SR)] != 0)  # the padding carries the noise floor, not digital zeros


def test_equalise_band_limits_to_the_g722_band():
    x = np.random.default_rng(1).standard_normal(2 * SR).astype(np.float32)
    d = Draws(lead_s=0.1, trail_s=0.1, floor_db=50.0, rms_dbfs=-25.0, codec="none", noise_seed=2)
    power = np.abs(np.fft.rfft(equalise.equalise(x, d))) ** 2
    freqs = np.fft.rfftfreq(len(power) * 2 - 2, 1 / SR)[: len(power)]
    assert power[freqs > 7_300].sum() / power.sum() < 1e-3
    assert power[(freqs > 6_000) & (freqs < 6_800)].sum() / power.sum() > 0.05


def test_draws_depend_on_seed_and_clip_only():
    a = equalise.draw(0, "demo-en-x-bonafide", with_codec=True)
    assert a == equalise.draw(0, "demo-en-x-bonafide", with_codec=True)
    assert a != equalise.draw(1, "demo-en-x-bonafide", with_codec=True)
    assert equalise.draw(0, "u", with_codec=False).codec == "none"


# --- the channel (ffmpeg) -------------------------------------------------------------------------------


@needs_ffmpeg
def test_codec_roundtrips_keep_length_alignment_and_band():
    rng = np.random.default_rng(0)
    x = (0.1 * rng.standard_normal(SR)).astype(np.float32)  # white: energy up to 8 kHz
    freqs = np.fft.rfftfreq(SR, 1 / SR)

    def above(y: np.ndarray, hz: float) -> float:
        power = np.abs(np.fft.rfft(y)) ** 2
        return float(power[freqs > hz].sum() / power.sum())

    out = {codec: channel.roundtrip([x, x[:1234]], codec) for codec in channel.CODECS}
    for codec, (y, short) in out.items():
        assert y.shape == x.shape and short.shape == (1234,) and y.dtype == np.float32, codec
    g = out["g722"][0]
    assert np.corrcoef(g, x)[0, 1] > 0.95  # aligned: the codec's delay is removed
    assert above(out["gsm"][0], 4_100) < 0.01  # the 8 kHz telephone band
    assert above(out["mp3-32k"][0], 7_500) < 0.01
    assert above(x, 7_500) > 0.05


# --- a real build ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_corpus(tmp_path_factory):
    if MISSING is not None:
        pytest.skip(f"demo packages missing: {MISSING}")
    out = tmp_path_factory.mktemp("demo")
    manifests = build_demo_corpus(out, seed=0, max_prompts=8, progress=False)
    return out, manifests


@pytest.mark.demo
@needs_demo
def test_tiny_build_writes_valid_manifests_and_audio(tiny_corpus):
    out, manifests = tiny_corpus
    assert tuple(manifests) == DEMO_KEYS
    frames = {key: read_manifest(path) for key, path in manifests.items()}
    for key, df in frames.items():
        assert list(df.columns[: len(COLUMNS)]) == COLUMNS
        assert {"prompt", "language", "codec"} <= set(df.columns)
        assert set(df["label"]) == {"bonafide", "spoof"}
        assert ((df["attack"] == "-") == (df["label"] == "bonafide")).all()
        raw = pd.read_csv(out / f"{key}.csv")
        assert not raw["path"].str.startswith("/").any()  # relative to the manifest's folder
        for path in df["path"]:
            info = sf.info(path)
            assert (info.samplerate, info.channels, info.format) == (SR, 1, "FLAC")
    assert set(frames["demo_tts_en_train"]["attack"]) == {"-", "espeak-ng", "festival-kal"}
    assert set(frames["demo_voc_es_train"]["attack"]) == {"-", "world", "griffin-lim"}
    target = frames["demo_target"]
    assert set(target["language"]) == {"en", "es"}
    assert set(target.loc[target["language"] == "en", "attack"]) == {"-", "world", "griffin-lim"}
    assert set(target.loc[target["language"] == "es", "attack"]) == {"-", "espeak-ng", "festival-kal"}
    assert not (out / ".work").exists()
    summary = json.loads((out / "demo_corpus.json").read_text())
    assert summary["config"] == {"recipe": build.RECIPE_VERSION, "seed": 0, "max_prompts": 8}
    for key, df in frames.items():
        assert summary["counts"][key]["clips"] == len(df)
        assert set(summary["trivial_cue_eers"][key]) == {"duration", "rms", "rolloff95", "leading_silence"}
    assert summary["prompts"]["en"]["used"] == summary["prompts"]["es"]["used"] == 8


@pytest.mark.demo
@needs_demo
def test_tiny_build_equalises_silence_and_level(tiny_corpus):
    _, manifests = tiny_corpus
    df = pd.concat([read_manifest(manifests[k]) for k in DEMO_KEYS if k != "demo_target"])
    rows = []
    for row in df.itertuples():
        x, _ = sf.read(row.path, dtype="float32")
        d = equalise.draw(0, row.utt_id, with_codec=False)
        rows.append(dict(label=row.label, lead_error=leading_silence(x) - d.lead_s,
                         level_error=20 * np.log10(equalise.rms(x)) - d.rms_dbfs))
    err = pd.DataFrame(rows)
    # Whatever the generator, each clip starts with its drawn padding and sits at its drawn level (only
    # G.722 lies between the draw and the file in the source splits), so both follow one distribution.
    assert err["lead_error"].abs().max() < 0.06, err
    assert err["level_error"].abs().max() < 0.3, err
    assert set(err["label"]) == {"bonafide", "spoof"}


@pytest.mark.demo
@needs_demo
def test_second_call_returns_the_finished_build_at_once(tiny_corpus, monkeypatch):
    out, manifests = tiny_corpus
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*.flac")}

    def must_not_run(*args, **kwargs):
        raise AssertionError("a finished build was started again")

    # "At once" means no build step runs at all (a time limit would fail on a busy machine instead).
    for step in ("check_requirements", "plan_clips", "build_raw", "build_final"):
        monkeypatch.setattr(build, step, must_not_run)
    again = build_demo_corpus(out, seed=0, max_prompts=8, progress=False)
    assert again == manifests
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.flac")} == before


@pytest.mark.demo
@pytest.mark.slow
@needs_demo
def test_same_seed_gives_identical_audio(tiny_corpus, tmp_path):
    out, _ = tiny_corpus
    build_demo_corpus(tmp_path, seed=0, max_prompts=8, progress=False)

    def digest(root: Path) -> dict[str, str]:
        files = sorted(root.rglob("*.flac")) + sorted(root.glob("*.csv"))
        return {str(p.relative_to(root)): hashlib.md5(p.read_bytes()).hexdigest() for p in files}

    assert digest(tmp_path) == digest(out)


def test_refuses_to_delete_an_audio_folder_it_did_not_make(tmp_path, monkeypatch):
    monkeypatch.setattr(build, "check_requirements", lambda: None)
    (tmp_path / "audio").mkdir()
    (tmp_path / "audio" / "mine.wav").write_bytes(b"x")
    with pytest.raises(NcdetectError, match="no demo build made"):
        build_demo_corpus(tmp_path, seed=1, max_prompts=8, progress=False)
    assert (tmp_path / "audio" / "mine.wav").is_file()


def test_describe_corpus_reads_the_marker_file(tmp_path):
    """What `ncdetect demo-corpus` prints comes from demo_corpus.json alone (no packages needed)."""
    from ncdetect.demo import describe_corpus

    (tmp_path / "demo_corpus.json").write_text(json.dumps({
        "prompts": {"en": {"used": 8, "available": 10, "skipped": {"too short": 2}},
                    "es": {"used": 8, "available": 8, "skipped": {}}},
        "counts": {"demo_target": {"clips": 12, "bonafide": 4, "spoof": 8}},
        "trivial_cue_eers": {"demo_target": {"duration": 48.04, "rms": 51.0}},
    }))
    text = describe_corpus(tmp_path, {"demo_target": tmp_path / "demo_target.csv"})
    assert text.splitlines() == [
        "en prompts: 8 used of 10 usable (not usable: 2 too short)",
        "es prompts: 8 used of 8 usable (not usable: none)",
        f"{tmp_path / 'demo_target.csv'}: 12 clips (4 bonafide, 8 spoof)",
        "trivial-cue EERs on demo_target (50% = no cue, the floor is 30%): duration 48.0%, rms 51.0%",
    ]
