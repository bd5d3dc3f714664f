"""The ``ncdetect`` command line: a thin layer over the pipeline modules.

Each command imports its stage lazily so that ``ncdetect --help`` stays fast.
"""

from __future__ import annotations

import sys
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


# --- train ---------------------------------------------------------------------------------------


# --- embed, collapse, sample, plot-embeddings ----------------------------------------------------


# --- score, evaluate, detect, export -------------------------------------------------------------


# --- run, demo -----------------------------------------------------------------------------------


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
