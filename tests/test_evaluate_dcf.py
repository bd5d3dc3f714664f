"""The ASVspoof 5 metrics (minDCF, actDCF, Cllr, min Cllr) and the per-condition tables of `evaluate`.

Each metric is checked against hand-worked cases (perfectly separated, inverted, a worked example), a
calibrated Gaussian case with its analytic values, and a reference written here a different way: a
threshold sweep by counting, a per-trial loop, and min Cllr through the ROC convex hull (a monotone
chain) instead of pool-adjacent-violators. The references agree to 1e-6 on random score sets of 10 to
100,000 trials, with and without tied scores.
"""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st
from scipy import integrate
from scipy.stats import norm
from typer.testing import CliRunner

from conftest import property_settings
from ncdetect.cli import app
from ncdetect.errors import ConfigError, ProtocolError
from ncdetect.evaluate import (
    ASVSPOOF5_COSTS,
    DcfCosts,
    act_dcf,
    bootstrap_eers,
    bootstrap_metrics,
    cllr,
    compute_eer,
    evaluate_file,
    evaluate_scores,
    metrics_by,
    min_cllr,
    min_dcf,
    validate_scores,
)

runner = CliRunner()
LN2 = math.log(2)


# --- references ------------------------------------------------------------------------------------


def sweep_min_dcf(bona: np.ndarray, spoof: np.ndarray, costs: DcfCosts) -> float:
    """Every threshold a decision rule "bonafide if score >= t" can tell apart: each distinct score and
    one above them all; the rates counted with searchsorted on the sorted classes."""
    b, s = np.sort(bona), np.sort(spoof)
    candidates = np.append(np.unique(np.concatenate((b, s))), np.inf)
    p_miss = np.searchsorted(b, candidates, side="left") / b.size  # bonafide below t
    p_fa = (s.size - np.searchsorted(s, candidates, side="left")) / s.size  # spoof at or above t
    dcf = costs.cost_miss * (1 - costs.prior_spoof) * p_miss + costs.cost_fa * costs.prior_spoof * p_fa
    return float(dcf.min() / min(costs.cost_miss * (1 - costs.prior_spoof),
                                 costs.cost_fa * costs.prior_spoof))


def loop_min_dcf(bona: list[float], spoof: list[float], costs: DcfCosts) -> float:
    """The same sweep as plain loops over every threshold (small sets only)."""
    best = math.inf
    for t in [*sorted(set(bona) | set(spoof)), math.inf]:
        p_miss = sum(1 for x in bona if x < t) / len(bona)
        p_fa = sum(1 for x in spoof if x >= t) / len(spoof)
        best = min(best, costs.cost_miss * (1 - costs.prior_spoof) * p_miss
                   + costs.cost_fa * costs.prior_spoof * p_fa)
    return best / min(costs.cost_miss * (1 - costs.prior_spoof), costs.cost_fa * costs.prior_spoof)


def loop_act_dcf(bona: np.ndarray, spoof: np.ndarray, costs: DcfCosts) -> float:
    t = -math.log(costs.cost_miss * (1 - costs.prior_spoof) / (costs.cost_fa * costs.prior_spoof))
    misses = sum(1 for x in bona.tolist() if not x >= t)
    false_accepts = sum(1 for x in spoof.tolist() if x >= t)
    dcf = (costs.cost_miss * (1 - costs.prior_spoof) * misses / bona.size
           + costs.cost_fa * costs.prior_spoof * false_accepts / spoof.size)
    return dcf / min(costs.cost_miss * (1 - costs.prior_spoof), costs.cost_fa * costs.prior_spoof)


def softplus(x: float) -> float:
    return max(x, 0.0) + math.log1p(math.exp(-abs(x)))


def loop_cllr(bona: np.ndarray, spoof: np.ndarray) -> float:
    cost_b = math.fsum(softplus(-x) for x in bona.tolist()) / bona.size
    cost_s = math.fsum(softplus(x) for x in spoof.tolist()) / spoof.size
    return (cost_b + cost_s) / (2 * LN2)


