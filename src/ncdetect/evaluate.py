"""Evaluation of countermeasure scores: EER (ASVspoof reference), per-attack EER, a bootstrap interval,
min t-DCF with the ASVspoof 2019 cost model, DET curves and score histograms.

Scores follow the ASVspoof convention: a higher score means more likely bonafide. EERs are in percent.

``compute_det_curve``, ``compute_eer``, ``obtain_asv_error_rates`` and ``compute_tdcf_curve`` reproduce the
ASVspoof organisers' reference code step by step (numpy only), so that our numbers can be compared with
published ones:

- EER: ``compute_det_curve`` / ``compute_eer`` of ``eval-package/eval_metrics.py`` in
  github.com/asvspoof-challenge/2021 (identical to ``eval_metrics.py`` of the official
  ``tDCF_python_v1``/``v2`` packages on asvspoof.org and to ``evaluation.py`` of clovaai/aasist).
- min t-DCF: ``compute_tDCF`` of the ASVspoof 2019 package ``tDCF_python_v1`` (kept as
  ``compute_tDCF_legacy`` in the 2021 ``eval_metrics.py``), with the cost model and the ASV EER operating
  point of ``evaluate_tDCF_asvspoof19.py`` (the same code as ``calculate_tDCF_EER`` in clovaai/aasist).
  This is the min t-DCF that ASVspoof 2019 LA results (e.g. AASIST's 0.0275) are quoted in.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .errors import ConfigError, NcdetectError, ProtocolError
from .fileio import write_png

SCORE_COLUMNS = ["utt_id", "score", "label"]
LABELS = ("bonafide", "spoof")

# ASVspoof 2019 t-DCF cost model, as fixed in evaluate_tDCF_asvspoof19.py of tDCF_python_v1.
# Note Ptar/Pnon split the non-spoof prior 0.99/0.01 (Ptar = 0.9405, Pnon = 0.0095).
ASVSPOOF2019_PSPOOF = 0.05
ASVSPOOF2019_COST_MODEL: dict[str, float] = {
    "Pspoof": ASVSPOOF2019_PSPOOF,
    "Ptar": (1 - ASVSPOOF2019_PSPOOF) * 0.99,
    "Pnon": (1 - ASVSPOOF2019_PSPOOF) * 0.01,
    "Cmiss_asv": 1.0,
    "Cfa_asv": 10.0,
    "Cmiss_cm": 1.0,
    "Cfa_cm": 10.0,
}

# Elements (bootstraps x scores) handled at once by the vectorised bootstrap: ~8 MB per int64 array.
_BOOTSTRAP_CHUNK_ELEMENTS = 1_000_000


# --- EER (ASVspoof reference) --------------------------------------------------------------------


def _as_scores(x: Any, what: str) -> np.ndarray:
    arr = np.asarray(x, dtype=np.float64).reshape(-1)
    if arr.size == 0:
        raise NcdetectError(f"EER needs at least one {what} score, got none")
    if np.isnan(arr).any():
        raise NcdetectError(f"{what} scores contain NaN")
    return arr


def compute_det_curve(bonafide: Any, spoof: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """FRR, FAR and thresholds at every operating point (len = n_bonafide + n_spoof + 1).

    Point 0 accepts everything (FRR 0, FAR 1) at ``min(score) - 0.001``; point i >= 1 is the threshold
    ``sorted_scores[i - 1]`` with "accept if score > threshold". The stable sort puts bonafide before
    spoof among tied scores, so ties count against the system, exactly as in the reference code.
    """
    target = _as_scores(bonafide, "bonafide")
    nontarget = _as_scores(spoof, "spoof")
    # Same operations, in the same order, as compute_det_curve in the ASVspoof eval_metrics.py.
    n_scores = target.size + nontarget.size
    all_scores = np.concatenate((target, nontarget))
    labels = np.concatenate((np.ones(target.size), np.zeros(nontarget.size)))
    indices = np.argsort(all_scores, kind="mergesort")
    labels = labels[indices]
    tar_trial_sums = np.cumsum(labels)
    nontarget_trial_sums = nontarget.size - (np.arange(1, n_scores + 1) - tar_trial_sums)
    frr = np.concatenate((np.atleast_1d(0), tar_trial_sums / target.size))
    far = np.concatenate((np.atleast_1d(1), nontarget_trial_sums / nontarget.size))
    thresholds = np.concatenate((np.atleast_1d(all_scores[indices[0]] - 0.001), all_scores[indices]))
    return frr, far, thresholds


def compute_eer(bonafide: Any, spoof: Any) -> tuple[float, float]:
    """Equal error rate in percent and its threshold, as the ASVspoof reference ``compute_eer``.

    The operating point is the first index minimising |FRR - FAR|; the EER is the mean of the two there.
    """
    frr, far, thresholds = compute_det_curve(bonafide, spoof)
    min_index = np.argmin(np.abs(frr - far))
    eer = np.mean((frr[min_index], far[min_index]))
    return float(eer * 100.0), float(thresholds[min_index])


# --- ASVspoof 5 metrics: minDCF, actDCF, Cllr, min Cllr --------------------------------------------


@dataclass(frozen=True)
class DcfCosts:
    """The detection cost of ASVspoof 5: a missed bonafide (rejected) costs ``cost_miss``, an accepted
    spoof ``cost_fa``, and a trial is spoof with prior ``prior_spoof``. The defaults are the challenge's.

    The normalised DCF divides by the cost of the better trivial system (accept all or reject all), so 0
    is perfect and 1 is no better than not looking at the audio.
    """

    cost_miss: float = 1.0
    cost_fa: float = 10.0
    prior_spoof: float = 0.05

    def __post_init__(self) -> None:
        if not (self.cost_miss > 0 and self.cost_fa > 0 and math.isfinite(self.cost_miss + self.cost_fa)):
            raise ConfigError(
                f"--cost-miss and --cost-fa must be positive, got {self.cost_miss} and {self.cost_fa}"
            )
        if not 0 < self.prior_spoof < 1:
            raise ConfigError(f"--prior-spoof must lie strictly between 0 and 1, got {self.prior_spoof}")

    @property
    def miss_weight(self) -> float:
        return self.cost_miss * (1 - self.prior_spoof)

    @property
    def fa_weight(self) -> float:
        return self.cost_fa * self.prior_spoof

    @property
    def normaliser(self) -> float:
        return min(self.miss_weight, self.fa_weight)

    @property
    def bayes_threshold(self) -> float:
        """The LLR above which deciding bonafide costs less than deciding spoof (ASVspoof 5: -ln 1.9)."""
        return math.log(self.fa_weight / self.miss_weight)

    @property
    def effective_prior_spoof(self) -> float:
        """The spoof prior that, with unit costs, puts the Bayes threshold where these costs do."""
        return self.fa_weight / (self.fa_weight + self.miss_weight)

    def as_dict(self) -> dict[str, float]:
        return {"cost_miss": self.cost_miss, "cost_fa": self.cost_fa, "prior_spoof": self.prior_spoof,
                "bayes_threshold": self.bayes_threshold}


ASVSPOOF5_COSTS = DcfCosts()


def min_dcf(bonafide: Any, spoof: Any, costs: DcfCosts = ASVSPOOF5_COSTS) -> tuple[float, float]:
    """Normalised minimum DCF over the thresholds of the EER's DET curve, and its threshold, as
    ``compute_mindcf`` of the ASVspoof 5 evaluation package (the first minimum wins).

    The points of the curve that split tied scores are never the minimum (each is worse than one of its
    neighbours in one rate and equal in the other), so this is the minimum over real thresholds.
    """
    frr, far, thresholds = compute_det_curve(bonafide, spoof)
    return _min_dcf_on_curve(frr, far, thresholds, costs)


def _min_dcf_on_curve(frr: np.ndarray, far: np.ndarray, thresholds: np.ndarray,
                      costs: DcfCosts) -> tuple[float, float]:
    dcf = costs.miss_weight * frr + costs.fa_weight * far
    i = int(np.argmin(dcf))
    return float(dcf[i] / costs.normaliser), float(thresholds[i])


def act_dcf(bonafide_llr: Any, spoof_llr: Any, costs: DcfCosts = ASVSPOOF5_COSTS) -> tuple[float, float]:
    """Normalised DCF of the decisions that the scores make when taken as log-likelihood ratios:
    bonafide when LLR >= the Bayes threshold (a bonafide below it is a miss, a spoof at or above it a
    false acceptance), as ``compute_actDCF`` of the ASVspoof 5 package. Returns (actDCF, threshold)."""
    b = _as_scores(bonafide_llr, "bonafide")
    s = _as_scores(spoof_llr, "spoof")
    t = costs.bayes_threshold
    p_miss = np.count_nonzero(b < t) / b.size
    p_fa = np.count_nonzero(s >= t) / s.size
    return float((costs.miss_weight * p_miss + costs.fa_weight * p_fa) / costs.normaliser), t


def cllr(bonafide_llr: Any, spoof_llr: Any) -> float:
    """The log-likelihood-ratio cost in bits: the mean cross-entropy of the posteriors the LLRs give at
    prior 0.5, averaged over the two classes. 0 is perfect; 1 is what an LLR of 0 everywhere costs."""
    b = _as_scores(bonafide_llr, "bonafide")
    s = _as_scores(spoof_llr, "spoof")
    return float((np.mean(np.logaddexp(0.0, -b)) + np.mean(np.logaddexp(0.0, s))) / (2 * math.log(2)))


def _tie_blocks(bonafide: np.ndarray, spoof: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Bonafide and spoof counts per distinct score, in increasing score order."""
    values, inverse = np.unique(np.concatenate((bonafide, spoof)), return_inverse=True)
    n_b = np.bincount(inverse[: bonafide.size], minlength=values.size).astype(np.float64)
    n_s = np.bincount(inverse[bonafide.size :], minlength=values.size).astype(np.float64)
    return n_b, n_s


