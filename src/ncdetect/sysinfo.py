"""What machine a result came from, for reports and benchmark tables."""

from __future__ import annotations

import os
import platform
from pathlib import Path


def machine_info() -> dict[str, str | int]:
    import torch

    info: dict[str, str | int] = {
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count() or 0,
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
    }
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["processor"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def describe_machine() -> str:
    m = machine_info()
    gpu = f", GPU {m['gpu']}" if "gpu" in m else ""
    return (f"{m['processor']}, {m['cpu_count']} CPUs ({m['torch_threads']} torch threads){gpu}; "
            f"Python {m['python']}, torch {m['torch']}")
