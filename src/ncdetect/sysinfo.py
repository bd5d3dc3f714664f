"""What machine a result came from, for reports and benchmark tables."""

from __future__ import annotations

import os
import platform
from pathlib import Path

CPUINFO = Path("/proc/cpuinfo")
# CPU flags of native bfloat16 arithmetic: AMX tiles (Intel Sapphire Rapids and later) or AVX-512 BF16
# (Intel Cooper Lake, AMD Zen 4 and later). Without them PyTorch emulates bf16, about 10x slower than fp32.
BF16_FLAGS = ("amx_bf16", "avx512_bf16")


def _cpuinfo_field(name: str, cpuinfo: str | None = None) -> str | None:
    """The first ``name : value`` of /proc/cpuinfo (or of ``cpuinfo``, its text), None where absent."""
    if cpuinfo is None:
        try:
            cpuinfo = CPUINFO.read_text(errors="replace")
        except OSError:
            return None
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() == name:
            return value.strip()
    return None


def cpu_model(cpuinfo: str | None = None) -> str:
    """The CPU's model name (``AMD EPYC``, ``Intel(R) Xeon(R) Processor``), or the platform's machine type
    where /proc/cpuinfo does not say."""
    return _cpuinfo_field("model name", cpuinfo) or platform.processor() or platform.machine() or "unknown"


def native_bf16_flags(cpuinfo: str | None = None) -> list[str]:
    """The flags of native bfloat16 support this CPU has (empty: bf16 is emulated, or it is unknown)."""
    flags = set((_cpuinfo_field("flags", cpuinfo) or "").split())
    return [f for f in BF16_FLAGS if f in flags]


def machine_info() -> dict[str, str | int]:
    import torch

    info: dict[str, str | int] = {
        "processor": cpu_model(),
        "cpu_count": os.cpu_count() or 0,
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def describe_machine() -> str:
    m = machine_info()
    gpu = f", GPU {m['gpu']}" if "gpu" in m else ""
    return (f"{m['processor']}, {m['cpu_count']} CPUs ({m['torch_threads']} torch threads){gpu}; "
            f"Python {m['python']}, torch {m['torch']}")
