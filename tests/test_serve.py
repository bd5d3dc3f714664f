"""``ncdetect serve``: the HTTP API through FastAPI's test client, and its guards against bad input and abuse.

The browser test of the page is tests/test_serve_browser.py.
"""

from __future__ import annotations

import asyncio
import io
import re
import threading
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

pytest.importorskip("fastapi", reason="the serve extra is not installed (pip install 'ncdetect[serve]')")
pytest.importorskip("httpx", reason="FastAPI's test client needs httpx")

import httpx
from fastapi.testclient import TestClient

from conftest import synth_utterance, write_wav
from ncdetect.data.audio import load_audio
from ncdetect.detect import detect, plan_windows, window_starts
from ncdetect.errors import NcdetectError
from ncdetect.serve import build_app, is_local, serve
from ncdetect.serve.app import Guard

KEY = "s3cret-key"


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("serve_audio")
    rng = np.random.default_rng(7)
    return {
        "short": write_wav(root / "short.wav", synth_utterance(rng, "bonafide", seconds=0.6)),
        "long": write_wav(root / "long.flac", synth_utterance(rng, "spoof", "A01", seconds=3.7)),
    }


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory) -> dict[str, Path]:
    """Unusable audio, each written to disk so the CLI's reason for the same bytes can be compared."""
    root = tmp_path_factory.mktemp("serve_bad")
    nan = np.full(1600, 0.1, dtype=np.float32)
    nan[100] = np.nan
    files = {
        "empty.wav": b"",
        "junk.wav": b"RIFF\x00\x00\x00\x00WAVEjunk",
        "notes.txt": b"just some text, not audio at all\n",
    }
    out = {}
    for name, data in files.items():
        (root / name).write_bytes(data)
        out[name] = root / name
    out["silent.wav"] = write_wav(root / "silent.wav", np.zeros(16000, dtype=np.float32))
    sf.write(str(root / "nan.wav"), nan, 16000, subtype="FLOAT")
    out["nan.wav"] = root / "nan.wav"
    return out


@pytest.fixture(scope="module")
def client(run_dir):
    with TestClient(build_app(run_dir)) as c:
        yield c


def _upload(*items: tuple[str, bytes]) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [("files", (name, data, "application/octet-stream")) for name, data in items]


# --- results: the same numbers as `ncdetect detect` ------------------------------------------------------


def test_detect_equals_the_cli_and_gives_window_scores(client, run_dir, clips):
    response = client.post("/v1/detect", files=_upload(*[(p.name, p.read_bytes()) for p in clips.values()]))
    assert response.status_code == 200
    served = {r["path"]: r for r in response.json()}
    assert list(served) == ["short.wav", "long.flac"]  # the uploaded names, in upload order
    for path in clips.values():
        [cli] = detect([path], run_dir)
        got = served[path.name]
        assert set(got) == {"path", "score", "probability", "label", "threshold", "duration_s", "windows",
                            "calibrated", "llr", "prior_spoof"}
        assert got["score"] == pytest.approx(cli["score"], abs=1e-5)
        assert got["probability"] is None and got["calibrated"] is False  # the run is uncalibrated
        assert got["label"] == cli["label"] and got["threshold"] == cli["threshold"] == 0.0
        assert got["duration_s"] == cli["seconds"]
        assert len(got["windows"]) == cli["windows"]
        # The file's score is the mean of its window scores (the mean of the window log-odds).
        assert np.mean([w["score"] for w in got["windows"]]) == pytest.approx(got["score"], abs=1e-9)
    starts = window_starts(len(load_audio(clips["long"])), 16000, 8000)
    long_starts = [w["start_s"] for w in served["long.flac"]["windows"]]
    assert long_starts == pytest.approx([s / 16000 for s in starts])
    assert served["short.wav"]["windows"][0]["start_s"] == 0.0