def min_cllr(bonafide: Any, spoof: Any) -> float:
    """Cllr (bits) after the best monotone recalibration of the scores: the discrimination loss alone.

    The pool-adjacent-violators fit of the bonafide posterior along the scores (the ROC convex hull) gives
    each trial its optimal LLR, posterior log-odds minus the log-odds of the class proportions. Tied
    scores form one block that gets one value, as any real score -> LLR map must give them.
    """
    from scipy.special import xlogy
    from sklearn.isotonic import isotonic_regression

    b = _as_scores(bonafide, "bonafide")
    s = _as_scores(spoof, "spoof")
    n_b, n_s = _tie_blocks(b, s)
    n = n_b + n_s
    post = isotonic_regression(n_b / n, sample_weight=n, increasing=True)
    # The posterior at a flat prior: the fitted one re-weighted from the data's class proportions to 0.5.
    odds_b, odds_s = post / b.size, (1 - post) / s.size
    cost_b = -np.sum(xlogy(n_b, odds_b / (odds_b + odds_s))) / b.size
    cost_s = -np.sum(xlogy(n_s, odds_s / (odds_b + odds_s))) / s.size
    return float((cost_b + cost_s) / (2 * math.log(2))) + 0.0  # + 0.0: no "-0.0" for a perfect system


# --- bootstrap -----------------------------------------------------------------------------------


