"""Results that hold on any CPU: native bfloat16 is detected from /proc/cpuinfo, `train.amp=auto` never
picks bf16 on a CPU, the bf16 benchmark rows are skipped with a reason where bf16 is emulated, and the
benchmark baselines are kept per CPU model."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from ncdetect import sysinfo
from ncdetect.sysinfo import cpu_model, native_bf16_flags

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"

ZEN3 = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 7B13
flags\t\t: fpu vme sse sse2 avx avx2 fma bmi2 sha_ni
processor\t: 1
model name\t: AMD EPYC 7B13
flags\t\t: fpu vme sse sse2 avx avx2 fma bmi2 sha_ni
"""
ZEN4 = ZEN3.replace("7B13", "9B14").replace("sha_ni", "sha_ni avx512f avx512_bf16")
SAPPHIRE_RAPIDS = ("model name\t: Intel(R) Xeon(R) Platinum 8481C\n"
                   "flags\t: avx512f amx_bf16 amx_tile amx_int8\n")


def test_cpu_model_and_bf16_flags_from_cpuinfo():
    assert cpu_model(ZEN3) == "AMD EPYC 7B13"
    assert native_bf16_flags(ZEN3) == []
    assert native_bf16_flags(ZEN4) == ["avx512_bf16"]
    assert native_bf16_flags(SAPPHIRE_RAPIDS) == ["amx_bf16"]
    # no /proc/cpuinfo (another OS): unknown counts as not native, and the model falls back to the platform
    assert native_bf16_flags("") == [] and cpu_model("") != ""


def test_this_machines_cpuinfo_is_read():
    if not sysinfo.CPUINFO.is_file():
        pytest.skip("no /proc/cpuinfo here")
    text = sysinfo.CPUINFO.read_text(errors="replace")
    assert cpu_model() == cpu_model(text) and native_bf16_flags() == native_bf16_flags(text)


@pytest.mark.parametrize("cpuinfo", [ZEN3, ZEN4, SAPPHIRE_RAPIDS])
def test_amp_auto_never_picks_bf16_on_a_cpu(monkeypatch, tmp_path, cpuinfo):
    from ncdetect.train import _amp_dtype

    (tmp_path / "cpuinfo").write_text(cpuinfo)
    monkeypatch.setattr(sysinfo, "CPUINFO", tmp_path / "cpuinfo")
    assert native_bf16_flags() == native_bf16_flags(cpuinfo)
    # not even where bf16 is native: auto keeps float32 arithmetic on every CPU
    assert _amp_dtype("auto", torch.device("cpu")) is None
    assert _amp_dtype("off", torch.device("cpu")) is None
    assert _amp_dtype("bf16", torch.device("cpu")) == torch.bfloat16  # asked for explicitly: honoured


def test_explicit_bf16_on_a_cpu_without_it_says_so(tmp_path, toy_manifest, monkeypatch):
    from ncdetect import train as train_module
    from ncdetect.config import load_config

    monkeypatch.setattr(train_module, "native_bf16_flags", lambda: [])
    settings = ["data.num_samples=4000", "data.batch_size=18", "data.num_workers=0", "model.kwargs.width=4",
                "model.embedding_dim=8", "optim.epochs=1", "train.threads=1", "train.amp=bf16"]
    train_module.train(load_config(None, settings), toy_manifest, tmp_path / "run", progress=False)
    log = (tmp_path / "run" / "train.log").read_text()
    assert "amp bfloat16 (emulated: this CPU has no AMX or avx512_bf16" in log


# ----------------------------------------------------------------------------------------- benchmarks
@pytest.fixture()
def bench(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import bench_models
    import run_all

    yield run_all, bench_models
    for name in ("bench_models", "run_all", "common"):
        sys.modules.pop(name, None)


def test_bf16_rows_skipped_with_a_reason_where_bf16_is_emulated(bench):
    _, bench_models = bench
    reason = bench_models.bf16_skip_reason(ZEN3)
    assert reason.startswith("skipped: AMD EPYC 7B13 has no native bfloat16") and "avx512_bf16" in reason
    assert bench_models.bf16_skip_reason(ZEN4) is None
    assert bench_models.bf16_skip_reason(SAPPHIRE_RAPIDS) is None


def _rows() -> list[dict]:
    return [dict(what="train step tiny_resnet", measure="samples/s", value="90", target="-", ok=None,
                 throughput=90.0, gate=True),
            dict(what="decode", measure="utterances/s", value="900", target="-", ok=None, throughput=900.0)]


def test_baselines_are_kept_per_cpu_model(bench, tmp_path):
    run_all, _ = bench
    last = tmp_path / "last_run.json"
    # The Xeon's figures are no baseline for an EPYC: a machine difference is not a regression.
    last.write_text(json.dumps({"Intel(R) Xeon(R) Processor": {"train step tiny_resnet / samples/s": 2.0}}))
    rows = _rows()
    run_all.check_regressions(rows, gflops=100.0, last_path=last, cpu="AMD EPYC")
    assert [r["vs_last_run"] for r in rows] == ["no baseline for this CPU"] * 2
    assert rows[0]["ok"] is None
    stored = json.loads(last.read_text())
    assert stored["Intel(R) Xeon(R) Processor"] == {"train step tiny_resnet / samples/s": 2.0}
    assert stored["AMD EPYC"] == {"train step tiny_resnet / samples/s": 0.9, "decode / utterances/s": 9.0}

    # The next run on the EPYC compares with the EPYC's own figures, and the gate judges a 20% drop.
    rows = _rows()
    rows[0]["throughput"] = 72.0
    run_all.check_regressions(rows, gflops=100.0, last_path=last, cpu="AMD EPYC")
    assert rows[0]["vs_last_run"] == "-20% vs last run" and rows[0]["ok"] is False
    assert rows[1]["vs_last_run"] == "+0% vs last run" and rows[1]["ok"] is None
    # ...and a Xeon run still finds its own baseline
    rows = _rows()
    run_all.check_regressions(rows, gflops=100.0, last_path=last, cpu="Intel(R) Xeon(R) Processor")
    assert rows[0]["vs_last_run"] == "-55% vs last run" and rows[0]["ok"] is False


def test_old_flat_baseline_file_is_no_baseline(bench, tmp_path):
    run_all, _ = bench
    last = tmp_path / "last_run.json"
    last.write_text(json.dumps({"train step tiny_resnet / samples/s": 0.9}))
    rows = _rows()
    run_all.check_regressions(rows, gflops=100.0, last_path=last, cpu="AMD EPYC")
    assert rows[0]["vs_last_run"] == "no baseline for this CPU"
    assert set(json.loads(last.read_text())) == {"AMD EPYC"}


def test_committed_baselines_are_keyed_by_cpu_model():
    stored = json.loads((BENCHMARKS / "last_run.json").read_text())
    assert stored and all(isinstance(v, dict) and v for v in stored.values())