def hull_min_cllr(bona: np.ndarray, spoof: np.ndarray) -> float:
    """min Cllr from the ROC convex hull: walk the distinct scores from the highest down (ties as one
    step), keep the upper hull of the (P_fa, P_detect) points, and give the trials of each hull segment
    the LLR = its slope (bonafide rate gained / spoof rate gained)."""
    nb, ns = bona.size, spoof.size
    counts: dict[float, list[int]] = {}
    for x in bona.tolist():
        counts.setdefault(x, [0, 0])[0] += 1
    for x in spoof.tolist():
        counts.setdefault(x, [0, 0])[1] += 1
    points = [(0, 0)]  # (spoof count, bonafide count) accepted so far
    for x in sorted(counts, reverse=True):
        tb, ts = counts[x]
        points.append((points[-1][0] + ts, points[-1][1] + tb))
    hull: list[tuple[int, int]] = []
    for p in points:  # monotone chain, upper hull; cross products on integer counts, so exact
        while len(hull) >= 2:
            (x1, y1), (x2, y2) = hull[-2], hull[-1]
            if (x2 - x1) * (p[1] - y1) - (y2 - y1) * (p[0] - x1) >= 0:
                hull.pop()
            else:
                break
        hull.append(p)
    total = 0.0
    for (x1, y1), (x2, y2) in itertools.pairwise(hull):
        db, ds = y2 - y1, x2 - x1
        if db and ds:
            llr = math.log((db / nb) / (ds / ns))
            total += db / nb * softplus(-llr) + ds / ns * softplus(llr)
        # A segment of one class alone has an infinite LLR of the right sign: it costs nothing.
    return total / (2 * LN2)


def random_scores(rng: np.random.Generator, n: int, ties: bool) -> tuple[np.ndarray, np.ndarray]:
    nb = int(rng.integers(1, n))
    shift = rng.uniform(-1, 3)
    b = rng.normal(shift, rng.uniform(0.5, 2), nb)
    s = rng.normal(0, rng.uniform(0.5, 2), n - nb)
    if ties:
        b, s = np.round(b, 1), np.round(s, 1)
    return b, s


# --- hand-worked cases --------------------------------------------------------------------------------


def test_worked_example():
    # Sorted: 0.1 s, 0.2 s, 0.3 b, 0.4 s, 0.8 b, 0.85 s, 0.9 b (3 bonafide, 4 spoof). The DET points
    # (see test_evaluate's EER case) have FRR 0,0,0,1/3,1/3,2/3,2/3,1 and FAR 1,3/4,1/2,1/2,1/4,1/4,0,0;
    # DCF = 0.95 FRR + 0.5 FAR = .5, .375, .25, .567, .442, .758, .633, .95: min .25 at the 2nd sorted
    # score, normalised by min(.95, .5): 0.5.
    bona, spoof = [0.9, 0.8, 0.3], [0.4, 0.2, 0.1, 0.85]
    assert min_dcf(bona, spoof) == (pytest.approx(0.5, abs=1e-12), 0.2)
    # Bayes threshold ln(0.5 / 0.95) = -0.642: every trial is accepted, so P_miss 0, P_fa 1: actDCF 1.
    value, threshold = act_dcf(bona, spoof)
    assert threshold == pytest.approx(math.log(0.5 / 0.95), abs=1e-15)
    assert value == pytest.approx(1.0, abs=1e-12)
    # PAV of the labels 0 0 1 0 1 0 1: 0, 0, 1/2, 1/2, 1/2, 1/2, 1. At a flat prior a posterior of 1/2
    # with 3 bonafide and 4 spoof means LLR ln(4/3), posterior 4/7: the two bonafide there cost
    # -ln(4/7) each, the two spoofs -ln(3/7); the rest cost nothing.
    expected = (2 * -math.log(4 / 7) / 3 + 2 * -math.log(3 / 7) / 4) / (2 * LN2)
    assert min_cllr(bona, spoof) == pytest.approx(expected, abs=1e-12)
    expected_cllr = (sum(math.log1p(math.exp(-x)) for x in bona) / 3
                     + sum(math.log1p(math.exp(x)) for x in spoof) / 4) / (2 * LN2)
    assert cllr(bona, spoof) == pytest.approx(expected_cllr, abs=1e-12)


