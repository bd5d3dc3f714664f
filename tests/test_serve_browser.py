"""The page of ``ncdetect serve`` in a real browser: Playwright driving Debian's chromium.

Playwright's own browser download cannot be reached from our machines, so the system chromium is the
executable (``make test`` installs it when missing, scripts/ensure-debian-packages.sh). The server is the
real command, ``ncdetect serve``, started as a subprocess on a free port with the shared tiny trained run.

The test saves a screenshot of the page in its temporary folder; with ``NCDETECT_SCREENSHOT=PATH`` set
it also writes it there (``NCDETECT_SCREENSHOT=docs/serve.png`` refreshes the image of docs/serve.md), and
``NCDETECT_SERVE_TEST_MODEL=RUN`` serves another run than the shared tiny one (that image shows
a toy detector trained for longer, whose timelines say more than the tiny run's flat ones).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from conftest import synth_utterance, write_wav

pytest.importorskip("fastapi", reason="the serve extra is not installed (pip install 'ncdetect[serve]')")
playwright = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (the dev extra)")
expect = playwright.expect

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
SCREENSHOT_LIMIT = 300 * 1024

pytestmark = pytest.mark.skipif(
    not Path(CHROMIUM).is_file(), reason="chromium is not installed (make test installs the Debian package)"
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def model(run_dir) -> Path:
    return Path(os.environ.get("NCDETECT_SERVE_TEST_MODEL") or run_dir)


@contextmanager
def _serve(model: Path, log: Path, api_key: str = "") -> Iterator[str]:
    """`ncdetect serve` on a free port, as a user starts it; yields its base URL."""
    port = _free_port()
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "ncdetect.cli", "serve", "--model", str(model), "--port", str(port)],
            stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "NCDETECT_API_KEY": api_key},
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                pytest.fail(f"ncdetect serve exited with {proc.returncode}: {log.read_text()}")
            try:
                with urllib.request.urlopen(f"{url}/healthz", timeout=2) as r:
                    if json.load(r)["status"] == "ok":
                        break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"ncdetect serve did not answer within 120 s: {log.read_text()}")
                time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def server(model, tmp_path_factory):
    with _serve(model, tmp_path_factory.mktemp("serve_log") / "serve.log") as url:
        yield url


@pytest.fixture(scope="module")
def two_files(tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("browser_audio")
    rng = np.random.default_rng(5)
    a = write_wav(root / "interview take 1.wav", synth_utterance(rng, "bonafide", seconds=3.2))
    # A spliced file, genuine then generated: the timeline shows where the change is.
    b = root / "voicemail (spliced).flac"
    spliced = np.concatenate([synth_utterance(rng, "bonafide", seconds=2.5),
                              synth_utterance(rng, "spoof", "A02", seconds=3.0)])
    sf.write(str(b), spliced, 16000)
    return [a, b]


@contextmanager
def _chromium(profile: Path, extra_args: tuple[str, ...] = ()) -> Iterator[tuple[object, list[str]]]:
    """A fresh chromium profile and page; collects console errors and uncaught exceptions."""
    with playwright.sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(profile), executable_path=CHROMIUM, headless=True, args=[*CHROMIUM_ARGS, *extra_args],
            viewport={"width": 960, "height": 900}, accept_downloads=True,
        )
        try:
            page = context.new_page()
            errors: list[str] = []
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            yield page, errors
        finally:
            context.close()


@pytest.fixture()
def browser_page(tmp_path):
    with _chromium(tmp_path / "profile") as page_and_errors:
        yield page_and_errors


def _cli_detect(run_dir: Path, files: list[Path]) -> dict[str, dict]:
    out = subprocess.run(
        [sys.executable, "-m", "ncdetect.cli", "detect", *map(str, files), "--model", str(run_dir)],
        capture_output=True, text=True, check=True, timeout=300,
    ).stdout
    return {Path(r["path"]).name: r for r in map(json.loads, out.splitlines())}


def test_upload_two_files_in_the_browser(server, model, two_files, browser_page, tmp_path):
    page, errors = browser_page
    page.goto(server + "/")
    expect(page.locator("#model")).to_contain_text(f"Model {model.name}: tiny_resnet")
    if not (model / "calibration.json").is_file():
        expect(page.locator("#calibration")).to_contain_text("Uncalibrated model")

    # Labelled controls, reachable by their names.
    picker = page.get_by_label("Choose files…")
    record = page.get_by_role("button", name="Record")
    assert record.is_visible() and page.get_by_role("button", name="Download CSV").is_disabled()
    picker.set_input_files([str(p) for p in two_files])

    # Locators rather than page scripts: the page's content security policy forbids eval, rightly.
    expect(page.locator("#results tbody tr")).to_have_count(2, timeout=60_000)
    expect(page.locator("svg.timeline")).to_have_count(2)
    cli = _cli_detect(model, two_files)
    rows = page.locator("#results tbody tr")
    for i, path in enumerate(two_files):
        cells = rows.nth(i).locator("td").all_inner_texts()
        expected = cli[path.name]
        assert cells[0] == path.name
        assert cells[1] == expected["label"]
        if expected["probability"] is None:  # an uncalibrated run shows no probability
            assert cells[2] == "uncalibrated"
        else:
            assert float(cells[2]) == pytest.approx(expected["probability"], abs=1e-3)
        assert float(cells[3]) == pytest.approx(expected["score"], abs=1e-3)
        assert float(cells[4]) == pytest.approx(expected["seconds"], abs=0.01)
        # The timeline has a point per window and the threshold line.
        timeline = page.locator("svg.timeline").nth(i)
        assert timeline.locator("circle.window").count() == expected["windows"]
        assert timeline.locator("line.threshold").count() == 1

    # Downloads: the same results as CSV and JSON.
    with page.expect_download() as csv_download:
        page.get_by_role("button", name="Download CSV").click()
    csv_lines = Path(csv_download.value.path()).read_text().splitlines()
    assert csv_lines[0].startswith("path,label,probability,score") and len(csv_lines) == 3
    with page.expect_download() as json_download:
        page.get_by_role("button", name="Download JSON").click()
    downloaded = json.loads(Path(json_download.value.path()).read_text())
    assert [r["label"] for r in downloaded] == [cli[p.name]["label"] for p in two_files]

    # Keyboard: Tab reaches the file picker and the record button.
    page.locator("body").focus()
    reached = set()
    for _ in range(12):
        page.keyboard.press("Tab")
        reached.add(page.evaluate("document.activeElement.id"))
    assert {"file-input", "record"} <= reached

    shot = tmp_path / "serve.png"
    page.screenshot(path=str(shot), full_page=True)
    assert 0 < shot.stat().st_size <= SCREENSHOT_LIMIT
    if os.environ.get("NCDETECT_SCREENSHOT"):
        shutil.copyfile(shot, os.environ["NCDETECT_SCREENSHOT"])

    # Phone width: nothing wider than the screen but the table, which scrolls in its own box.
    page.set_viewport_size({"width": 375, "height": 800})
    assert page.evaluate("document.documentElement.scrollWidth") <= 375
    assert errors == []


def test_a_calibrated_run_shows_its_probability_and_prior(calibrated_run, two_files, browser_page, tmp_path):
    page, errors = browser_page
    with _serve(calibrated_run, tmp_path / "serve.log") as url:
        page.goto(url + "/")
        expect(page.locator("#calibration")).to_contain_text("spoofed with prior probability 0.5")
        # P(spoof) 0.5, C_fa 10, C_miss 1: the Bayes decision is bonafide above P(bonafide) = 10/11.
        expect(page.locator("#calibration")).to_contain_text("bonafide when P(bonafide) > 0.909")
        expect(page.locator("#probability-head")).to_have_text("P(bonafide) at P(spoof) 0.5")
        page.get_by_label("Choose files…").set_input_files([str(p) for p in two_files])
        expect(page.locator("#results tbody tr")).to_have_count(2, timeout=60_000)
        cli = _cli_detect(calibrated_run, two_files)
        rows = page.locator("#results tbody tr")
        for i, path in enumerate(two_files):
            cells = rows.nth(i).locator("td").all_inner_texts()
            expected = cli[path.name]
            assert expected["calibrated"] and expected["prior_spoof"] == 0.5
            assert float(cells[2]) == pytest.approx(expected["probability"], abs=1e-3)
            assert cells[1] == expected["label"]
    assert errors == []


def test_an_unreadable_file_is_reported_in_its_row(server, tmp_path, browser_page):
    page, errors = browser_page
    bad = tmp_path / "broken.wav"
    bad.write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk")
    page.goto(server + "/")
    page.get_by_label("Choose files…").set_input_files([str(bad)])
    expect(page.locator("#results tbody tr")).to_have_count(1, timeout=60_000)
    assert "not a readable audio file" in page.locator("#results tbody td.error").inner_text()
    assert "could not be read" in page.locator("#status").inner_text()
    # Chromium logs every non-2xx response as a console error; the 422 is expected, nothing else is.
    assert [e for e in errors if "status of 422" not in e] == []
    assert len(errors) == 1


def test_record_button_uploads_the_recording(server, tmp_path):
    """The record button: MediaRecorder on chromium's fake microphone (a beeping test signal), decoded by
    the page and uploaded as a WAV file like any other."""
    fake_microphone = ("--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream")
    with _chromium(tmp_path / "profile", fake_microphone) as (page, errors):
        page.goto(server + "/")
        record = page.get_by_role("button", name="Record")
        started = time.monotonic()
        record.click()
        expect(record).to_have_attribute("aria-pressed", "true")
        page.wait_for_timeout(1500)  # record at least 1.5 s
        page.get_by_role("button", name="Stop recording").click()
        stopped = time.monotonic()
        expect(page.locator("#results tbody tr")).to_have_count(1, timeout=60_000)
        cells = page.locator("#results tbody tr td").all_inner_texts()
        assert cells[0] == "recording-1.wav" and cells[1] in ("bonafide", "spoof")
        # The recording spans the time between the two clicks, however long a busy machine made it.
        assert 1.0 <= float(cells[4]) <= stopped - started + 0.5
        expect(page.locator("svg.timeline")).to_have_count(1)
        expect(record).to_have_attribute("aria-pressed", "false")
        assert errors == []


def test_the_page_asks_for_the_api_key_of_a_keyed_server(run_dir, two_files, tmp_path):
    key = "k3y-for-the-page"
    with _serve(run_dir, tmp_path / "serve.log", api_key=key) as url, \
            _chromium(tmp_path / "profile") as (page, errors):
        page.goto(url + "/")
        key_box = page.get_by_label("API key")
        expect(key_box).to_be_visible()
        expect(page.locator("#model")).to_contain_text("need the API key")
        key_box.fill(key)
        key_box.press("Tab")  # the change event loads the model details with the key
        expect(page.locator("#model")).to_contain_text("tiny_resnet")
        page.get_by_label("Choose files…").set_input_files([str(two_files[0])])
        expect(page.locator("#results tbody tr")).to_have_count(1, timeout=60_000)
        assert page.locator("#results tbody td.verdict").inner_text() in ("bonafide", "spoof")
        # Chromium logs the first, keyless request's 401 as a console error; nothing else may appear.
        assert [e for e in errors if "status of 401" not in e] == []
