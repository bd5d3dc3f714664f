"""``ncdetect calibrate``: turn a run's scores into log-likelihood ratios that mean what they say.

A score (logit(bonafide) - logit(spoof)) ranks trials, but its size is whatever training left it: a score
of 3 need not make bonafide e^3 times likelier. Calibration fits an affine map  llr = slope * score +
offset  on a dev set by prior-weighted logistic regression (the linear calibration of the BOSARIS toolkit
and of the ASVspoof 5 baselines): it minimises the cross-entropy of the posteriors the LLRs give at the
fitting prior, each class weighted by that prior. With unit costs the fitting prior is the
application's spoof prior; with costs it is the effective prior of costs and prior together, the one that
puts the Bayes threshold of the unit-cost problem where the costed problem has it.

An LLR turns into a probability only with a prior: P(bonafide | audio) = sigmoid(llr + ln((1 - P(spoof))
/ P(spoof))). The decision that costs least on average is bonafide when llr exceeds the Bayes threshold
ln(C_fa P(spoof) / (C_miss (1 - P(spoof)))). The map is only as good as the dev set is like the audio it
is used on: under domain shift an LLR can be off even where the ranking (EER, minDCF) holds.

``RUN/calibration.json`` holds the map, what it was fitted on and the dev metrics before and after.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .errors import ConfigError, ModelFileError, NcdetectError
from .evaluate import ASVSPOOF5_COSTS, DcfCosts, act_dcf, cllr, min_cllr, min_dcf, read_scores
from .fileio import write_json

CALIBRATION_FILE = "calibration.json"
CALIBRATION_SCORES_FILE = "calibration_scores.csv"
# A small L2 penalty on the slope (of standardised scores): a dev set whose classes do not overlap would
# otherwise drive the slope to infinity. At 1e-6 it moves the fit of overlapping classes by about 1e-4.
L2_PENALTY = 1e-6
PAGE_PRIOR_SPOOF = 0.5


@dataclass(frozen=True)
class Calibration:
    """An affine score -> LLR map and what it was fitted on."""

    slope: float
    offset: float
    fit_prior_spoof: float
    dev: str
    n_bonafide: int
    n_spoof: int
    costs: dict[str, float] = field(default_factory=dict)
    dev_metrics: dict[str, float] = field(default_factory=dict)

    def llr(self, score: Any) -> Any:
        """The log-likelihood ratio ln p(audio | bonafide) / p(audio | spoof) of a score (or array)."""
        return self.slope * score + self.offset

    def score_at(self, llr: float) -> float:
        """The score whose LLR is ``llr`` (the slope is positive)."""
        return (llr - self.offset) / self.slope

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "affine", "llr": "slope * score + offset", **asdict(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str | Path) -> Calibration:
        try:
            cal = cls(**{k: data[k] for k in ("slope", "offset", "fit_prior_spoof", "dev", "n_bonafide",
                                              "n_spoof")},
                      costs=dict(data.get("costs", {})), dev_metrics=dict(data.get("dev_metrics", {})))
        except (KeyError, TypeError) as err:
            raise ModelFileError(f"{source}: not a calibration file (missing {err})") from None
        if not (math.isfinite(cal.slope) and cal.slope > 0 and math.isfinite(cal.offset)):
            raise ModelFileError(f"{source}: slope {cal.slope} and offset {cal.offset} are not a valid map")
        return cal


def posterior_bonafide(llr: float, prior_spoof: float) -> float:
    """P(bonafide | audio) from an LLR and the prior probability of a spoof."""
    x = llr + math.log((1 - prior_spoof) / prior_spoof)
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


def fit_affine(bonafide: Any, spoof: Any, prior_spoof: float,
               penalty: float = L2_PENALTY) -> tuple[float, float]:
    """(slope, offset) of the prior-weighted logistic regression of the classes on the scores.

    Minimises  P(b) mean_b softplus(-(llr + c)) + P(s) mean_s softplus(llr + c) + penalty/2 a^2,
    llr = a z + b on standardised scores z, c = ln(P(b) / P(s)), with scipy's L-BFGS-B.
    """
    from scipy.optimize import minimize
    from scipy.special import expit

    b = np.asarray(bonafide, dtype=np.float64)
    s = np.asarray(spoof, dtype=np.float64)
    if b.size == 0 or s.size == 0:
        raise NcdetectError("calibration needs bonafide and spoof dev scores")
    both = np.concatenate((b, s))
    mu, sd = float(both.mean()), float(both.std())
    if not sd > 0:
        raise NcdetectError("calibration needs dev scores that differ (all are equal)")
    zb, zs = (b - mu) / sd, (s - mu) / sd
    pb, ps = 1 - prior_spoof, prior_spoof
    c = math.log(pb / ps)

    def objective(theta: np.ndarray) -> tuple[float, np.ndarray]:
        a, off = theta
        xb, xs = a * zb + off + c, a * zs + off + c
        loss = pb * np.mean(np.logaddexp(0, -xb)) + ps * np.mean(np.logaddexp(0, xs)) + penalty / 2 * a * a
        gb = -pb * (1 - expit(xb)) / zb.size  # d loss / d x per bonafide trial
        gs = ps * expit(xs) / zs.size
        grad = np.array([gb @ zb + gs @ zs + penalty * a, gb.sum() + gs.sum()])
        return float(loss), grad

    fit = minimize(objective, np.array([1.0, 0.0]), jac=True, method="L-BFGS-B",
                   options={"maxiter": 1000, "gtol": 1e-10})
    a, off = (float(v) for v in fit.x)
    return a / sd, off - a * mu / sd


def read_dev_scores(run_dir: Path, dev: str | Path) -> pd.DataFrame:
    """The dev scores: a scores CSV as given, or a manifest scored with the run (kept in
    RUN/calibration_scores.csv). Which one is told by the header: a manifest has a ``path`` column."""
    dev = Path(dev)
    if not dev.is_file():
        raise NcdetectError(f"{dev}: --dev file not found")
    header: list[str] = []
    if dev.suffix != ".parquet":
        with dev.open(encoding="utf-8", errors="replace") as fh:
            header = [h.strip() for h in fh.readline().split(",")]
    if dev.suffix != ".parquet" and "score" in header and "path" not in header:
        return read_scores(dev)
    from .score import score_manifest

    scores_csv = run_dir / CALIBRATION_SCORES_FILE
    df = score_manifest(run_dir, dev, scores_csv, progress=True)
    if df.empty:
        raise NcdetectError(f"{dev}: no dev utterances to calibrate on")
    return read_scores(scores_csv)


def calibrate_scores(df: pd.DataFrame, dev: str, costs: DcfCosts = ASVSPOOF5_COSTS) -> Calibration:
    """Fit the map on validated scores, weighted by the effective spoof prior of ``costs``."""
    is_bona = (df["label"] == "bonafide").to_numpy()
    score = df["score"].to_numpy(dtype=np.float64)
    bona, spoof = score[is_bona], score[~is_bona]
    if bona.size == 0 or spoof.size == 0:
        raise NcdetectError(f"{dev}: calibration needs both bonafide and spoof trials")
    prior = costs.effective_prior_spoof
    slope, offset = fit_affine(bona, spoof, prior)
    if not slope > 0:
        raise NcdetectError(
            f"{dev}: the fitted slope is {slope:.4g}: on this dev set higher scores do not mean more "
            "bonafide, so the run cannot be calibrated on it"
        )
    llr_b, llr_s = slope * bona + offset, slope * spoof + offset
    metrics = {
        "cllr_raw": cllr(bona, spoof), "act_dcf_raw": act_dcf(bona, spoof, costs)[0],
        "cllr": cllr(llr_b, llr_s), "act_dcf": act_dcf(llr_b, llr_s, costs)[0],
        "min_cllr": min_cllr(bona, spoof), "min_dcf": min_dcf(bona, spoof, costs)[0],
    }
    return Calibration(slope, offset, prior, dev, int(bona.size), int(spoof.size),
                       costs=costs.as_dict(), dev_metrics=metrics)


def calibrate_run(run_dir: str | Path, dev: str | Path, costs: DcfCosts = ASVSPOOF5_COSTS) -> Calibration:
    """``ncdetect calibrate RUN --dev MANIFEST_OR_SCORES``: fit and write RUN/calibration.json."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ModelFileError(f"{run_dir}: run folder not found")
    df = read_dev_scores(run_dir, dev)
    cal = calibrate_scores(df, str(dev), costs)
    write_json(run_dir / CALIBRATION_FILE, cal.to_dict())
    return cal


