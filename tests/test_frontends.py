"""Front-ends: numerics against librosa, shapes, deltas, the ONNX path, the registry."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import synth_utterance
from ncdetect.data.frontends import (
    FRONTENDS,
    LFCC,
    Frontend,
    LogMel,
    RawFrames,
    build_frontend,
    dct_matrix,
    linear_filterbank,
    mel_filterbank,
)
from ncdetect.errors import ConfigError

SR = 16_000
FLOOR = 1e-6
# Tolerance against librosa: the log of the mel power may differ by at most 1e-3 (natural log, i.e.
# 0.1 % relative power) in every bin whose power is at least 10 x the floor; below that the floor
# dominates and both sides are within float32 rounding of log(floor). Measured: ~2e-6.
LOG_TOL = 1e-3


def _signals(n: int = 16_000) -> np.ndarray:
    rng = np.random.default_rng(0)
    t = np.arange(n) / SR
    noise = 0.1 * rng.standard_normal(n)
    chirp = 0.5 * np.sin(2 * np.pi * (100 * t + 3500 * t**2))
    speech = synth_utterance(rng, "bonafide", seconds=n / SR)[:n]
    fading = noise * np.linspace(0, 1, n) ** 6  # very quiet start: exercises the floor
    return np.stack([noise, chirp, speech, fading]).astype(np.float32)


def test_mel_filterbank_equals_librosa():
    librosa = pytest.importorskip("librosa")
    for n_mels, fmin, fmax in [(80, 0.0, None), (40, 20.0, 7600.0), (128, 0.0, 8000.0)]:
        ref = librosa.filters.mel(sr=SR, n_fft=512, n_mels=n_mels, fmin=fmin, fmax=fmax)
        ours = mel_filterbank(SR, 512, n_mels, fmin, fmax)
        np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("pad_mode", ["constant", "reflect"])
@pytest.mark.parametrize("length", [16_000, 12_345])
def test_logmel_matches_librosa(pad_mode, length):
    librosa = pytest.importorskip("librosa")
    x = _signals(length)
    fe = LogMel(pad_mode=pad_mode)
    with torch.no_grad():
        ours = fe(torch.from_numpy(x))[:, 0].numpy()
    assert ours.shape == (len(x), 80, 1 + length // 160) == (len(x), 80, fe.num_frames(length))
    covered = []
    for i in range(len(x)):
        mel = librosa.feature.melspectrogram(
            y=x[i], sr=SR, n_fft=512, win_length=400, hop_length=160, n_mels=80, power=2.0,
            center=True, pad_mode=pad_mode, htk=False, norm="slaney",
        )
        ref = np.log(np.maximum(mel, FLOOR))
        assert ref.shape == ours[i].shape
        above = mel > 10 * FLOOR
        covered.append(above.mean())
        assert np.max(np.abs(ours[i][above] - ref[above])) < LOG_TOL
        assert np.max(np.abs(ours[i][~above] - ref[~above]), initial=0.0) < 10 * LOG_TOL
        # the same statement on the power: relative error 1e-4 of the clip's peak
        assert np.max(np.abs(np.exp(ours[i]) - np.maximum(mel, FLOOR))) < 1e-4 * mel.max()
    assert np.mean(covered) > 0.5  # the strict comparison covers most bins (a chirp leaves many empty)


def test_conv_path_equals_fft_path():
    x = torch.from_numpy(_signals(9_999))
    for fe in (LogMel(), LFCC()):
        with torch.no_grad():
            a = fe(x)
            fe.spectrum.use_conv = True
            b = fe(x)
        assert a.shape == b.shape
        assert torch.max(torch.abs(a - b)) < 2e-3


def test_batched_equals_one_by_one():
    x = torch.from_numpy(_signals())
    for fe in (LogMel(), LFCC(), RawFrames()):
        with torch.no_grad():
            batched = fe(x)
            single = torch.cat([fe(x[i : i + 1]) for i in range(len(x))])
        torch.testing.assert_close(batched, single, rtol=1e-5, atol=1e-4)


def test_lfcc_shape_finite_and_static_part():
    scipy_fft = pytest.importorskip("scipy.fft")
    librosa = pytest.importorskip("librosa")
    x = _signals()
    fe = LFCC()
    assert fe.n_features == 60
    with torch.no_grad():
        out = fe(torch.from_numpy(x))
        silent = fe(torch.zeros(2, 8000))
    assert out.shape == (4, 1, 60, 101)
    assert torch.isfinite(out).all() and torch.isfinite(silent).all()
    # Static coefficients, recomputed independently: librosa STFT, our filterbank, scipy DCT.
    spec = np.abs(librosa.stft(x[2], n_fft=512, hop_length=160, win_length=320, center=True,
                               pad_mode="constant")) ** 2
    energies = linear_filterbank(SR, 512, 20) @ spec
    ref = scipy_fft.dct(np.log(np.maximum(energies, FLOOR)), type=2, norm="ortho", axis=0)[:20]
    np.testing.assert_allclose(out[2, 0, :20].numpy(), ref, atol=2e-3)
    assert LFCC(with_deltas=False).n_features == 20


def test_dct_matrix_is_orthonormal_dct2():
    scipy_fft = pytest.importorskip("scipy.fft")
    m = dct_matrix(20, 20)
    np.testing.assert_allclose(m @ m.T, np.eye(20), atol=1e-5)
    np.testing.assert_allclose(m, scipy_fft.dct(np.eye(20), type=2, norm="ortho", axis=0), atol=1e-6)


def test_deltas_of_ramp_and_parabola():
    fe = LFCC(n_lfcc=3, n_filters=3)
    t = torch.arange(50, dtype=torch.float32)
    ramp = torch.stack([0.5 * t, -2.0 * t, 3.0 + 0 * t]).unsqueeze(0)  # (1, 3, 50)
    d = fe.delta(ramp)
    w = fe.delta_width
    inner = slice(w, 50 - w)
    torch.testing.assert_close(d[0, :, inner], torch.tensor([0.5, -2.0, 0.0])[:, None].expand(3, 50 - 2 * w))
    dd = fe.delta(d)
    assert torch.max(torch.abs(dd[0, :, 2 * w : 50 - 2 * w])) < 1e-5
    # The regression formula is exact on parabolas: d(t^2) = 2t.
    d2 = fe.delta((t**2).view(1, 1, -1).expand(1, 3, 50).contiguous())
    torch.testing.assert_close(d2[0, 0, inner], 2 * t[inner])
    # Edge frames are repeated, not zero-padded: the delta there is smaller, never a jump to -t.
    assert 0 <= float(d[0, 0, 0]) < 0.5


def test_rawframes():
    x = torch.randn(3, 64_600)
    fe = RawFrames(frame=160)
    out = fe(x)
    assert out.shape == (3, 1, 160, 403) and fe.num_frames(64_600) == 403 and fe.n_features == 160
    torch.testing.assert_close(out[1, 0, :, 7], x[1, 7 * 160 : 8 * 160])


def test_registry_config_roundtrip_and_errors():
    assert set(FRONTENDS) == {"logmel", "lfcc", "raw", "whisper"}
    x = torch.from_numpy(_signals(8000))
    for name in FRONTENDS:
        fe = build_frontend(name)
        cfg = dict(fe.config)
        assert cfg.pop("name") == name
        again = build_frontend(name, **cfg)
        torch.testing.assert_close(fe(x), again(x))
        assert fe.state_dict() == {} or all(not k.endswith(("filters", "window", "dft_kernel"))
                                            for k in fe.state_dict())
    assert build_frontend("logmel", n_mels=40).n_features == 40
    with pytest.raises(ConfigError, match="unknown front-end"):
        build_frontend("mfcc")
    with pytest.raises(ConfigError, match="n_mel"):
        build_frontend("logmel", n_mel=40)
    with pytest.raises(ConfigError):
        build_frontend("lfcc", n_lfcc=30, n_filters=20)


@pytest.mark.parametrize("name", sorted(FRONTENDS))
def test_shift_invariance_is_declared_truthfully(name):
    # What the feature store relies on: a front-end that declares itself shift-invariant gives, for a crop
    # starting on a hop, the frames of the longer encoding (away from the edge frames); Whisper does not.
    fe = build_frontend(name, **({"threads": 1} if name == "whisper" else {}))
    assert isinstance(fe, Frontend) and isinstance(fe.shift_invariant, bool) and fe.hop_samples >= 1
    x = torch.from_numpy(_signals(24_000)[2:3])
    hop, n = fe.hop_samples, 12_000
    a = 3_000 // hop  # the crop's first frame
    long = fe(x)[0, 0]
    crop = fe(x[:, a * hop : a * hop + n])[0, 0]
    edge = 8  # frames whose analysis window (or delta context: LFCC's 2 x 2) reaches past an edge
    inner_long = long[:, a + edge : a + crop.shape[-1] - edge]
    inner_crop = crop[:, edge:-edge]
    rel = float((inner_long - inner_crop).norm() / inner_crop.norm())
    if fe.shift_invariant:
        assert rel < 1e-4, (name, rel)
    else:
        assert rel > 1e-2, (name, rel)


def test_buffers_are_not_persistent_and_follow_dtype_device():
    fe = LogMel()
    assert fe.state_dict() == {}  # nothing to save: the front-end is rebuilt from its config
    assert {n for n, _ in fe.named_buffers()} >= {"filters", "spectrum.window", "spectrum.dft_kernel"}


def test_autocast_keeps_float32():
    fe = LogMel()
    x = torch.from_numpy(_signals(4000))
    with torch.no_grad():
        ref = fe(x.bfloat16().float())
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = fe(x.bfloat16())
    assert out.dtype == torch.float32
    # Same input values, so a float32 computation inside autocast must give the float32 result.
    torch.testing.assert_close(out, ref)


def test_input_shapes():
    fe = LogMel()
    x = torch.randn(8000)
    assert fe(x).shape == (1, 1, 80, 51)
    assert fe(x.view(1, 1, -1)).shape == (1, 1, 80, 51)
    with pytest.raises(ValueError):
        fe(torch.randn(2, 2, 8000))


@pytest.mark.parametrize("name", ["logmel", "lfcc", "raw"])
def test_onnx_export_matches_torch(tmp_path, name):
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    fe = build_frontend(name).eval()
    path = tmp_path / f"{name}.onnx"
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            fe, (torch.randn(2, 16_000),), str(path), dynamo=False, opset_version=17,
            input_names=["wave"], output_names=["features"],
            dynamic_axes={"wave": {0: "batch", 1: "samples"}, "features": {0: "batch", 3: "frames"}},
        )
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = _signals(12_345)[:3]  # another batch size and length than at export
    (out,) = sess.run(None, {"wave": x})
    with torch.no_grad():
        ref = fe(torch.from_numpy(x)).numpy()
    assert out.shape == ref.shape
    np.testing.assert_allclose(out, ref, atol=2e-3)
