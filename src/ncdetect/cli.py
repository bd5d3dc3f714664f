"""The ``ncdetect`` command line: a thin layer over the pipeline modules.

Each command imports its stage lazily so that ``ncdetect --help`` stays fast.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from enum import Enum
from pathlib import Path
from typing import Any, Optional

import typer

from . import __version__
from .collapse import coverage as collapse_coverage
from .collapse import frame as sampling_frame
from .collapse.strategies import STRATEGIES
from .data.corpora import ADAPTERS
from .errors import NcdetectError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Audio deepfake detection with neural-collapse sampling of compact training sets.",
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"ncdetect {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Optional[bool] = typer.Option(  # noqa: UP045 - typer needs Optional on 3.10
        None, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """ncdetect: train detectors, embed, measure neural collapse, sample, train compact models, evaluate."""


# --- data: prepare, demo-corpus ------------------------------------------------------------------


# The corpora `prepare` reads, named by their registry (typer needs the choices when the app is built).
Corpus = Enum("Corpus", {name: name for name in ADAPTERS.names()}, type=str)  # type: ignore[misc]


@app.command("prepare")
def prepare_cmd(
    corpus: Corpus = typer.Argument(..., help="Corpus layout to read.", show_default=False),
    root: Path = typer.Argument(..., help="Corpus folder as distributed (for csv: the CSV file)."),
    partition: Optional[str] = typer.Option(  # noqa: UP045 - typer needs Optional on 3.10
        None,
        "--partition",
        help="asvspoof2019/asvspoof5: train (default), dev, eval. asvspoof2021: LA or DF, optionally "
        "with a phase (LA-eval, DF-progress, ...). wavefake: ljspeech or jsut (default both). "
        "folder: a sub-folder of ROOT. in-the-wild, csv: none.",
    ),
    out: Path = typer.Option(..., "--out", help="Manifest to write (.csv or .parquet)."),
) -> None:
    """Read a corpus in its distributed layout and write its manifest (one row per utterance)."""
    from .data import corpora

    df = corpora.prepare(corpus.value, root, partition, out)
    typer.echo(f"{out}: {corpora.summarize(df)}")


@app.command("demo-corpus")
def demo_corpus_cmd(
    out: Path = typer.Option(..., "--out", help="Folder for the audio, the manifests and demo_corpus.json."),
    quick: bool = typer.Option(False, "--quick", help="60 prompts per language instead of all (~360 clips)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the splits, padding, levels and codec draws."),
    max_prompts: Optional[int] = typer.Option(  # noqa: UP045 - typer needs Optional on 3.10
        None, "--max-prompts", min=4, help="Prompts per language (overrides --quick)."
    ),
) -> None:
    """Build the demo corpus from Debian packages: Allison's Asterisk prompts (en, es) as bonafide;
    espeak-ng, festival kal_diphone, WORLD and Griffin-Lim re-syntheses of the same prompts as spoof."""
    from .demo import build_and_describe

    typer.echo(build_and_describe(out, quick=quick, seed=seed, max_prompts=max_prompts))


# --- train ---------------------------------------------------------------------------------------


@app.command("train")
def train_cmd(
    config: Optional[Path] = typer.Option(  # noqa: UP045 - typer needs Optional on 3.10
        None, "--config", help="Training config YAML (see configs/); omitted: the defaults."
    ),
    train_manifest: Path = typer.Option(..., "--train", help="Training manifest (.csv or .parquet)."),
    dev: Optional[Path] = typer.Option(  # noqa: UP045
        None, "--dev", help="Dev manifest: selects the epoch with the lowest dev EER and stops early. "
        "Without it the last epoch is kept.",
    ),
    out: Path = typer.Option(..., "--out", help="Run folder to write."),
    set_: list[str] = typer.Option(
        [], "--set", help="Override a config value, KEY=VALUE parsed as YAML, e.g. optim.lr=0.001 "
        "(repeatable).",
    ),
    resume: bool = typer.Option(
        False, "--resume", help="Continue the run in --out from its last completed epoch (same config)."
    ),
    force: bool = typer.Option(
        False, "--force", help="Replace an existing run in --out instead of refusing."
    ),
    skip_bad: bool = typer.Option(
        False, "--skip-bad", help="Skip unreadable audio files (listed in RUN/skipped.csv) instead of "
        "stopping.",
    ),
) -> None:
    """Train a detector. Writes RUN/model.safetensors, config.yaml, metrics.json and train.log.

    Multi-GPU / multi-node: launch with torchrun, e.g. `torchrun --nproc_per_node 4 -m ncdetect.cli train ...`
    (data.batch_size is per process)."""
    from .config import load_config
    from .distributed import is_main_process
    from .runs import MODEL_FILE
    from .train import train

    cfg = load_config(config, set_)
    metrics = train(
        cfg, train_manifest, out, dev_manifest=dev, resume=resume, skip_bad=skip_bad, force=force,
        progress=True,
    )
    if is_main_process():
        best = metrics["dev_eer_at_best"]
        tail = f" (dev EER {best:.2f}%)" if best is not None else ""
        typer.echo(f"{out / MODEL_FILE}: epoch {metrics['best_epoch']}{tail}")


# --- embed, collapse, sample, plot-embeddings ----------------------------------------------------


@app.command("embed")
def embed_cmd(
    run: Path = typer.Argument(..., help="Run folder (from `ncdetect train`)."),
    manifest: Path = typer.Argument(..., help="Manifest of the utterances to embed."),
    out: Path = typer.Option(..., "--out", help="Embedding folder to write."),
    batch_size: int = typer.Option(64, "--batch-size", min=1, help="Utterances per batch."),
    skip_bad: bool = typer.Option(
        False, "--skip-bad", help="Skip unreadable audio files (listed in OUT/skipped.csv) instead of "
        "stopping.",
    ),
    device: str = typer.Option("auto", "--device", help="auto (GPU when present), cpu, cuda, cuda:1, ..."),
    num_workers: int = typer.Option(0, "--num-workers", min=0, help="DataLoader worker processes."),
) -> None:
    """Penultimate embeddings of a run over a manifest: OUT/embeddings.npy (float32 N x D), index.csv
    (manifest rows + score + source) and head.npz (W, b). Under torchrun each process embeds a share."""
    from .distributed import is_main_process
    from .embed import embed_manifest

    path = embed_manifest(
        run, manifest, out, batch_size=batch_size, skip_bad=skip_bad, device=device,
        num_workers=num_workers, progress=True,
    )
    if is_main_process():
        typer.echo(path / "embeddings.npy")


def _choices(name: str, values: Sequence[str]) -> Any:
    """A str Enum for typer whose members are ``values`` (from a registry or a module's constants)."""
    return Enum(name, {value: value for value in values}, type=str)


# The sampling choices come from the strategy registry and the frame's constants (numpy only to import).
SampleStrategy = _choices("SampleStrategy", STRATEGIES.names())
FakeMode = _choices("FakeMode", sampling_frame.FAKE_MODES)
RealMode = _choices("RealMode", sampling_frame.REAL_MODES)
SampleOrder = _choices("SampleOrder", sampling_frame.ORDERS)
CombineSpaces = _choices("CombineSpaces", sampling_frame.COMBINES)
DistanceMetric = _choices("DistanceMetric", sampling_frame.METRICS)
CoverageMode = _choices("CoverageMode", collapse_coverage.COVERAGE_MODES)


class ProjectionMethod(str, Enum):
    pca = "pca"
    tsne = "tsne"


@app.command("collapse")
def collapse_cmd(
    emb: Path = typer.Argument(..., help="Embedding folder (from `ncdetect embed`)."),
    as_json: bool = typer.Option(False, "--json", help="Print the metrics as a JSON object."),
) -> None:
    """Neural-collapse metrics of one embedding folder: NC1, NC2 (equinorm, equiangularity), NC3, NC4
    and the within-class distance percentiles. NC3 and NC4 need head.npz."""
    import json

    from .collapse.embeddings import load_embeddings
    from .collapse.metrics import format_metrics, nc_metrics
    from .fileio import json_safe

    es = load_embeddings(emb, require_head=False)
    try:
        metrics = nc_metrics(es.embeddings, es.labels, es.W, es.b, progress=True)
    except NcdetectError as err:
        raise NcdetectError(f"{es.path}: {err}") from None
    if as_json:
        typer.echo(json.dumps(json_safe(metrics), indent=2))
    else:
        typer.echo(format_metrics(metrics, title=f"{es.path} ({es.name})"))


@app.command("sample")
def sample_cmd(
    emb: list[Path] = typer.Argument(..., help="Embedding folders, one per source model and corpus."),
    strategy: SampleStrategy = typer.Option(
        ..., "--strategy", help="Selection strategy: " + "; ".join(
            f"{name}: {STRATEGIES.get(name).summary}" for name in STRATEGIES.names()) + "."
    ),
    rate: float = typer.Option(..., "--rate", help="Fraction of each class to keep, in (0, 1]."),
    real_rate: Optional[float] = typer.Option(  # noqa: UP045 - typer needs Optional on 3.10
        None, "--real-rate", help="Fraction of bonafide to keep (default --rate)."
    ),
    fake_rate: Optional[float] = typer.Option(  # noqa: UP045 - typer needs Optional on 3.10
        None, "--fake-rate", help="Fraction of spoof to keep (default --rate)."
    ),
    fake_mode: FakeMode = typer.Option(
        "class", "--fake-mode", help="How nc spreads the spoof budget: over the class, per attack, "
        "per k-means cluster, or across distance quantiles."
    ),
    real_mode: RealMode = typer.Option(
        "class", "--real-mode", help="How nc spreads the bonafide budget: over the class, per speaker, "
        "per k-means cluster, or across distance quantiles."
    ),
    order: SampleOrder = typer.Option(
        "near", "--order", help="nc, nc-kcenter: keep the nearest to the class mean (the paper), the "
        "farthest, or auto: near below --order-switch, far at or above it (per class rate)."
    ),
    order_switch: float = typer.Option(
        sampling_frame.DEFAULT_ORDER_SWITCH, "--order-switch",
        help="The rate at which --order auto turns from near to far.",
    ),
    metric: DistanceMetric = typer.Option(
        "euclidean", "--metric", help="Euclidean distance to the class means, or 1 - cosine."
    ),
    cross_source: bool = typer.Option(
        False, "--cross-source", help="Folders holding the same (dataset, utt_id) rows are views of one pool "
        "(one training set embedded by several source models): score each sample by its distances in all "
        "of them (the first folder of a pool is its primary view)."
    ),
    combine: CombineSpaces = typer.Option(
        "rank", "--combine", help="With --cross-source: average per-space rank-normalised or z-scored "
        "distances."
    ),
    min_margin: Optional[float] = typer.Option(  # noqa: UP045 - typer needs Optional on 3.10
        None, "--min-margin", help="Only samples the source model classifies correctly with this margin "
        "(index.csv score > M for bonafide, < -M for spoof) are eligible; too few: filled from the rest."
    ),
    pool_factor: float = typer.Option(
        sampling_frame.DEFAULT_POOL_FACTOR, "--pool-factor", help="nc-kcenter: the nc candidate pool holds "
        "ceil(factor * k) samples."
    ),
    seed: int = typer.Option(0, "--seed", help="Seed of random, kcenter, kmeans."),
    coverage: CoverageMode = typer.Option(
        collapse_coverage.DEFAULT_COVERAGE, "--coverage", help="Coverage of the pool in the summary (shares "
        "kept, nearest-neighbour distances, NC1): estimate (nearest-neighbour means on "
        f"{collapse_coverage.ESTIMATE_POINTS} seeded query rows per class, with 95% intervals), exact "
        "(every row; O(pool x kept) distances), or off."
    ),
    no_coverage: bool = typer.Option(False, "--no-coverage", help="The same as --coverage off."),
    out: Path = typer.Option(..., "--out", help="Manifest to write (.csv or .parquet); the summary goes "
                             "to <stem>.summary.json beside it."),
) -> None:
    """Select a compact training set from embedding folders: per source and class, the k_c =
    max(1, round(r * N_c)) samples chosen by the strategy; the union is deduplicated by (dataset, utt_id).
    The summary gives counts per class, attack and source and the coverage of the pool."""
    from .collapse.sampling import format_summary, sample_folders, summary_path

    df = sample_folders(
        emb, strategy=strategy.value, rate=rate, real_rate=real_rate, fake_rate=fake_rate,
        fake_mode=fake_mode.value, metric=metric.value, seed=seed, out=out, progress=sys.stderr.isatty(),
        real_mode=real_mode.value, order=order.value, order_switch=order_switch, min_margin=min_margin,
        pool_factor=pool_factor, cross_source=cross_source, combine=combine.value,
        coverage="off" if no_coverage else coverage.value,
    )
    summary = df.attrs["summary"]
    for note in summary["notices"]:
        typer.echo(f"ncdetect: notice: {note}", err=True)
    typer.echo(format_summary(summary))
    typer.echo(f"{out}: {len(df)} utterances (summary {summary_path(out)})")


@app.command("plot-embeddings")
def plot_embeddings_cmd(
    emb: Path = typer.Argument(..., help="Embedding folder (from `ncdetect embed`)."),
    sampled: Optional[Path] = typer.Option(  # noqa: UP045 - typer needs Optional on 3.10
        None, "--sampled", help="Manifest from `ncdetect sample`: its samples in EMB are ringed."
    ),
    method: ProjectionMethod = typer.Option(ProjectionMethod.pca, "--method", help="2-D projection."),
    max_points: int = typer.Option(5000, "--max-points", min=2, help="Points drawn (selected always are)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the subsample and of t-SNE."),
    out: Path = typer.Option(..., "--out", help="PNG to write."),
) -> None:
    """Draw the embeddings in 2-D: classes by colour, attacks by marker, class means as stars."""
    from .collapse.plot import plot_embeddings

    proj = plot_embeddings(emb, out, sampled=sampled, method=method.value, max_points=max_points, seed=seed)
    typer.echo(f"{out}: {len(proj.indices)} points, {int(proj.selected.sum())} selected")


# --- score, evaluate, detect, export -------------------------------------------------------------


@app.command("score")
def score_cmd(
    run: Path = typer.Argument(..., help="Run folder (from `ncdetect train`)."),
    manifest: Path = typer.Argument(..., help="Manifest of the utterances to score."),
    out: Path = typer.Option(..., "--out", help="Scores CSV to write: utt_id,score,label,attack."),
    batch_size: int = typer.Option(64, "--batch-size", min=1, help="Utterances per batch."),
    skip_bad: bool = typer.Option(
        False, "--skip-bad", help="Skip unreadable audio files (listed in skipped.csv beside --out) instead "
        "of stopping.",
    ),
    device: str = typer.Option("auto", "--device", help="auto (GPU when present), cpu, cuda, cuda:1, ..."),
    num_workers: int = typer.Option(0, "--num-workers", min=0, help="DataLoader worker processes."),
    prior_spoof: float = typer.Option(
        0.5, "--prior-spoof", help="Calibrated runs: the spoof prior of the probability column."
    ),
) -> None:
    """Score a manifest: score = logit(bonafide) - logit(spoof), higher = more likely bonafide, on each
    utterance's first window (tile-padded when shorter). A calibrated run adds llr (log-likelihood ratio)
    and probability (P(bonafide) under --prior-spoof)."""
    from .calibration import score_calibrated

    df = score_calibrated(
        run, manifest, out, prior_spoof=prior_spoof, batch_size=batch_size, skip_bad=skip_bad,
        device=device, num_workers=num_workers, progress=True,
    )
    typer.echo(f"{out}: {len(df)} scores")


# The decision options shared by detect and serve.
THRESHOLD_OPTION = typer.Option(
    "auto", "--threshold", help="Score above which a file is bonafide: auto (default: the Bayes threshold "
    "of --cost-miss, --cost-fa and --prior-spoof for a calibrated run, 0 (the model's argmax) for an "
    "uncalibrated one), bayes, dev-eer (the dev-EER threshold in the run's metrics.json) or a number.",
)
PRIOR_OPTION = typer.Option(
    0.5, "--prior-spoof", help="Calibrated runs: the prior probability that a clip is spoofed, which the "
    "probability and the Bayes threshold assume.",
)
COST_MISS_OPTION = typer.Option(1.0, "--cost-miss", help="Bayes threshold: the cost of rejecting bonafide.")
COST_FA_OPTION = typer.Option(10.0, "--cost-fa", help="Bayes threshold: the cost of accepting a spoof.")


@app.command("calibrate")
def calibrate_cmd(
    run: Path = typer.Argument(..., help="Run folder (from `ncdetect train`)."),
    dev: Path = typer.Option(..., "--dev", help="Dev set to fit on: a manifest (scored with the run, the "
                             "scores kept in RUN/calibration_scores.csv) or a scores CSV of this run."),
    cost_miss: float = typer.Option(1.0, "--cost-miss", help="Cost of rejecting a bonafide trial."),
    cost_fa: float = typer.Option(10.0, "--cost-fa", help="Cost of accepting a spoof trial."),
    prior_spoof: float = typer.Option(0.05, "--prior-spoof", help="Prior probability of a spoof."),
) -> None:
    """Fit an affine map score -> log-likelihood ratio on a dev set (prior-weighted logistic regression,
    weighted by the effective spoof prior of the costs and prior; defaults those of ASVspoof 5) and write
    RUN/calibration.json. score, detect and serve then give llr and a probability."""
    from .calibration import CALIBRATION_FILE, calibrate_run, format_calibration
    from .evaluate import DcfCosts

    cal = calibrate_run(run, dev, DcfCosts(cost_miss, cost_fa, prior_spoof))
    typer.echo(format_calibration(cal, run / CALIBRATION_FILE))


@app.command("detect")
def detect_cmd(
    inputs: list[Path] = typer.Argument(..., help="Audio files and/or folders (walked recursively)."),
    model: Path = typer.Option(..., "--model", help="Run folder (from `ncdetect train`)."),
    window_seconds: Optional[float] = typer.Option(  # noqa: UP045 - typer needs Optional on 3.10
        None, "--window-seconds", help="Window length; default: the run's training window."
    ),
    hop_seconds: Optional[float] = typer.Option(  # noqa: UP045
        None, "--hop-seconds", help="Hop between windows of long files; default: half a window."
    ),
    threshold: str = THRESHOLD_OPTION,
    batch_size: int = typer.Option(16, "--batch-size", min=1, help="Windows per batch."),
    device: str = typer.Option("auto", "--device", help="auto (GPU when present), cpu, cuda, ..."),
    prior_spoof: float = PRIOR_OPTION,
    cost_miss: float = COST_MISS_OPTION,
    cost_fa: float = COST_FA_OPTION,
) -> None:
    """Print one JSON line per file: path, score (mean window logit difference), label, probability,
    threshold, calibrated, llr, prior_spoof, windows, seconds. For a calibrated run (ncdetect calibrate)
    llr is the score as a log-likelihood ratio and probability is P(bonafide) under --prior-spoof; an
    uncalibrated run gives both as null. An unreadable file prints {"path", "error"} and the rest go on;
    the exit status is then 1."""
    import json

    from .detect import detect

    failed = 0
    for result in detect(inputs, model, window_seconds, hop_seconds, threshold, batch_size, device,
                         prior_spoof=prior_spoof, cost_miss=cost_miss, cost_fa=cost_fa):
        failed += "error" in result
        typer.echo(json.dumps(result))
    if failed:
        typer.echo(f"ncdetect: error: {failed} file(s) could not be read", err=True)
        raise typer.Exit(1)


@app.command("export")
def export_cmd(
    run: Path = typer.Argument(..., help="Run folder (from `ncdetect train`)."),
    onnx: Path = typer.Option(..., "--onnx", help="ONNX file to write."),
) -> None:
    """Export front-end + model as ONNX: input waveform (batch, samples) float32 at 16 kHz, both axes
    dynamic; outputs logits (batch, 2) and score (batch,) = logit(bonafide) - logit(spoof)."""
    from .export import export_onnx

    typer.echo(export_onnx(run, onnx))


@app.command("evaluate")
def evaluate_cmd(
    scores: Path = typer.Argument(..., help="Scores CSV: utt_id,score,label[,attack]; higher = bonafide."),
    json_out: bool = typer.Option(False, "--json", help="Print the result as JSON."),
    asv_scores: Optional[Path] = typer.Option(  # noqa: UP045 - typer needs Optional on 3.10
        None,
        "--asv-scores",
        help="ASV scores of the tandem (ASVspoof2019.LA.asv.eval.gi.trl.scores.txt layout); adds the "
        "min t-DCF with the ASVspoof 2019 cost model.",
    ),
    plots: Optional[Path] = typer.Option(  # noqa: UP045
        None, "--plots", help="Folder to write det.png and hist.png to."
    ),
    bootstrap: int = typer.Option(
        1000, "--bootstrap", min=0, help="Bootstrap resamples for the EER 95% interval (0: none)."
    ),
    seed: int = typer.Option(0, "--seed", help="Seed of the bootstrap."),
    cost_miss: float = typer.Option(1.0, "--cost-miss", help="Cost of rejecting a bonafide trial (DCF)."),
    cost_fa: float = typer.Option(10.0, "--cost-fa", help="Cost of accepting a spoof trial (DCF)."),
    prior_spoof: float = typer.Option(0.05, "--prior-spoof", help="Prior probability of a spoof (DCF)."),
    by: list[str] = typer.Option(
        [], "--by", help="Also give EER, minDCF and counts per value of this column (of the scores or of "
        "--manifest; repeatable), e.g. attack, speaker, language, channel.",
    ),
    manifest: Optional[Path] = typer.Option(  # noqa: UP045
        None, "--manifest", help="Manifest the --by columns come from, joined to the scores by utt_id."
    ),
    pair_within: bool = typer.Option(
        False, "--pair-within", help="With --by: pair each value's spoofs with the bonafide trials of the "
        "same value instead of all bonafide trials.",
    ),
) -> None:
    """EER (ASVspoof reference) with threshold and bootstrap 95% interval; the ASVspoof 5 metrics minDCF
    (with its interval), actDCF, Cllr and min Cllr (defaults: C_miss 1, C_fa 10, P(spoof) 0.05);
    per-attack EERs and minDCFs; per-condition tables with --by; min t-DCF when ASV scores are given.

    actDCF and Cllr judge the scores as log-likelihood ratios: the llr column when the scores come from a
    calibrated run (`ncdetect calibrate`), else the raw scores."""
    import json

    from .evaluate import DcfCosts, evaluate_file, format_file_report

    costs = DcfCosts(cost_miss, cost_fa, prior_spoof)
    result = evaluate_file(scores, asv_scores, plots, n_bootstrap=bootstrap, seed=seed, progress=True,
                           costs=costs, by=by, manifest=manifest, pair_within=pair_within)
    typer.echo(json.dumps(result, indent=2) if json_out else format_file_report(scores, result))


# --- run, demo -----------------------------------------------------------------------------------


def _parse_vars(pairs: list[str]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise typer.BadParameter(f"expected NAME=VALUE, got {pair!r}", param_hint="--var")
        out[name] = value
    return out


@app.command("run")
def run_cmd(
    recipe: Path = typer.Argument(..., help="Recipe YAML (see recipes/)."),
    out: Path = typer.Option(..., "--out", help="Output folder; a rerun skips finished stages."),
    var: list[str] = typer.Option([], "--var", help="Set a recipe variable, NAME=VALUE (repeatable)."),
    profile: Optional[str] = typer.Option(  # noqa: UP045
        None, "--profile", help="A named set of variable values from the recipe's 'profiles'."
    ),
    allow_overlap: bool = typer.Option(
        False, "--allow-overlap",
        help="Allow a target that shares audio with a source's train or dev set (an in-domain check; "
        "the report says so in its first lines).",
    ),
) -> None:
    """Run the experiment of a recipe end to end: sources, embeddings, NC metrics, sampling, compact
    models, evaluation and the report."""
    from .pipeline import run_recipe
    from .recipe import load_recipe

    run_recipe(load_recipe(recipe, _parse_vars(var), profile), out, log=lambda m: typer.echo(m, err=True),
               allow_overlap=allow_overlap)
    typer.echo(out / "report.html")


@app.command("serve")
def serve_cmd(
    model: Path = typer.Option(..., "--model", help="Run folder, or an .onnx file from `ncdetect export`."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on (non-local: set an API key)."),
    port: int = typer.Option(8000, "--port", min=0, max=65535, help="Port (0: any free port)."),
    max_upload_mb: float = typer.Option(50.0, "--max-upload-mb", help="Largest request body; beyond: 413."),
    api_key: Optional[str] = typer.Option(  # noqa: UP045 - typer needs Optional on 3.10
        None, "--api-key", envvar="NCDETECT_API_KEY", help="Require this key in the X-API-Key header on /v1."
    ),
    threshold: str = THRESHOLD_OPTION,
    max_pending: int = typer.Option(
        16, "--max-pending", min=1, help="Requests scored at once or waiting; beyond: 503 with Retry-After."
    ),
    device: str = typer.Option("auto", "--device", help="auto (GPU when present), cpu, cuda, ..."),
    prior_spoof: float = PRIOR_OPTION,
    cost_miss: float = COST_MISS_OPTION,
    cost_fa: float = COST_FA_OPTION,
) -> None:
    """Serve a web page (drop or record audio, see verdicts and per-window timelines) and an HTTP API
    (POST /v1/detect, GET /v1/model, /healthz; OpenAPI docs at /docs). A calibrated run's page shows
    P(bonafide) and the prior it assumes; an uncalibrated run's page says it is uncalibrated."""
    from .serve import serve

    serve(model, host, port, max_upload_mb, api_key, threshold, max_pending, device,
          prior_spoof=prior_spoof, cost_miss=cost_miss, cost_fa=cost_fa)


@app.command("demo")
def demo_cmd(
    quick: bool = typer.Option(False, "--quick", help="A smaller corpus and fewer epochs (about 4 minutes)."),
    out: Path = typer.Option(Path("demo_out"), "--out", help="Output folder."),
    corpus: Optional[Path] = typer.Option(  # noqa: UP045
        None, "--corpus", help="Where the demo corpus is (built there when missing); default OUT/corpus."
    ),
) -> None:
    """Build the demo corpus if it is missing, then run recipes/demo_whisper.yaml on it (Whisper front-end,
    step-matched compact models)."""
    from .demo import run_demo

    typer.echo(run_demo(out, quick=quick, corpus=corpus, log=lambda m: typer.echo(m, err=True)))


def main() -> None:
    """Console entry point: library errors become one line on stderr and exit status 1."""
    try:
        app()
    except NcdetectError as err:
        typer.echo(f"ncdetect: error: {err}", err=True)
        sys.exit(1)
    except OSError as err:
        # The library reports the failures it foresees itself; any other one from the operating system
        # (a disk that filled up, a vanished mount) still gets one line naming the file, not a traceback.
        where = f"{err.filename}: " if err.filename else ""
        typer.echo(f"ncdetect: error: {where}{err.strerror or err}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        typer.echo("ncdetect: interrupted", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
