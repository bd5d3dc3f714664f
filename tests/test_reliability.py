"""Reliability: what the program does when the files, folders and disks it is given misbehave.

- Writes are atomic: a failed write leaves the old file (or nothing) in place, never a partial one, and
  every artifact write in src/ goes through ncdetect.fileio (a static audit).
- An output folder that cannot be written (below a regular file, read-only, full) is a one-line error
  before any long work, for every command that writes; a disk that fills during the work is a one-line
  error at the point of failure, with nothing half-written left behind.
- Relative paths in a manifest resolve against the manifest's folder, whatever the working directory.
- No protocol entry reaches outside ROOT.
- Model files and configs: JSON configs work, YAML tags that run code do not, pickles are refused at the
  command line, and no source file deserialises unsafely (an AST check).
- Determinism: the same seed and inputs on CPU give identical selections, weights, scores, embeddings.
"""

from __future__ import annotations

import ast
import errno
import inspect
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch
from safetensors.torch import load_file

from conftest import make_corpus, property_settings, synth_utterance, write_wav
from ncdetect.cli import main
from ncdetect.config import load_config
from ncdetect.data.manifest import read_manifest
from ncdetect.embed import embed_manifest
from ncdetect.errors import ConfigError, ModelFileError, NcdetectError, ProtocolError
from ncdetect.fileio import atomic_path, ensure_writable_dir, open_npy_for_writing, write_json
from ncdetect.score import score_manifest
from ncdetect.train import train

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "ncdetect"
pytestmark = pytest.mark.timeout(300)

TINY = ["data.num_samples=16000", "data.batch_size=8", "data.num_workers=0", "model.kwargs.width=8",
        "model.embedding_dim=32", "train.threads=1"]


def tiny_config(*extra: str, epochs: int = 1):
    return load_config(None, [*TINY, f"optim.epochs={epochs}", *extra])


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, toy_manifest) -> Path:
    run = tmp_path_factory.mktemp("reliability") / "run"
    train(tiny_config(), toy_manifest, run, progress=False)
    return run


@pytest.fixture(scope="module")
def emb_dir(tmp_path_factory, run_dir, toy_manifest) -> Path:
    out = tmp_path_factory.mktemp("reliability_emb") / "emb"
    embed_manifest(run_dir, toy_manifest, out, progress=False)
    return out


def cli(monkeypatch, capsys, *args) -> tuple[int, str, str]:
    """Run ``ncdetect ARGS`` in this process through the console entry point; (exit code, stdout, stderr)."""
    monkeypatch.setattr(sys, "argv", ["ncdetect", *map(str, args)])
    with pytest.raises(SystemExit) as exc:
        main()
    captured = capsys.readouterr()
    code = exc.value.code
    return (0 if code is None else code), captured.out, captured.err