def test_perfectly_separated():
    bona, spoof = [3.0, 5.0, 9.0], [-9.0, -4.0, -2.0, 1.0]
    assert compute_eer(bona, spoof)[0] == 0.0
    assert min_dcf(bona, spoof)[0] == 0.0
    assert min_cllr(bona, spoof) == 0.0
    # The spoof at 1.0 lies above the Bayes threshold: P_fa 1/4, actDCF 0.5 * 1/4 / 0.5.
    assert act_dcf(bona, spoof)[0] == pytest.approx(0.25, abs=1e-12)
    # Far apart and on the right sides of 0, the LLRs are almost free.
    assert cllr([40.0, 50.0], [-40.0]) < 1e-15


def test_inverted():
    bona, spoof = [-3.0, -2.0, -1.0], [1.0, 2.0]
    assert compute_eer(bona, spoof)[0] == 100.0
    # Nothing beats a trivial decision; min Cllr is that of LLR 0 everywhere: 1 bit.
    assert min_dcf(bona, spoof)[0] == pytest.approx(1.0, abs=1e-12)
    assert min_cllr(bona, spoof) == pytest.approx(1.0, abs=1e-12)
    # The scores taken as LLRs reject every bonafide below -0.642 and accept both spoofs.
    assert act_dcf(bona, spoof)[0] == pytest.approx((0.95 + 0.5) / 0.5, abs=1e-12)
    assert cllr(bona, spoof) > 1.0  # confidently wrong costs more than knowing nothing


def test_llr_zero_everywhere_costs_one_bit():
    assert cllr([0.0, 0.0], [0.0]) == pytest.approx(1.0, abs=1e-15)
    assert min_cllr([0.0, 0.0], [0.0]) == pytest.approx(1.0, abs=1e-15)


def test_calibrated_gaussian_analytic():
    # Bonafide N(m, 2m), spoof N(-m, 2m): the log-likelihood ratio of a score s is exactly s, so the
    # scores are calibrated LLRs. Cllr is then an integral over one class (the other is its mirror), the
    # Bayes threshold is the optimal one (actDCF = minDCF), and min Cllr is Cllr up to sampling noise.
    m, n = 1.0, 200_000
    sd = math.sqrt(2 * m)
    rng = np.random.default_rng(7)
    bona, spoof = rng.normal(m, sd, n), rng.normal(-m, sd, n)
    s = np.linspace(-4, 4, 5)
    llr = norm.logpdf(s, m, sd) - norm.logpdf(s, -m, sd)
    np.testing.assert_allclose(llr, s, atol=1e-12)  # the premise
    analytic_cllr = integrate.quad(lambda x: softplus(-x) * norm.pdf(x, m, sd), -40, 40)[0] / LN2
    assert cllr(bona, spoof) == pytest.approx(analytic_cllr, abs=0.005)
    assert min_cllr(bona, spoof) == pytest.approx(analytic_cllr, abs=0.005)
    assert min_cllr(bona, spoof) <= cllr(bona, spoof)
    t = ASVSPOOF5_COSTS.bayes_threshold
    analytic_dcf = (0.95 * norm.cdf(t, m, sd) + 0.5 * norm.sf(t, -m, sd)) / 0.5
    assert act_dcf(bona, spoof)[0] == pytest.approx(analytic_dcf, abs=0.01)
    assert min_dcf(bona, spoof)[0] == pytest.approx(analytic_dcf, abs=0.01)
    # Miscalibrated by a shift, the same scores keep minDCF and min Cllr and lose in actDCF and Cllr.
    assert act_dcf(bona + 2, spoof + 2)[0] > act_dcf(bona, spoof)[0] + 0.1
    assert cllr(bona * 3, spoof * 3) > cllr(bona, spoof) + 0.1
    assert min_cllr(bona * 3, spoof * 3) == pytest.approx(min_cllr(bona, spoof), abs=1e-12)


