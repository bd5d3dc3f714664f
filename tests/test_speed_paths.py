"""The fast paths of the Speed work give the same results as the plain code they replace."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch

from ncdetect.data import audio as audio_mod
from ncdetect.data.frontends import LFCC, FilterBank, LogMel, apply_bank, band_blocks, mel_filterbank
from ncdetect.data.manifest import _read_csv, _resolve_paths, label_ids, read_manifest
from ncdetect.runs import build_model

SR = 16_000


# ------------------------------------------------------------------------------------- front-ends
@pytest.mark.parametrize("frontend", [LogMel(), LogMel(n_mels=40, f_min=50, f_max=7000), LFCC()])
def test_cpu_chunks_match_the_whole_batch(frontend):
    wave = 0.1 * torch.randn(7, 9_000, generator=torch.Generator().manual_seed(0))
    frames = frontend.num_frames(9_000)
    with torch.no_grad():
        frontend.cpu_chunk_frames = 2 * frames  # chunks of 2 clips: 2 + 2 + 2 + 1
        assert frontend._cpu_chunk(wave) == 2
        chunked = frontend(wave)
        frontend.cpu_chunk_frames = None
        assert frontend._cpu_chunk(wave) == 0
        whole = frontend(wave)
    assert chunked.shape == whole.shape == (7, 1, frontend.n_features, frames)
    torch.testing.assert_close(chunked, whole, rtol=1e-5, atol=1e-5)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.jit.trace: the tracer export uses
def test_no_chunks_while_tracing():
    fe = LogMel()
    fe.cpu_chunk_frames = 1
    traced = torch.jit.trace(fe, torch.randn(3, 4_000))
    # A traced graph must not have the batch split baked in: it takes any batch size.
    assert traced(torch.randn(5, 4_000)).shape[0] == 5


def test_band_blocks_cover_every_weight():
    fb = mel_filterbank(SR, 512, 80)
    blocks = band_blocks(fb)
    assert [b[0] for b in blocks] == sorted(b[0] for b in blocks)
    covered = np.zeros_like(fb, dtype=bool)
    for a, b, lo, hi in blocks:
        covered[a:b, lo:hi] = True
    assert not np.any((fb != 0) & ~covered)
    assert covered.sum() < fb.size / 2  # the point: far fewer products than the dense matrix


def test_banded_product_equals_dense_including_empty_filters():
    fb = mel_filterbank(SR, 512, 24)
    fb[5] = 0.0  # an all-zero filter (possible with odd f_min/f_max) must give zeros, not fail
    power = torch.rand(3, fb.shape[1], 11)
    dense = torch.matmul(torch.from_numpy(fb), power)
    for n_blocks in (1, 3, 4, 24, 30):
        got = apply_bank(torch.from_numpy(fb), band_blocks(fb, n_blocks), power)
        torch.testing.assert_close(got, dense, rtol=1e-6, atol=1e-7)


def test_interleaved_bank_equals_power_then_bank():
    fb = mel_filterbank(SR, 512, 80)
    bank = FilterBank(fb)
    spec = torch.randn(2, 9, 257, dtype=torch.complex64)
    power = (spec.real**2 + spec.imag**2).transpose(1, 2)
    squares = torch.view_as_real(spec).square().flatten(-2).transpose(1, 2)
    torch.testing.assert_close(bank(squares, interleaved=True), bank(power), rtol=1e-5, atol=1e-6)


def test_fft_and_conv_paths_still_agree():
    fe = LogMel()
    wave = 0.1 * torch.randn(6, 16_000, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        fast = fe(wave)
        fe.spectrum.use_conv = True
        conv = fe(wave)
    torch.testing.assert_close(fast, conv, rtol=1e-3, atol=2e-3)


# ------------------------------------------------------------------------------------------ models
def test_build_model_is_channels_last_and_saves_plain_tensors(tmp_path):
    from ncdetect.config import load_config
    from ncdetect.runs import load_weights, save_weights

    cfg = load_config(None, ["model.name=tiny_resnet"])
    model = build_model(cfg, 80)
    convs = [p for p in model.parameters() if p.dim() == 4]
    assert convs and all(p.is_contiguous(memory_format=torch.channels_last) for p in convs)
    save_weights(model, tmp_path / "m.safetensors", model_name="tiny_resnet")
    fresh = load_weights(build_model(cfg, 80), tmp_path / "m.safetensors", model_name="tiny_resnet")
    x = torch.randn(2, 1, 80, 64)
    model.eval()
    fresh.eval()
    with torch.no_grad():
        plain = model.to(memory_format=torch.contiguous_format)(x)
        torch.testing.assert_close(fresh(x), plain, rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------------------------------- audio
def test_load_crop_is_duration_then_load_audio(tmp_path):
    path = tmp_path / "a.flac"
    x = (0.1 * np.random.default_rng(0).standard_normal(3 * 22_050)).astype(np.float32)
    sf.write(str(path), x, 22_050)  # a resampled file: the draw is in output samples
    n = 16_000
    for seed in range(5):
        total = int(audio_mod.audio_duration(path) * SR)
        start = int(np.random.default_rng(seed).integers(0, total - n + 1))
        expected = audio_mod.load_audio(path, SR, offset=start / SR, duration=n / SR)
        got = audio_mod.load_crop(path, n, np.random.default_rng(seed), SR)
        np.testing.assert_array_equal(got, expected)
    whole = audio_mod.load_crop(path, 10 * SR, np.random.default_rng(0), SR)  # shorter than the window
    np.testing.assert_array_equal(whole, audio_mod.load_audio(path, SR))


# ---------------------------------------------------------------------------------------- manifest
_ATOMS = ["a", ".", "..", "", "b.flac", " x", ".h", "~", "é", "a b", "...", "c,d"]


def test_resolve_paths_matches_pathlib():
    base = Path("/data/corpus dir")
    rng = random.Random(0)
    paths = []
    for _ in range(3000):
        p = "/".join(rng.choice(_ATOMS) for _ in range(rng.randint(1, 4)))
        p = "/" + p if rng.random() < 0.2 else p
        if p:
            paths.append(p)
    series = pd.Series(paths, dtype="str")
    expected = [p if Path(p).is_absolute() else str(base / p) for p in paths]
    assert _resolve_paths(series, base).tolist() == expected
    assert _resolve_paths(pd.Series(["x/y", "/z"], dtype="str"), Path("/")).tolist() == ["/x/y", "/z"]


@pytest.mark.parametrize("text", [
    'utt_id,path,x\n1,"a,b",\n2,"two\nlines",NA\n',  # quoting, an embedded newline, an empty field, NA
    "\ufeffutt_id,path,path\n1,a,b\n",  # byte-order mark, duplicate column
    "utt_id,,path\n1,2,3\n\n",  # unnamed column, blank line
    "utt_id,path\n1,2,3\n",  # a row longer than the header: pandas reads it with an index column
    "utt_id,path,x\n1,2\n",  # a short row: pandas pads it
])
def test_read_csv_matches_pandas(tmp_path, text):
    path = tmp_path / "m.csv"
    path.write_text(text, encoding="utf-8")
    expected = pd.read_csv(path, dtype=str, keep_default_na=False)
    pd.testing.assert_frame_equal(_read_csv(path), expected)


def test_read_manifest_resolves_and_validates(tmp_path):
    (tmp_path / "m.csv").write_text(
        "utt_id,path,label,dataset,attack,speaker\n"
        "u1,flac/./u1.flac,bonafide,d,-,s\nu2,/abs/u2.flac,spoof,d,A01,s\n", encoding="utf-8")
    df = read_manifest(tmp_path / "m.csv")
    assert df["path"].tolist() == [str(tmp_path.resolve() / "flac" / "u1.flac"), "/abs/u2.flac"]
    assert label_ids(df["label"]).tolist() == [1, 0]


def test_label_ids_inputs():
    expected = [1, 0, 0, 0]
    values = ["bonafide", "spoof", "x", "Bonafide"]
    assert label_ids(values).tolist() == expected
    assert label_ids(pd.Series(values)).tolist() == expected
    assert label_ids(pd.Series([*values[:3], None], dtype=object)).tolist() == expected
    assert label_ids(np.array(values)).tolist() == expected
    assert label_ids(pd.Series([], dtype=str)).dtype == np.int64


def test_chunks_under_autograd():
    fe = LogMel()
    fe.cpu_chunk_frames = fe.num_frames(4_000)  # one clip per chunk
    wave = (0.1 * torch.randn(3, 4_000)).requires_grad_()
    fe(wave).sum().backward()  # the scratch arrays (out=) are skipped when gradients flow
    assert wave.grad is not None and torch.isfinite(wave.grad).all()
