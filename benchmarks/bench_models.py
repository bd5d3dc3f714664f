"""Model speed on this CPU: training throughput and the real-time factor of the compact detector.

* Training: samples per second of forward + backward + AdamW step, batch 16 of 4 s log-mel input
  (80 mels x 401 frames), 2 torch threads, models at their default sizes.
* Inference: real-time factor (seconds of compute per second of audio) of one 4 s clip through
  ``tiny_resnet`` on 1 thread, including the log-mel front-end.

Timings are medians over repeats after warm-up steps. On a shared machine other processes only ever add
time, so the best repeat is printed beside the median as the estimate of what the hardware can do.

    python benchmarks/bench_models.py [--quick]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ncdetect.models import create_model

SAMPLE_RATE = 16_000
SECONDS = 4.0
N_MELS = 80
FRAMES = 401  # 4 s at hop 160 with centred frames
TRAIN_MODELS = ("tiny_resnet", "resnet18", "convnext_atto", "lcnn")
RTF_TARGET = 0.005
TINY_PARAMS_TARGET = 500_000


class _Threads:
    """Run a block with a given torch thread count and restore the previous one."""

    def __init__(self, n: int):
        self.n = n

    def __enter__(self) -> None:
        self.before = torch.get_num_threads()
        torch.set_num_threads(self.n)

    def __exit__(self, *exc: object) -> None:
        torch.set_num_threads(self.before)


def _timed(fn: Callable[[], Any], warmup: int, repeats: int) -> list[float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def train_throughput(
    name: str, batch: int = 16, warmup: int = 2, repeats: int = 5, threads: int = 2, **kwargs: Any
) -> dict[str, float]:
    """Training samples per second for ``name`` on random 4 s log-mel batches: median and best step."""
    torch.manual_seed(0)
    model = create_model(name, N_MELS, **kwargs).train()
    optim = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
    x = torch.randn(batch, 1, N_MELS, FRAMES)
    y = torch.randint(0, 2, (batch,))
    loss_fn = nn.CrossEntropyLoss()

    def step() -> None:
        optim.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()
        optim.step()

    with _Threads(threads):
        times = _timed(step, warmup, repeats)
    return {"median": batch / statistics.median(times), "best": batch / min(times)}


def _frontend() -> nn.Module | None:
    try:
        from ncdetect.data.frontends import build_frontend
    except ImportError:
        return None
    return build_frontend("logmel", n_mels=N_MELS)


def forward_rtf(name: str = "tiny_resnet", with_frontend: bool = True, repeats: int = 30) -> dict[str, float]:
    """Real-time factor of one 4 s clip through ``name`` (eval, no grad, 1 thread): median and minimum."""
    torch.manual_seed(0)
    model = create_model(name, N_MELS).eval()
    frontend = _frontend() if with_frontend else None
    wave = torch.randn(1, int(SECONDS * SAMPLE_RATE)) * 0.1
    feats = torch.randn(1, 1, N_MELS, FRAMES)

    def forward() -> None:
        with torch.inference_mode():
            model(frontend(wave) if frontend is not None else feats)

    with _Threads(1):
        times = _timed(forward, warmup=5, repeats=repeats)
    return {
        "median": statistics.median(times) / SECONDS,
        "min": min(times) / SECONDS,
        "frontend": float(frontend is not None),
    }


def run(quick: bool = False) -> list[dict]:
    """Benchmark rows: ``what, measure, value, target, ok`` (``target``/``ok`` are None without a target)."""
    rows: list[dict] = []
    tiny = create_model("tiny_resnet", N_MELS).num_parameters()
    rows.append(
        dict(
            what="tiny_resnet parameters",
            measure="parameters",
            value=tiny,
            target=f"<= {TINY_PARAMS_TARGET:,}",
            ok=tiny <= TINY_PARAMS_TARGET,
        )
    )
    warmup, repeats = (1, 2) if quick else (2, 5)
    for name in TRAIN_MODELS:
        params = create_model(name, N_MELS).num_parameters()
        rate = train_throughput(name, warmup=warmup, repeats=repeats)
        rows.append(
            dict(
                what=f"train {name} ({params / 1e6:.2f} M params), batch 16 x 4 s log-mel, 2 threads "
                f"(median; best step {rate['best']:.1f})",
                measure="samples/s",
                value=round(rate["median"], 2),
                target=None,
                ok=None,
            )
        )
    rtf = forward_rtf("tiny_resnet", with_frontend=True, repeats=10 if quick else 50)
    where = "incl. log-mel front-end" if rtf["frontend"] else "model only (front-end not importable)"
    rows.append(
        dict(
            what=f"tiny_resnet forward, 4 s clip {where}, 1 thread (median; min {rtf['min']:.4f})",
            measure="real-time factor",
            value=round(rtf["median"], 5),
            target=f"<= {RTF_TARGET}",
            ok=rtf["median"] <= RTF_TARGET,
        )
    )
    if not quick:
        model_only = forward_rtf("tiny_resnet", with_frontend=False, repeats=50)
        rows.append(
            dict(
                what="tiny_resnet forward, 4 s clip, model only, 1 thread (median)",
                measure="real-time factor",
                value=round(model_only["median"], 5),
                target=None,
                ok=None,
            )
        )
    return rows


def format_rows(rows: list[dict]) -> str:
    lines = ["| what | measure | value | target | ok |", "|---|---|---|---|---|"]
    for r in rows:
        ok = "" if r["ok"] is None else ("yes" if r["ok"] else "NO")
        target = "" if r["target"] is None else r["target"]
        lines.append(f"| {r['what']} | {r['measure']} | {r['value']} | {target} | {ok} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats")
    args = parser.parse_args()
    print(format_rows(run(quick=args.quick)))


if __name__ == "__main__":
    main()
