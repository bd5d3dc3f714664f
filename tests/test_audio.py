"""Audio decoding: windows, resampling, mixing, padding, cropping, trimming."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from conftest import synth_utterance, write_wav
from ncdetect.data import audio as audio_mod
from ncdetect.data.audio import (
    audio_duration,
    first_window,
    load_audio,
    random_crop,
    tile_pad,
    trim_silence,
)
from ncdetect.errors import AudioError

SR = 16_000


def _noise(n: int, seed: int = 0) -> np.ndarray:
    return (0.2 * np.random.default_rng(seed).standard_normal(n)).astype(np.float32)


def test_roundtrip_and_windows(tmp_path):
    x = _noise(3 * SR)
    path = tmp_path / "a.wav"
    sf.write(str(path), x, SR, subtype="FLOAT")
    np.testing.assert_array_equal(load_audio(path), x)
    assert audio_duration(path) == pytest.approx(3.0)
    # offset/duration give exactly the samples at 16 kHz
    np.testing.assert_array_equal(load_audio(path, offset=0.5, duration=1.0), x[SR // 2 : SR // 2 + SR])
    # a window running past the end returns what is there
    np.testing.assert_array_equal(load_audio(path, offset=2.5, duration=4.0), x[int(2.5 * SR) :])
    # an offset past the end leaves nothing
    with pytest.raises(AudioError, match="length 0"):
        load_audio(path, offset=10.0, duration=1.0)


def test_flac_pcm16_roundtrip(tmp_path):
    x = _noise(SR)
    path = tmp_path / "a.flac"
    sf.write(str(path), x, SR)
    y = load_audio(path)
    assert y.dtype == np.float32 and y.shape == x.shape
    assert np.max(np.abs(y - x)) < 1 / 2**14  # 16-bit quantisation


@pytest.mark.parametrize("sr_in", [8_000, 22_050, 44_100, 48_000])
def test_resampling_keeps_length_and_pitch(tmp_path, sr_in):
    t = np.arange(2 * sr_in) / sr_in
    x = (0.5 * np.sin(2 * np.pi * 1000 * t)).astype(np.float32)
    path = tmp_path / f"tone{sr_in}.wav"
    sf.write(str(path), x, sr_in, subtype="FLOAT")
    y = load_audio(path)
    assert abs(len(y) - 2 * SR) <= 1
    spectrum = np.abs(np.fft.rfft(y[2000:-2000]))
    peak_hz = np.argmax(spectrum) * SR / len(y[2000:-2000])
    assert peak_hz == pytest.approx(1000, abs=2)
    # a window of a resampled file has the requested length
    assert len(load_audio(path, offset=0.3, duration=1.0)) == SR


def test_multichannel_is_mixed_to_mono(tmp_path):
    left, right = _noise(SR, 1), _noise(SR, 2)
    path = tmp_path / "stereo.wav"
    sf.write(str(path), np.stack([left, right], axis=1), SR, subtype="FLOAT")
    np.testing.assert_allclose(load_audio(path), (left + right) / 2, atol=1e-7)


def test_block_reading_equals_one_read(tmp_path, monkeypatch):
    monkeypatch.setattr(audio_mod, "_BLOCK_FRAMES", 1000)  # many blocks, and a partial last one
    x = _noise(12_345)
    path = tmp_path / "a.wav"
    sf.write(str(path), np.stack([x, -x, x], axis=1), SR, subtype="FLOAT")
    np.testing.assert_allclose(load_audio(path), x / 3, atol=1e-7)
    np.testing.assert_allclose(load_audio(path, offset=0.1, duration=0.5), x[1600:9600] / 3, atol=1e-7)


def test_out_of_range_float_audio_is_rejected(tmp_path):
    path = tmp_path / "loud.wav"
    sf.write(str(path), _noise(SR) * 1e6, SR, subtype="FLOAT")
    with pytest.raises(AudioError, match="out of range"):
        load_audio(path)
    ok = tmp_path / "hot.wav"
    sf.write(str(ok), _noise(SR) * 10, SR, subtype="FLOAT")  # clipped-hot but plausible audio
    assert len(load_audio(ok)) == SR


def test_silent_window_of_a_longer_file_is_fine(tmp_path):
    x = np.concatenate([np.zeros(SR, np.float32), _noise(SR)])
    path = write_wav(tmp_path / "lead_silence.wav", x)
    assert not np.any(load_audio(path, duration=0.5))
    with pytest.raises(AudioError, match="all zeros"):
        load_audio(write_wav(tmp_path / "zeros.wav", np.zeros(SR, np.float32)))


def test_tile_pad_first_window_random_crop():
    x = np.arange(10, dtype=np.float32)
    np.testing.assert_array_equal(tile_pad(x, 25), np.concatenate([x, x, x[:5]]))
    np.testing.assert_array_equal(tile_pad(x, 4), x[:4])
    np.testing.assert_array_equal(first_window(x, 7), x[:7])
    long = np.arange(1000, dtype=np.float32)
    a = random_crop(long, 100, np.random.default_rng(3))
    b = random_crop(long, 100, np.random.default_rng(3))
    np.testing.assert_array_equal(a, b)
    assert len(a) == 100 and np.all(np.diff(a) == 1)  # a contiguous slice
    starts = {int(random_crop(long, 100, np.random.default_rng(s))[0]) for s in range(50)}
    assert len(starts) > 40 and min(starts) >= 0 and max(starts) <= 900
    np.testing.assert_array_equal(random_crop(x, 25, np.random.default_rng(0)), tile_pad(x, 25))


def test_trim_silence_cuts_both_ends():
    rng = np.random.default_rng(0)
    speech = synth_utterance(rng, "bonafide", seconds=1.0)
    x = np.concatenate([np.zeros(8000, np.float32), speech, 1e-5 * _noise(4000)])
    y = trim_silence(x)
    assert abs(len(y) - len(speech)) < 800  # within a few frames of the loud part
    assert np.max(np.abs(y)) == np.max(np.abs(speech))
    short = np.ones(100, np.float32)
    np.testing.assert_array_equal(trim_silence(short), short)