def load_calibration(run_dir: str | Path) -> Calibration | None:
    """The run's calibration, or None when it has none (an uncalibrated run)."""
    path = Path(run_dir) / CALIBRATION_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ModelFileError(f"{path}: unreadable calibration ({err})") from None
    if not isinstance(data, dict):
        raise ModelFileError(f"{path}: not a calibration file (expected a JSON object)")
    return Calibration.from_dict(data, path)


def calibrated_metrics(cal: Calibration, df: pd.DataFrame, costs: DcfCosts = ASVSPOOF5_COSTS) -> dict:
    """What calibration does on another set (validated scores): minDCF, actDCF and Cllr of the raw scores
    taken as LLRs and of the calibrated LLRs, min Cllr, and the calibration loss actDCF - minDCF."""
    is_bona = (df["label"] == "bonafide").to_numpy()
    score = df["score"].to_numpy(dtype=np.float64)
    bona, spoof = score[is_bona], score[~is_bona]
    llr_b, llr_s = cal.llr(bona), cal.llr(spoof)
    best = min_dcf(bona, spoof, costs)[0]
    actual = act_dcf(llr_b, llr_s, costs)[0]
    return {"min_dcf": best, "act_dcf": actual, "act_dcf_gap": actual - best,
            "act_dcf_raw": act_dcf(bona, spoof, costs)[0], "cllr": cllr(llr_b, llr_s),
            "cllr_raw": cllr(bona, spoof), "min_cllr": min_cllr(bona, spoof)}


