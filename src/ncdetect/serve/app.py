"""The FastAPI application: the page at ``/``, the API under ``/v1``, ``/healthz`` and ``/docs``.

Contract (docs/serve.md, "The API"): ``POST /v1/detect`` takes multipart field ``files`` (one or more) and
returns a JSON list, one object per file, with ``path`` (the uploaded name), ``score``, ``probability``,
``label``, ``threshold``, ``duration_s`` and ``windows`` [{start_s, score}], or ``path`` and ``error``;
beside them ``calibrated``, ``llr`` and ``prior_spoof``. ``probability`` is P(bonafide) under
``prior_spoof`` for a calibrated run and null for an uncalibrated one (see ``ncdetect.detect``). A
request whose files are all unreadable gets 422; a body over the upload limit gets 413, decided from
Content-Length or, without one, by counting while the body streams in (it is never read whole first).
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib import resources
from pathlib import Path
from typing import Any

from fastapi import FastAPI, File, HTTPException, Security, UploadFile
from fastapi.responses import JSONResponse, Response
from fastapi.security import APIKeyHeader
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .. import __version__
from ..detect import SAMPLE_RATE, Detector, OnnxModel
from .inference import Busy, Scorer

API_KEY_HEADER = "X-API-Key"
# The page's own files, by name: a request can only ever get one of these, never a path on disk.
STATIC = {"app.js": "text/javascript; charset=utf-8", "style.css": "text/css; charset=utf-8"}
# Everything the page loads comes from this server; blob: for the recorder's audio.
PAGE_CSP = (
    "default-src 'self'; img-src 'self' data:; media-src 'self' blob:; style-src 'self'; "
    "script-src 'self'; connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
)


def _asset(name: str) -> bytes:
    return (resources.files("ncdetect.serve") / "static" / name).read_bytes()


class Guard:
    """ASGI middleware for ``/v1``: the API key (401) and the upload limit (413), both decided before the
    body is read, so neither an unauthenticated nor an oversized upload is taken in."""

    def __init__(self, app: ASGIApp, max_bytes: int, api_key: str | None):
        self.app, self.max_bytes, self.api_key = app, max_bytes, api_key

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/v1/"):
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        if self.api_key is not None and not self._authorised(headers):
            await _json(send, 401, {"detail": f"missing or wrong API key (header {API_KEY_HEADER})"},
                        {"www-authenticate": API_KEY_HEADER})
            return
        length = headers.get("content-length", "")
        if length.isdigit() and int(length) > self.max_bytes:
            await _json(send, 413, {"detail": self._too_large()}, {"connection": "close"})
            return
        seen = 0

        async def counting_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    # Raised inside the form parser: FastAPI passes HTTPExceptions through as responses.
                    raise HTTPException(413, self._too_large(), headers={"connection": "close"})
            return message

        await self.app(scope, counting_receive, send)

    def _authorised(self, headers: dict[str, str]) -> bool:
        given = headers.get(API_KEY_HEADER.lower(), "")
        bearer = headers.get("authorization", "")
        if not given and bearer.lower().startswith("bearer "):
            given = bearer[7:].strip()
        return secrets.compare_digest(given.encode(), self.api_key.encode())  # type: ignore[union-attr]

    def _too_large(self) -> str:
        return f"upload larger than the limit of {round(self.max_bytes / 2**20, 3):g} MB (--max-upload-mb)"


async def _json(send: Send, status: int, body: Any, headers: dict[str, str]) -> None:
    response = JSONResponse(body, status_code=status, headers=headers)
    await response({"type": "http"}, _no_receive, send)


async def _no_receive() -> Message:  # pragma: no cover - JSONResponse never reads the request
    return {"type": "http.disconnect"}


def model_info(detector: Detector) -> dict[str, Any]:
    """What ``GET /v1/model`` reports: architecture, size, front-end, windowing, threshold, training."""
    model, cfg, metrics = detector.model, detector.model.config, detector.model.metrics
    trained = {k: metrics[k] for k in ("n_train", "n_train_bonafide", "n_train_spoof", "n_dev", "best_epoch",
                                       "selected_by") if k in metrics}
    return {
        "name": Path(model.path).stem if isinstance(model, OnnxModel) else Path(model.path).name,
        "format": "onnx" if isinstance(model, OnnxModel) else "pytorch",
        "architecture": cfg.model.name,
        "parameters": model.parameters(),
        "embedding_dim": cfg.model.embedding_dim,
        "frontend": {"name": cfg.frontend.name, "kwargs": cfg.frontend.kwargs},
        "sample_rate": SAMPLE_RATE,
        "window_s": detector.window / SAMPLE_RATE,
        "hop_s": detector.hop / SAMPLE_RATE,
        "trim_silence": cfg.data.trim_silence,
        "threshold": detector.threshold,
        "calibration": calibration_info(detector),
        "trained_on": trained,
        "dev_eer": metrics.get("dev_eer_at_best"),
        "ncdetect_version": __version__,
    }


def calibration_info(detector: Detector) -> dict[str, Any]:
    """How the page and clients should read ``probability`` and ``threshold``: whether the run is
    calibrated, the prior and costs its probability and decisions assume, and the dev set it was fitted
    on. Uncalibrated: ``probability`` is null, and the threshold is a plain score threshold."""
    cal, costs = detector.calibration, detector.costs
    if cal is None:
        return {"calibrated": False, "prior_spoof": None, "cost_miss": None, "cost_fa": None,
                "llr_threshold": None, "probability_threshold": None, "dev": None}
    bayes = detector.llr_threshold is not None
    return {
        "calibrated": True,
        "slope": cal.slope,
        "offset": cal.offset,
        "dev": cal.dev,
        "prior_spoof": costs.prior_spoof,
        "cost_miss": costs.cost_miss,
        "cost_fa": costs.cost_fa,
        # The Bayes decision: bonafide when P(bonafide) exceeds C_fa / (C_fa + C_miss).
        "llr_threshold": costs.bayes_threshold if bayes else None,
        "probability_threshold": costs.cost_fa / (costs.cost_fa + costs.cost_miss) if bayes else None,
    }


def create_app(
    detector: Detector,
    max_upload_mb: float = 50.0,
    api_key: str | None = None,
    max_pending: int = 16,
    model_threads: int = 1,
) -> FastAPI:
    """The server for a loaded detector; ``api_key`` (if given) is required on every ``/v1`` request."""
    scorer = Scorer(detector, max_pending=max_pending, model_threads=model_threads)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        scorer.close()

    app = FastAPI(
        title="ncdetect",
        version=__version__,
        description="Audio deepfake detection: is this clip bonafide or spoofed? Scores are "
        "logit(bonafide) - logit(spoof), averaged over windows; higher means more likely bonafide.",
        lifespan=lifespan,
    )
    app.state.scorer = scorer
    # Declared for /docs (its Authorize button); the Guard middleware enforces it before any body is read.
    key_header = Security(APIKeyHeader(name=API_KEY_HEADER, auto_error=False))
    info = model_info(detector)

    @app.get("/", include_in_schema=False)
    def page() -> Response:
        return Response(_asset("index.html"), media_type="text/html; charset=utf-8",
                        headers={"content-security-policy": PAGE_CSP, "x-content-type-options": "nosniff"})

    @app.get("/static/{name}", include_in_schema=False)
    def static(name: str) -> Response:
        if name not in STATIC:
            raise HTTPException(404, "not found")
        return Response(_asset(name), media_type=STATIC[name], headers={"x-content-type-options": "nosniff"})

    @app.get("/healthz", summary="Liveness: the model is loaded and the server answers")
    def healthz() -> dict[str, Any]:
        return {"status": "ok", "model": info["name"]}

    @app.get("/v1/model", summary="The loaded model: architecture, front-end, window, threshold, training")
    def v1_model(_key: str | None = key_header) -> dict[str, Any]:
        return info

    @app.post(
        "/v1/detect",
        summary="Score one or more audio files",
        responses={
            200: {"description": "One object per file, in upload order (files that fail carry `error`)"},
            401: {"description": "Missing or wrong API key"},
            413: {"description": "Upload over --max-upload-mb"},
            422: {"description": "No file of the request could be read (each entry names the reason)"},
            503: {"description": "Too many requests in progress; see Retry-After"},
        },
    )
    async def v1_detect(
        files: list[UploadFile] = File(..., description="Audio files (wav, flac, ogg, mp3, ...)"),
        _key: str | None = key_header,
    ) -> Response:
        try:
            with scorer.admit():
                # The files of one request are decoded in parallel and share the model's batches.
                results = await asyncio.gather(
                    *(scorer.detect(f.filename or f"file{i + 1}", f.file) for i, f in enumerate(files))
                )
        except Busy as busy:
            return JSONResponse({"detail": str(busy)}, status_code=503,
                                headers={"retry-after": str(busy.retry_after)})
        status = 422 if all("error" in r for r in results) else 200
        return JSONResponse(results, status_code=status)

    app.add_middleware(Guard, max_bytes=int(max_upload_mb * 2**20), api_key=api_key)
    return app