def test_costs_change_the_operating_point():
    rng = np.random.default_rng(1)
    bona, spoof = rng.normal(1.5, 1, 500), rng.normal(0, 1, 800)
    for costs in (DcfCosts(), DcfCosts(1, 1, 0.5), DcfCosts(5, 1, 0.3), DcfCosts(1, 100, 0.01)):
        assert min_dcf(bona, spoof, costs)[0] == pytest.approx(sweep_min_dcf(bona, spoof, costs), abs=1e-12)
        assert act_dcf(bona, spoof, costs)[0] == pytest.approx(loop_act_dcf(bona, spoof, costs), abs=1e-12)
    assert DcfCosts(1, 1, 0.5).bayes_threshold == 0.0
    assert DcfCosts().effective_prior_spoof == pytest.approx(0.5 / 1.45)
    for bad in ((0, 10, 0.05), (1, -1, 0.05), (1, 10, 0.0), (1, 10, 1.0)):
        with pytest.raises(ConfigError):
            DcfCosts(*bad)


# --- against the references ------------------------------------------------------------------------


@pytest.mark.parametrize("n", [10, 100, 1_000, 10_000, 100_000])
@pytest.mark.parametrize("ties", [False, True])
def test_every_metric_matches_the_references(n, ties):
    rng = np.random.default_rng(n + ties)
    bona, spoof = random_scores(rng, n, ties)
    costs = DcfCosts(rng.uniform(0.5, 2), rng.uniform(1, 20), rng.uniform(0.01, 0.5))
    for c in (ASVSPOOF5_COSTS, costs):
        assert min_dcf(bona, spoof, c)[0] == pytest.approx(sweep_min_dcf(bona, spoof, c), abs=1e-6)
        assert act_dcf(bona, spoof, c)[0] == pytest.approx(loop_act_dcf(bona, spoof, c), abs=1e-6)
    assert cllr(bona, spoof) == pytest.approx(loop_cllr(bona, spoof), abs=1e-6)
    assert min_cllr(bona, spoof) == pytest.approx(hull_min_cllr(bona, spoof), abs=1e-6)


scores = st.lists(st.integers(-6, 6).map(lambda v: v / 2), min_size=1, max_size=25)


@property_settings(300)
@given(bona=scores, spoof=scores, prior=st.sampled_from([0.05, 0.3, 0.5, 0.9]))
def test_small_sets_against_plain_loops(bona, spoof, prior):
    costs = DcfCosts(1.0, 10.0, prior)
    b, s = np.array(bona), np.array(spoof)
    assert min_dcf(b, s, costs)[0] == pytest.approx(loop_min_dcf(bona, spoof, costs), abs=1e-9)
    assert act_dcf(b, s, costs)[0] == pytest.approx(loop_act_dcf(b, s, costs), abs=1e-9)
    assert min_cllr(b, s) == pytest.approx(hull_min_cllr(b, s), abs=1e-9)
    assert 0 <= min_cllr(b, s) <= 1 + 1e-12
    assert 0 <= min_dcf(b, s, costs)[0] <= 1 + 1e-12
    assert min_cllr(b, s) <= cllr(b, s) + 1e-12


def test_bootstrap_min_dcf_is_min_dcf_of_each_resample():
    rng = np.random.default_rng(3)
    bona, spoof = np.round(rng.normal(1, 1, 300), 1), np.round(rng.normal(0, 1, 500), 1)
    costs = DcfCosts(1, 4, 0.2)
    got = bootstrap_metrics(bona, spoof, n_bootstrap=40, seed=5, costs=costs)
    np.testing.assert_array_equal(got["eer"], bootstrap_eers(bona, spoof, n_bootstrap=40, seed=5))
    rng_b, rng_s = (np.random.default_rng(c) for c in np.random.SeedSequence(5).spawn(2))
    idx_b = rng_b.integers(0, bona.size, size=(40, bona.size), dtype=np.int32)
    idx_s = rng_s.integers(0, spoof.size, size=(40, spoof.size), dtype=np.int32)
    expected = [sweep_min_dcf(bona[idx_b[r]], spoof[idx_s[r]], costs) for r in range(40)]
    np.testing.assert_allclose(got["min_dcf"], expected, atol=1e-9)


