"""The ``ncdetect`` command line: a thin layer over the pipeline modules.

Each command imports its stage lazily so that ``ncdetect --help`` stays fast.
"""

from __future__ import annotations

import sys
from enum import Enum
from pathlib import Path
from typing import Optional

import typer

from . import __version__
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


class Corpus(str, Enum):
    """Corpora `prepare` reads; the names match ncdetect.data.corpora.ADAPTERS (a test checks this)."""

    asvspoof2019 = "asvspoof2019"
    asvspoof2021 = "asvspoof2021"
    asvspoof5 = "asvspoof5"
    in_the_wild = "in-the-wild"
    wavefake = "wavefake"
    folder = "folder"
    csv = "csv"


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
        [], "--set", help="Override a config value, KEY=VALUE parsed as YAML, e.g. optim.lr=0.001 (repeatable)."
    ),
    resume: bool = typer.Option(
        False, "--resume", help="Continue the run in --out from its last completed epoch (same config)."
    ),
    force: bool = typer.Option(False, "--force", help="Replace an existing run in --out instead of refusing."),
    skip_bad: bool = typer.Option(
        False, "--skip-bad", help="Skip unreadable audio files (listed in RUN/skipped.csv) instead of stopping."
    ),
) -> None:
    """Train a detector. Writes RUN/model.safetensors, config.yaml, metrics.json and train.log.

    Multi-GPU / multi-node: launch with torchrun, e.g. `torchrun --nproc_per_node 4 -m ncdetect.cli train ...`
    (data.batch_size is per process)."""
    import os

    from .config import load_config
    from .train import train

    cfg = load_config(config, set_)
    metrics = train(
        cfg, train_manifest, out, dev_manifest=dev, resume=resume, skip_bad=skip_bad, force=force,
        progress=sys.stderr.isatty(),
    )
    if int(os.environ.get("RANK", "0")) == 0:
        best = metrics["dev_eer_at_best"]
        tail = f" (dev EER {best:.2f}%)" if best is not None else ""
        typer.echo(f"{out / 'model.safetensors'}: epoch {metrics['best_epoch']}{tail}")


# --- embed, collapse, sample, plot-embeddings ----------------------------------------------------


@app.command("embed")
def embed_cmd(
    run: Path = typer.Argument(..., help="Run folder (from `ncdetect train`)."),
    manifest: Path = typer.Argument(..., help="Manifest of the utterances to embed."),
    out: Path = typer.Option(..., "--out", help="Embedding folder to write."),
    batch_size: int = typer.Option(64, "--batch-size", min=1, help="Utterances per batch."),
    skip_bad: bool = typer.Option(
        False, "--skip-bad", help="Skip unreadable audio files (listed in OUT/skipped.csv) instead of stopping."
    ),
    device: str = typer.Option("auto", "--device", help="auto (GPU when present), cpu, cuda, cuda:1, ..."),
    num_workers: int = typer.Option(0, "--num-workers", min=0, help="DataLoader worker processes."),
) -> None:
    """Penultimate embeddings of a run over a manifest: OUT/embeddings.npy (float32 N x D), index.csv
    (manifest rows + score + source) and head.npz (W, b). Under torchrun each process embeds a share."""
    import os

    from .embed import embed_manifest

    path = embed_manifest(
        run, manifest, out, batch_size=batch_size, skip_bad=skip_bad, device=device,
        num_workers=num_workers, progress=sys.stderr.isatty(),
    )
    if int(os.environ.get("RANK", "0")) == 0:
        typer.echo(path / "embeddings.npy")


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
) -> None:
    """Score a manifest: score = logit(bonafide) - logit(spoof), higher = more likely bonafide, on each
    utterance's first window (tile-padded when shorter)."""
    from .score import score_manifest

    df = score_manifest(
        run, manifest, out, batch_size=batch_size, skip_bad=skip_bad, device=device,
        num_workers=num_workers, progress=sys.stderr.isatty(),
    )
    typer.echo(f"{out}: {len(df)} scores")


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
    threshold: str = typer.Option(
        "0", "--threshold", help="Score above which a file is bonafide: a number (default 0, the model's "
        "argmax) or 'dev-eer' (the dev-EER threshold in the run's metrics.json).",
    ),
    batch_size: int = typer.Option(16, "--batch-size", min=1, help="Windows per batch."),
    device: str = typer.Option("auto", "--device", help="auto (GPU when present), cpu, cuda, ..."),
) -> None:
    """Print one JSON line per file: path, score (mean window logit difference), label, probability
    (sigmoid of the score), threshold, windows, seconds. An unreadable file prints {"path", "error"} and
    the rest go on; the exit status is then 1."""
    import json

    from .detect import detect

    failed = 0
    for result in detect(inputs, model, window_seconds, hop_seconds, threshold, batch_size, device):
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
) -> None:
    """EER (ASVspoof reference) with threshold, bootstrap 95% interval and per-attack EERs; min t-DCF
    when ASV scores are given."""
    import json

    from . import evaluate as ev
    from .fileio import ensure_writable_dir

    if plots is not None:
        ensure_writable_dir(plots)
    df = ev.read_scores(scores)
    asv = ev.read_asv_scores(asv_scores) if asv_scores is not None else None
    result = ev.evaluate_scores(
        df, n_bootstrap=bootstrap, seed=seed, asv=asv, source=scores, progress=sys.stderr.isatty()
    )
    if plots is not None:
        result["plots"] = {name: str(path) for name, path in ev.write_plots(df, plots).items()}
    if json_out:
        typer.echo(json.dumps(result, indent=2))
    else:
        typer.echo(f"{scores}")
        typer.echo(ev.format_report(result))
        for path in result.get("plots", {}).values():
            typer.echo(f"wrote {path}")


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
) -> None:
    """Run the experiment of a recipe end to end: sources, embeddings, NC metrics, sampling, compact
    models, evaluation and the report."""
    from .pipeline import run_recipe
    from .recipe import load_recipe

    run_recipe(load_recipe(recipe, _parse_vars(var), profile), out, log=lambda m: typer.echo(m, err=True))
    typer.echo(out / "report.html")


@app.command("demo")
def demo_cmd(
    quick: bool = typer.Option(False, "--quick", help="A smaller corpus and fewer epochs (about 4 minutes)."),
    out: Path = typer.Option(Path("demo_out"), "--out", help="Output folder."),
    corpus: Optional[Path] = typer.Option(  # noqa: UP045
        None, "--corpus", help="Where the demo corpus is (built there when missing); default OUT/corpus."
    ),
) -> None:
    """Build the demo corpus if it is missing, then run recipes/demo.yaml on it."""
    from .pipeline import run_demo

    report = run_demo(out, quick=quick, corpus=corpus, log=lambda m: typer.echo(m, err=True))
    typer.echo(report)


def main() -> None:
    """Console entry point: library errors become one line on stderr and exit status 1."""
    try:
        app()
    except NcdetectError as err:
        typer.echo(f"ncdetect: error: {err}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        typer.echo("ncdetect: interrupted", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
