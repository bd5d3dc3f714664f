"""The paired bootstrap over utterances and seeds behind the report's verdicts, and the EER-rate area."""

import numpy as np
import pytest

from ncdetect.evaluate import (
    PairedBootstrap,
    compute_eer,
    mean_over_log_rate,
    paired_eer_difference,
)


def _brute_force(is_bona, a, b, n_bootstrap, seed, level=0.95):
    """The same resamples drawn the same way, each EER by the reference compute_eer, in plain loops."""
    nb, ns = int(is_bona.sum()), int((~is_bona).sum())
    children = np.random.SeedSequence(seed).spawn(3)
    rng_b, rng_s, rng_seed = (np.random.default_rng(c) for c in children)
    seed_draws = rng_seed.integers(0, a.shape[0], size=(n_bootstrap, a.shape[0]))
    stats = []
    for r in range(n_bootstrap):
        ib = rng_b.integers(0, nb, size=nb, dtype=np.int32)
        isp = rng_s.integers(0, ns, size=ns, dtype=np.int32)
        diffs = []
        for j in seed_draws[r]:
            ea = compute_eer(a[j][is_bona][ib], a[j][~is_bona][isp])[0]
            eb = compute_eer(b[j][is_bona][ib], b[j][~is_bona][isp])[0]
            diffs.append(ea - eb)
        stats.append(np.mean(diffs))
    alpha = (1 - level) / 2 * 100
    return np.percentile(stats, [alpha, 100 - alpha])


def test_matches_a_brute_force_bootstrap():
    rng = np.random.default_rng(3)
    is_bona = np.array([True] * 7 + [False] * 9)
    rng.shuffle(is_bona)
    a = rng.normal(size=(3, 16)) + is_bona * 1.0
    b = rng.normal(size=(3, 16)) + is_bona * 0.3
    result = paired_eer_difference(is_bona, a, b, n_bootstrap=60, seed=5)
    lo, hi = _brute_force(is_bona, a, b, 60, 5)
    assert result.ci95 == pytest.approx((lo, hi), abs=1e-9)
    full = np.mean([compute_eer(a[j][is_bona], a[j][~is_bona])[0]
                    - compute_eer(b[j][is_bona], b[j][~is_bona])[0] for j in range(3)])
    assert result.mean == pytest.approx(full)


def test_hand_worked_perfect_against_inverted():
    # Perfect scores give EER 0 on every resample; inverted ones put every bonafide below every spoof, so
    # FRR and FAR meet at 1 and the EER is 100 on every resample: the difference is exactly -100.
    is_bona = np.array([True, True, True, False, False])
    perfect = np.array([[3.0, 2.0, 4.0, -1.0, -2.0]] * 2)
    inverted = -perfect
    better = paired_eer_difference(is_bona, perfect, inverted, n_bootstrap=200)
    assert (better.mean, better.ci95, better.verdict) == (-100.0, (-100.0, -100.0), "better")
    worse = paired_eer_difference(is_bona, inverted, perfect, n_bootstrap=200)
    assert (worse.mean, worse.ci95, worse.verdict) == (100.0, (100.0, 100.0), "worse")
    same = paired_eer_difference(is_bona, perfect, perfect, n_bootstrap=200)
    assert (same.mean, same.ci95, same.verdict) == (0.0, (0.0, 0.0), "not separated")


def test_pairing_by_seed_cancels_what_the_seed_does_to_both():
    # Seed j shifts both systems' spoof scores alike; b is a plus noise on one bonafide utterance.
    rng = np.random.default_rng(0)
    is_bona = np.array([True] * 30 + [False] * 30)
    base = rng.normal(size=60) + is_bona * 1.5
    a = np.stack([base + (~is_bona) * shift for shift in (-1.0, 0.0, 1.0, 2.0, 3.0)])
    b = a.copy()
    b[:, 0] -= 10.0  # one bonafide always rejected by b
    result = paired_eer_difference(is_bona, a, b, n_bootstrap=300)
    assert result.mean <= 0 and result.ci95[1] <= 0


def test_resamples_are_shared_between_systems_and_checked():
    is_bona = np.array([True, False, True, False])
    boot = PairedBootstrap(is_bona, n_seeds=2, n_bootstrap=10, seed=1)
    x = np.array([[1.0, 0.0, 2.0, -1.0], [0.5, 0.7, 0.2, 0.1]])
    assert np.array_equal(boot.resample(x).boot, boot.resample(x).boot)
    with pytest.raises(Exception, match="seeds x utterances"):
        boot.resample(x[:1])
    with pytest.raises(Exception, match="both bonafide and spoof"):
        PairedBootstrap(np.array([True, True]), n_seeds=1)


def test_mean_over_log_rate_by_hand():
    assert mean_over_log_rate([0.1, 1.0], [30.0, 10.0]) == pytest.approx(20.0)
    # Two decades, trapezoids of mean 30 and 20, one decade each.
    assert mean_over_log_rate([1.0, 0.01, 0.1], [20.0, 40.0, 20.0]) == pytest.approx(25.0)
    assert mean_over_log_rate([0.25], [17.0]) == 17.0
