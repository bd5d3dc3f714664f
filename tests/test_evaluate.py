"""Evaluation: EER against hand-worked cases and a brute-force re-implementation, the vectorised
bootstrap against per-resample EERs, min t-DCF against a hand-worked tandem, score-file validation,
figures and the `evaluate` command."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st
from typer.testing import CliRunner

from conftest import property_settings
from ncdetect import evaluate as ev
from ncdetect.cli import app
from ncdetect.errors import ConfigError, NcdetectError, ProtocolError
from ncdetect.evaluate import (
    ASVSPOOF2019_COST_MODEL,
    AsvScores,
    bootstrap_eer_ci,
    bootstrap_eers,
    compute_det_curve,
    compute_eer,
    compute_tdcf_curve,
    evaluate_scores,
    min_tdcf,
    plot_det,
    plot_score_histograms,
    read_asv_scores,
    read_scores,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def brute_force_eer(bonafide: list[float], spoof: list[float]) -> tuple[float, float]:
    """The ASVspoof procedure spelled out point by point, without cumulative sums.

    Operating point i rejects the i lowest scores; ties put bonafide first (what the reference's stable
    sort of concat(bonafide, spoof) does). Point 0 rejects nothing, at min(score) - 0.001.
    """
    items = sorted([(s, 0) for s in bonafide] + [(s, 1) for s in spoof])
    best = None
    for i in range(len(items) + 1):
        frr = sum(1 for _, lab in items[:i] if lab == 0) / len(bonafide)
        far = sum(1 for _, lab in items[i:] if lab == 1) / len(spoof)
        thr = items[i - 1][0] if i else items[0][0] - 0.001
        gap = abs(frr - far)
        if best is None or gap < best[0]:  # strict: the first minimum wins, like np.argmin
            best = (gap, (frr + far) / 2 * 100, thr)
    return best[1], best[2]


# --- EER ---------------------------------------------------------------------------------------------


def test_eer_hand_worked():
    # Sorted scores with labels (b = bonafide, s = spoof):
    #   0.1 s, 0.2 s, 0.3 b, 0.4 s, 0.8 b, 0.85 s, 0.9 b
    # Point i rejects the i lowest scores. FRR = rejected bonafide / 3, FAR = accepted spoofs / 4:
    #   i:    0    1    2    3    4    5    6    7
    #   FRR:  0    0    0   1/3  1/3  2/3  2/3   1
    #   FAR:  1   3/4  1/2  1/2  1/4  1/4   0    0
    #   |d|:  1   .75  .5  .167 .083 .417 .667  1
    # Minimum at i = 4: EER = (1/3 + 1/4) / 2 = 7/24 = 29.1667 %, threshold = 4th sorted score = 0.4.
    bona = [0.9, 0.8, 0.3]
    spoof = [0.4, 0.2, 0.1, 0.85]
    eer, thr = compute_eer(bona, spoof)
    assert eer == pytest.approx(100 * 7 / 24, abs=1e-12)
    assert thr == 0.4
    frr, far, thresholds = compute_det_curve(np.array(bona), np.array(spoof))
    np.testing.assert_allclose(frr, [0, 0, 0, 1 / 3, 1 / 3, 2 / 3, 2 / 3, 1])
    np.testing.assert_allclose(far, [1, 3 / 4, 1 / 2, 1 / 2, 1 / 4, 1 / 4, 0, 0])
    np.testing.assert_allclose(thresholds, [0.1 - 0.001, 0.1, 0.2, 0.3, 0.4, 0.8, 0.85, 0.9])


def test_eer_perfect_separation_and_inverted():
    eer, thr = compute_eer([2.0, 3.0, 4.0], [-1.0, 0.0, 1.0])
    assert eer == 0.0
    assert thr == 1.0  # accept if score > 1.0: every bonafide in, every spoof out
    eer, _ = compute_eer([-1.0, 0.0, 1.0], [2.0, 3.0, 4.0])
    assert eer == 100.0


def test_eer_ties_count_against_the_system():
    # Stable sort of concat(bonafide, spoof) puts the tied bonafide 0.5 before the tied spoof 0.5:
    #   0 s, 0.5 b, 0.5 s, 1 b -> FRR [0, 0, .5, .5, 1], FAR [1, .5, .5, 0, 0] -> i = 2: EER 50 %.
    # Breaking the tie the other way would give 0 %.
    eer, thr = compute_eer([1.0, 0.5], [0.5, 0.0])
    assert eer == 50.0
    assert thr == 0.5
    # All scores tied: FRR reaches 1 while FAR is still 1 (EER 100 %), as in the reference code.
    assert compute_eer([0.5, 0.5], [0.5, 0.5])[0] == 100.0


def test_eer_rejects_empty_and_nan():
    with pytest.raises(NcdetectError, match="bonafide"):
        compute_eer([], [0.1])
    with pytest.raises(NcdetectError, match="spoof"):
        compute_eer([0.1], [])
    with pytest.raises(NcdetectError, match="NaN"):
        compute_eer([0.1, float("nan")], [0.0])


score_lists = st.one_of(
    # few distinct values: many ties between and within classes
    st.lists(st.integers(-3, 3).map(lambda v: v / 2), min_size=1, max_size=25),
    st.lists(st.floats(-1e3, 1e3, allow_nan=False), min_size=1, max_size=25),
)


@property_settings(300)
@given(bona=score_lists, spoof=score_lists)
def test_eer_matches_brute_force(bona, spoof):
    eer, thr = compute_eer(bona, spoof)
    ref_eer, ref_thr = brute_force_eer(bona, spoof)
    assert eer == pytest.approx(ref_eer, abs=1e-9)
    assert thr == ref_thr


# --- bootstrap -------------------------------------------------------------------------------------


@property_settings(200)
@given(bona=score_lists, spoof=score_lists, seed=st.integers(0, 2**16), sizes=st.booleans())
def test_vectorised_resample_eers_equal_compute_eer(bona, spoof, seed, sizes):
    b, s = np.array(bona), np.array(spoof)
    rng = np.random.default_rng(seed)
    # resamples of the original sizes, and of other sizes (the fast path must not assume either)
    mb, ms = (b.size, s.size) if sizes else (int(rng.integers(1, 30)), int(rng.integers(1, 30)))
    idx_b = rng.integers(0, b.size, size=(4, mb))
    idx_s = rng.integers(0, s.size, size=(4, ms))
    fast = ev._eers_from_resamples(b, s, idx_b, idx_s)
    slow = [compute_eer(b[idx_b[r]], s[idx_s[r]])[0] for r in range(4)]
    np.testing.assert_allclose(fast, slow, rtol=0, atol=1e-9)


def test_bootstrap_is_compute_eer_on_seeded_resamples(monkeypatch):
    rng = np.random.default_rng(3)
    b = np.round(rng.normal(1, 1, 60), 1)
    s = np.round(rng.normal(0, 1, 90), 1)
    eers = bootstrap_eers(b, s, n_bootstrap=25, seed=11)
    # Re-draw the resamples one at a time from the documented generators.
    rng_b, rng_s = (np.random.default_rng(c) for c in np.random.SeedSequence(11).spawn(2))
    expected = []
    for _ in range(25):
        ib = rng_b.integers(0, b.size, size=(1, b.size), dtype=np.int32)[0]
        is_ = rng_s.integers(0, s.size, size=(1, s.size), dtype=np.int32)[0]
        expected.append(compute_eer(b[ib], s[is_])[0])
    np.testing.assert_allclose(eers, expected, rtol=0, atol=1e-9)
    # Chunking (memory) does not change the draws.
    monkeypatch.setattr(ev, "_BOOTSTRAP_CHUNK_ELEMENTS", 1)
    np.testing.assert_array_equal(bootstrap_eers(b, s, n_bootstrap=25, seed=11), eers)
    assert not np.array_equal(bootstrap_eers(b, s, n_bootstrap=25, seed=12), eers)


def test_bootstrap_ci_brackets_eer_and_shrinks_with_data():
    rng = np.random.default_rng(0)
    small = (rng.normal(1.5, 1, 200), rng.normal(0, 1, 400))
    large = (rng.normal(1.5, 1, 5000), rng.normal(0, 1, 10000))
    widths = []
    for b, s in (small, large):
        lo, hi = bootstrap_eer_ci(b, s, n_bootstrap=300, seed=0)
        eer, _ = compute_eer(b, s)
        assert lo < eer < hi
        widths.append(hi - lo)
    assert widths[1] < widths[0] / 3  # ~ 1/sqrt(25) of the small-sample width
    # the true EER of N(1.5,1) vs N(0,1) is Phi(-0.75) = 22.66 %
    assert lo < 22.66 < hi


def test_bootstrap_on_asvspoof_eval_size():
    # ASVspoof 2019 LA eval size: 7,355 bonafide and 63,882 spoof scores (its speed: bench_scoring.py).
    rng = np.random.default_rng(0)
    b, s = rng.normal(2, 1, 7355), rng.normal(0, 1.5, 63882)
    eers = bootstrap_eers(b, s, n_bootstrap=20, seed=0)
    assert eers.shape == (20,) and np.isfinite(eers).all()
    # resamples of 71k scores scatter tightly around the full-data EER
    assert np.abs(eers - compute_eer(b, s)[0]).max() < 1.5


def test_bootstrap_rejects_negative_count():
    with pytest.raises(ConfigError):
        bootstrap_eers([1.0], [0.0], n_bootstrap=-1)


# --- t-DCF -----------------------------------------------------------------------------------------

# ASV: target [-1.5, 2, 3, 4], nontarget [-2, -1, 0, 1.5]. Sorted:
#   -2 n, -1.5 t, -1 n, 0 n, 1.5 n, 2 t, 3 t, 4 t
#   FRR [0, 0, .25, .25, .25, .25, .5, .75, 1], FAR [1, .75, .75, .5, .25, 0, 0, 0, 0]
#   -> i = 4, ASV EER 25 %, ASV threshold 0.0.
# At threshold 0 (ASV accepts score >= 0): Pfa_asv = #{0, 1.5}/4 = 0.5, Pmiss_asv = #{-1.5}/4 = 0.25,
# and of the spoofs [-3, -0.5, 0, 2, 5] the ASV rejects 2 of 5: Pmiss_spoof_asv = 0.4.
# Cost model: Ptar = .95 * .99 = .9405, Pnon = .95 * .01 = .0095, Pspoof = .05, Cmiss = 1, Cfa = 10.
#   C1 = .9405 * (1 - 1 * .25) - .0095 * 10 * .5 = .705375 - .0475 = .657875
#   C2 = 10 * .05 * (1 - .4) = .3
#   tDCF_norm(s) = (C1 Pmiss_cm + C2 Pfa_cm) / min(C1, C2) = 2.1929167 Pmiss_cm + Pfa_cm
# CM: bonafide [0.05, 0.8, 0.9, 0.95], spoof [0.1, 0.2, 0.4, 0.6]. Sorted:
#   0.05 b, 0.1 s, 0.2 s, 0.4 s, 0.6 s, 0.8 b, 0.9 b, 0.95 b
#   Pmiss_cm [0, .25, .25, .25, .25, .25, .5, .75, 1], Pfa_cm [1, 1, .75, .5, .25, 0, 0, 0, 0]
#   tDCF_norm [1, 1.548, 1.298, 1.048, .798, .548229, 1.096, 1.645, 2.193]
#   -> min t-DCF = .657875 * .25 / .3 = 0.5482291667 at CM threshold 0.6.
HAND_ASV = AsvScores(
    target=np.array([-1.5, 2.0, 3.0, 4.0]),
    nontarget=np.array([-2.0, -1.0, 0.0, 1.5]),
    spoof=np.array([-3.0, -0.5, 0.0, 2.0, 5.0]),
)
HAND_CM = (np.array([0.05, 0.8, 0.9, 0.95]), np.array([0.1, 0.2, 0.4, 0.6]))


def test_cost_model_is_asvspoof2019():
    cm = ASVSPOOF2019_COST_MODEL
    assert cm["Pspoof"] == 0.05
    assert cm["Ptar"] == pytest.approx(0.9405)
    assert cm["Pnon"] == pytest.approx(0.0095)
    assert (cm["Cmiss_asv"], cm["Cfa_asv"], cm["Cmiss_cm"], cm["Cfa_cm"]) == (1, 10, 1, 10)


def test_min_tdcf_hand_worked():
    out = min_tdcf(*HAND_CM, HAND_ASV)
    assert out["asv_eer"] == pytest.approx(25.0)
    assert out["asv_threshold"] == 0.0
    assert (out["pfa_asv"], out["pmiss_asv"], out["pmiss_spoof_asv"]) == (0.5, 0.25, 0.4)
    assert out["min_tdcf"] == pytest.approx(0.657875 * 0.25 / 0.3, abs=1e-12)
    assert out["threshold"] == 0.6
    curve, _ = compute_tdcf_curve(*HAND_CM, 0.5, 0.25, 0.4)
    ratio = 0.657875 / 0.3
    pmiss = np.array([0, 0.25, 0.25, 0.25, 0.25, 0.25, 0.5, 0.75, 1])
    pfa = np.array([1, 1, 0.75, 0.5, 0.25, 0, 0, 0, 0])
    np.testing.assert_allclose(curve, ratio * pmiss + pfa, rtol=1e-12)


def test_asv_error_rates_accept_at_threshold():
    # The reference ASV accepts score >= threshold: scores equal to it count as accepted.
    asv = AsvScores(np.array([0.0, 1.0]), np.array([0.0, -1.0]), np.array([0.0, -1.0, -2.0, 3.0]))
    assert ev.obtain_asv_error_rates(asv, 0.0) == (0.5, 0.0, 0.5)


def test_min_tdcf_perfect_and_random_cm():
    rng = np.random.default_rng(0)
    asv = AsvScores(rng.normal(3, 1, 500), rng.normal(-2, 1, 500), rng.normal(1.5, 1.5, 500))
    # An error-free CM: the ASVspoof 2019 normalised t-DCF has no ASV-only term, so its floor is 0.
    perfect = min_tdcf(rng.normal(5, 1, 300), rng.normal(-5, 1, 3000), asv)
    assert perfect["min_tdcf"] == 0.0
    # A CM that cannot tell the classes apart does no better than accepting or rejecting everything (1).
    rand = min_tdcf(rng.normal(0, 1, 2000), rng.normal(0, 1, 20000), asv)
    assert 0.9 < rand["min_tdcf"] <= 1.0
    # A useful CM lies in between.
    good = min_tdcf(rng.normal(2, 1, 2000), rng.normal(0, 1, 20000), asv)
    assert perfect["min_tdcf"] < good["min_tdcf"] < rand["min_tdcf"]


def test_tdcf_rejects_hard_decisions_and_bad_priors():
    with pytest.raises(NcdetectError, match="soft"):
        min_tdcf(np.array([1.0, 1.0]), np.array([0.0, 0.0]), HAND_ASV)
    bad = dict(ASVSPOOF2019_COST_MODEL, Pspoof=0.5)
    with pytest.raises(ConfigError, match="sum to one"):
        compute_tdcf_curve(*HAND_CM, 0.5, 0.25, 0.4, cost_model=bad)


def test_read_asv_scores_both_layouts(tmp_path):
    three = tmp_path / "asv3.txt"
    three.write_text("LA_0039 target 1.5\nLA_0039 nontarget -2\n\nLA_0040 spoof 0.25\nLA_0040 target 3\n")
    asv = read_asv_scores(three)
    assert asv.target.tolist() == [1.5, 3.0]
    assert asv.nontarget.tolist() == [-2.0]
    assert asv.spoof.tolist() == [0.25]
    six = tmp_path / "asv6.txt"
    six.write_text(
        "LA_0015 LA_E_1 - bonafide target 7.9\n"
        "LA_0015 LA_E_2 - bonafide nontarget -3.1\n"
        "LA_0015 LA_E_3 - A07 spoof 1.25\n"
    )
    asv = read_asv_scores(six)
    assert (asv.target.tolist(), asv.nontarget.tolist(), asv.spoof.tolist()) == ([7.9], [-3.1], [1.25])


@pytest.mark.parametrize(
    ("text", "pattern"),
    [
        ("A target 1\nA impostor 2\n", r"asv\.txt:2: unknown ASV key 'impostor'"),
        ("A target 1\nA nontarget x\n", r"asv\.txt:2: score 'x' is not a number"),
        ("A target 1\nA nontarget 1 2\n", r"asv\.txt:2: expected 3 fields"),
        ("A target 1\nA nontarget 2\n", r"asv\.txt: no spoof trials"),
        ("A target nan\n", r"asv\.txt:1: score 'nan' is not finite"),
    ],
)
def test_read_asv_scores_errors(tmp_path, text, pattern):
    path = tmp_path / "asv.txt"
    path.write_text(text)
    with pytest.raises(ProtocolError, match=pattern):
        read_asv_scores(path)


# --- score files and evaluate_scores --------------------------------------------------------------------


def make_scores(seed: int = 0, n_bona: int = 200, attacks=(("A07", 0.0), ("A08", 1.0), ("A09", -1.0))):
    rng = np.random.default_rng(seed)
    rows = [(f"b{i}", float(rng.normal(2, 1)), "bonafide", "-") for i in range(n_bona)]
    for attack, mean in attacks:
        rows += [(f"{attack}_{i}", float(rng.normal(mean, 1)), "spoof", attack) for i in range(150)]
    return pd.DataFrame(rows, columns=["utt_id", "score", "label", "attack"])


def test_evaluate_scores_contents():
    df = make_scores()
    res = evaluate_scores(df, n_bootstrap=200, seed=0)
    json.dumps(res)  # only JSON types
    bona = df.loc[df.label == "bonafide", "score"].to_numpy()
    spoof = df.loc[df.label == "spoof", "score"].to_numpy()
    assert (res["eer"], res["threshold"]) == compute_eer(bona, spoof)
    assert res["n_bonafide"] == 200 and res["n_spoof"] == 450
    assert res["counts"] == {"bonafide": 200, "spoof": 450}
    lo, hi = res["eer_ci95"]
    assert lo < res["eer"] < hi
    assert list(res["per_attack"]) == ["A07", "A08", "A09"]
    for attack, row in res["per_attack"].items():
        s = df.loc[df.attack == attack, "score"].to_numpy()
        assert row["n"] == 150
        assert row["eer"] == compute_eer(bona, s)[0]
    # the attack closest to bonafide is the hardest
    assert res["per_attack"]["A08"]["eer"] > res["per_attack"]["A07"]["eer"] > res["per_attack"]["A09"]["eer"]
    assert "min_tdcf" not in res
    # same seed, same interval; no bootstrap, no interval
    assert evaluate_scores(df, n_bootstrap=200, seed=0)["eer_ci95"] == res["eer_ci95"]
    assert evaluate_scores(df, n_bootstrap=0)["eer_ci95"] is None


def test_evaluate_scores_without_attack_column_and_with_asv():
    df = make_scores().drop(columns="attack")
    res = evaluate_scores(df, n_bootstrap=0, asv=HAND_ASV)
    assert res["per_attack"] == {}
    bona = df.loc[df.label == "bonafide", "score"].to_numpy()
    spoof = df.loc[df.label == "spoof", "score"].to_numpy()
    assert res["min_tdcf"] == min_tdcf(bona, spoof, HAND_ASV)["min_tdcf"]
    assert res["tdcf"]["pmiss_spoof_asv"] == 0.4
    json.dumps(res)


def test_read_scores_roundtrip(tmp_path):
    path = tmp_path / "s.csv"
    make_scores().to_csv(path, index=False)
    df = read_scores(path)
    assert df["score"].dtype == np.float64
    assert len(df) == 650


@pytest.mark.parametrize(
    ("text", "pattern"),
    [
        ("utt_id,value,label\na,1,bonafide\n", r"s\.csv:1: scores lack columns \['score'\]"),
        ("utt_id,score,label\na,1,bonafide\nb,oops,spoof\n", r"s\.csv:3: score 'oops' is not a finite"),
        ("utt_id,score,label\na,1,bonafide\nb,nan,spoof\n", r"s\.csv:3: score 'nan' is not a finite"),
        ("utt_id,score,label\na,1,bonafide\nb,,spoof\n", r"s\.csv:3: score '' is not a finite"),
        ("utt_id,score,label\na,1,bonafide\nb,inf,spoof\n", r"s\.csv:3: score 'inf' is not a finite"),
        ("utt_id,score,label\na,1,bonafide\nb,0,fake\n", r"s\.csv:3: unknown label 'fake'"),
        ("utt_id,score,label\na,1,bonafide\nb,0,bonafide\n", r"s\.csv: no spoof rows"),
        ("utt_id,score,label\na,1,bonafide\nb,0,spoof,A07\n", r"s\.csv:3: expected 3 fields, got 4"),
        ("", r"s\.csv: scores file is empty"),
    ],
)
def test_read_scores_errors(tmp_path, text, pattern):
    path = tmp_path / "s.csv"
    path.write_text(text)
    with pytest.raises(ProtocolError, match=pattern):
        read_scores(path)


def test_read_scores_missing_file(tmp_path):
    with pytest.raises(ProtocolError, match="not found"):
        read_scores(tmp_path / "nope.csv")


# --- figures ----------------------------------------------------------------------------------------


def test_plots_write_pngs_atomically(tmp_path):
    df = make_scores()
    bona = df.loc[df.label == "bonafide", "score"].to_numpy()
    curves = {
        "good": (bona, df.loc[df.attack == "A09", "score"].to_numpy()),
        "weak": (bona, df.loc[df.attack == "A08", "score"].to_numpy()),
        "perfect": (np.array([5.0, 6.0]), np.array([0.0, 1.0])),
    }
    det = plot_det(curves, tmp_path / "det.png")
    hist = plot_score_histograms(df, tmp_path / "hist.png")
    hist2 = plot_score_histograms(df.drop(columns="attack"), tmp_path / "hist2.png")
    for path in (det, hist, hist2):
        data = path.read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 10_000
    assert sorted(p.name for p in tmp_path.iterdir()) == ["det.png", "hist.png", "hist2.png"]
    with pytest.raises(NcdetectError):
        plot_det({}, tmp_path / "empty.png")


# --- CLI --------------------------------------------------------------------------------------------

runner = CliRunner()


@pytest.fixture()
def scores_csv(tmp_path: Path) -> Path:
    path = tmp_path / "scores.csv"
    make_scores().to_csv(path, index=False)
    return path


def test_cli_table(scores_csv):
    result = runner.invoke(app, ["evaluate", str(scores_csv), "--bootstrap", "50"])
    assert result.exit_code == 0, result.output
    expected = evaluate_scores(read_scores(scores_csv), n_bootstrap=50)
    assert f"EER: {expected['eer']:.3f} %" in result.output
    assert "95% CI" in result.output
    for attack in ("A07", "A08", "A09"):
        assert attack in result.output


def test_cli_json_asv_and_plots(scores_csv, tmp_path):
    asv = tmp_path / "asv.txt"
    asv.write_text(
        "".join(f"S target {v}\n" for v in HAND_ASV.target)
        + "".join(f"S nontarget {v}\n" for v in HAND_ASV.nontarget)
        + "".join(f"S spoof {v}\n" for v in HAND_ASV.spoof)
    )
    plots = tmp_path / "plots"
    args = ["evaluate", str(scores_csv), "--json", "--asv-scores", str(asv), "--plots", str(plots)]
    result = runner.invoke(app, [*args, "--bootstrap", "40", "--seed", "3"])
    assert result.exit_code == 0, result.output
    got = json.loads(result.stdout)
    expected = evaluate_scores(read_scores(scores_csv), n_bootstrap=40, seed=3, asv=read_asv_scores(asv))
    for key in ("eer", "threshold", "eer_ci95", "per_attack", "n_bonafide", "n_spoof", "min_tdcf"):
        assert got[key] == expected[key]
    assert (plots / "det.png").read_bytes().startswith(PNG_MAGIC)
    assert (plots / "hist.png").read_bytes().startswith(PNG_MAGIC)


def test_cli_bad_input_is_one_line_error(tmp_path, monkeypatch, capsys):
    bad = tmp_path / "bad.csv"
    bad.write_text("utt_id,score,label\na,1,bonafide\nb,x,spoof\n")
    result = runner.invoke(app, ["evaluate", str(bad)])
    assert result.exit_code != 0
    assert isinstance(result.exception, ProtocolError)
    from ncdetect.cli import main

    monkeypatch.setattr(sys, "argv", ["ncdetect", "evaluate", str(bad)])
    with pytest.raises(SystemExit) as exc:
        main()
    assert exc.value.code == 1
    err = capsys.readouterr().err.strip()
    assert err == f"ncdetect: error: {bad}:3: score 'x' is not a finite number"
