"""Training throughput of the models on this CPU, at 4 s, as ``ncdetect train`` builds them.

* Samples per second of one training step (forward, backward, AdamW) on batches of 16 log-mel inputs of
  4 s (80 mels x 404 frames), one torch thread, models at their shipped configs and in the channels-last
  layout that ``ncdetect.runs.build_model`` gives them. tiny_resnet and resnet18 are the figures the
  Speed issue asks for; convnext_atto and lcnn complete the registry. The step rate is the model's side
  of an epoch; the data side is in bench_data.py, scoring in bench_scoring.py.
* The same step under ``train.amp=bf16`` (bfloat16 autocast), only where the CPU runs bfloat16 natively
  (AMX or AVX-512 BF16 in /proc/cpuinfo); elsewhere PyTorch emulates it at about a tenth of the float32
  rate, which would make this benchmark take minutes per row for a figure nobody should use, so the rows
  say "skipped" and why. And tiny_resnet in the plain contiguous layout, for the effect of the layout.
* tiny_resnet's parameter count (<= 500,000, the "tiny" of the method).

Rates are the best of several steps after a warm-up (see common.py). The float32 rates of tiny_resnet and
resnet18 must not drop by more than 10% from the previous run (run_all.py; per matmul GFLOP/s).
One thread: on a shared 2-core machine a second OpenMP thread often waits for a busy core at every
layer, which makes two-thread step times erratic.

    python benchmarks/bench_models.py [--quick] [--full]
"""

from __future__ import annotations

import contextlib
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from torch import nn

from common import Threads, interleaved, main, row
from ncdetect.config import load_config
from ncdetect.runs import build_model
from ncdetect.sysinfo import BF16_FLAGS, cpu_model, native_bf16_flags

N_MELS = 80
FRAMES = 404  # 64,600 samples at hop 160, centred frames
BATCH = 16
TINY_PARAMS_TARGET = 500_000


def shipped_model(name: str) -> nn.Module:
    """A model exactly as ``ncdetect train --config configs/<name>.yaml`` builds it."""
    cfg = load_config(Path(str(resources.files("ncdetect") / "configs" / f"{name}.yaml")), [])
    torch.manual_seed(0)
    return build_model(cfg, N_MELS)


def train_step(model: nn.Module, amp: bool = False) -> Any:
    """One optimiser step on a fixed random batch, as a closure."""
    model.train()
    optim = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)
    x = torch.randn(BATCH, 1, N_MELS, FRAMES)
    y = torch.arange(BATCH) % 2
    autocast = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if amp else contextlib.nullcontext

    def step() -> None:
        with autocast():
            logits = model(x)
        loss = nn.functional.cross_entropy(logits.float(), y)
        optim.zero_grad(set_to_none=True)
        loss.backward()
        optim.step()

    return step


def bf16_skip_reason(cpuinfo: str | None = None) -> str | None:
    """Why the bf16 rows are not timed on this CPU, or None where it runs bfloat16 natively."""
    if native_bf16_flags(cpuinfo):
        return None
    return (f"skipped: {cpu_model(cpuinfo)} has no native bfloat16 (none of {', '.join(BF16_FLAGS)} in "
            "/proc/cpuinfo); emulated bf16 trains slower than float32, so keep train.amp=off (auto) here")


def run(quick: bool = False, full: bool = False) -> list[dict]:
    """Benchmark rows (see common.row). `make bench` times the two gated models; `make bench-full`
    (``full``) adds convnext_atto, lcnn and tiny_resnet's contiguous layout, rows that are only reported."""
    tiny = sum(p.numel() for p in shipped_model("tiny_resnet").parameters())
    rows = [row("tiny_resnet parameters", "count", f"{tiny:,}", f"<= {TINY_PARAMS_TARGET:,}",
                tiny <= TINY_PARAMS_TARGET)]
    no_bf16 = bf16_skip_reason()
    names = ("tiny_resnet", "resnet18", "convnext_atto", "lcnn") if full else ("tiny_resnet", "resnet18")
    repeats = 2 if quick else 4
    with Threads(1):
        for name in names:
            model = shipped_model(name)
            params = sum(p.numel() for p in model.parameters()) / 1e6
            steps = {"fp32": train_step(model)}
            if name in ("tiny_resnet", "resnet18") and no_bf16 is None:
                steps["bf16"] = train_step(shipped_model(name), amp=True)
            if name == "tiny_resnet" and full:
                plain = shipped_model(name).to(memory_format=torch.contiguous_format)
                steps["contiguous"] = train_step(plain)
            t = interleaved(steps, repeats=repeats)
            rate = {k: BATCH / min(v) for k, v in t.items()}
            what = f"train step {name} ({params:.2f} M params), batch {BATCH} x 4 s log-mel, 1 thread"
            gate = name in ("tiny_resnet", "resnet18")  # the figures: no regression over 10%
            target = "no drop > 10% vs last run" if gate else "-"
            rows.append(row(what, "samples/s", f"{rate['fp32']:.1f}", target, None, throughput=rate["fp32"],
                            gate=gate))
            if "bf16" in rate:
                rows.append(row(f"{what}, train.amp=bf16", "samples/s (speed-up over float32)",
                                f"{rate['bf16']:.1f} ({rate['bf16'] / rate['fp32']:.1f}x)", "-", None,
                                throughput=rate["bf16"]))
            elif name in ("tiny_resnet", "resnet18"):
                rows.append(row(f"{what}, train.amp=bf16", "samples/s (speed-up over float32)", no_bf16 or "",
                                "-", None))
            if "contiguous" in rate:
                rows.append(row(f"{what}, contiguous layout", "channels-last speed-up",
                                f"{rate['fp32'] / rate['contiguous']:.2f}x "
                                f"({rate['contiguous']:.1f} samples/s contiguous)", "-", None))
    return rows


if __name__ == "__main__":
    raise SystemExit(main(run, __doc__))
