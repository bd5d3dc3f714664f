"""Progress output: a bar on a terminal, plain lines in a log file, nothing when disabled; and a training
whose stderr is a file gets one plain line per epoch, never a carriage-return redraw."""

from __future__ import annotations

import io
import re
from pathlib import Path

from ncdetect import progress
from ncdetect.progress import PlainProgress, progress_bar


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_not_a_terminal_prints_plain_lines(monkeypatch):
    monkeypatch.setenv(progress.INTERVAL_ENV, "0")
    log = io.StringIO()
    bar = progress_bar(range(4), desc="score", unit="batch", stream=log)
    assert isinstance(bar, PlainProgress)
    for i in bar:
        bar.set_postfix(loss=f"{i / 10:.1f}")
    text = log.getvalue()
    assert "\r" not in text and "\x1b" not in text
    lines = text.splitlines()
    assert lines[0].startswith("score: 1/4 batch (25%), ")
    assert lines[3].startswith("score: 4/4 batch (100%), ") and lines[3].endswith("loss=0.3")
    assert re.fullmatch(r"score: 4/4 batch \(100%\), done in \d\d:\d\d, loss=0\.3", lines[-1])
    assert len(lines) == 5


def test_short_work_in_a_log_is_silent(monkeypatch):
    monkeypatch.delenv(progress.INTERVAL_ENV, raising=False)
    log = io.StringIO()
    assert list(progress_bar(range(1000), desc="x", stream=log)) == list(range(1000))
    with progress_bar(total=10, desc="y", stream=log) as bar:
        bar.update(10)
    assert log.getvalue() == ""


def test_update_without_iterable_and_unknown_total(monkeypatch):
    monkeypatch.setenv(progress.INTERVAL_ENV, "0")
    log = io.StringIO()
    with progress_bar(desc="listing", unit="files", stream=log) as bar:
        bar.update(3)
        bar.update(2)
    assert [line.split(",")[0] for line in log.getvalue().splitlines()] == [
        "listing: 3 files", "listing: 5 files", "listing: 5 files"]


def test_bad_interval_falls_back_to_the_default(monkeypatch):
    monkeypatch.setenv(progress.INTERVAL_ENV, "soon")
    assert progress._interval() == progress.DEFAULT_INTERVAL_S


def test_terminal_gets_a_tqdm_bar():
    tty = Terminal()
    assert list(progress_bar(range(3), desc="epoch 1/2", unit="batch", stream=tty)) == [0, 1, 2]
    assert "\r" in tty.getvalue() and "epoch 1/2" in tty.getvalue()


def test_disabled_prints_nothing_anywhere(monkeypatch):
    monkeypatch.setenv(progress.INTERVAL_ENV, "0")
    for stream in (io.StringIO(), Terminal()):
        bar = progress_bar(iter(range(5)), desc="d", enabled=False, stream=stream)
        assert list(bar) == list(range(5))
        bar.set_postfix(a=1)
        assert stream.getvalue() == ""


def test_training_into_a_log_file_has_plain_lines_per_epoch(tmp_path, toy_manifest, monkeypatch, capsys):
    from ncdetect.config import load_config
    from ncdetect.train import train

    monkeypatch.setenv(progress.INTERVAL_ENV, "0")  # a line at every batch: the worst case for a log
    # width 8, not 4: torch 2.13.0's oneDNN convolution backward corrupts the heap ("double free or
    # corruption") on this width-4 model's shapes on the AMD EPYC machines, CI's included
    settings = ["data.num_samples=8000", "data.batch_size=12", "data.num_workers=0", "model.kwargs.width=8",
                "model.embedding_dim=8", "optim.epochs=2", "train.threads=1"]
    train(load_config(None, settings), toy_manifest, tmp_path / "run", progress=True)
    err = capsys.readouterr().err  # pytest's capture is not a terminal, as a log file is not
    assert "\r" not in err and "\x1b[" not in err
    lines = err.splitlines()
    # 36 clips in batches of 12: three progress lines and one closing line per epoch, then the epoch's
    # own [train] line
    for epoch in (1, 2):
        batch_lines = [line for line in lines if line.startswith(f"epoch {epoch}/2: ")]
        assert len(batch_lines) == 4, lines
        assert batch_lines[-1].startswith(f"epoch {epoch}/2: 3/3 batch (100%), done in ")
    assert sum(line.startswith("[train] ") for line in lines) >= 2
    assert Path(tmp_path / "run" / "model.safetensors").is_file()