def score_calibrated(run_dir: str | Path, manifest: str | Path, out_csv: str | Path,
                     prior_spoof: float = PAGE_PRIOR_SPOOF, **kwargs: Any) -> pd.DataFrame:
    """``ncdetect score``: :func:`ncdetect.score.score_manifest`, and for a calibrated run the columns
    ``llr`` and ``probability`` (P(bonafide) under ``prior_spoof``)."""
    from .fileio import atomic_path
    from .score import score_manifest

    check_prior(prior_spoof)
    cal = load_calibration(run_dir)  # before the scoring: a bad calibration file fails at once
    df = score_manifest(run_dir, manifest, out_csv, **kwargs)
    if cal is None:
        return df
    df["llr"] = cal.llr(df["score"].to_numpy(dtype=np.float64))
    df["probability"] = [posterior_bonafide(v, prior_spoof) for v in df["llr"]]
    with atomic_path(Path(out_csv)) as tmp:
        df.to_csv(tmp, index=False)
    return df


def check_prior(prior_spoof: float) -> float:
    if not 0 < prior_spoof < 1:
        raise ConfigError(f"--prior-spoof must lie strictly between 0 and 1, got {prior_spoof}")
    return float(prior_spoof)


def format_calibration(cal: Calibration, path: Path) -> str:
    """What ``ncdetect calibrate`` prints."""
    m = cal.dev_metrics
    return "\n".join([
        f"{path}: llr = {cal.slope:.6g} * score + {cal.offset:.6g}  (fitted at P(spoof) "
        f"{cal.fit_prior_spoof:.4g} on {cal.n_bonafide} bonafide + {cal.n_spoof} spoof of {cal.dev})",
        f"dev Cllr {m['cllr_raw']:.4f} -> {m['cllr']:.4f} bits (min Cllr {m['min_cllr']:.4f}); "
        f"dev actDCF {m['act_dcf_raw']:.4f} -> {m['act_dcf']:.4f} (minDCF {m['min_dcf']:.4f})",
    ])