# --- evaluate_scores, --by and the command ------------------------------------------------------------


def conditions(n: int = 400, seed: int = 0) -> pd.DataFrame:
    """Scores where spoofs of language es are easier to catch than those of en."""
    rng = np.random.default_rng(seed)
    lang = rng.choice(["en", "es"], n)
    label = rng.choice(["bonafide", "spoof"], n)
    shift = np.where(label == "bonafide", 2.0, np.where(lang == "es", -2.0, 0.5))
    return pd.DataFrame({
        "utt_id": [f"u{i:04d}" for i in range(n)],
        "score": rng.normal(shift, 1.0),
        "label": label,
        "attack": np.where(label == "bonafide", "-", rng.choice(["A1", "A2"], n)),
        "language": lang,
    })


def test_evaluate_scores_reports_every_metric():
    df = conditions()
    costs = DcfCosts(1, 5, 0.1)
    got = evaluate_scores(df, n_bootstrap=30, seed=2, costs=costs)
    b = df.loc[df.label == "bonafide", "score"].to_numpy()
    s = df.loc[df.label == "spoof", "score"].to_numpy()
    assert got["min_dcf"] == pytest.approx(sweep_min_dcf(b, s, costs), abs=1e-12)
    assert got["act_dcf"] == pytest.approx(loop_act_dcf(b, s, costs), abs=1e-12)
    assert got["cllr"] == pytest.approx(loop_cllr(b, s), abs=1e-12)
    assert got["min_cllr"] == pytest.approx(hull_min_cllr(b, s), abs=1e-12)
    assert got["llr_from"] == "score"
    lo, hi = got["min_dcf_ci95"]
    assert lo <= got["min_dcf"] <= hi
    assert got["costs"] == {"cost_miss": 1, "cost_fa": 5, "prior_spoof": 0.1,
                            "bayes_threshold": math.log(0.5 / 0.9)}
    assert set(got["per_attack"]) == {"A1", "A2"}
    a1 = df.loc[df.attack == "A1", "score"].to_numpy()
    assert got["per_attack"]["A1"]["min_dcf"] == pytest.approx(sweep_min_dcf(b, a1, costs), abs=1e-12)
    json.dumps(got)


def test_llr_column_is_what_act_dcf_and_cllr_judge():
    df = conditions()
    df["llr"] = 0.5 * df["score"] - 1.0
    got = evaluate_scores(df, n_bootstrap=0)
    raw = evaluate_scores(df.drop(columns="llr"), n_bootstrap=0)
    b, s = (df.loc[df.label == lab, "llr"].to_numpy() for lab in ("bonafide", "spoof"))
    assert got["llr_from"] == "llr"
    assert got["cllr"] == pytest.approx(loop_cllr(b, s), abs=1e-12)
    assert got["act_dcf"] == pytest.approx(loop_act_dcf(b, s, ASVSPOOF5_COSTS), abs=1e-12)
    # The discrimination metrics stay those of the score.
    for key in ("eer", "min_dcf", "min_cllr"):
        assert got[key] == raw[key]
    df = df.astype({"llr": object})
    df.loc[3, "llr"] = "nan"
    with pytest.raises(ProtocolError, match=":5: llr 'nan'"):
        evaluate_scores(df, n_bootstrap=0)