def _eers_from_resamples(
    bonafide: np.ndarray, spoof: np.ndarray, idx_b: np.ndarray, idx_s: np.ndarray,
    costs: DcfCosts | None = None,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """EERs (percent) of R resamples ``bonafide[idx_b[r]]`` vs ``spoof[idx_s[r]]`` with one sort; with
    ``costs`` also their normalised minimum DCFs, as ``(eers, min_dcfs)``.

    Equals ``compute_eer`` on each resample. A resample's stable sort is the original stable sort with
    each score repeated by its draw count (bonafide still before spoof among ties), so drawn items are
    mapped to their sorted positions once. Along the reference DET curve FRR - FAR rises strictly
    (each step moves exactly one of them), so argmin |FRR - FAR| is one of the two points around the
    first index where FRR >= FAR. With B, S the bonafide and spoof counts below a point that index is
    found exactly in integers:  B/mb >= (ms - S)/ms  <=>  g = B*ms + S*mb >= mb*ms,  first over the
    sorted positions (a cumulative sum of g's increments, then a binary search), then inside the run of
    copies of that position. The two candidate rates are formed with the reference's float divisions.

    The DCF of a point is  w_miss B/mb + w_fa (ms - S)/ms = w_fa + (cumulative sum of +w_miss/mb per
    bonafide copy and -w_fa/ms per spoof copy); inside a run of copies it moves one way, so its minimum
    over all points is at a boundary of the sorted positions, or point 0.
    """
    nb = bonafide.size
    reps, mb = idx_b.shape
    ms = idx_s.shape[1]
    n = nb + spoof.size
    perm = np.argsort(np.concatenate((bonafide, spoof)), kind="mergesort")
    sorted_is_bona = perm < nb
    rank = np.empty(n, dtype=np.int64)
    rank[perm] = np.arange(n)
    pos_b = rank[:nb][idx_b]  # sorted position of every drawn score
    pos_s = rank[nb:][idx_s]
    offsets = np.arange(reps, dtype=np.int64)[:, None] * n
    drawn = np.empty((reps, mb + ms), dtype=np.int64)
    np.add(pos_b, offsets, out=drawn[:, :mb])
    np.add(pos_s, offsets, out=drawn[:, mb:])
    g = np.bincount(drawn.ravel(), minlength=reps * n).reshape(reps, n)
    del drawn
    dcfs = None
    if costs is not None:
        step_cost = np.where(sorted_is_bona, costs.miss_weight / mb, -costs.fa_weight / ms)
        lowest = np.minimum(np.cumsum(g * step_cost, axis=1).min(axis=1), 0.0)
        dcfs = (costs.fa_weight + lowest) / costs.normaliser
    g *= np.where(sorted_is_bona, ms, mb)  # a bonafide copy adds ms to g, a spoof copy mb
    np.cumsum(g, axis=1, out=g)
    target = mb * ms
    run = np.array([np.searchsorted(row, target, side="left") for row in g], dtype=np.int64)
    del g
    b_prev = (pos_b < run[:, None]).sum(axis=1)
    s_prev = (pos_s < run[:, None]).sum(axis=1)
    run_is_bona = sorted_is_bona[run]
    step = np.where(run_is_bona, ms, mb)
    g_prev = b_prev * ms + s_prev * mb
    inside = (target - g_prev + step - 1) // step  # 1 <= inside <= copies of the run's score
    b_k = b_prev + np.where(run_is_bona, inside, 0)
    s_k = s_prev + np.where(run_is_bona, 0, inside)
    b_k1 = b_k - run_is_bona
    s_k1 = s_k - ~run_is_bona
    frr_k, far_k = b_k / mb, (ms - s_k) / ms
    frr_k1, far_k1 = b_k1 / mb, (ms - s_k1) / ms
    take_earlier = np.abs(frr_k1 - far_k1) <= np.abs(frr_k - far_k)  # argmin keeps the first minimum
    frr = np.where(take_earlier, frr_k1, frr_k)
    far = np.where(take_earlier, far_k1, far_k)
    eers = (frr + far) / 2 * 100.0
    return eers if dcfs is None else (eers, dcfs)


def bootstrap_eers(
    bonafide: Any, spoof: Any, n_bootstrap: int = 1000, seed: int = 0, progress: bool = False
) -> np.ndarray:
    """EERs (percent) of ``n_bootstrap`` resamples; bonafide and spoof are resampled separately.

    Each class draws from its own child generator of ``SeedSequence(seed)``, so results do not depend
    on how the work is chunked.
    """
    return _bootstrap(bonafide, spoof, n_bootstrap, seed, None, progress)["eer"]


def bootstrap_metrics(
    bonafide: Any, spoof: Any, n_bootstrap: int = 1000, seed: int = 0,
    costs: DcfCosts = ASVSPOOF5_COSTS, progress: bool = False,
) -> dict[str, np.ndarray]:
    """``{"eer": ..., "min_dcf": ...}`` of ``n_bootstrap`` resamples, the EERs those of
    :func:`bootstrap_eers` with the same seed (the same draws)."""
    return _bootstrap(bonafide, spoof, n_bootstrap, seed, costs, progress)


def _bootstrap(bonafide: Any, spoof: Any, n_bootstrap: int, seed: int, costs: DcfCosts | None,
               progress: bool) -> dict[str, np.ndarray]:
    if n_bootstrap < 0:
        raise ConfigError(f"--bootstrap must be >= 0, got {n_bootstrap}")
    b = _as_scores(bonafide, "bonafide")
    s = _as_scores(spoof, "spoof")
    rng_b, rng_s = (np.random.default_rng(child) for child in np.random.SeedSequence(seed).spawn(2))
    chunk = max(1, _BOOTSTRAP_CHUNK_ELEMENTS // (b.size + s.size))
    out = {name: np.empty(n_bootstrap, dtype=np.float64)
           for name in (("eer",) if costs is None else ("eer", "min_dcf"))}
    from .progress import progress_bar

    with progress_bar(total=n_bootstrap, desc="bootstrap", unit="resample", enabled=progress) as bar:
        for start in range(0, n_bootstrap, chunk):
            reps = min(chunk, n_bootstrap - start)
            # int32 draws are twice as fast as int64 ones; score sets stay far below 2**31.
            idx_b = rng_b.integers(0, b.size, size=(reps, b.size), dtype=np.int32)
            idx_s = rng_s.integers(0, s.size, size=(reps, s.size), dtype=np.int32)
            got = _eers_from_resamples(b, s, idx_b, idx_s, costs)
            for name, values in zip(out, got if costs is not None else (got,), strict=True):
                out[name][start : start + reps] = values
            bar.update(reps)
    return out


def bootstrap_eer_ci(
    bonafide: Any,
    spoof: Any,
    n_bootstrap: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    progress: bool = False,
) -> tuple[float, float]:
    """Percentile bootstrap interval of the EER (percent)."""
    eers = bootstrap_eers(bonafide, spoof, n_bootstrap, seed, progress=progress)
    if eers.size == 0:
        raise ConfigError("a bootstrap interval needs at least one resample")
    alpha = (1 - level) / 2 * 100
    lo, hi = np.percentile(eers, [alpha, 100 - alpha])
    return float(lo), float(hi)


# --- paired comparisons of systems over seeds ------------------------------------------------------

VERDICTS = ("better", "worse", "not separated")


@dataclass(frozen=True)
class PairedDifference:
    """EER(a) - EER(b) in percentage points: the mean over seeds on the whole set, its bootstrap interval
    and the verdict for a against b (lower EER is better; "not separated" when the interval holds 0)."""

    mean: float
    ci95: tuple[float, float] | None
    verdict: str

    def as_dict(self, prefix: str) -> dict[str, Any]:
        return {prefix: self.mean, f"{prefix}_ci95": None if self.ci95 is None else list(self.ci95)}


@dataclass(frozen=True)
class SeedResamples:
    """One system's EERs (percent) per seed: on the whole set (S,) and on each bootstrap resample (S, R)."""

    full: np.ndarray
    boot: np.ndarray


class PairedBootstrap:
    """A paired bootstrap over target utterances and seeds, shared by every system scored on one set.

    Every system is resampled with the same draws: replicate r takes the bonafide and the spoof
    utterances with replacement (each class separately, as :func:`bootstrap_eers` does) and the seeds
    with replacement. Systems are paired by seed: seed j of one system and seed j of the other are the
    same training seed, so a difference cancels what the seed does to both. For two systems a, b the
    replicate's statistic is the mean over the drawn seeds of EER_a(seed, r) - EER_b(seed, r); the
    interval is the percentile interval of those statistics.
    """

    def __init__(self, is_bonafide: Any, n_seeds: int, n_bootstrap: int = 1000, seed: int = 0,
                 level: float = 0.95) -> None:
        self.is_bonafide = np.asarray(is_bonafide, dtype=bool)
        if self.is_bonafide.all() or not self.is_bonafide.any():
            raise NcdetectError("a paired bootstrap needs both bonafide and spoof utterances")
        if n_bootstrap < 0 or n_seeds < 1:
            raise ConfigError(f"need n_bootstrap >= 0 and n_seeds >= 1, got {n_bootstrap} and {n_seeds}")
        self.n_seeds, self.n_bootstrap, self.seed, self.level = n_seeds, n_bootstrap, seed, level
        rng_seeds = np.random.default_rng(np.random.SeedSequence(seed).spawn(3)[2])
        self.seed_draws = rng_seeds.integers(0, n_seeds, size=(n_bootstrap, n_seeds))

    def resample(self, scores: Any) -> SeedResamples:
        """EERs of a system whose scores are ``(n_seeds, N)``, utterances in the order of ``is_bonafide``."""
        scores = np.asarray(scores, dtype=np.float64)
        expected = (self.n_seeds, self.is_bonafide.size)
        if scores.shape != expected:
            raise NcdetectError(f"scores of shape {scores.shape}; expected {expected} (seeds x utterances)")
        full = np.array([compute_eer(row[self.is_bonafide], row[~self.is_bonafide])[0] for row in scores])
        boot = np.empty((self.n_seeds, self.n_bootstrap))
        nb = int(self.is_bonafide.sum())
        ns = self.is_bonafide.size - nb
        # The same child generators for every system, so every system sees the same resamples.
        rng_b, rng_s = (np.random.default_rng(c) for c in np.random.SeedSequence(self.seed).spawn(3)[:2])
        chunk = max(1, _BOOTSTRAP_CHUNK_ELEMENTS // self.is_bonafide.size)
        for start in range(0, self.n_bootstrap, chunk):
            reps = min(chunk, self.n_bootstrap - start)
            idx_b = rng_b.integers(0, nb, size=(reps, nb), dtype=np.int32)
            idx_s = rng_s.integers(0, ns, size=(reps, ns), dtype=np.int32)
            for j, row in enumerate(scores):
                boot[j, start : start + reps] = _eers_from_resamples(
                    row[self.is_bonafide], row[~self.is_bonafide], idx_b, idx_s)
        return SeedResamples(full, boot)

    def difference(self, a: SeedResamples, b: SeedResamples) -> PairedDifference:
        """EER(a) - EER(b), paired by seed."""
        mean = float(np.mean(a.full - b.full))
        if self.n_bootstrap == 0:
            return PairedDifference(mean, None, "not separated")
        diff = a.boot - b.boot  # (S, R)
        stats = diff[self.seed_draws.T, np.arange(self.n_bootstrap)].mean(axis=0)
        alpha = (1 - self.level) / 2 * 100
        lo, hi = (float(v) for v in np.percentile(stats, [alpha, 100 - alpha]))
        verdict = "better" if hi < 0 else "worse" if lo > 0 else "not separated"
        return PairedDifference(mean, (lo, hi), verdict)


def paired_eer_difference(is_bonafide: Any, scores_a: Any, scores_b: Any, n_bootstrap: int = 1000,
                          seed: int = 0, level: float = 0.95) -> PairedDifference:
    """EER(a) - EER(b) with a paired bootstrap interval; scores are ``(n_seeds, N)``, row j of both from
    training seed j, columns the same utterances."""
    scores_a = np.atleast_2d(np.asarray(scores_a, dtype=np.float64))
    boot = PairedBootstrap(is_bonafide, scores_a.shape[0], n_bootstrap, seed, level)
    return boot.difference(boot.resample(scores_a), boot.resample(scores_b))


def mean_over_log_rate(rates: Any, eers: Any) -> float:
    """The area under an EER-versus-rate curve over log10(rate), divided by its width: the curve's mean
    EER with every factor of rate weighted alike (0.05 to 0.1 counts as much as 0.25 to 0.5)."""
    rates = np.asarray(rates, dtype=np.float64)
    eers = np.asarray(eers, dtype=np.float64)
    if rates.size == 1:
        return float(eers[0])
    order = np.argsort(rates)
    x, y = np.log10(rates[order]), eers[order]
    return float(np.sum((y[1:] + y[:-1]) / 2 * np.diff(x)) / (x[-1] - x[0]))


# --- t-DCF (ASVspoof 2019) -----------------------------------------------------------------------


@dataclass(frozen=True)
class AsvScores:
    """Scores of the fixed ASV system of the tandem: target, nontarget (zero-effort) and spoof trials."""

    target: np.ndarray
    nontarget: np.ndarray
    spoof: np.ndarray
    path: str = "<asv scores>"


_ASV_KEYS = ("target", "nontarget", "spoof")


def read_asv_scores(path: str | Path) -> AsvScores:
    """Read an ASVspoof ASV score file.

    Two layouts: the ASVspoof 2019 organisers' ``ASVspoof2019.LA.asv.{dev,eval}.gi.trl.scores.txt``
    (``SPEAKER KEY SCORE``, e.g. ``LA_0039 target 1.2345``), and the 6-column form of the tDCF_python_v2
    package (``SPEAKER UTT - SOURCE KEY SCORE``). KEY is target, nontarget or spoof.
    """
    path = Path(path)
    if not path.is_file():
        raise ProtocolError(path, None, "ASV score file not found")
    groups: dict[str, list[float]] = {k: [] for k in _ASV_KEYS}
    with path.open(encoding="utf-8", errors="replace") as fh:
        for lineno, line in enumerate(fh, start=1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) == 3:
                key, raw = fields[1], fields[2]
            elif len(fields) == 6:
                key, raw = fields[4], fields[5]
            else:
                raise ProtocolError(
                    path, lineno, f"expected 3 fields (SPEAKER KEY SCORE) or 6, got {len(fields)}"
                )
            if key not in groups:
                raise ProtocolError(
                    path, lineno, f"unknown ASV key {key!r} (expected target, nontarget or spoof)"
                )
            try:
                value = float(raw)
            except ValueError:
                raise ProtocolError(path, lineno, f"score {raw!r} is not a number") from None
            if not math.isfinite(value):
                raise ProtocolError(path, lineno, f"score {raw!r} is not finite")
            groups[key].append(value)
    for key in _ASV_KEYS:
        if not groups[key]:
            raise ProtocolError(path, None, f"no {key} trials; the t-DCF needs target, nontarget and spoof")
    return AsvScores(*(np.asarray(groups[k], dtype=np.float64) for k in _ASV_KEYS), path=str(path))


def obtain_asv_error_rates(asv: AsvScores, asv_threshold: float) -> tuple[float, float, float]:
    """(Pfa_asv, Pmiss_asv, Pmiss_spoof_asv) at ``asv_threshold``, as in the reference (accept if >=)."""
    pfa = float(np.sum(asv.nontarget >= asv_threshold) / asv.nontarget.size)
    pmiss = float(np.sum(asv.target < asv_threshold) / asv.target.size)
    pmiss_spoof = float(np.sum(asv.spoof < asv_threshold) / asv.spoof.size)
    return pfa, pmiss, pmiss_spoof


def compute_tdcf_curve(
    bonafide_cm: Any,
    spoof_cm: Any,
    pfa_asv: float,
    pmiss_asv: float,
    pmiss_spoof_asv: float,
    cost_model: dict[str, float] = ASVSPOOF2019_COST_MODEL,
) -> tuple[np.ndarray, np.ndarray]:
    """Normalised t-DCF over all CM thresholds, ASVspoof 2019 formulation (tDCF_python_v1)::

        C1 = Ptar (Cmiss_cm - Cmiss_asv Pmiss_asv) - Pnon Cfa_asv Pfa_asv
        C2 = Cfa_cm Pspoof (1 - Pmiss_spoof_asv)
        tDCF_norm(s) = (C1 Pmiss_cm(s) + C2 Pfa_cm(s)) / min(C1, C2)

    The reference's sanity checks raise NcdetectError here instead of exiting the process.
    """
    cm = cost_model
    priors = (cm["Ptar"], cm["Pnon"], cm["Pspoof"])
    if min(priors) < 0 or abs(sum(priors) - 1) > 1e-10:
        raise ConfigError("t-DCF priors must be non-negative and sum to one")
    bona = _as_scores(bonafide_cm, "bonafide")
    spoof = _as_scores(spoof_cm, "spoof")
    combined = np.concatenate((bona, spoof))
    if not np.isfinite(combined).all():
        raise NcdetectError("CM scores contain inf; the t-DCF needs finite scores")
    if np.unique(combined).size < 3:
        raise NcdetectError(
            "the t-DCF needs soft CM scores, not binary decisions (fewer than 3 distinct scores)"
        )
    pmiss_cm, pfa_cm, thresholds = compute_det_curve(bona, spoof)
    c1 = cm["Ptar"] * (cm["Cmiss_cm"] - cm["Cmiss_asv"] * pmiss_asv) - cm["Pnon"] * cm["Cfa_asv"] * pfa_asv
    c2 = cm["Cfa_cm"] * cm["Pspoof"] * (1 - pmiss_spoof_asv)
    if c1 < 0 or c2 < 0:
        raise NcdetectError(f"negative t-DCF weights (C1={c1:.5g}, C2={c2:.5g}); check the ASV error rates")
    if min(c1, c2) == 0:
        raise NcdetectError(
            "t-DCF normaliser is zero: the ASV accepts no spoof or the CM cost of a miss vanishes"
        )
    tdcf = c1 * pmiss_cm + c2 * pfa_cm
    return tdcf / np.minimum(c1, c2), thresholds


def min_tdcf(
    bonafide_cm: Any, spoof_cm: Any, asv: AsvScores, cost_model: dict[str, float] = ASVSPOOF2019_COST_MODEL
) -> dict[str, Any]:
    """Minimum normalised t-DCF of a CM in tandem with ``asv`` fixed at its EER threshold (ASVspoof 2019)."""
    asv_eer, asv_threshold = compute_eer(asv.target, asv.nontarget)
    pfa, pmiss, pmiss_spoof = obtain_asv_error_rates(asv, asv_threshold)
    curve, thresholds = compute_tdcf_curve(bonafide_cm, spoof_cm, pfa, pmiss, pmiss_spoof, cost_model)
    i = int(np.argmin(curve))
    return {
        "min_tdcf": float(curve[i]),
        "threshold": float(thresholds[i]),
        "asv_eer": asv_eer,
        "asv_threshold": asv_threshold,
        "pfa_asv": pfa,
        "pmiss_asv": pmiss,
        "pmiss_spoof_asv": pmiss_spoof,
        "cost_model": dict(cost_model),
    }


# --- score files ---------------------------------------------------------------------------------


def validate_scores(df: pd.DataFrame, source: str | Path = "<scores>") -> pd.DataFrame:
    """Check a scores table and return a clean copy (float ``score``, str ``label``/``attack``).

    Errors name ``source`` and the CSV line (header = line 1, so row i is line i + 2).
    """
    missing = [c for c in SCORE_COLUMNS if c not in df.columns]
    if missing:
        raise ProtocolError(
            source, 1, f"scores lack columns {missing}; they need {SCORE_COLUMNS} (+ optional attack)"
        )
    out = df.reset_index(drop=True).copy()
    out["score"] = _finite_column(out, "score", source)
    out["label"] = out["label"].astype(str).str.strip()
    bad_label = ~out["label"].isin(LABELS)
    if bad_label.any():
        i = int(np.flatnonzero(bad_label.to_numpy())[0])
        raise ProtocolError(
            source, i + 2, f"unknown label {out['label'].iloc[i]!r} (expected bonafide or spoof)"
        )
    for lab in LABELS:
        if not (out["label"] == lab).any():
            raise ProtocolError(source, None, f"no {lab} rows; the EER needs both bonafide and spoof scores")
    out["utt_id"] = out["utt_id"].astype(str)
    if "attack" in out.columns:
        out["attack"] = out["attack"].astype(str).str.strip()
    return out


def read_scores(path: str | Path) -> pd.DataFrame:
    """Read and validate a scores CSV (``utt_id,score,label`` + optional ``attack``)."""
    path = Path(path)
    if not path.is_file():
        raise ProtocolError(path, None, "scores file not found")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise ProtocolError(path, None, f"cannot read scores ({err})") from None
    if not text.strip():
        raise ProtocolError(path, None, "scores file is empty")
    # The csv module reports ragged rows with their line number, which pandas would not.
    reader = csv.reader(io.StringIO(text))
    header = next(reader)
    for lineno, row in enumerate(reader, start=2):
        if row and len(row) != len(header):
            raise ProtocolError(path, lineno, f"expected {len(header)} fields, got {len(row)}")
    try:
        df = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False, skip_blank_lines=True)
    except (ValueError, pd.errors.ParserError) as err:  # e.g. an unclosed quote
        reason = " ".join(str(err).split()) or type(err).__name__
        raise ProtocolError(path, None, f"cannot read scores ({reason})") from None
    return validate_scores(df, path)


# --- evaluation ----------------------------------------------------------------------------------


def _per_attack(df: pd.DataFrame, bona: np.ndarray, costs: DcfCosts) -> dict[str, dict[str, Any]]:
    if "attack" not in df.columns:
        return {}
    spoof = df[df["label"] == "spoof"]
    result: dict[str, dict[str, Any]] = {}
    for attack, group in sorted(spoof.groupby("attack", sort=False), key=lambda kv: str(kv[0])):
        s = group["score"].to_numpy()
        eer, thr = compute_eer(bona, s)
        result[str(attack)] = {"eer": eer, "threshold": thr, "min_dcf": min_dcf(bona, s, costs)[0],
                               "n": len(group)}
    return result


def _llrs(df: pd.DataFrame, source: str | Path) -> tuple[str, np.ndarray]:
    """The scores that actDCF and Cllr take as LLRs: the ``llr`` column of a calibrated run's scores when
    there is one, else the raw scores (which are then judged as if they were LLRs)."""
    if "llr" not in df.columns:
        return "score", df["score"].to_numpy()
    return "llr", _finite_column(df, "llr", source)


def _finite_column(df: pd.DataFrame, column: str, source: str | Path) -> np.ndarray:
    """A scores file's numeric column as float64; the first value that is not a finite number is an error
    naming its line (line 1 is the header)."""
    raw = df[column]
    values = pd.to_numeric(raw, errors="coerce").to_numpy(dtype=np.float64)
    bad = ~np.isfinite(values)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ProtocolError(source, i + 2, f"{column} {raw.iloc[i]!r} is not a finite number")
    return values


def _interval(values: np.ndarray, level: float = 0.95) -> list[float]:
    alpha = (1 - level) / 2 * 100
    return [float(v) for v in np.percentile(values, [alpha, 100 - alpha])]


def evaluate_scores(
    df: pd.DataFrame,
    n_bootstrap: int = 1000,
    seed: int = 0,
    asv: AsvScores | str | Path | None = None,
    source: str | Path = "<scores>",
    progress: bool = False,
    costs: DcfCosts = ASVSPOOF5_COSTS,
) -> dict[str, Any]:
    """EER with threshold and bootstrap 95% interval, the ASVspoof 5 metrics (minDCF with its interval,
    actDCF, Cllr, min Cllr) under ``costs``, per-attack EERs and minDCFs, counts, and min t-DCF given ASV
    scores.

    The result holds only JSON types. The ``*_ci95`` intervals are None when ``n_bootstrap`` is 0.
    """
    if n_bootstrap < 0:
        raise ConfigError(f"--bootstrap must be >= 0, got {n_bootstrap}")
    df = validate_scores(df, source)
    is_bona = (df["label"] == "bonafide").to_numpy()
    scores = df["score"].to_numpy()
    bona, spoof = scores[is_bona], scores[~is_bona]
    eer, threshold = compute_eer(bona, spoof)
    dcf, dcf_threshold = min_dcf(bona, spoof, costs)
    llr_from, llr = _llrs(df, source)
    actual, bayes = act_dcf(llr[is_bona], llr[~is_bona], costs)
    boot = bootstrap_metrics(bona, spoof, n_bootstrap, seed, costs, progress) if n_bootstrap else None
    result: dict[str, Any] = {
        "eer": eer,
        "threshold": threshold,
        "eer_ci95": _interval(boot["eer"]) if boot else None,
        "min_dcf": dcf,
        "min_dcf_threshold": dcf_threshold,
        "min_dcf_ci95": _interval(boot["min_dcf"]) if boot else None,
        "act_dcf": actual,
        "act_dcf_threshold": bayes,
        "cllr": cllr(llr[is_bona], llr[~is_bona]),
        "min_cllr": min_cllr(bona, spoof),
        "llr_from": llr_from,
        "costs": costs.as_dict(),
        "n_bootstrap": int(n_bootstrap),
        "seed": int(seed),
        "n_bonafide": int(bona.size),
        "n_spoof": int(spoof.size),
        "counts": {"bonafide": int(bona.size), "spoof": int(spoof.size)},
        "per_attack": _per_attack(df, bona, costs),
    }
    if asv is not None:
        asv_scores = asv if isinstance(asv, AsvScores) else read_asv_scores(asv)
        tdcf = min_tdcf(bona, spoof, asv_scores)
        result["min_tdcf"] = tdcf.pop("min_tdcf")
        result["tdcf"] = {"asv_scores": asv_scores.path, **tdcf}
    return result


# --- metrics per condition -----------------------------------------------------------------------


def attach_columns(df: pd.DataFrame, columns: list[str], manifest: str | Path | None,
                   source: str | Path = "<scores>") -> pd.DataFrame:
    """The scores with the ``columns`` they lack taken from ``manifest`` by utt_id.

    A column in neither, a score whose utt_id the manifest lacks, an utt_id the manifest holds twice and
    an empty value are one-line errors naming the column (and the file and line).
    """
    wanted = [c for c in dict.fromkeys(columns) if c not in df.columns]
    if not wanted:
        return df
    if manifest is None:
        raise ConfigError(f"--by {wanted[0]}: {source} has no column {wanted[0]!r} (it has "
                          f"{', '.join(df.columns)}); pass --manifest with that column")
    from .data.manifest import read_manifest

    man = read_manifest(manifest, resolve_paths=False)
    for col in wanted:
        if col not in man.columns:
            raise ConfigError(f"--by {col}: neither {source} nor {manifest} has a column {col!r} "
                              f"(the manifest has {', '.join(man.columns)})")
    man = man.assign(utt_id=man["utt_id"].astype(str))
    dup = man["utt_id"].duplicated()
    if dup.any():
        i = int(np.flatnonzero(dup.to_numpy())[0])
        raise ProtocolError(manifest, i + 2, f"utt_id {man['utt_id'].iloc[i]!r} appears twice; --by "
                            "joins the scores to the manifest by utt_id")
    table = man.set_index("utt_id")[wanted]
    missing = ~df["utt_id"].isin(table.index)
    if missing.any():
        i = int(np.flatnonzero(missing.to_numpy())[0])
        raise ProtocolError(source, i + 2, f"utt_id {df['utt_id'].iloc[i]!r} is not in {manifest}")
    joined = table.loc[df["utt_id"].to_numpy()].reset_index(drop=True)
    out = df.reset_index(drop=True).copy()
    for col in wanted:
        out[col] = joined[col].astype(str).to_numpy()
    return out


def metrics_by(df: pd.DataFrame, column: str, pair_within: bool = False,
               costs: DcfCosts = ASVSPOOF5_COSTS) -> dict[str, Any]:
    """EER, minDCF and counts per value of ``column`` of validated scores.

    Each value's spoofs are scored against every bonafide trial, or with ``pair_within`` against the
    bonafide trials of the same value. The values are those of the spoof rows (of all rows with
    ``pair_within``); a value without the trials its subset needs is an error naming it.
    """
    if column not in df.columns:
        raise ConfigError(f"--by {column}: no column {column!r} (there are {', '.join(df.columns)})")
    values = df[column].astype(str).str.strip()
    empty = values == ""
    if empty.any():
        raise ConfigError(f"--by {column}: utt_id {df['utt_id'].iloc[int(np.flatnonzero(empty)[0])]!r} has "
                          "an empty value")
    is_bona = (df["label"] == "bonafide").to_numpy()
    scores = df["score"].to_numpy()
    pool = values if pair_within else values[~is_bona]
    rows: dict[str, dict[str, Any]] = {}
    for value in sorted(pool.unique()):
        here = (values == value).to_numpy()
        spoof = scores[here & ~is_bona]
        bona = scores[here & is_bona] if pair_within else scores[is_bona]
        for name, arr in (("spoof", spoof), ("bonafide", bona)):
            if arr.size == 0:
                raise ConfigError(f"--by {column}: value {value!r} has no {name} trials"
                                  + (" (--pair-within pairs each value with its own bonafide)"
                                     if pair_within and name == "bonafide" else ""))
        eer, _ = compute_eer(bona, spoof)
        rows[value] = {"eer": eer, "min_dcf": min_dcf(bona, spoof, costs)[0],
                       "n_bonafide": int(bona.size), "n_spoof": int(spoof.size)}
    return {"column": column, "pair_within": bool(pair_within), "values": rows}


def evaluate_file(
    scores: str | Path,
    asv_scores: str | Path | None = None,
    plots: str | Path | None = None,
    n_bootstrap: int = 1000,
    seed: int = 0,
    progress: bool = False,
    costs: DcfCosts = ASVSPOOF5_COSTS,
    by: list[str] | None = None,
    manifest: str | Path | None = None,
    pair_within: bool = False,
) -> dict[str, Any]:
    """``ncdetect evaluate``: :func:`evaluate_scores` of a scores CSV (with the min t-DCF when
    ``asv_scores`` is given), with ``by`` the metrics per value of each column (``result["by"]``, columns
    the scores lack taken from ``manifest``), and with ``plots`` ``det.png`` and ``hist.png`` there
    (``result["plots"]``).
    """
    from .fileio import ensure_writable_dir

    if plots is not None:
        ensure_writable_dir(plots)  # before the bootstrap, not after it
    df = read_scores(scores)
    if pair_within and not by:
        raise ConfigError("--pair-within needs --by COLUMN")
    # Columns and subsets are checked before the bootstrap, so a typo fails at once.
    if by:
        df = attach_columns(df, by, manifest, scores)
        by_results = [metrics_by(df, column, pair_within, costs) for column in by]
    asv = read_asv_scores(asv_scores) if asv_scores is not None else None
    result = evaluate_scores(
        df, n_bootstrap=n_bootstrap, seed=seed, asv=asv, source=scores, progress=progress, costs=costs
    )
    if by:
        result["by"] = by_results
    if plots is not None:
        result["plots"] = {name: str(path) for name, path in write_plots(df, plots).items()}
    return result


def format_file_report(scores: str | Path, result: dict[str, Any]) -> str:
    """The scores file, :func:`format_report` and the plots written: what ``ncdetect evaluate`` prints."""
    lines = [str(scores), format_report(result)]
    lines += [f"wrote {path}" for path in result.get("plots", {}).values()]
    return "\n".join(lines)


def format_report(result: dict[str, Any]) -> str:
    """Human-readable table of an ``evaluate_scores`` result."""
    lines = [f"bonafide: {result['n_bonafide']}   spoof: {result['n_spoof']}"]
    ci = result.get("eer_ci95")
    ci_text = f"   95% CI [{ci[0]:.3f}, {ci[1]:.3f}] ({result['n_bootstrap']} bootstraps)" if ci else ""
    lines.append(f"EER: {result['eer']:.3f} %{ci_text}")
    lines.append(f"EER threshold: {result['threshold']:.6g}")
    if "min_dcf" in result:
        c = result["costs"]
        dci = result.get("min_dcf_ci95")
        dci_text = f"   95% CI [{dci[0]:.4f}, {dci[1]:.4f}]" if dci else ""
        lines.append(f"minDCF: {result['min_dcf']:.4f}{dci_text}   (C_miss {c['cost_miss']:g}, C_fa "
                     f"{c['cost_fa']:g}, P(spoof) {c['prior_spoof']:g}; threshold "
                     f"{result['min_dcf_threshold']:.6g})")
        what = "the llr column" if result["llr_from"] == "llr" else "the scores taken as LLRs"
        lines.append(f"actDCF: {result['act_dcf']:.4f}   (Bayes threshold {c['bayes_threshold']:.4f} on "
                     f"{what})")
        lines.append(f"Cllr: {result['cllr']:.4f} bits   min Cllr: {result['min_cllr']:.4f} bits")
    if "min_tdcf" in result:
        t = result["tdcf"]
        lines.append(
            f"min t-DCF (ASVspoof 2019): {result['min_tdcf']:.5f}   "
            f"(ASV EER {t['asv_eer']:.3f} %, CM threshold {t['threshold']:.6g})"
        )
    per_attack = result.get("per_attack") or {}
    if per_attack:
        width = max(6, *(len(a) for a in per_attack))
        lines.append("")
        lines.append(f"{'attack':<{width}}  {'n':>8}  {'EER %':>8}  {'minDCF':>8}")
        for attack, row in per_attack.items():
            dcf = f"{row['min_dcf']:>8.4f}" if "min_dcf" in row else f"{'-':>8}"
            lines.append(f"{attack:<{width}}  {row['n']:>8d}  {row['eer']:>8.3f}  {dcf}")
    for table in result.get("by") or []:
        lines += ["", *format_by(table)]
    return "\n".join(lines)


def format_by(table: dict[str, Any]) -> list[str]:
    """The lines of one :func:`metrics_by` table."""
    col, values = table["column"], table["values"]
    width = max(len(col), *(len(v) for v in values))
    pairing = "bonafide of the same value" if table["pair_within"] else "all bonafide"
    lines = [f"by {col} (spoofs against {pairing})",
             f"{col:<{width}}  {'bonafide':>8}  {'spoof':>8}  {'EER %':>8}  {'minDCF':>8}"]
    for value, row in values.items():
        lines.append(f"{value:<{width}}  {row['n_bonafide']:>8d}  {row['n_spoof']:>8d}  {row['eer']:>8.3f}  "
                     f"{row['min_dcf']:>8.4f}")
    return lines


# --- figures -------------------------------------------------------------------------------------

# Probabilities; normal deviates closer than ~0.25 apart would make the tick labels collide.
_DET_TICKS = [0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.4, 0.6, 0.8, 0.9, 0.95, 0.98, 0.99, 0.999]


def _save(fig: Any, out_png: str | Path) -> Path:
    return write_png(fig, out_png, dpi=120, tight=True)


def plot_det(curves: dict[str, tuple[Any, Any]], out_png: str | Path) -> Path:
    """DET curves (miss vs false alarm on normal-deviate axes) of several systems, EER points marked.

    ``curves`` maps a system name to its (bonafide scores, spoof scores).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from scipy.stats import norm

    if not curves:
        raise NcdetectError("plot_det needs at least one system")
    eps = 5e-4  # rates of 0 or 1 sit on the frame (+-3.3 deviates) instead of at infinity
    fig = Figure(figsize=(7, 7))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    for name, (bona, spoof) in curves.items():
        frr, far, _ = compute_det_curve(bona, spoof)
        eer, _ = compute_eer(bona, spoof)
        x = norm.ppf(np.clip(far, eps, 1 - eps))
        y = norm.ppf(np.clip(frr, eps, 1 - eps))
        (line,) = ax.plot(x, y, lw=1.5, label=f"{name} (EER {eer:.2f}%)")
        e = norm.ppf(np.clip(eer / 100, eps, 1 - eps))
        ax.plot([e], [e], "o", color=line.get_color(), ms=6)
    lim = norm.ppf([eps, 1 - eps])
    ax.plot(lim, lim, ":", color="0.6", lw=1)
    ticks = norm.ppf(_DET_TICKS)
    labels = [f"{100 * t:g}" for t in _DET_TICKS]
    ax.set_xticks(ticks, labels)
    ax.set_yticks(ticks, labels)
    ax.set_xlim(lim)
    ax.set_ylim(lim)
    ax.set_xlabel("False acceptance rate (spoof accepted) [%]")
    ax.set_ylabel("False rejection rate (bonafide rejected) [%]")
    ax.set_title("DET curve")
    ax.grid(True, color="0.85")
    ax.legend(loc="upper right", fontsize=8)
    return _save(fig, out_png)


def plot_score_histograms(
    df: pd.DataFrame, out_png: str | Path, per_attack: bool = True, bins: int = 60
) -> Path:
    """Score histograms per class with the EER threshold; a second panel per attack when available."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    df = validate_scores(df)
    bona = df.loc[df["label"] == "bonafide", "score"].to_numpy()
    spoof = df.loc[df["label"] == "spoof", "score"].to_numpy()
    eer, threshold = compute_eer(bona, spoof)
    edges = np.histogram_bin_edges(df["score"].to_numpy(), bins=bins)
    attacks = []
    if per_attack and "attack" in df.columns:
        attacks = sorted(df.loc[df["label"] == "spoof", "attack"].unique())
    show_attacks = len(attacks) > 1
    fig = Figure(figsize=(8, 6 if show_attacks else 3.5))
    FigureCanvasAgg(fig)
    axes = fig.subplots(2 if show_attacks else 1, 1, squeeze=False)[:, 0]
    ax = axes[0]
    ax.hist(bona, bins=edges, density=True, alpha=0.6, label=f"bonafide (n={bona.size})", color="tab:green")
    ax.hist(spoof, bins=edges, density=True, alpha=0.6, label=f"spoof (n={spoof.size})", color="tab:red")
    for a in axes:
        a.axvline(threshold, color="k", ls="--", lw=1, label=f"EER threshold {threshold:.3g} ({eer:.2f}%)")
        a.set_ylabel("density")
    ax.legend(fontsize=8)
    if show_attacks:
        ax2 = axes[1]
        ax2.hist(
            bona,
            bins=edges,
            density=True,
            histtype="stepfilled",
            alpha=0.3,
            color="tab:green",
            label="bonafide",
        )
        for attack in attacks:
            s = df.loc[(df["label"] == "spoof") & (df["attack"] == attack), "score"].to_numpy()
            ax2.hist(s, bins=edges, density=True, histtype="step", lw=1.2, label=str(attack))
        ax2.legend(fontsize=7, ncol=2)
    axes[-1].set_xlabel("score (higher = bonafide)")
    return _save(fig, out_png)


def write_plots(df: pd.DataFrame, out_dir: str | Path, max_attacks: int = 20) -> dict[str, Path]:
    """``det.png`` (all spoofs, plus one curve per attack when there are at most ``max_attacks``) and
    ``hist.png`` in ``out_dir``."""
    df = validate_scores(df)
    out_dir = Path(out_dir)
    bona = df.loc[df["label"] == "bonafide", "score"].to_numpy()
    spoof = df[df["label"] == "spoof"]
    curves: dict[str, tuple[np.ndarray, np.ndarray]] = {"all spoofs": (bona, spoof["score"].to_numpy())}
    if "attack" in df.columns:
        attacks = sorted(spoof["attack"].unique())
        if 1 < len(attacks) <= max_attacks:
            for attack in attacks:
                curves[str(attack)] = (bona, spoof.loc[spoof["attack"] == attack, "score"].to_numpy())
    return {
        "det": plot_det(curves, out_dir / "det.png"),
        "hist": plot_score_histograms(df, out_dir / "hist.png"),
    }