def test_window_times_count_from_the_start_of_the_file_when_silence_is_trimmed():
    """With data.trim_silence the windows are cut from the trimmed clip; their start times still say
    where in the uploaded file they lie."""
    t = np.arange(24000) / 16000
    wave = np.concatenate([np.zeros(8000), 0.5 * np.sin(2 * np.pi * 220 * t)]).astype(np.float32)
    trimmed = plan_windows(wave, 16000, 8000, trim=True)
    assert 8000 - 400 <= trimmed.offset <= 8000  # the first frame that holds sound
    assert trimmed.start_seconds() == [(trimmed.offset + s) / 16000 for s in trimmed.starts]
    assert np.array_equal(trimmed.wave, wave[trimmed.offset : trimmed.offset + len(trimmed.wave)])
    plain = plan_windows(wave, 16000, 8000)
    assert plain.offset == 0 and plain.starts == [0, 8000, 16000]


def test_onnx_model_serves_the_numbers_of_the_run(run_dir, clips, tmp_path):
    pytest.importorskip("onnxruntime", reason="onnxruntime not installed (extra ncdetect[onnx])")
    from ncdetect.export import export_onnx

    onnx = export_onnx(run_dir, tmp_path / "model.onnx")
    with TestClient(build_app(onnx)) as c:
        info = c.get("/v1/model").json()
        assert info["format"] == "onnx" and info["window_s"] == 1.0 and info["parameters"] > 0
        got = c.post("/v1/detect", files=_upload((clips["long"].name, clips["long"].read_bytes()))).json()[0]
    [cli_onnx] = detect([clips["long"]], onnx)  # `ncdetect detect --model MODEL.onnx`
    [cli_torch] = detect([clips["long"]], run_dir)
    assert got["score"] == pytest.approx(cli_onnx["score"], abs=1e-5)
    assert got["score"] == pytest.approx(cli_torch["score"], abs=1e-4)