def test_metrics_by_pairs_with_all_or_with_the_same_value():
    df = validate_scores(conditions())
    got = metrics_by(df, "language")
    bona = df[df.label == "bonafide"]
    for lang in ("en", "es"):
        s = df.loc[(df.label == "spoof") & (df.language == lang), "score"].to_numpy()
        row = got["values"][lang]
        assert row["eer"] == compute_eer(bona["score"].to_numpy(), s)[0]
        assert row["min_dcf"] == pytest.approx(sweep_min_dcf(bona["score"].to_numpy(), s, ASVSPOOF5_COSTS))
        assert (row["n_bonafide"], row["n_spoof"]) == (len(bona), s.size)
    assert got["values"]["es"]["eer"] < got["values"]["en"]["eer"]
    within = metrics_by(df, "language", pair_within=True)
    for lang in ("en", "es"):
        b = bona.loc[bona.language == lang, "score"].to_numpy()
        s = df.loc[(df.label == "spoof") & (df.language == lang), "score"].to_numpy()
        assert within["values"][lang]["eer"] == compute_eer(b, s)[0]
        assert within["values"][lang]["n_bonafide"] == b.size
    # The attack column: values of the spoof rows only ("-" is the bonafide pool, not a subset) ...
    assert set(metrics_by(df, "attack")["values"]) == {"A1", "A2"}
    # ... and paired within, an attack has no bonafide of its own: an error naming column and value.
    with pytest.raises(ConfigError, match=r"--by attack: value '-' has no spoof trials"):
        metrics_by(df, "attack", pair_within=True)
    with pytest.raises(ConfigError, match=r"--by codec: no column 'codec'"):
        metrics_by(df, "codec")


def write_split(tmp_path, df: pd.DataFrame):
    """The scores CSV without the language column, and a manifest that has it."""
    scores = tmp_path / "scores.csv"
    df.drop(columns="language").to_csv(scores, index=False)
    manifest = tmp_path / "manifest.csv"
    man = df[["utt_id", "label", "attack", "language"]].assign(
        path=[f"{u}.wav" for u in df.utt_id], dataset="d", speaker="x")
    man.to_csv(manifest, index=False)
    return scores, manifest


def test_cli_json_costs_and_by_manifest(tmp_path):
    df = conditions()
    scores, manifest = write_split(tmp_path, df)
    args = ["evaluate", str(scores), "--json", "--bootstrap", "20", "--cost-fa", "5", "--prior-spoof", "0.1",
            "--by", "language", "--by", "attack", "--manifest", str(manifest)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    got = json.loads(result.stdout)
    costs = DcfCosts(1, 5, 0.1)
    expected = evaluate_scores(df, n_bootstrap=20, costs=costs)
    for key in ("eer", "min_dcf", "act_dcf", "cllr", "min_cllr", "min_dcf_ci95", "eer_ci95", "costs"):
        assert got[key] == expected[key], key
    assert [t["column"] for t in got["by"]] == ["language", "attack"]
    assert got["by"][0] == metrics_by(validate_scores(df), "language", costs=costs)
    table = runner.invoke(app, ["evaluate", str(scores), "--bootstrap", "0", "--by", "language",
                                "--manifest", str(manifest), "--pair-within"])
    assert table.exit_code == 0, table.output
    assert "minDCF:" in table.output and "actDCF:" in table.output and "min Cllr:" in table.output
    assert "by language (spoofs against bonafide of the same value)" in table.output


def test_by_errors_name_the_column_and_value(tmp_path):
    df = conditions()
    scores, manifest = write_split(tmp_path, df)
    with pytest.raises(ConfigError, match=r"--by language: .* has no column 'language'.*--manifest"):
        evaluate_file(scores, by=["language"], n_bootstrap=0)
    with pytest.raises(ConfigError, match="--by channel: neither"):
        evaluate_file(scores, by=["channel"], manifest=manifest, n_bootstrap=0)
    with pytest.raises(ConfigError, match="--pair-within needs --by"):
        evaluate_file(scores, pair_within=True, n_bootstrap=0)
    short = pd.read_csv(manifest).iloc[:-1]
    short.to_csv(tmp_path / "short.csv", index=False)
    last = df.utt_id.iloc[-1]
    with pytest.raises(ProtocolError, match=f"scores.csv:{len(df) + 1}: utt_id '{last}' is not in"):
        evaluate_file(scores, by=["language"], manifest=tmp_path / "short.csv", n_bootstrap=0)
    only_en = df[(df.language == "en") | (df.label == "spoof")]
    scores2, manifest2 = write_split(tmp_path, only_en)
    with pytest.raises(ConfigError, match="--by language: value 'es' has no bonafide trials"):
        evaluate_file(scores2, by=["language"], manifest=manifest2, pair_within=True, n_bootstrap=0)
