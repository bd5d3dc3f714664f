"""Calibration: the prior-weighted logistic regression against scikit-learn's, known LLRs recovered, the
calibration file, and what score, detect, export and evaluate do with a calibrated run."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from ncdetect.calibration import (
    CALIBRATION_FILE,
    CALIBRATION_SCORES_FILE,
    Calibration,
    calibrate_scores,
    fit_affine,
    load_calibration,
    posterior_bonafide,
)
from ncdetect.cli import app
from ncdetect.detect import Detector, detect
from ncdetect.errors import ModelFileError, NcdetectError
from ncdetect.evaluate import DcfCosts, evaluate_file, read_scores

runner = CliRunner()


def sklearn_fit(bona: np.ndarray, spoof: np.ndarray, prior_spoof: float) -> tuple[float, float]:
    """The same objective through scikit-learn: class weights P(class) / N(class), no penalty, and the
    fitted intercept minus the prior log-odds ln(P(b) / P(s))."""
    from sklearn.linear_model import LogisticRegression

    x = np.concatenate((bona, spoof))[:, None]
    y = np.r_[np.ones(bona.size), np.zeros(spoof.size)]
    w = np.r_[np.full(bona.size, (1 - prior_spoof) / bona.size),
              np.full(spoof.size, prior_spoof / spoof.size)]
    lr = LogisticRegression(C=1e12, tol=1e-12, max_iter=10_000).fit(x, y, sample_weight=w * len(y))
    return float(lr.coef_[0, 0]), float(lr.intercept_[0]) - math.log((1 - prior_spoof) / prior_spoof)


@pytest.mark.parametrize("prior", [0.05, 0.345, 0.5, 0.8])
def test_fit_matches_scikit_learn(prior):
    rng = np.random.default_rng(int(prior * 100))
    bona, spoof = rng.normal(3, 2, 700), rng.normal(-1, 3, 1300)
    ra, rb = sklearn_fit(bona, spoof, prior)
    a, b = fit_affine(bona, spoof, prior, penalty=0.0)
    assert a == pytest.approx(ra, rel=1e-5) and b == pytest.approx(rb, abs=1e-5)
    # The default's L2 penalty (1e-6 on the slope of standardised scores) moves it by about 1e-4.
    a, b = fit_affine(bona, spoof, prior)
    assert a == pytest.approx(ra, rel=1e-3) and b == pytest.approx(rb, abs=1e-3)


def test_known_llrs_are_recovered():
    # Bonafide N(1, 2) and spoof N(-1, 2) have LLR(s) = s; the scores given are (s - 3) / 2, so the map
    # that turns them back into LLRs is 2 * score + 3, whatever prior the fit is weighted with.
    rng = np.random.default_rng(0)
    s_b, s_s = rng.normal(1, math.sqrt(2), 50_000), rng.normal(-1, math.sqrt(2), 50_000)
    for prior in (0.05, 0.5, 0.9):
        a, b = fit_affine((s_b - 3) / 2, (s_s - 3) / 2, prior)
        assert a == pytest.approx(2.0, abs=0.05) and b == pytest.approx(3.0, abs=0.08)


def test_separable_and_inverted_dev_sets():
    # Classes that do not overlap: the slope stays finite (the penalty), positive, and decisions perfect.
    cal = calibrate_scores(scores_frame([5.0, 6.0, 7.0], [-3.0, -2.0]), "dev")
    assert 0 < cal.slope < 1e3 and cal.dev_metrics["act_dcf"] == 0.0 and cal.dev_metrics["min_dcf"] == 0.0
    assert cal.llr(5.0) > 0 > cal.llr(-2.0)
    with pytest.raises(NcdetectError, match="dev: the fitted slope is -"):
        calibrate_scores(scores_frame([-3.0, -2.0, -2.5], [5.0, 6.0]), "dev")
    with pytest.raises(NcdetectError, match="all are equal"):
        fit_affine([1.0, 1.0], [1.0], 0.5)


def scores_frame(bona, spoof) -> pd.DataFrame:
    return pd.DataFrame({"utt_id": [f"u{i}" for i in range(len(bona) + len(spoof))], "score": [*bona, *spoof],
                         "label": ["bonafide"] * len(bona) + ["spoof"] * len(spoof)})


def test_calibration_fixes_scaled_scores_on_dev():
    rng = np.random.default_rng(1)
    bona, spoof = 10 * rng.normal(1, math.sqrt(2), 3000), 10 * rng.normal(-1, math.sqrt(2), 3000)
    cal = calibrate_scores(scores_frame(bona, spoof), "dev")
    m = cal.dev_metrics
    assert m["cllr"] < m["cllr_raw"] - 0.2 and m["cllr"] == pytest.approx(m["min_cllr"], abs=0.02)
    assert m["act_dcf"] <= m["act_dcf_raw"] and m["act_dcf"] == pytest.approx(m["min_dcf"], abs=0.05)
    assert cal.fit_prior_spoof == pytest.approx(DcfCosts().effective_prior_spoof)


def test_posterior_and_bayes_threshold():
    assert posterior_bonafide(0.0, 0.5) == 0.5
    assert posterior_bonafide(math.log(3), 0.5) == pytest.approx(0.75)
    # Prior odds 1:9 against bonafide cancel an LLR of ln 9.
    assert posterior_bonafide(math.log(9), 0.9) == pytest.approx(0.5)
    assert posterior_bonafide(-800.0, 0.5) == 0.0 and posterior_bonafide(800.0, 0.5) == 1.0
    # At prior 0.5 with C_fa 10, C_miss 1 the Bayes threshold is LLR ln 10: P(bonafide) = 10/11.
    t = DcfCosts(1, 10, 0.5).bayes_threshold
    assert t == pytest.approx(math.log(10)) and posterior_bonafide(t, 0.5) == pytest.approx(10 / 11)


# --- run folders ------------------------------------------------------------------------------------


def test_calibrate_run_from_a_manifest(calibrated_run, toy_dev_manifest):
    cal = load_calibration(calibrated_run)
    saved = json.loads((calibrated_run / CALIBRATION_FILE).read_text())
    assert saved["kind"] == "affine" and saved["dev"] == str(toy_dev_manifest)
    dev = read_scores(calibrated_run / CALIBRATION_SCORES_FILE)
    assert (cal.n_bonafide, cal.n_spoof) == (8, 16) == (int((dev.label == "bonafide").sum()),
                                                        int((dev.label == "spoof").sum()))
    bona = dev.loc[dev.label == "bonafide", "score"].to_numpy()
    spoof = dev.loc[dev.label == "spoof", "score"].to_numpy()
    assert (cal.slope, cal.offset) == pytest.approx(fit_affine(bona, spoof, cal.fit_prior_spoof))


def test_calibrate_cli_from_scores_and_bad_files(tmp_path, calibrated_run):
    run = tmp_path / "run"
    run.mkdir()
    scores = tmp_path / "dev_scores.csv"
    rng = np.random.default_rng(2)
    scores_frame(rng.normal(2, 1, 50), rng.normal(-1, 1, 80)).to_csv(scores, index=False)
    result = runner.invoke(app, ["calibrate", str(run), "--dev", str(scores), "--prior-spoof", "0.2",
                                 "--cost-fa", "1"])
    assert result.exit_code == 0, result.output
    assert "llr = " in result.output and "dev Cllr" in result.output
    cal = load_calibration(run)
    assert cal.fit_prior_spoof == pytest.approx(0.2) and cal.costs["cost_fa"] == 1.0
    assert not (run / CALIBRATION_SCORES_FILE).exists()  # scores given: nothing scored
    (run / CALIBRATION_FILE).write_text('{"slope": -1}')
    with pytest.raises(ModelFileError, match=r"calibration\.json: not a calibration file"):
        load_calibration(run)
    (run / CALIBRATION_FILE).write_text("{")
    with pytest.raises(ModelFileError, match="unreadable calibration"):
        load_calibration(run)
    assert load_calibration(tmp_path) is None


def test_detect_with_a_calibrated_run(calibrated_run, tmp_path):
    from conftest import synth_utterance, write_wav

    rng = np.random.default_rng(3)
    files = [write_wav(tmp_path / f"{lab}.wav", synth_utterance(rng, lab, seconds=1.5))
             for lab in ("bonafide", "spoof")]
    cal = load_calibration(calibrated_run)
    for prior in (0.5, 0.05):
        for r in detect(files, calibrated_run, prior_spoof=prior):
            assert r["calibrated"] is True and r["prior_spoof"] == prior
            assert r["llr"] == pytest.approx(cal.slope * r["score"] + cal.offset, abs=1e-12)
            assert r["probability"] == pytest.approx(posterior_bonafide(r["llr"], prior), abs=1e-12)
            bayes = DcfCosts(1, 10, prior).bayes_threshold
            assert r["label"] == ("bonafide" if r["llr"] > bayes else "spoof")
            assert r["threshold"] == pytest.approx(cal.score_at(bayes), abs=1e-9)
    # A number stays a score threshold; the probability stays that of the prior.
    [r] = list(detect(files[:1], calibrated_run, threshold=-1e9))
    assert r["label"] == "bonafide" and r["threshold"] == -1e9 and r["probability"] is not None
    plain = tmp_path / "plain"
    shutil.copytree(calibrated_run, plain)
    (plain / CALIBRATION_FILE).unlink()
    with pytest.raises(NcdetectError, match="--threshold bayes needs a calibrated run"):
        Detector(plain, threshold="bayes")


def test_score_evaluate_and_onnx_carry_the_calibration(calibrated_run, toy_dev_manifest, tmp_path):
    from ncdetect.calibration import score_calibrated

    cal = load_calibration(calibrated_run)
    out = score_calibrated(calibrated_run, toy_dev_manifest, tmp_path / "s.csv", prior_spoof=0.3,
                           progress=False)
    written = read_scores(tmp_path / "s.csv")["llr"].astype(float)  # extra columns are read as text
    assert written.tolist() == pytest.approx(out["llr"].tolist(), abs=1e-12)
    np.testing.assert_allclose(out["llr"], cal.slope * out["score"] + cal.offset, atol=1e-12)
    assert out["probability"].tolist() == pytest.approx([posterior_bonafide(v, 0.3) for v in out["llr"]])
    result = evaluate_file(tmp_path / "s.csv", n_bootstrap=0)
    assert result["llr_from"] == "llr"
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime not installed (extra ncdetect[onnx])")
    assert ort is not None
    from ncdetect.export import export_onnx

    onnx_file = export_onnx(calibrated_run, tmp_path / "m.onnx")
    detector = Detector(onnx_file)
    assert isinstance(detector.calibration, Calibration)
    assert (detector.calibration.slope, detector.calibration.offset) == (cal.slope, cal.offset)