def test_onnx_files_that_cannot_be_served_are_one_line(run_dir, tmp_path):
    pytest.importorskip("onnxruntime", reason="onnxruntime not installed (extra ncdetect[onnx])")
    import onnx

    from ncdetect.export import export_onnx

    proto = onnx.load(str(export_onnx(run_dir, tmp_path / "model.onnx")))
    del proto.metadata_props[:]  # as exported by another tool: no window, no front-end
    onnx.save(proto, str(tmp_path / "bare.onnx"))
    with pytest.raises(NcdetectError, match=r"bare\.onnx: no ncdetect metadata"):
        build_app(tmp_path / "bare.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    with pytest.raises(NcdetectError, match=r"junk\.onnx: not a loadable ONNX model"):
        build_app(tmp_path / "junk.onnx")


def test_model_health_and_docs(client, run_dir):
    info = client.get("/v1/model").json()
    assert info["architecture"] == "tiny_resnet" and info["format"] == "pytorch"
    assert info["name"] == run_dir.name
    assert info["parameters"] > 1000 and info["frontend"]["name"] == "logmel"
    assert info["sample_rate"] == 16000 and info["window_s"] == 1.0 and info["hop_s"] == 0.5
    assert info["threshold"] == 0.0
    assert info["calibration"]["calibrated"] is False and info["calibration"]["prior_spoof"] is None
    assert info["trained_on"]["n_train"] == 36 and info["trained_on"]["n_train_bonafide"] == 12
    assert info["dev_eer"] is not None and 0 <= info["dev_eer"] <= 100
    assert client.get("/healthz").json()["status"] == "ok"
    assert client.get("/docs").status_code == 200
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/v1/detect", "/v1/model", "/healthz"} <= set(paths)


def test_page_and_its_assets_come_from_the_server_alone(client):
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "default-src 'self'" in page.headers["content-security-policy"]
    texts = [page.text] + [client.get(f"/static/{n}").text for n in ("app.js", "style.css")]
    for text in texts:
        assert "//" not in " ".join(re.findall(r"""(?:src|href|url)\s*[=(]\s*["']?([^"')\s>]+)""", text))
        assert not re.search(r"@import|fonts\.googleapis|cdn\.|unpkg|jsdelivr", text)
    # Only the page's own files are served, whatever the name asked for.
    for name in ("index.html", "../__init__.py", "..%2F__init__.py", "%2e%2e%2fapp.py"):
        assert client.get(f"/static/{name}").status_code == 404


# --- bad input ---------------------------------------------------------------------------------------------


def test_unreadable_audio_alone_is_422_with_the_cli_reason(client, run_dir, bad_files):
    for name, path in bad_files.items():
        response = client.post("/v1/detect", files=_upload((name, path.read_bytes())))
        assert response.status_code == 422, name
        [entry] = response.json()
        [cli] = detect([path], run_dir)
        # The same reason; libsndfile quotes the file it opened, the CLI's path and here the upload's name.
        assert entry == {"path": name, "error": cli["error"].replace(str(path), name)}, name
        assert "/tmp" not in entry["error"]  # no server-side name leaks into the reason
    reasons = {n: client.post("/v1/detect", files=_upload((n, p.read_bytes()))).json()[0]["error"]
               for n, p in bad_files.items()}
    assert reasons["empty.wav"] == "empty file (0 bytes)"
    assert reasons["silent.wav"] == "audio is all zeros"
    assert reasons["nan.wav"] == "audio holds NaN or Inf samples"


def test_bad_files_do_not_stop_the_good_ones(client, clips, bad_files):
    items = [("a.wav", bad_files["empty.wav"].read_bytes()), ("b.wav", clips["short"].read_bytes()),
             ("c.wav", bad_files["junk.wav"].read_bytes())]
    response = client.post("/v1/detect", files=_upload(*items))
    assert response.status_code == 200
    a, b, c = response.json()
    assert a == {"path": "a.wav", "error": "empty file (0 bytes)"}
    assert b["path"] == "b.wav" and b["label"] in ("bonafide", "spoof")
    assert c["path"] == "c.wav" and "not a readable audio file" in c["error"]


def test_requests_without_files_are_refused(client):
    assert client.post("/v1/detect").status_code == 422
    assert client.post("/v1/detect", data={"path": "/etc/passwd"}).status_code == 422
    assert client.post("/v1/detect", json={"files": ["/etc/passwd"]}).status_code == 422
    assert client.get("/v1/detect").status_code == 405


def test_no_request_can_name_a_server_side_file(client, clips):
    """A name is a label: the server scores the bytes that came with it, never a file of that name."""
    real = str(clips["long"])
    got = client.post("/v1/detect", files=_upload((real, b""), ("/etc/hostname", b""))).json()
    assert got == [{"path": real, "error": "empty file (0 bytes)"},
                   {"path": "/etc/hostname", "error": "empty file (0 bytes)"}]
    short = clips["short"].read_bytes()
    named = client.post("/v1/detect", files=_upload((real, short)), data={"path": real}).json()[0]
    plain = client.post("/v1/detect", files=_upload(("short.wav", short))).json()[0]
    assert named["score"] == plain["score"] and named["duration_s"] == plain["duration_s"] == 0.6


def test_upload_over_the_limit_is_413_from_content_length(run_dir, clips):
    with TestClient(build_app(run_dir, max_upload_mb=0.05)) as c:
        big = c.post("/v1/detect", files=_upload(("big.wav", b"\0" * 60_000)))
        assert big.status_code == 413
        assert big.json() == {"detail": "upload larger than the limit of 0.05 MB (--max-upload-mb)"}
        small = c.post("/v1/detect", files=_upload(("short.wav", clips["short"].read_bytes())))
        assert small.status_code == 200  # 19 kB: under the limit


def test_upload_without_length_is_cut_off_while_streaming(run_dir):
    """No Content-Length (chunked): the body is counted as it arrives and the request ends at the limit;
    the rest of the body is never asked for."""
    app = build_app(run_dir, max_upload_mb=1)
    chunk, total_chunks = 64 * 1024, 200  # a 12.5 MB body against a 1 MB limit
    head = (b"--B\r\nContent-Disposition: form-data; name=\"files\"; filename=\"x.wav\"\r\n"
            b"Content-Type: audio/wav\r\n\r\n")
    pulled = 0
    sent: list[dict] = []

    async def receive() -> dict:
        nonlocal pulled
        pulled += 1
        body = head if pulled == 1 else b"\0" * chunk
        return {"type": "http.request", "body": body, "more_body": pulled < total_chunks}

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/v1/detect", "raw_path": b"/v1/detect",
             "query_string": b"", "root_path": "", "scheme": "http", "http_version": "1.1",
             "server": ("127.0.0.1", 80), "client": ("127.0.0.1", 5000),
             "headers": [(b"content-type", b"multipart/form-data; boundary=B"), (b"host", b"test")]}
    asyncio.run(app(scope, receive, send))
    start = next(m for m in sent if m["type"] == "http.response.start")
    assert start["status"] == 413
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    assert b"larger than the limit of 1 MB" in body
    assert pulled <= 2**20 // chunk + 2 < total_chunks


