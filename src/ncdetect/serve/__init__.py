"""``ncdetect serve``: a web page and an HTTP API for detection, on one server (FastAPI + uvicorn).

Optional extra: ``pip install 'ncdetect[serve]'``. The model (a run folder, or an ONNX file from
``ncdetect export``) is loaded once; see :mod:`ncdetect.serve.app` for the API and
:mod:`ncdetect.serve.inference` for how the work is kept off the event loop.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import NcdetectError

if TYPE_CHECKING:
    from fastapi import FastAPI

API_KEY_ENV = "NCDETECT_API_KEY"


def _require_extra() -> None:
    from importlib.util import find_spec

    # python-multipart is imported as python_multipart since 0.0.13 and as multipart before.
    for names in (("fastapi",), ("uvicorn",), ("python_multipart", "multipart")):
        if not any(find_spec(n) for n in names):
            raise NcdetectError(
                f"ncdetect serve needs the serve extra ({names[0]} is missing): pip install 'ncdetect[serve]'"
            )


def is_local(host: str) -> bool:
    """Whether ``host`` only accepts connections from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def build_app(
    model: str | Path,
    max_upload_mb: float = 50.0,
    api_key: str | None = None,
    threshold: float | str = "auto",
    max_pending: int = 16,
    device: str = "auto",
    model_threads: int = 1,
    prior_spoof: float = 0.5,
    cost_miss: float = 1.0,
    cost_fa: float = 10.0,
) -> FastAPI:
    """Load the model once and return the application (what ``serve`` runs, and what tests call).
    With ``model_threads`` > 1, that many batches run side by side, each on one thread. ``prior_spoof``
    and the costs set the probability and the Bayes threshold of a calibrated run (see ``detect``)."""
    _require_extra()
    from ..detect import Detector
    from .app import create_app

    if max_upload_mb <= 0:
        raise NcdetectError(f"--max-upload-mb must be positive, got {max_upload_mb}")
    detector = Detector(model, threshold=threshold, device=device, onnx_threads=1 if model_threads > 1 else 0,
                        prior_spoof=prior_spoof, cost_miss=cost_miss, cost_fa=cost_fa)
    return create_app(detector, max_upload_mb=max_upload_mb, api_key=api_key or None, max_pending=max_pending,
                      model_threads=model_threads)


def serve(
    model: str | Path,
    host: str = "127.0.0.1",
    port: int = 8000,
    max_upload_mb: float = 50.0,
    api_key: str | None = None,
    threshold: float | str = "auto",
    max_pending: int = 16,
    device: str = "auto",
    model_threads: int | None = None,
    prior_spoof: float = 0.5,
    cost_miss: float = 1.0,
    cost_fa: float = 10.0,
) -> None:
    """Serve until interrupted. ``api_key`` None falls back to ``$NCDETECT_API_KEY``; port 0 takes a free
    port; ``model_threads`` None = one per core. The address is printed once the socket listens."""
    _require_extra()
    import uvicorn

    api_key = api_key or os.environ.get(API_KEY_ENV) or None
    threads = model_threads or os.cpu_count() or 1
    app = build_app(model, max_upload_mb, api_key, threshold, max_pending, device, threads,
                    prior_spoof=prior_spoof, cost_miss=cost_miss, cost_fa=cost_fa)
    if not is_local(host) and api_key is None:
        print(
            f"ncdetect: warning: serving on {host} without an API key: anyone who can reach this address "
            f"can use the API (set --api-key or {API_KEY_ENV})",
            file=sys.stderr,
            flush=True,
        )
    sock = _listen(host, port)
    bound_port = sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    print(f"ncdetect serve: http://{shown}:{bound_port}/ (API docs at /docs; Ctrl-C stops)", flush=True)
    config = uvicorn.Config(
        app,
        log_level="warning",
        # Connections beyond this get 503 from uvicorn itself: a flood of uploads cannot pile up without end.
        limit_concurrency=max(64, 4 * max_pending),
        timeout_keep_alive=5,
    )
    try:
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        sock.close()


def _listen(host: str, port: int) -> socket.socket:
    """A listening socket, so that a taken port or an unknown host is one line, not a uvicorn traceback."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as err:
        raise NcdetectError(f"--host {host}: cannot be resolved ({err.strerror})") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
        sock.listen(128)
    except OSError as err:
        sock.close()
        raise NcdetectError(f"{host}:{port}: cannot listen ({err.strerror or err})") from None
    sock.set_inheritable(True)
    return sock
