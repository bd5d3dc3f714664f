"""``ncdetect export``: a run's front-end and model as one ONNX graph.

Input ``waveform``: float32 (batch, samples) at 16 kHz, both axes dynamic (the front-end's framing and
the statistics pooling follow the length). Outputs ``logits`` (batch, 2; 0 = spoof, 1 = bonafide) and
``score`` (batch,) = logit(bonafide) - logit(spoof). Scores of whole files over sliding windows are the
caller's business (see ``ncdetect detect`` for the windowing we use).

The file carries the run's resolved config, its metrics and the parameter count as ONNX metadata
(``ncdetect_config``, ``ncdetect_metrics``, ``ncdetect_parameters``) and, for a calibrated run, its
score -> LLR map (``ncdetect_calibration``), so ``ncdetect detect`` and ``ncdetect serve`` window,
calibrate and describe an ``.onnx`` file exactly as they do its run folder.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from . import __version__
from .errors import NcdetectError
from .fileio import atomic_path

if TYPE_CHECKING:
    import onnx

    from .runs import LoadedRun

OPSET = 17


class WaveformDetector(nn.Module):
    """front-end -> model -> (logits, score), the graph that is exported."""

    def __init__(self, frontend: nn.Module, model: nn.Module):
        super().__init__()
        self.frontend, self.model = frontend, model

    def forward(self, waveform: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.model(self.frontend(waveform))
        return logits, logits[:, 1] - logits[:, 0]


def export_onnx(run_dir: str | Path, out: str | Path, opset: int = OPSET) -> Path:
    """Write ``out`` (an .onnx file) for the run in ``run_dir``; CPU, float32, eval mode."""
    import onnx

    from .runs import load_run

    out = Path(out)
    run = load_run(run_dir, "cpu")
    if not getattr(run.frontend, "exportable", True):
        # The Whisper encoder runs in CTranslate2, outside torch: there is no graph to export.
        raise NcdetectError(
            f"{run_dir}: front-end {run.config.frontend.name!r} cannot be exported to ONNX (its encoder runs "
            "in CTranslate2, not torch); use the run folder with `ncdetect detect` or `ncdetect serve`, or "
            "train with frontend.kwargs.backend: torch"
        )
    graph = WaveformDetector(run.frontend, run.model).eval()
    # Noise rather than zeros: a constant input lets the tracer fold more than it should.
    example = torch.randn(2, run.num_samples, generator=torch.Generator().manual_seed(0)) * 0.1
    with atomic_path(out) as tmp, warnings.catch_warnings():
        # We use the TorchScript exporter on purpose (see below), and it cannot fold the strided slices of
        # the frame unfolding: both are expected, so their warnings are silenced.
        warnings.filterwarnings("ignore", message="Constant folding", category=UserWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        try:
            torch.onnx.export(
                graph,
                (example,),
                str(tmp),
                dynamo=False,  # the TorchScript exporter: no onnxscript dependency, dynamic axes by name
                input_names=["waveform"],
                output_names=["logits", "score"],
                dynamic_axes={
                    "waveform": {0: "batch", 1: "samples"}, "logits": {0: "batch"}, "score": {0: "batch"}
                },
                opset_version=opset,
                do_constant_folding=True,
            )
        except OSError:
            raise  # a failed write (full disk, permissions): atomic_path reports it, naming the .onnx file
        except Exception as err:  # the exporter raises many types; the user needs one line
            first = (str(err).splitlines() or [type(err).__name__])[0]
            raise NcdetectError(f"{run_dir}: ONNX export failed ({type(err).__name__}: {first})") from None
        onnx.save(_with_metadata(onnx.load(str(tmp)), run), str(tmp))
    return out


def _with_metadata(model: onnx.ModelProto, run: LoadedRun) -> onnx.ModelProto:
    import json

    entries = {
        "ncdetect_version": __version__,
        "ncdetect_config": json.dumps(run.config.to_dict(), sort_keys=True),
        # The per-epoch history is left out: it is long and says nothing about using the model.
        "ncdetect_metrics": json.dumps({k: v for k, v in run.metrics.items() if k != "epochs"}),
        "ncdetect_parameters": str(sum(p.numel() for p in run.model.parameters())),
    }
    from .calibration import load_calibration

    calibration = load_calibration(run.path)
    if calibration is not None:  # the score -> LLR map travels with the graph
        entries["ncdetect_calibration"] = json.dumps(calibration.to_dict(), sort_keys=True)
    for key, value in entries.items():
        model.metadata_props.add(key=key, value=value)
    return model