# --- access ----------------------------------------------------------------------------------------------


def test_api_key_is_required_on_v1_only(run_dir, clips):
    with TestClient(build_app(run_dir, api_key=KEY)) as c:
        files = _upload(("short.wav", clips["short"].read_bytes()))
        assert c.get("/v1/model").status_code == 401
        assert c.get("/v1/model", headers={"X-API-Key": "wrong"}).status_code == 401
        denied = c.post("/v1/detect", files=files)
        assert denied.status_code == 401 and "API key" in denied.json()["detail"]
        assert c.get("/v1/model", headers={"X-API-Key": KEY}).status_code == 200
        assert c.get("/v1/model", headers={"Authorization": f"Bearer {KEY}"}).status_code == 200
        assert c.post("/v1/detect", files=files, headers={"X-API-Key": KEY}).status_code == 200
        # The page and the health check stay open: the page asks for the key itself.
        assert c.get("/").status_code == 200 and c.get("/healthz").status_code == 200


def test_api_key_guard_refuses_before_reading_the_body():
    async def never(scope, receive, send):  # pragma: no cover - must not be reached
        raise AssertionError("the application was called")

    pulled = []

    async def receive() -> dict:
        pulled.append(1)
        return {"type": "http.request", "body": b"x" * 1000, "more_body": True}

    sent: list[dict] = []

    async def send(message: dict) -> None:
        sent.append(message)

    guard = Guard(never, max_bytes=10**9, api_key=KEY)
    asyncio.run(guard({"type": "http", "path": "/v1/detect", "headers": []}, receive, send))
    assert sent[0]["status"] == 401 and not pulled


def test_non_local_bind_without_a_key_warns(run_dir, monkeypatch, capsys):
    import uvicorn

    monkeypatch.setattr(uvicorn.Server, "run", lambda self, sockets=None: None)
    monkeypatch.delenv("NCDETECT_API_KEY", raising=False)
    serve(run_dir, host="0.0.0.0", port=0)
    captured = capsys.readouterr()
    assert "warning: serving on 0.0.0.0 without an API key" in captured.err
    assert re.search(r"http://0\.0\.0\.0:\d+/", captured.out)
    serve(run_dir, host="127.0.0.1", port=0)
    assert "warning" not in capsys.readouterr().err
    monkeypatch.setenv("NCDETECT_API_KEY", KEY)
    serve(run_dir, host="0.0.0.0", port=0)
    assert "warning" not in capsys.readouterr().err
    assert is_local("127.0.0.1") and is_local("::1") and is_local("localhost") and not is_local("0.0.0.0")


def test_a_taken_port_is_one_line(run_dir):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        with pytest.raises(NcdetectError, match=rf"127\.0\.0\.1:{port}: cannot listen"):
            serve(run_dir, port=port)
    with pytest.raises(NcdetectError, match=r"--host no-such-host\.invalid: cannot be resolved"):
        serve(run_dir, host="no-such-host.invalid", api_key=KEY)


# --- load ------------------------------------------------------------------------------------------------


def _block_the_model(app):
    """Make the model wait until released; returns (entered, release) events."""
    model = app.state.scorer.detector.model
    entered, release = threading.Event(), threading.Event()
    original = model.logits

    def slow(batch):
        entered.set()
        release.wait(timeout=60)
        return original(batch)

    model.logits = slow
    return entered, release


