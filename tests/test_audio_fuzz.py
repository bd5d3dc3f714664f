"""Hostile audio: every input gives a correct result or an AudioError naming the file, never a hang,
a huge allocation or another exception type. Both ``load_audio`` and ``AudioDataset`` are checked."""

from __future__ import annotations

import os
import struct
import tracemalloc
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
from hypothesis import example, given
from hypothesis import strategies as st

from conftest import property_settings
from ncdetect.data.audio import audio_duration, load_audio
from ncdetect.data.dataset import AudioDataset
from ncdetect.errors import AudioError

SR = 16_000
pytestmark = pytest.mark.timeout(120)  # a hang fails the test instead of the whole run


def _noise(n: int, seed: int = 0) -> np.ndarray:
    return (0.2 * np.random.default_rng(seed).standard_normal(n)).astype(np.float32)


def _check(path: Path, **kwargs) -> np.ndarray | None:
    """Load ``path``; a result must be valid audio, an error must be an AudioError naming the file."""
    try:
        y = load_audio(path, **kwargs)
    except AudioError as err:
        assert str(err).startswith(f"{path}: ") and err.path == str(path)
        assert "\n" not in str(err)
        return None
    assert isinstance(y, np.ndarray) and y.dtype == np.float32 and y.ndim == 1 and len(y) > 0
    assert np.isfinite(y).all()
    return y


def _check_dataset(path: Path, num_samples: int = 8000) -> None:
    df = pd.DataFrame({"utt_id": ["u"], "path": [str(path)], "label": ["spoof"]})
    for train in (False, True):
        item = AudioDataset(df, num_samples=num_samples, train=train)[0]
        if item["error"] is None:
            assert item["wave"].shape == (num_samples,)
            assert bool(item["wave"].isfinite().all())
        else:
            assert item["error"].startswith(f"{path}: ") and "unexpected" not in item["error"]


def _wav_bytes(x: np.ndarray, sr: int = SR, subtype: str = "PCM_16") -> bytes:
    import io

    buf = io.BytesIO()
    sf.write(buf, x, sr, format="WAV", subtype=subtype)
    return buf.getvalue()


def _flac_bytes(x: np.ndarray, sr: int = SR) -> bytes:
    import io

    buf = io.BytesIO()
    sf.write(buf, x, sr, format="FLAC")
    return buf.getvalue()


VALID_WAV = _wav_bytes(_noise(4000))
VALID_FLAC = _flac_bytes(_noise(4000))
PREFIXES = [b"", b"RIFF", b"RIFF\x24\x00\x00\x00WAVEfmt ", b"fLaC", b"OggS", b"ID3\x03", b"\xff\xfb",
            VALID_WAV[:44], VALID_FLAC[:42]]


# ------------------------------------------------------------------------------------------- hypothesis
@property_settings(60)
@given(prefix=st.sampled_from(PREFIXES), body=st.binary(min_size=0, max_size=2048),
       suffix=st.sampled_from([".wav", ".flac", ".mp3", ".ogg", ".bin"]))
def test_random_bytes(tmp_path, prefix, body, suffix):
    path = tmp_path / f"random{suffix}"
    path.write_bytes(prefix + body)
    _check(path)
    _check(path, offset=0.1, duration=0.2)


@property_settings(60)
@given(which=st.sampled_from(["wav", "flac"]), cut=st.integers(0, 10_000),
       edits=st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=8))
# 46 bytes, byte 26 = 1: the header says 81,536 Hz over 1 sample, which resampling to 16 kHz left empty.
@example(which="wav", cut=46, edits=[(26, 1)])
def test_mutated_valid_files(tmp_path, which, cut, edits):
    data = bytearray(VALID_WAV if which == "wav" else VALID_FLAC)
    for pos, value in edits:
        data[pos % len(data)] = value
    path = tmp_path / f"mutated.{which}"
    path.write_bytes(bytes(data[: max(1, cut % (len(data) + 1))]))
    _check(path)
    _check(path, offset=0.05, duration=0.1)
    _check_dataset(path, num_samples=2000)