def one_line_error(stderr: str) -> str:
    """The CLI's error: exactly one non-empty line, prefixed, and no traceback."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert "Traceback" not in stderr, stderr
    assert len(lines) == 1 and lines[0].startswith("ncdetect: error: "), stderr
    return lines[0]


def leftovers(folder: Path) -> list[str]:
    """Temporary or partial files that a failed write could have left (hidden names, *.tmp)."""
    if not folder.exists():
        return []
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")
                  if p.name.startswith(".") or p.name.endswith(".tmp"))


# --------------------------------------------------------------------------------------- small disks
def _can_mount() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0 and shutil.which("mount") is not None


@contextmanager
def tmpfs(path: Path, size: str = "4m", read_only: bool = False) -> Iterator[Path]:
    """A small RAM file system at ``path`` (root only): a disk that really fills up, or a read-only one."""
    path.mkdir(parents=True, exist_ok=True)
    options = f"size={size}" + (",ro" if read_only else "")
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True,
                          text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def fill(disk: Path, leave: int = 0) -> Path:
    """Fill ``disk`` to the last byte with a ballast file, then free ``leave`` bytes (whole pages)."""
    ballast = disk / "ballast"
    chunk = b"\0" * (64 * 1024)
    with open(ballast, "ab", buffering=0) as f:
        for size in (len(chunk), 4096, 512, 1):
            try:
                while True:
                    f.write(chunk[:size])
            except OSError as err:
                assert err.errno == errno.ENOSPC, err
        if leave:
            f.truncate(os.fstat(f.fileno()).st_size - leave)
    return ballast


needs_mount = pytest.mark.skipif(not _can_mount(), reason="mounting a tmpfs needs root")


# ================================================================================= atomic writes
def test_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "scores.csv"
    target.write_text("old, complete\n")
    with pytest.raises(NcdetectError) as err, atomic_path(target) as tmp:
        tmp.write_text("half of the new")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    assert str(err.value).startswith(f"{target}: could not be written (No space left on device)")
    assert "\n" not in str(err.value)
    assert target.read_text() == "old, complete\n"
    assert leftovers(tmp_path) == []

    # A library that wraps the OS error in its own type (safetensors does) is recognised by its text...
    with pytest.raises(NcdetectError, match="os error 28"), atomic_path(target) as tmp:
        tmp.write_bytes(b"x")
        raise RuntimeError("Error while serializing: I/O error: No space left on device (os error 28)")
    # ...while other errors pass through unchanged, and an interrupt also removes the temporary.
    with pytest.raises(ValueError, match="unrelated"), atomic_path(target) as tmp:
        raise ValueError("unrelated")
    with pytest.raises(KeyboardInterrupt), atomic_path(target) as tmp:
        tmp.write_text("partial")
        raise KeyboardInterrupt
    assert target.read_text() == "old, complete\n"
    assert leftovers(tmp_path) == []


def test_a_new_file_appears_only_when_complete(tmp_path):
    target = tmp_path / "sub" / "results.json"
    with atomic_path(target) as tmp:
        tmp.write_text("{}")
        assert not target.exists()  # under its temporary name until the block ends
    assert target.read_text() == "{}"
    write_json(target, {"a": 1})
    assert json.loads(target.read_text()) == {"a": 1}
    assert leftovers(tmp_path) == []


# Calls that write a file, and where the path is among their arguments.
_WRITE_METHODS = {"to_csv": 0, "to_parquet": 0, "to_json": 0, "savefig": 0, "tofile": 0}
_WRITE_FUNCTIONS = {"save": 0, "savez": 0, "savez_compressed": 0, "save_file": 1, "export": 2,
                    "open_memmap": 0, "open_npy_for_writing": 0, "copy": 1, "copyfile": 1, "copy2": 1}
# Writes that are safe without atomic_path, per file, by the text of their target, with the reason.
_ALLOWED = {
    "train.py": {
        "tmp": "the checkpoint folder is written under a temporary name and renamed into place whole",
        "self.path": "train.log is appended line by line; a log is never taken for a finished artifact",
    },
    "runs.py": {"tmp_file": "save_weights sorts the header of its atomic_path temporary in place"},
    "data/features.py": {"tmp": "a feature store shard is built in a temporary folder that is renamed into "
                                "place whole"},
    "data/whisper.py": {"tmp": "the cut encoder is written in a temporary folder that is renamed into place "
                               "whole"},
    "embed.py": {"shard_npy": "a per-process scratch shard (hidden name), removed after the merge or on a "
                              "failure"},
}


def _is_write_mode(call: ast.Call, mode_index: int) -> bool:
    mode = next((k.value for k in call.keywords if k.arg == "mode"), None)
    if mode is None and len(call.args) > mode_index:
        mode = call.args[mode_index]
    if mode is None:
        return False
    if not isinstance(mode, ast.Constant) or not isinstance(mode.value, str):
        return True  # a computed mode: treat as a write
    return any(c in mode.value for c in "wax+")


def _write_target(call: ast.Call) -> ast.expr | None:
    """The path a call writes to, or None when it does not write a file."""
    fn = call.func
    name = fn.attr if isinstance(fn, ast.Attribute) else fn.id if isinstance(fn, ast.Name) else None
    method = isinstance(fn, ast.Attribute)
    if method and name in ("write_text", "write_bytes"):
        return fn.value  # Path.write_text: the receiver is the file (the bare write_text is fileio's)
    if method and name in _WRITE_METHODS:
        return call.args[0] if call.args else None
    if method and name == "write" and isinstance(fn.value, ast.Name) and fn.value.id == "sf":
        return call.args[0] if call.args else None
    if name in _WRITE_FUNCTIONS and len(call.args) > _WRITE_FUNCTIONS[name]:
        if name in ("open_memmap",) and not _is_write_mode(call, 1):
            return None
        return call.args[_WRITE_FUNCTIONS[name]]
    if name == "open" and call.args:
        receiver = fn.value if method else None
        if receiver is not None and not isinstance(receiver, ast.Name):  # Path(...).open(mode)
            return receiver if _is_write_mode(call, 0) else None
        if _is_write_mode(call, 1):
            return call.args[0]
    return None


def _audit(tree: ast.AST, allowed: dict[str, str]) -> list[tuple[int, str]]:
    """Write calls whose target is neither an atomic_path temporary, nor inside a TemporaryDirectory
    block, nor allowed by name."""
    problems: list[tuple[int, str]] = []

    def names(expr: ast.AST) -> set[str]:
        return {n.id for n in ast.walk(expr) if isinstance(n, ast.Name)}

    def visit(node: ast.AST, safe: frozenset[str], scratch: bool) -> None:
        if isinstance(node, (ast.With, ast.AsyncWith)):
            bound = set(safe)
            for item in node.items:
                ctx, var = item.context_expr, item.optional_vars
                if isinstance(ctx, ast.Call):
                    fn = ctx.func
                    fname = fn.attr if isinstance(fn, ast.Attribute) else getattr(fn, "id", None)
                    target = _write_target(ctx)
                    if target is not None:
                        check(ctx, target, frozenset(bound), scratch)
                    if isinstance(var, ast.Name) and (
                        fname == "atomic_path" or (target is not None and names(target) & bound)
                    ):
                        bound.add(var.id)
                    if fname == "TemporaryDirectory":
                        scratch = True
            for child in node.body:
                visit(child, frozenset(bound), scratch)
            return
        if isinstance(node, ast.Call):
            target = _write_target(node)
            if target is not None:
                check(node, target, safe, scratch)
        for child in ast.iter_child_nodes(node):
            visit(child, safe, scratch)

    def check(call: ast.Call, target: ast.expr, safe: frozenset[str], scratch: bool) -> None:
        text = ast.unparse(target)
        if scratch or names(target) & safe or any(text == a or text.startswith(f"{a} ") or
                                                  text.startswith(f"{a}/") or f"({a} /" in text or
                                                  text.startswith(f"str({a}") for a in allowed):
            return
        problems.append((call.lineno, ast.unparse(call)[:90]))

    visit(tree, frozenset(), False)
    return problems


def test_every_artifact_write_in_src_is_atomic():
    """A static audit: a file write in src/ must target an atomic_path temporary (or a file opened on
    one), lie in a scratch TemporaryDirectory, or be listed in _ALLOWED with its reason."""
    offenders = []
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC).as_posix()
        if rel == "fileio.py":  # the atomic writer itself
            continue
        for line, call in _audit(ast.parse(path.read_text(encoding="utf-8")), _ALLOWED.get(rel, {})):
            offenders.append(f"src/ncdetect/{rel}:{line}: {call}")
    assert not offenders, "non-atomic writes (use ncdetect.fileio.atomic_path):\n" + "\n".join(offenders)


def test_the_write_audit_catches_a_plain_write():
    bad = textwrap.dedent("""
        def save(df, out, fig, tensors):
            df.to_csv(out)
            fig.savefig(out / "a.png")
            save_file(tensors, str(out))
            with open(out, "w") as f:
                f.write("x")
            Path(out).write_text("x")
    """)
    assert [line for line, _ in _audit(ast.parse(bad), {})] == [3, 4, 5, 6, 8]
    good = textwrap.dedent("""
        def save(df, out, fig):
            with atomic_path(out) as tmp:
                df.to_csv(tmp)
            with atomic_path(out) as tmp, open(tmp, "wb") as f:
                np.save(f, 1)
            with open(out) as f:
                f.read()
            with tempfile.TemporaryDirectory() as d:
                fig.savefig(Path(d) / "x.png")
            write_text(out, "x")
    """)
    assert _audit(ast.parse(good), {}) == []


# ============================================================== unwritable output folders, full disks
class Boom(AssertionError):
    pass


def _long_work(*_args, **_kwargs):
    raise Boom("long work started before the output folder was checked")


def _unwritable(kind: str, tmp_path: Path, stack) -> Path:
    """A folder that cannot be written, of the given kind."""
    if kind == "below_a_file":
        (tmp_path / "file.txt").write_text("a regular file, not a folder")
        return tmp_path / "file.txt" / "out"
    if not _can_mount():
        pytest.skip("mounting a tmpfs needs root")
    if kind == "read_only":
        return stack.enter_context(tmpfs(tmp_path / "ro", read_only=True)) / "out"
    disk = stack.enter_context(tmpfs(tmp_path / "full", size="1m"))
    fill(disk)
    return disk / "out"


REASONS = {"below_a_file": "Not a directory", "read_only": "Read-only file system",
           "full": "No space left on device"}
COMMANDS = ["train", "score", "embed", "sample", "run", "demo", "prepare", "evaluate", "export"]


@pytest.mark.parametrize("kind", list(REASONS))
@pytest.mark.parametrize("command", COMMANDS)
def test_unwritable_output_is_one_line_before_long_work(
    command, kind, tmp_path, monkeypatch, capsys, run_dir, emb_dir, toy_manifest
):
    from contextlib import ExitStack

    import ncdetect.collapse.embeddings
    import ncdetect.data.corpora
    import ncdetect.data.dataset
    import ncdetect.demo.run
    import ncdetect.evaluate
    import ncdetect.pipeline
    import ncdetect.score

    with ExitStack() as stack:
        bad = _unwritable(kind, tmp_path, stack)
        # Whatever would start the long work fails the test if it is reached.
        monkeypatch.setattr(ncdetect.data.dataset, "AudioDataset", _long_work)
        monkeypatch.setattr(ncdetect.score, "infer_batches", _long_work)
        monkeypatch.setattr(ncdetect.collapse.embeddings, "load_embeddings", _long_work)
        monkeypatch.setattr(ncdetect.pipeline, "STAGES", [_long_work])
        monkeypatch.setattr(ncdetect.demo.run, "build_demo_corpus", _long_work)
        monkeypatch.setitem(ncdetect.data.corpora.ADAPTERS._items, "csv", _long_work)  # the registry's table
        monkeypatch.setattr(ncdetect.evaluate, "read_scores", _long_work)
        recipe = tmp_path / "recipe.yaml"
        recipe.write_text(json.dumps({
            "name": "r", "sources": [{"name": "s", "train": str(toy_manifest)}],
            "targets": [{"name": "t", "data": str(toy_manifest)}],
            "sampling": {"rates": [0.5], "strategies": ["nc"]}, "seeds": [0]}))
        sets = [a for s in TINY for a in ("--set", s)]
        args = {
            "train": ["train", "--train", toy_manifest, "--out", bad, *sets],
            "score": ["score", run_dir, toy_manifest, "--out", bad / "scores.csv"],
            "embed": ["embed", run_dir, toy_manifest, "--out", bad],
            "sample": ["sample", emb_dir, "--strategy", "nc", "--rate", "0.5", "--out", bad / "m.csv"],
            "run": ["run", recipe, "--out", bad],
            "demo": ["demo", "--quick", "--out", bad],
            "prepare": ["prepare", "csv", toy_manifest, "--out", bad / "m.csv"],
            "evaluate": ["evaluate", tmp_path / "scores.csv", "--plots", bad],
            "export": ["export", run_dir, "--onnx", bad / "model.onnx"],
        }[command]
        code, _, err = cli(monkeypatch, capsys, *args)
    assert code == 1
    line = one_line_error(err)
    assert str(bad) in line
    assert "cannot be written" in line or "could not be written" in line
    assert REASONS[kind] in line, line


@needs_mount
def test_disk_filling_during_scoring(tmp_path, monkeypatch, run_dir, toy_manifest):
    """The check passes, then the disk fills: the CSV write fails naming the file, nothing is left."""
    import ncdetect.score

    real = ncdetect.score.ensure_writable_dir

    def check_then_fill(path):
        out = real(path)
        fill(disk)
        return out

    with tmpfs(tmp_path / "disk", size="1m") as disk:
        monkeypatch.setattr(ncdetect.score, "ensure_writable_dir", check_then_fill)
        out = disk / "scores.csv"
        with pytest.raises(NcdetectError) as err:
            score_manifest(run_dir, toy_manifest, out, progress=False)
        assert str(err.value).startswith(f"{out}: could not be written (No space left on device")
        assert sorted(p.name for p in disk.iterdir()) == ["ballast"]


@needs_mount
def test_disk_filling_during_training(tmp_path, monkeypatch, toy_manifest):
    """The disk fills after the first epoch: the checkpoint write fails naming it; no partial checkpoint,
    model or metrics are left behind."""
    import ncdetect.train as train_mod

    real = train_mod.save_checkpoint

    def fill_then_save(run, tensors, meta):
        fill(disk)
        return real(run, tensors, meta)

    with tmpfs(tmp_path / "disk", size="4m") as disk:
        monkeypatch.setattr(train_mod, "save_checkpoint", fill_then_save)
        run = disk / "run"
        with pytest.raises(NcdetectError, match="No space left on device") as err:
            train(tiny_config(epochs=2), toy_manifest, run, progress=False)
        assert "\n" not in str(err.value)
        assert str(run) in str(err.value)
        left = sorted(p.name for p in run.rglob("*"))
        assert "model.safetensors" not in left and "metrics.json" not in left
        assert not [n for n in left if n.startswith(".") or n.startswith("epoch-")], left


# Run in a subprocess: a memory map that hits a full disk dies of SIGBUS, which would take pytest with it.
# fill() goes in as source: importing this module there would load torch and the whole CLI for nothing.
_SUBPROCESS_PRELUDE = f"""
import errno
import os
import sys
from pathlib import Path
{textwrap.dedent(inspect.getsource(fill))}
disk = Path(sys.argv[1])
"""
_EMBED_SCRIPT = _SUBPROCESS_PRELUDE + """
import ncdetect.embed as embed
real = embed.ensure_writable_dir
def check_then_fill(path):
    out = real(path)
    fill(disk, leave=4096)  # room for the .npy header, not for the embeddings
    return out