def test_beyond_the_bound_requests_get_503_with_retry_after(run_dir, clips):
    app = build_app(run_dir, max_pending=1)
    entered, release = _block_the_model(app)
    files = _upload(("short.wav", clips["short"].read_bytes()))
    with TestClient(app) as c:
        first: dict = {}
        worker = threading.Thread(target=lambda: first.update(r=c.post("/v1/detect", files=files)))
        worker.start()
        assert entered.wait(timeout=60)
        busy = c.post("/v1/detect", files=files)
        assert busy.status_code == 503
        assert int(busy.headers["retry-after"]) >= 1 and "busy" in busy.json()["detail"]
        assert c.get("/healthz").status_code == 200  # the event loop still answers while the model works
        release.set()
        worker.join(timeout=60)
        assert first["r"].status_code == 200
        assert c.post("/v1/detect", files=files).status_code == 200  # the slot is free again


def test_a_slow_upload_holds_no_slot(run_dir, clips):
    """A client that stops halfway through its upload does not keep others out, even with one slot."""
    app = build_app(run_dir, max_pending=1)
    data = clips["short"].read_bytes()

    async def scenario() -> int:
        stalled = asyncio.Event()
        parts = [b"--B\r\nContent-Disposition: form-data; name=\"files\"; filename=\"slow.wav\"\r\n\r\n",
                 data[:1000]]

        async def slow_receive() -> dict:
            if parts:
                return {"type": "http.request", "body": parts.pop(0), "more_body": True}
            await stalled.wait()  # the client stops sending
            return {"type": "http.disconnect"}

        async def ignore(message: dict) -> None:
            pass

        scope = {"type": "http", "method": "POST", "path": "/v1/detect", "raw_path": b"/v1/detect",
                 "query_string": b"", "root_path": "", "scheme": "http", "http_version": "1.1",
                 "server": ("127.0.0.1", 80), "client": ("127.0.0.1", 5001),
                 "headers": [(b"content-type", b"multipart/form-data; boundary=B")]}
        slow = asyncio.create_task(app(scope, slow_receive, ignore))
        await asyncio.sleep(0.05)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            response = await http.post("/v1/detect", files=_upload(("fast.wav", data)))
        stalled.set()
        await asyncio.gather(slow, return_exceptions=True)
        return response.status_code

    assert asyncio.run(scenario()) == 200
    app.state.scorer.close()


def test_concurrent_requests_share_batches_and_keep_their_own_results(run_dir, clips):
    """Eight clients at once: every one gets its own file's result (two model threads batch across
    requests and must hand each its own rows)."""
    rng = np.random.default_rng(11)
    waves = [synth_utterance(rng, "bonafide" if i % 2 else "spoof", "A02", seconds=1.5) for i in range(8)]
    blobs = []
    for w in waves:
        buf = io.BytesIO()
        sf.write(buf, w, 16000, format="WAV")
        blobs.append(buf.getvalue())
    with TestClient(build_app(run_dir, model_threads=2)) as c:
        alone = [c.post("/v1/detect", files=_upload((f"{i}.wav", b))).json()[0] for i, b in enumerate(blobs)]
        together: list = [None] * 8

        def post(i: int) -> None:
            together[i] = c.post("/v1/detect", files=_upload((f"{i}.wav", blobs[i]))).json()[0]

        threads = [threading.Thread(target=post, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
    for a, b in zip(alone, together, strict=True):
        assert b["path"] == a["path"]
        assert b["score"] == pytest.approx(a["score"], abs=1e-5)
        windows = [w["score"] for w in a["windows"]]
        assert [w["score"] for w in b["windows"]] == pytest.approx(windows, abs=1e-5)
    assert len({round(a["score"], 6) for a in alone}) == 8  # distinct files, so a mix-up would show


def test_cli_serve_help_and_missing_model(tmp_path):
    from typer.testing import CliRunner

    from ncdetect.cli import app

    result = CliRunner().invoke(app, ["serve", "--help"])
    assert result.exit_code == 0
    for option in ("--model", "--host", "--port", "--max-upload-mb", "--api-key"):
        assert option in result.output
    with pytest.raises(NcdetectError, match="run folder not found"):
        build_app(tmp_path / "nowhere")
    with pytest.raises(NcdetectError, match="ONNX file not found"):
        build_app(tmp_path / "nowhere.onnx")