# --------------------------------------------------------------------------------------- explicit cases
def test_truncated_headers(tmp_path):
    for name, data in [("wav", VALID_WAV), ("flac", VALID_FLAC)]:
        for cut in (1, 4, 12, 20, 30, 43, 60, len(data) // 2, len(data) - 1):
            path = tmp_path / f"cut{cut}.{name}"
            path.write_bytes(data[:cut])
            y = _check(path)
            if name == "wav" and cut > 44:
                # The samples that are there are the file's first samples.
                assert y is not None and len(y) == (cut - 44) // 2
            _check_dataset(path)


def test_wav_header_declaring_huge_length(tmp_path):
    x = _noise(SR)
    data = bytearray(_wav_bytes(x, subtype="FLOAT"))
    i = data.find(b"data")
    data[i + 4 : i + 8] = struct.pack("<I", 0xFFFFFFF0)
    data[4:8] = struct.pack("<I", 0xFFFFFFF0)
    path = tmp_path / "huge_header.wav"
    path.write_bytes(bytes(data))
    tracemalloc.start()
    y = _check(path)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    # Either libsndfile trusts the file size (we get the real samples) or we stop at the data's end;
    # never an allocation of the declared 4 GiB.
    assert y is not None
    np.testing.assert_array_equal(y, x)
    assert peak < 50e6
    _check_dataset(path)


def test_flac_header_declaring_huge_length(tmp_path):
    data = bytearray(VALID_FLAC)
    # STREAMINFO's 36-bit total-sample count ends at byte 26 of the file (after "fLaC" and 4 + 10 bytes).
    bits = int.from_bytes(data[18:26], "big") | ((1 << 36) - 1)
    data[18:26] = bits.to_bytes(8, "big")
    path = tmp_path / "huge_header.flac"
    path.write_bytes(bytes(data))
    tracemalloc.start()
    _check(path)
    _check(path, offset=100.0, duration=4.0)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 50e6
    _check_dataset(path)


def _wav_with_rate(path: Path, sr: int, samples: np.ndarray) -> Path:
    """A 16-bit mono WAV whose header declares ``sr``, written by hand: libsndfile refuses to write absurd
    rates, but files with them exist."""
    data = (samples * 32767).astype("<i2").tobytes()
    header = b"RIFF" + struct.pack("<I", 36 + len(data)) + b"WAVE"
    header += b"fmt " + struct.pack("<IHHIIHH", 16, 1, 1, sr, (2 * sr) & 0xFFFFFFFF, 2, 16)
    path.write_bytes(header + b"data" + struct.pack("<I", len(data)) + data)
    return path


def test_mutated_wav_of_46_bytes_is_an_error(tmp_path):
    # The file hypothesis found: byte 26 is the third byte of the sample rate (16,000 -> 81,536 Hz).
    data = bytearray(VALID_WAV[:46])
    data[26] = 1
    path = tmp_path / "mutated.wav"
    path.write_bytes(bytes(data))
    assert sf.info(str(path)).samplerate == 81_536 and sf.info(str(path)).frames == 1
    with pytest.raises(AudioError, match="length 0 after resampling") as err:
        load_audio(path)
    assert str(err.value).startswith(f"{path}: ") and "\n" not in str(err.value)
    _check_dataset(path)


@pytest.mark.parametrize("sr", [0, 1, 999, 10_000_000, 2**31 - 1])
def test_absurd_sample_rates(tmp_path, sr):
    path = _wav_with_rate(tmp_path / f"rate_{sr}.wav", sr, _noise(4000))
    tracemalloc.start()
    try:
        for call in (lambda: load_audio(path), lambda: load_audio(path, offset=0.5, duration=1.0),
                     lambda: audio_duration(path)):
            with pytest.raises(AudioError) as err:
                call()
            # A 1 Hz header on these 4000 samples would otherwise upsample them to 64 M samples (256 MB).
            assert str(err.value).startswith(f"{path}: ") and "\n" not in str(err.value)
            assert "sample rate" in str(err.value) or "not a readable audio file" in str(err.value), err.value
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 20e6
    _check_dataset(path)


@pytest.mark.parametrize("sr", [1_000, 768_000])
def test_extreme_but_valid_rates_load(tmp_path, sr):
    path = _wav_with_rate(tmp_path / f"rate_{sr}.wav", sr, _noise(sr // 10))
    y = _check(path)
    assert y is not None and abs(len(y) - SR // 10) <= 1


def test_one_sample_above_the_target_rate_is_an_error(tmp_path):
    # One sample at 48 kHz is a third of a sample at 16 kHz: nothing is left after resampling.
    path = _wav_with_rate(tmp_path / "one_sample.wav", 48_000, np.array([0.5], np.float32))
    with pytest.raises(AudioError, match="length 0 after resampling"):
        load_audio(path)
    _check_dataset(path)


@pytest.mark.parametrize("duration", [0.0, 1e-5, 1 / SR / 3, -1.0])
def test_window_that_resampling_shrinks_to_nothing(tmp_path, duration):
    path = tmp_path / "tone_192k.wav"
    sf.write(str(path), _noise(19_200), 192_000)
    with pytest.raises(AudioError, match="length 0") as err:
        load_audio(path, offset=0.05, duration=duration)
    assert str(err.value).startswith(f"{path}: ")
    # the smallest window that holds one output sample still loads
    assert len(load_audio(path, offset=0.05, duration=1 / SR)) == 1


def test_window_past_the_end_is_an_error(tmp_path):
    path = tmp_path / "short.wav"
    sf.write(str(path), _noise(SR), SR)
    with pytest.raises(AudioError, match="length 0"):
        load_audio(path, offset=5.0, duration=1.0)


def test_zero_samples(tmp_path):
    path = tmp_path / "empty_audio.wav"
    sf.write(str(path), np.zeros(0, np.float32), SR)
    with pytest.raises(AudioError, match="length 0"):
        load_audio(path)
    _check_dataset(path)


def test_eight_channels(tmp_path):
    x = np.stack([_noise(SR, seed=c) for c in range(8)], axis=1)
    path = tmp_path / "eight.wav"
    sf.write(str(path), x, SR, subtype="FLOAT")
    np.testing.assert_allclose(load_audio(path), x.mean(axis=1), atol=1e-6)
    _check_dataset(path)


@pytest.mark.parametrize("sr_in,tone", [(192_000, 5_000.0), (8_000, 1_000.0)])
def test_extreme_sample_rates(tmp_path, sr_in, tone):
    t = np.arange(sr_in) / sr_in
    path = tmp_path / f"tone_{sr_in}.wav"
    sf.write(str(path), (0.5 * np.sin(2 * np.pi * tone * t)).astype(np.float32), sr_in, subtype="PCM_24")
    y = load_audio(path)
    assert abs(len(y) - SR) <= 1
    spec = np.abs(np.fft.rfft(y[1000:-1000]))
    assert np.argmax(spec) * SR / len(y[1000:-1000]) == pytest.approx(tone, abs=3)
    assert np.max(np.abs(y)) == pytest.approx(0.5, abs=0.02)
    _check_dataset(path)


def test_eight_bit_pcm(tmp_path):
    x = _noise(SR).clip(-0.9, 0.9)
    path = tmp_path / "u8.wav"
    sf.write(str(path), x, SR, subtype="PCM_U8")
    y = load_audio(path)
    assert np.max(np.abs(y - x)) <= 1 / 128 + 1e-6
    _check_dataset(path)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_float_wav_with_nan_or_inf(tmp_path, bad):
    x = _noise(SR)
    x[1234] = bad
    path = tmp_path / f"bad_{bad}.wav"
    sf.write(str(path), x, SR, subtype="FLOAT")
    with pytest.raises(AudioError, match="NaN or Inf"):
        load_audio(path)
    # a window that holds the bad sample is refused too
    with pytest.raises(AudioError, match="NaN or Inf"):
        load_audio(path, offset=0.05, duration=0.1)
    _check_dataset(path)


def _write_hour_wav(path: Path, sr: int = 8_000, seconds: int = 3_600) -> int:
    """A one-hour 16-bit WAV written sparsely (zeros cost no disk) with noise around the middle."""
    n = sr * seconds
    header = b"RIFF" + struct.pack("<I", 36 + 2 * n) + b"WAVE"
    header += b"fmt " + struct.pack("<IHHIIHH", 16, 1, 1, sr, 2 * sr, 2, 16)
    header += b"data" + struct.pack("<I", 2 * n)
    with open(path, "wb") as f:
        f.write(header)
        f.truncate(len(header) + 2 * n)
        f.seek(len(header) + 2 * sr * (seconds // 2))
        f.write((np.random.default_rng(0).integers(-8000, 8000, 60 * sr)).astype("<i2").tobytes())
    return n


def test_one_hour_file_reads_only_the_window(tmp_path):
    path = tmp_path / "one hour.wav"
    _write_hour_wav(path)
    assert audio_duration(path) == pytest.approx(3600.0)
    tracemalloc.start()
    y = load_audio(path, offset=1800.0, duration=4.0)
    _, peak_window = tracemalloc.get_traced_memory()
    tracemalloc.reset_peak()
    df = pd.DataFrame({"utt_id": ["h"], "path": [str(path)], "label": ["bonafide"]})
    ds = AudioDataset(df, num_samples=64_600, train=True, seed=3)
    items = [ds[0] for _ in range(3)]
    _, peak_dataset = tracemalloc.get_traced_memory()
    tracemalloc.reset_peak()
    load_audio(path, offset=1800.0, duration=60.0)
    _, peak_minute = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert len(y) == 4 * SR and np.any(y)
    assert all(it["error"] is None and it["wave"].shape == (64_600,) for it in items)
    # A 4 s window needs ~1 MB; the whole hour would be > 100 MB as float32 at 8 kHz.
    assert peak_window < 3e6 and peak_dataset < 3e6
    # ...and the measurement does see decoding: a one-minute window costs > 60 s * 8 kHz * 4 bytes.
    assert peak_minute > 60 * 8_000 * 4


def test_names_with_spaces_and_non_ascii(tmp_path):
    x = _noise(SR)
    for name in ("with space.wav", "naïve façade.flac", "音声 ファイル.wav", "ölçü-ğ.ogg"):
        path = tmp_path / "dír ü" / name
        path.parent.mkdir(exist_ok=True)
        fmt = {"wav": "WAV", "flac": "FLAC", "ogg": "OGG"}[name.rsplit(".", 1)[1]]
        sf.write(str(path), x, SR, format=fmt)
        y = load_audio(path)
        assert abs(len(y) - SR) < 200
        _check_dataset(path)
    with pytest.raises(AudioError) as err:
        load_audio(tmp_path / "dír ü" / "missing 音声.wav")
    assert "missing 音声.wav" in str(err.value)


@pytest.mark.parametrize("fmt,subtype,ext", [("MP3", "MPEG_LAYER_III", "mp3"), ("OGG", "VORBIS", "ogg"),
                                             ("OGG", "OPUS", "opus")])
def test_lossy_formats(tmp_path, fmt, subtype, ext):
    if fmt not in sf.available_formats() or subtype not in sf.available_subtypes(fmt):
        pytest.skip(f"libsndfile {sf.__libsndfile_version__} cannot write {fmt}/{subtype}")
    rng = np.random.default_rng(0)
    t = np.arange(2 * SR) / SR
    x = (0.4 * np.sin(2 * np.pi * 440 * t) + 0.01 * rng.standard_normal(len(t))).astype(np.float32)
    sr_file = 48_000 if subtype == "OPUS" else SR  # Opus runs at 48 kHz; we resample back
    xs = np.interp(np.arange(2 * sr_file) / sr_file, t, x).astype(np.float32) if sr_file != SR else x
    path = tmp_path / f"clip.{ext}"
    sf.write(str(path), xs, sr_file, format=fmt, subtype=subtype)
    y = load_audio(path)
    assert abs(len(y) - len(x)) < 0.05 * SR  # codecs may pad a frame or so
    n = min(len(x), len(y)) - 4000
    ref = x[2000 : 2000 + n - 200]
    lag = int(np.argmax([np.dot(ref, y[2000 + k : 2000 + k + n - 200]) for k in range(200)]))
    corr = np.corrcoef(x[2000 : 2000 + n - 200], y[2000 + lag : 2000 + lag + n - 200])[0, 1]
    assert corr > 0.95
    w = load_audio(path, offset=0.5, duration=1.0)
    assert len(w) == SR and np.isfinite(w).all()
    _check_dataset(path)


def test_all_zeros(tmp_path):
    path = tmp_path / "zeros.flac"
    sf.write(str(path), np.zeros(SR, np.float32), SR)
    with pytest.raises(AudioError, match="all zeros"):
        load_audio(path)
    item = AudioDataset(pd.DataFrame({"path": [str(path)], "label": ["spoof"]}), num_samples=SR)[0]
    assert "all zeros" in item["error"]


def test_text_file_named_wav(tmp_path):
    path = tmp_path / "notes.wav"
    path.write_text("this is not audio\n" * 50, encoding="utf-8")
    with pytest.raises(AudioError, match="not a readable audio file"):
        load_audio(path)
    _check_dataset(path)


def test_missing_empty_folder_and_fifo(tmp_path):
    cases = {"missing.wav": "not found", "empty.wav": "empty file", "folder.wav": "folder"}
    (tmp_path / "empty.wav").write_bytes(b"")
    (tmp_path / "folder.wav").mkdir()
    if hasattr(os, "mkfifo"):
        os.mkfifo(tmp_path / "pipe.wav")  # opening a FIFO for reading would block forever
        cases["pipe.wav"] = "not a regular file"
    for name, reason in cases.items():
        path = tmp_path / name
        with pytest.raises(AudioError, match=reason) as err:
            load_audio(path)
        assert str(err.value).startswith(str(path))
        with pytest.raises(AudioError, match=reason):
            audio_duration(path)
        _check_dataset(path)