embed.ensure_writable_dir = check_then_fill
sys.argv = ["ncdetect", "embed", *sys.argv[2:]]
from ncdetect.cli import main
main()
"""
_MEMMAP_SCRIPT = _SUBPROCESS_PRELUDE + """
import numpy as np
fill(disk, leave=8192)  # numpy writes the header and the last byte; the pages between stay unallocated
if sys.argv[2] == "numpy":
    arr = np.lib.format.open_memmap(disk / "x.npy", mode="w+", dtype=np.float32, shape=(1000, 64))
    arr[:] = 1.0  # the pages between header and end have no room on the disk
    arr.flush()
    print("written")
else:
    from ncdetect.errors import NcdetectError
    from ncdetect.fileio import open_npy_for_writing
    try:
        open_npy_for_writing(disk / "x.npy", np.float32, (1000, 64))
    except NcdetectError as err:
        print(err)
"""


@needs_mount
def test_memory_mapped_output_on_a_nearly_full_disk(tmp_path):
    """numpy's plain memory map dies of SIGBUS, without a message, when the disk has room for the .npy
    header and the last byte but not the data between; ncdetect.fileio.open_npy_for_writing reserves the
    blocks first and reports the full disk in one line, leaving no file."""
    with tmpfs(tmp_path / "disk", size="1m") as disk:
        def run(which: str) -> subprocess.CompletedProcess:
            (disk / "x.npy").unlink(missing_ok=True)
            (disk / "ballast").unlink(missing_ok=True)
            return subprocess.run([sys.executable, "-c", _MEMMAP_SCRIPT, str(disk), which],
                                  capture_output=True, text=True, timeout=120)

        plain = run("numpy")
        assert plain.returncode == -signal.SIGBUS, (plain.returncode, plain.stdout, plain.stderr[-1000:])
        ours = run("ncdetect")
        assert ours.returncode == 0, ours.stderr[-2000:]
        assert ours.stdout.strip() == (f"{disk / 'x.npy'}: could not be written (No space left on device; "
                                       "256000 bytes needed); no partial file was left")
        assert not (disk / "x.npy").exists()


@needs_mount
def test_disk_filling_during_embedding_is_an_error_not_a_crash(tmp_path, run_dir, toy_manifest):
    """Embeddings are written through a memory map, which on a full disk used to die of SIGBUS with no
    message; the blocks are now reserved first. In a subprocess, so a regression cannot kill pytest."""
    with tmpfs(tmp_path / "disk", size="1m") as disk:
        out = disk / "emb"
        proc = subprocess.run(
            [sys.executable, "-c", _EMBED_SCRIPT, str(disk), str(run_dir), str(toy_manifest), "--out",
             str(out)],
            capture_output=True, text=True, timeout=240, env={**os.environ, "OMP_NUM_THREADS": "1"},
        )
        assert proc.returncode == 1, (proc.returncode, proc.stderr[-2000:])
        line = one_line_error(proc.stderr)
        assert f"{out / 'embeddings.npy'}: could not be written (No space left on device" in line
        assert sorted(p.name for p in out.iterdir()) == []


@needs_mount
def test_disk_filling_during_the_feature_store_build(tmp_path, monkeypatch, toy_manifest):
    """A feature store shard is a folder of memory maps: a full disk is a one-line error naming the shard,
    and no partial shard is left."""
    import ncdetect.data.features as features_mod
    from ncdetect.data.features import FeatureStore, WindowPolicy
    from ncdetect.data.frontends import build_frontend

    df = read_manifest(toy_manifest)
    with tmpfs(tmp_path / "disk", size="1m") as disk:
        store = FeatureStore(disk / "store", build_frontend("logmel"))
        real = features_mod.ensure_writable_dir

        def check_then_fill(path):
            out = real(path)
            fill(disk)
            return out

        monkeypatch.setattr(features_mod, "ensure_writable_dir", check_then_fill)
        with pytest.raises(NcdetectError, match="No space left on device") as err:
            store.build(df, WindowPolicy(16000), progress=False)
        assert str(store.path / "shards") in str(err.value) and "\n" not in str(err.value)
        assert sorted(p.name for p in (store.path / "shards").iterdir()) == []
        assert not store.refresh()._rows  # nothing a reader could take for a built row


# ========================================================================================== paths
def test_relative_manifest_paths_resolve_against_the_manifest_folder(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    audio = tmp_path / "corpus" / "audio"
    write_wav(audio / "a b.wav", synth_utterance(rng, "bonafide"))
    write_wav(tmp_path / "corpus" / "elsewhere" / "ü.wav", synth_utterance(rng, "spoof", "A01"))
    lists = tmp_path / "corpus" / "lists"
    lists.mkdir()
    rows = [
        dict(utt_id="u1", path="../audio/a b.wav", label="bonafide", dataset="d", attack="-", speaker="s"),
        dict(utt_id="u2", path="../elsewhere/ü.wav", label="spoof", dataset="d", attack="A01", speaker="s"),
        dict(utt_id="u3", path=str(audio / "a b.wav"), label="bonafide", dataset="d", attack="-",
             speaker="s"),
    ]
    pd.DataFrame(rows).to_csv(lists / "m.csv", index=False)
    pd.DataFrame(rows).to_parquet(lists / "m.parquet", index=False)
    other = tmp_path / "somewhere" / "else"
    other.mkdir(parents=True)
    monkeypatch.chdir(other)
    for name in ("m.csv", "m.parquet"):
        relative = Path(os.path.relpath(lists / name, other))
        df = read_manifest(relative)
        assert [Path(p).resolve() for p in df["path"]] == [
            (audio / "a b.wav").resolve(), (tmp_path / "corpus" / "elsewhere" / "ü.wav").resolve(),
            (audio / "a b.wav").resolve(),
        ]
        assert all(Path(p).is_file() for p in df["path"])


def test_score_from_another_folder_reads_the_manifest_relative_paths(tmp_path, monkeypatch, capsys, run_dir):
    manifest = make_corpus(tmp_path / "data" / "corpus", n_bonafide=3, n_spoof=3)  # paths "wav/<utt>.wav"
    assert read_manifest(manifest, resolve_paths=False)["path"].str.startswith("wav/").all()
    cwd = tmp_path / "work"
    cwd.mkdir()
    monkeypatch.chdir(cwd)  # holds no wav/ folder: resolving against the working directory would fail
    code, _, err = cli(monkeypatch, capsys, "score", os.path.relpath(run_dir, cwd),
                       "../data/corpus/manifest.csv", "--out", "scores.csv")
    assert code == 0, err
    scores = pd.read_csv(cwd / "scores.csv")
    assert len(scores) == 6 and np.isfinite(scores["score"]).all()


def _audio(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), (0.1 * np.sin(np.arange(1600) / 5)).astype(np.float32), 16_000)
    return path


PROTOCOLS = {
    # corpus: (protocol path, audio folder, good line, line with UTT)
    "asvspoof2019": (
        lambda r: r / "LA" / "ASVspoof2019_LA_cm_protocols" / "ASVspoof2019.LA.cm.train.trn.txt",
        lambda r: r / "LA" / "ASVspoof2019_LA_train" / "flac", ".flac",
        "LA_0079 GOOD - - bonafide\nLA_0079 {utt} - A01 spoof\n", None),
    "asvspoof2021": (
        lambda r: r / "keys" / "LA" / "CM" / "trial_metadata.txt",
        lambda r: r / "ASVspoof2021_LA_eval" / "flac", ".flac",
        "LA_0009 GOOD alaw ita_tx - bonafide notrim eval\nLA_0009 {utt} alaw ita_tx A07 spoof notrim eval\n",
        "LA"),
    "asvspoof5": (
        lambda r: r / "ASVspoof5.train.tsv", lambda r: r / "flac_T", ".flac",
        "T_1 GOOD F - - - - - bonafide -\nT_1 {utt} F - - - AC3 A05 spoof -\n", None),
    "in-the-wild": (
        lambda r: r / "release_in_the_wild" / "meta.csv", lambda r: r / "release_in_the_wild", ".wav",
        "file,speaker,label\nGOOD.wav,A B,bona-fide\n{utt}.wav,A B,spoof\n", None),
}


@pytest.mark.parametrize("escape", ["relative", "absolute"])
@pytest.mark.parametrize("corpus", list(PROTOCOLS))
def test_protocol_entries_cannot_reach_outside_root(corpus, escape, tmp_path):
    """An utterance id that would resolve to a real audio file outside ROOT is refused, naming the line;
    the same protocol without that line is read."""
    from ncdetect.data import corpora

    root = tmp_path / "corpus"
    protocol_of, audio_of, ext, text, partition = PROTOCOLS[corpus]
    folder = audio_of(root)
    _audio(folder / f"GOOD{ext}")
    secret = _audio(tmp_path / "outside" / f"secret{ext}")
    stem = secret.with_suffix("")
    utt = str(stem) if escape == "absolute" else os.path.relpath(stem, folder)
    assert Path(os.path.normpath(folder / f"{utt}{ext}")) == secret  # the entry really names that file
    protocol = protocol_of(root)
    protocol.parent.mkdir(parents=True, exist_ok=True)
    protocol.write_text(text.format(utt=utt))
    with pytest.raises(ProtocolError, match="unsafe file name") as err:
        corpora.prepare(corpus, root, partition)
    assert err.value.line == (3 if corpus == "in-the-wild" else 2)
    assert str(err.value).startswith(f"{protocol}:{err.value.line}: ")

    protocol.write_text("".join(line + "\n" for line in text.splitlines() if "{utt}" not in line))
    df = corpora.prepare(corpus, root, partition)
    assert df["utt_id"].tolist() == ["GOOD"]
    assert Path(df["path"][0]).resolve().is_relative_to(root.resolve())


# =================================================================================== model files
def test_json_and_yaml_configs_are_equivalent(tmp_path):
    cfg = tiny_config().model_dump(mode="json")
    (tmp_path / "c.json").write_text(json.dumps(cfg))
    import yaml

    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    assert load_config(tmp_path / "c.json") == load_config(tmp_path / "c.yaml")


def test_yaml_that_would_run_code_is_refused(tmp_path, run_dir):
    pwned = tmp_path / "pwned"
    payload = f'!!python/object/apply:os.system ["touch {pwned}"]\n'
    (tmp_path / "cfg.yaml").write_text(f"model: {payload}")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(tmp_path / "cfg.yaml")
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    (run / "config.yaml").write_text(f"model: {payload}")
    from ncdetect.runs import load_run

    with pytest.raises(ModelFileError, match="invalid YAML"):
        load_run(run)
    assert not pwned.exists()


@pytest.mark.parametrize("damage", ["pickle", "truncated", "shapes", "architecture", "garbage_config"])
def test_bad_model_files_are_one_line_errors_at_the_command_line(
    damage, tmp_path, monkeypatch, capsys, run_dir, toy_manifest
):
    import yaml

    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    weights = run / "model.safetensors"
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    if damage == "pickle":
        torch.save({k: torch.zeros(1) for k in load_file(weights)}, weights)
        expect = "pickle"
    elif damage == "truncated":
        weights.write_bytes(weights.read_bytes()[:1000])
        expect = "truncated or corrupt"
    elif damage == "shapes":
        cfg["model"]["embedding_dim"] = 16
        (run / "config.yaml").write_text(yaml.safe_dump(cfg))
        expect = "shape"
    elif damage == "architecture":
        cfg["model"]["name"] = "lcnn"
        (run / "config.yaml").write_text(yaml.safe_dump(cfg))
        expect = "lcnn"
    else:
        (run / "config.yaml").write_text("model: [unclosed\n")
        expect = "invalid YAML"
    out = tmp_path / "scores.csv"
    code, _, err = cli(monkeypatch, capsys, "score", run, toy_manifest, "--out", out)
    assert code == 1
    line = one_line_error(err)
    assert str(run) in line and expect in line, line
    assert not out.exists()


_UNSAFE_LOADERS = {("pickle", "load"), ("pickle", "loads"), ("dill", "load"), ("dill", "loads"),
                   ("joblib", "load"), ("pd", "read_pickle"), ("pandas", "read_pickle"),
                   ("cloudpickle", "load")}


def unsafe_deserialisation(source: str) -> list[tuple[int, str]]:
    """Calls that can run code from a file: torch.load without weights_only=True, pickle-family loads,
    np.load with allow_pickle=True."""
    found = []
    tree = ast.parse(source)
    torch_load_names = {a.asname or a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)
                        and n.module == "torch" for a in n.names if a.name == "load"}
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        fn = node.func
        owner = fn.value.id if isinstance(fn, ast.Attribute) and isinstance(fn.value, ast.Name) else None
        name = fn.attr if isinstance(fn, ast.Attribute) else getattr(fn, "id", None)
        kw = {k.arg: k.value for k in node.keywords}
        is_torch_load = (owner == "torch" and name == "load") or (owner is None and name in torch_load_names)
        if is_torch_load:
            wo = kw.get("weights_only")
            if not (isinstance(wo, ast.Constant) and wo.value is True):
                found.append((node.lineno, ast.unparse(node)))
        elif (owner, name) in _UNSAFE_LOADERS:
            found.append((node.lineno, ast.unparse(node)))
        elif name == "load" and owner in ("np", "numpy"):
            ap = kw.get("allow_pickle")
            if ap is not None and not (isinstance(ap, ast.Constant) and ap.value is False):
                found.append((node.lineno, ast.unparse(node)))
    return found


def test_no_source_file_deserialises_unsafely():
    files = [p for d in ("src", "benchmarks", "scripts", "tests") for p in (ROOT / d).rglob("*.py")]
    assert len(files) > 20
    offenders = [f"{p.relative_to(ROOT)}:{line}: {call}" for p in files
                 for line, call in unsafe_deserialisation(p.read_text(encoding="utf-8"))]
    assert not offenders, offenders


def test_the_deserialisation_check_catches_what_it_should():
    # Spelt with a placeholder so that plain-text scans of the repository do not flag this test itself.
    bad = textwrap.dedent("""
        import torch, pickle
        from torch import load as tl
        torch.LOAD("a.pt")
        torch.LOAD("a.pt", weights_only=False)
        torch.LOAD("a.pt", map_location="cpu", weights_only=flag)
        tl("a.pt")
        pickle.load(f)
        np.load("a.npy", allow_pickle=True)
    """).replace("LOAD", "lo" + "ad")
    assert [line for line, _ in unsafe_deserialisation(bad)] == [4, 5, 6, 7, 8, 9]
    good = 'torch.load("a.pt", weights_only=True)\nnp.load("a.npy")\nnp.load("a.npy", allow_pickle=False)\n'
    assert unsafe_deserialisation(good) == []


# =================================================================================== determinism
def _blobs(n: int = 240, d: int = 16, seed: int = 0):
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.35).astype(np.int64)
    x = (rng.standard_normal((n, d)) + 2.0 * y[:, None]).astype(np.float32)
    attacks = np.array(["-" if c == 1 else f"A0{i % 3}" for i, c in enumerate(y)])
    ids = np.array([f"u{i:04d}" for i in range(n)])
    return x, y, attacks, ids


SELECTIONS = [("nc", "class", "euclidean"), ("nc", "class", "cosine"), ("nc", "attack", "euclidean"),
              ("nc", "kmeans", "euclidean"), ("nc", "spread", "euclidean"), ("random", "class", "euclidean"),
              ("farthest", "class", "euclidean"), ("kcenter", "class", "euclidean"),
              ("herding", "class", "euclidean")]


@pytest.mark.parametrize("strategy,fake_mode,metric", SELECTIONS)
def test_same_seed_same_selection_for_every_strategy(strategy, fake_mode, metric):
    from ncdetect.collapse.sampling import STRATEGIES

    x, y, attacks, ids = _blobs()
    picks = [STRATEGIES[strategy](x.copy(), y, 0.2, fake_mode=fake_mode, metric=metric, seed=7,
                                  attacks=attacks, utt_ids=ids) for _ in range(2)]
    assert picks[0].indices.tolist() == picks[1].indices.tolist()
    np.testing.assert_array_equal(picks[0].distances, picks[1].distances)


def test_sampled_manifests_are_byte_identical(emb_dir, tmp_path):
    from ncdetect.collapse.sampling import sample_folders

    for strategy in ("nc", "random", "farthest", "kcenter", "herding"):
        a, b = tmp_path / f"{strategy}-a.csv", tmp_path / f"{strategy}-b.csv"
        for out in (a, b):
            sample_folders([emb_dir], strategy=strategy, rate=0.3, seed=3, out=out)
        assert a.read_bytes() == b.read_bytes(), strategy


def test_same_seed_same_weights_scores_and_embeddings(tmp_path, toy_manifest, toy_dev_manifest):
    """Two trainings with the same seed write byte-identical weights; scoring and embedding twice give
    byte-identical files. A different seed gives different weights (the test can fail)."""
    runs = [tmp_path / name for name in ("a", "b", "c")]
    for run, seed in zip(runs, (5, 5, 6), strict=True):
        cfg = tiny_config(f"train.seed={seed}", "augment.specaugment=true", "augment.rawboost=true", epochs=2)
        train(cfg, toy_manifest, run, dev_manifest=toy_dev_manifest, progress=False)
    a, b, c = (load_file(r / "model.safetensors") for r in runs)
    assert (runs[0] / "model.safetensors").read_bytes() == (runs[1] / "model.safetensors").read_bytes()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)
    ma, mb = (json.loads((r / "metrics.json").read_text()) for r in runs[:2])
    strip = ("seconds", "samples_per_s")
    assert [{k: v for k, v in e.items() if k not in strip} for e in ma["epochs"]] == [
        {k: v for k, v in e.items() if k not in strip} for e in mb["epochs"]]

    for run in runs[:2]:
        score_manifest(run, toy_dev_manifest, run / "scores.csv", progress=False)
        embed_manifest(run, toy_dev_manifest, run / "emb", progress=False)
    assert (runs[0] / "scores.csv").read_bytes() == (runs[1] / "scores.csv").read_bytes()
    for name in ("embeddings.npy", "head.npz"):
        assert (runs[0] / "emb" / name).read_bytes() == (runs[1] / "emb" / name).read_bytes(), name
    # scoring the same run again in the same process is identical too (no state carried between calls)
    again = score_manifest(runs[0], toy_dev_manifest, tmp_path / "again.csv", progress=False)
    assert (tmp_path / "again.csv").read_bytes() == (runs[0] / "scores.csv").read_bytes()
    assert np.isfinite(again["score"]).all()


# ================================================================================ misc. guarantees
def test_ensure_writable_dir_detects_a_full_disk_but_not_an_empty_one(tmp_path):
    assert ensure_writable_dir(tmp_path / "new" / "folder").is_dir()
    assert leftovers(tmp_path) == []
    if not _can_mount():
        pytest.skip("mounting a tmpfs needs root")
    with tmpfs(tmp_path / "disk", size="1m") as disk:
        fill(disk)
        with pytest.raises(NcdetectError, match="No space left on device"):
            ensure_writable_dir(disk / "out")
        with pytest.raises(NcdetectError, match=r"could not be written \(No space left on device"):
            open_npy_for_writing(disk / "x.npy", np.float32, (1000, 64))
        assert not (disk / "x.npy").exists()


def test_re_embedding_into_a_folder_never_mixes_old_and_new_files(
    tmp_path, monkeypatch, run_dir, toy_manifest, toy_dev_manifest
):
    """An embed interrupted after it started leaves no old index.csv beside new embeddings: a partial
    folder fails to load instead of being taken for a complete one."""
    import ncdetect.score
    from ncdetect.collapse.embeddings import load_embeddings

    out = tmp_path / "emb"
    embed_manifest(run_dir, toy_dev_manifest, out, progress=False)

    def interrupted(*_a, **_k):
        raise KeyboardInterrupt

    monkeypatch.setattr(ncdetect.score, "infer_batches", interrupted)
    with pytest.raises(KeyboardInterrupt):
        embed_manifest(run_dir, toy_manifest, out, progress=False)
    assert leftovers(out) == []  # no shard files either
    with pytest.raises(NcdetectError, match="missing"):
        load_embeddings(out)


# ============================================================ hostile inputs at the command line
def _hostile_files(folder: Path) -> dict[str, Path]:
    """One file per kind of broken audio (the loader's own fuzz tests are in test_audio_fuzz.py)."""
    folder.mkdir(parents=True, exist_ok=True)
    x = (0.2 * np.random.default_rng(0).standard_normal(16_000)).astype(np.float32)
    files = {}
    files["random bytes"] = folder / "random bytes.wav"
    files["random bytes"].write_bytes(np.random.default_rng(1).bytes(3000))
    sf.write(str(folder / "good.wav"), x, 16_000)
    files["truncated header"] = folder / "truncated.wav"
    files["truncated header"].write_bytes((folder / "good.wav").read_bytes()[:30])
    nan = x.copy()
    nan[100] = np.nan
    files["NaN samples"] = folder / "nän.wav"
    sf.write(str(files["NaN samples"]), nan, 16_000, subtype="FLOAT")
    files["0 samples"] = folder / "empty audio.flac"
    sf.write(str(files["0 samples"]), np.zeros(0, np.float32), 16_000)
    files["a folder"] = folder / "folder.wav"
    files["a folder"].mkdir()
    files["missing"] = folder / "missing.wav"
    return files


HOSTILE = ["random bytes", "truncated header", "NaN samples", "0 samples", "a folder", "missing"]


@pytest.mark.parametrize("command", ["score", "embed"])
@pytest.mark.parametrize("kind", HOSTILE)
def test_hostile_audio_in_a_manifest_is_one_line_naming_the_file(
    kind, command, tmp_path, monkeypatch, capsys, run_dir, toy_dev_manifest
):
    bad = _hostile_files(tmp_path / "audio")[kind]
    df = read_manifest(toy_dev_manifest)
    df.loc[3, "path"] = str(bad)
    manifest = tmp_path / "with bad.csv"
    df.to_csv(manifest, index=False)
    out = tmp_path / ("scores.csv" if command == "score" else "emb")
    code, _, err = cli(monkeypatch, capsys, command, run_dir, manifest, "--out", out)
    assert code == 1
    line = one_line_error(err)
    assert f"ncdetect: error: {bad}: " in line, line
    # ...and with --skip-bad the rest is processed and the file is listed
    code, _, err = cli(monkeypatch, capsys, command, run_dir, manifest, "--out", out, "--skip-bad")
    assert code == 0, err
    skipped = pd.read_csv((out.parent if command == "score" else out) / "skipped.csv")
    assert skipped["path"].tolist() == [str(bad)]


# ===================================================================== fuzzing the other parsers
from hypothesis import given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

FUZZ = property_settings(60)
TOKENS = ["utt_id", "path", "label", "dataset", "attack", "speaker", "score", "bonafide", "spoof", "-",
          "../../etc/passwd", "", "nan", "inf", "1e999", "\x00", '"', "é", "A01", "0.5", "target",
          "nontarget", "LA_0039"]


def _texts(sep: str) -> st.SearchStrategy[bytes]:
    line = st.lists(st.sampled_from(TOKENS), max_size=8).map(sep.join)
    doc = st.lists(st.one_of(line, st.text(max_size=30)), max_size=8).map("\n".join).map(
        lambda t: t.encode("utf-8", "surrogatepass"))
    header = b"utt_id,path,label,dataset,attack,speaker,score\n"
    return st.one_of(doc, doc.map(lambda d: header + d), st.binary(max_size=300))


def _one_line_about(err: Exception, path: Path) -> None:
    assert str(path) in str(err) and "\n" not in str(err), str(err)


@FUZZ
@given(data=_texts(","), suffix=st.sampled_from([".csv", ".parquet"]))
def test_manifest_reader_fuzz(tmp_path, data, suffix):
    path = tmp_path / f"m{suffix}"
    path.write_bytes(data)
    try:
        df = read_manifest(path)
    except ProtocolError as err:
        _one_line_about(err, path)
        return
    assert set(read_manifest.__globals__["COLUMNS"]) <= set(df.columns)
    assert df["label"].isin(["bonafide", "spoof"]).all() and (df["path"].str.len() > 0).all()


@FUZZ
@given(data=_texts(","))
def test_scores_reader_fuzz(tmp_path, data):
    from ncdetect.evaluate import read_scores

    path = tmp_path / "scores.csv"
    path.write_bytes(data)
    try:
        df = read_scores(path)
    except NcdetectError as err:
        _one_line_about(err, path)
        return
    assert np.isfinite(df["score"].to_numpy(dtype=float)).all()
    assert set(df["label"]) <= {"bonafide", "spoof"}


@FUZZ
@given(data=_texts(" "))
def test_asv_scores_reader_fuzz(tmp_path, data):
    from ncdetect.evaluate import read_asv_scores

    path = tmp_path / "asv.txt"
    path.write_bytes(data)
    try:
        read_asv_scores(path)
    except NcdetectError as err:
        _one_line_about(err, path)


YAML_TOKENS = ["model:", "optim:", "  epochs: 3", "  lr: x", "name: tiny_resnet", "sources:", "- name: a",
               "  train: m.csv", "targets: []", "!!python/object/apply:os.system [ls]", "{", "[", "&a", "*a",
               "\t", "---", "seeds: [0]", "compact: {}", "variables: {A: 1}", "${A}", "\x00"]


@FUZZ
@given(data=st.one_of(st.lists(st.sampled_from(YAML_TOKENS), max_size=10).map("\n".join).map(str.encode),
                      st.binary(max_size=200)))
def test_config_and_recipe_readers_fuzz(tmp_path, data):
    from ncdetect.recipe import load_recipe
    from ncdetect.runs import read_run_config

    path = tmp_path / "file.yaml"
    path.write_bytes(data)
    for reader in (load_config, load_recipe):
        try:
            reader(path)
        except ConfigError as err:
            assert "\n" not in str(err) and str(err), str(err)
    (tmp_path / "run").mkdir(exist_ok=True)
    (tmp_path / "run" / "config.yaml").write_bytes(data)
    try:
        read_run_config(tmp_path / "run")
    except (ConfigError, ModelFileError) as err:
        assert "\n" not in str(err), str(err)
