"""Builders shared by the reliability tests and benchmarks/soak_reliability.py.

- hostile_files(marker): crafted .pt/.bin pickles that would run code (each tries to create
  `marker`) if anything unpickled them without a guard.
- corrupt_files(folder, width): damaged, lying, oversized and odd entries for the embeddings folder.
- timed(): how long a call took, for the "within 5 s" checks.
- write_dataset(), cli(): tiny training images, and `python -m ti` in a subprocess.

Not a test module (no test_ prefix): tests import it after conftest.py puts this folder on sys.path.
"""

from __future__ import annotations

import base64
import io
import json
import os
import pathlib
import pickle
import shlex
import struct
import subprocess
import sys
import time
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, PngImagePlugin

REPO_ROOT = Path(__file__).resolve().parents[2]
# What a file may take to be refused or skipped (issue #6).
SECONDS_PER_FILE = 5.0


# --- hostile pickles --------------------------------------------------------------------------


class ShellCommand:
    """Pickles as os.system(command)."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


class PopenCommand:
    def __init__(self, argv: list[str]):
        self.argv = argv

    def __reduce__(self):
        return (subprocess.Popen, (self.argv,))


class CallWith:
    """Pickles as function(*args) for any importable function."""

    def __init__(self, function, *args):
        self.function, self.args = function, args

    def __reduce__(self):
        return (self.function, self.args)


class WritesMarkerOnSetstate:
    """An arbitrary class whose unpickling (BUILD -> __setstate__) has a side effect."""

    def __init__(self, marker: str):
        self.marker = marker

    def __setstate__(self, state):
        Path(state["marker"]).write_text("ran")


def _touch(marker: Path) -> str:
    return f"touch {shlex.quote(str(marker))}"


def _torch_save(obj, legacy: bool = False) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer, _use_new_zipfile_serialization=not legacy)
    return buffer.getvalue()


def _replace_data_pkl(pickle_bytes: bytes) -> bytes:
    """A genuine torch zip (an A1111 embedding) whose data.pkl is swapped for `pickle_bytes`."""
    from ti.formats.a1111_pt import torch_bytes_a1111_accepts

    clean = torch_bytes_a1111_accepts({"string_to_param": {"*": torch.zeros(1, 32)}, "name": "x", "step": 0})
    source = zipfile.ZipFile(io.BytesIO(clean))
    output = io.BytesIO()
    with zipfile.ZipFile(output, "w") as archive:
        for member in source.infolist():
            data = pickle_bytes if member.filename.endswith("/data.pkl") else source.read(member)
            archive.writestr(member.filename, data)
    return output.getvalue()


def _getattr_chain(marker: Path) -> bytes:
    """Protocol 0: getattr(__import__('os'), 'system')('touch marker'), no class needed."""
    return f"cbuiltins\ngetattr\n(cbuiltins\n__import__\n(Vos\ntRVsystem\ntR(V{_touch(marker)}\ntR.".encode()


def _inst_opcode(marker: Path) -> bytes:
    """Protocol 0 INST: instantiate os.system with the command."""
    return f"(V{_touch(marker)}\nios\nsystem\n.".encode()


def _extra_zip_member(marker: Path) -> bytes:
    from ti.formats.a1111_pt import torch_bytes_a1111_accepts

    clean = torch_bytes_a1111_accepts({"emb_params": torch.zeros(1, 32)})
    source = zipfile.ZipFile(io.BytesIO(clean))
    output = io.BytesIO()
    with zipfile.ZipFile(output, "w") as archive:
        for member in source.infolist():
            archive.writestr(member.filename, source.read(member))
        archive.writestr("archive/__init__.py", f"open({str(marker)!r}, 'w').close()")
        archive.writestr("archive/payload.pkl", pickle.dumps(ShellCommand(_touch(marker)), protocol=2))
    return output.getvalue()


def _evil_storage_pid(marker: Path) -> bytes:
    """A torch zip whose data.pkl names os.system inside a persistent id (where storages go)."""
    class EvilPid(pickle.Pickler):
        def persistent_id(self, obj):
            return ("storage", ShellCommand(_touch(marker)), "0", "cpu", 1) if isinstance(obj, torch.Tensor) else None

    buffer = io.BytesIO()
    EvilPid(buffer, protocol=2).dump({"string_to_param": {"*": torch.zeros(1, 32)}})
    return _replace_data_pkl(buffer.getvalue())


@dataclass(frozen=True)
class HostileFile:
    file_name: str  # what it is called in embeddings/ or models/hypernetworks/
    data: bytes
    what: str  # what it tries


def hostile_files(marker: Path) -> list[HostileFile]:
    """Twelve crafted pickles, each of which tries to create `marker` when unpickled unguarded."""
    touch = _touch(marker)
    hypernetwork_shape = {768: (ShellCommand(touch), {}), "name": "x", "layer_structure": [1, 2, 1]}
    return [
        HostileFile("os-system.pt", pickle.dumps(ShellCommand(touch), protocol=2), "os.system in a bare pickle"),
        HostileFile("os-system-zip.pt", _torch_save({"string_to_param": {"*": ShellCommand(touch)}, "name": "x"}),
                    "os.system nested in string_to_param, in a torch zip"),
        HostileFile("popen.bin", _torch_save({"<tok>": PopenCommand(["touch", str(marker)])}),
                    "subprocess.Popen as a diffusers .bin"),
        HostileFile("eval.pt", _torch_save({"e": CallWith(eval, f"open({str(marker)!r}, 'w')")}), "builtins.eval"),
        HostileFile("exec.pt", _torch_save(CallWith(exec, f"open({str(marker)!r}, 'w').close()")), "builtins.exec"),
        HostileFile("getattr-chain.pt", _getattr_chain(marker), "builtins.getattr(__import__('os'), 'system')"),
        HostileFile("inst-opcode.bin", _inst_opcode(marker), "protocol-0 INST of os.system"),
        HostileFile("setstate-class.pt", _torch_save({"o": WritesMarkerOnSetstate(str(marker))}),
                    "__setstate__ of an arbitrary class"),
        HostileFile("path-write-text.pt", _torch_save({"w": CallWith(pathlib.Path.write_text, Path(marker), "ran")}),
                    "__reduce__ to pathlib.Path.write_text"),
        HostileFile("legacy-format.pt", _torch_save({"string_to_param": {"*": torch.zeros(1, 32)}, "x": ShellCommand(touch)},
                                                    legacy=True), "legacy (non-zip) torch file"),
        HostileFile("extra-zip-member.pt", _extra_zip_member(marker), "zip with extra members (.py, a second pickle)"),
        HostileFile("storage-pid.pt", _evil_storage_pid(marker), "os.system inside a storage persistent id"),
        HostileFile("hypernetwork-shaped.pt", _torch_save(hypernetwork_shape), "os.system inside a hypernetwork-shaped dict"),
    ]


def run_unguarded(data: bytes) -> None:
    """What a plain torch.load (then pickle.loads) does: proves a payload is live. Only ever
    called on payloads built around a throwaway marker."""
    for load in (lambda: torch.load(io.BytesIO(data), weights_only=False), lambda: pickle.loads(data)):
        try:
            load()
            return
        except Exception:  # noqa: BLE001 - the payload ran (or not) before whatever failed next
            continue


# --- corrupt and odd files --------------------------------------------------------------------


def good_pt(width: int, vectors: int = 1, name: str = "good") -> bytes:
    from ti.embedding import Embedding
    from ti.formats import embedding_file_bytes

    return embedding_file_bytes(Embedding(name, torch.randn(vectors, width, generator=torch.Generator().manual_seed(1))), ".pt")


def _flip(data: bytes, offset: int) -> bytes:
    return data[:offset] + bytes([data[offset] ^ 0x5A]) + data[offset + 1 :]


def _safetensors(header: dict, payload: bytes, header_length: int | None = None) -> bytes:
    header_bytes = json.dumps(header).encode()
    return struct.pack("<Q", len(header_bytes) if header_length is None else header_length) + header_bytes + payload


def _png_with_text(text: str, size=(64, 64)) -> bytes:
    info = PngImagePlugin.PngInfo()
    info.add_text("sd-ti-embedding", text)
    output = io.BytesIO()
    Image.new("RGB", size, (90, 90, 90)).save(output, "PNG", pnginfo=info)
    return output.getvalue()


def zlib_bomb_png(decompressed_mib: int = 512) -> bytes:
    """A PNG whose pixel data layer inflates to `decompressed_mib` MiB of JSON-ish bytes."""
    from ti.formats.image_data_layer import insert_data_layer

    compressor = zlib.compressobj(9)
    chunk = b"0," * (1 << 19)  # 1 MiB
    compressed = [compressor.compress(b'{"string_to_param": {"*": {"TORCHTENSOR": [[')]
    compressed += [compressor.compress(chunk) for _ in range(decompressed_mib)]
    compressed.append(compressor.flush())
    picture = Image.new("RGB", (256, 256), (90, 90, 90))
    image = insert_data_layer(picture, b"".join(compressed), np.zeros(1, dtype=np.uint8))
    output = io.BytesIO()
    image.save(output, "PNG")
    return output.getvalue()


def oversized_json_png(width: int, megabytes: int = 40) -> bytes:
    """A PNG whose sd-ti-embedding text chunk holds megabytes of (valid) JSON numbers."""
    count = megabytes * (1 << 20) // 2
    rows = "[" + ",".join(["0"] * count) + "]"
    text = '{"string_to_param": {"*": {"TORCHTENSOR": [' + rows + "]}}}"
    return _png_with_text(base64.b64encode(text.encode()).decode())


def nan_pt(width: int) -> bytes:
    from ti.embedding import Embedding
    from ti.formats import embedding_file_bytes

    return embedding_file_bytes(Embedding("nan", torch.full((2, width), float("nan"))), ".pt")


def inf_safetensors(width: int) -> bytes:
    from ti.embedding import Embedding
    from ti.formats import embedding_file_bytes

    return embedding_file_bytes(Embedding("inf", torch.full((1, width), float("inf"))), ".safetensors")


@dataclass(frozen=True)
class CorruptEntry:
    relative: str | bytes  # file name inside the folder (bytes: a non-UTF-8 name)
    data: bytes | None  # None: a folder named like a file
    what: str


def corrupt_entries(width: int) -> list[CorruptEntry]:
    """Damaged, lying and odd entries for an embeddings folder whose model is `width` wide."""
    good = good_pt(width, vectors=2)
    archive = zipfile.ZipFile(io.BytesIO(good))
    pickle_member = next(m for m in archive.infolist() if m.filename.endswith("data.pkl"))
    pickle_offset = pickle_member.header_offset + 30 + len(pickle_member.filename) + len(pickle_member.extra) + 20
    central_directory = good.rfind(b"PK\x01\x02") + 20  # a compressed-size field
    return [
        CorruptEntry("truncated-half.pt", good[: len(good) // 2], "a .pt cut in half"),
        CorruptEntry("truncated-start.pt", good[:40], "a .pt cut after 40 bytes"),
        CorruptEntry("bit-flipped.pt", _flip(good, len(good) - 300), "a .pt with a flipped byte in its tensor data"),
        CorruptEntry("bit-flipped-pickle.pt", _flip(good, pickle_offset), "a .pt with a flipped byte in its data.pkl"),
        CorruptEntry("bit-flipped-directory.pt", _flip(good, central_directory), "a .pt with a flipped byte in its zip directory"),
        CorruptEntry("lying-length.safetensors", _safetensors({}, b"", header_length=2**62), "safetensors header length 2^62"),
        CorruptEntry("lying-offsets.safetensors", _safetensors(
            {"emb_params": {"dtype": "F32", "shape": [1, width], "data_offsets": [0, 10**9]}}, b"\0" * 16),
            "safetensors offsets past the end"),
        CorruptEntry("lying-shape.safetensors", _safetensors(
            {"emb_params": {"dtype": "F32", "shape": [10**6, 10**6], "data_offsets": [0, 4 * width]}}, b"\0" * 4 * width),
            "safetensors shape larger than its data"),
        CorruptEntry("not-json.safetensors", struct.pack("<Q", 6) + b"\xff{{{{{", "safetensors header that is not JSON"),
        CorruptEntry("corrupt-chunk.png", _png_with_text("!!!not base64 at all!!!"), "PNG with a corrupt sd-ti-embedding chunk"),
        CorruptEntry("chunk-not-embedding.png", _png_with_text(base64.b64encode(b'{"a": [1, 2]}').decode()),
                     "PNG whose chunk holds JSON without an embedding"),
        CorruptEntry("oversized-chunk.png", oversized_json_png(width), "PNG with a 40 MB sd-ti-embedding chunk"),
        CorruptEntry("zlib-bomb.png", zlib_bomb_png(), "PNG whose pixel layer inflates to 512 MiB"),
        CorruptEntry("truncated.png", _png_with_text("x")[:60], "a PNG cut short"),
        CorruptEntry("nan.pt", nan_pt(width), "vectors full of NaN"),
        CorruptEntry("inf.safetensors", inf_safetensors(width), "vectors full of infinity"),
        CorruptEntry("wrong-width.pt", good_pt(width + 8), f"{width + 8}-wide vectors on a {width}-wide model"),
        CorruptEntry("empty.pt", b"", "zero-length .pt"),
        CorruptEntry("empty.safetensors", b"", "zero-length .safetensors"),
        CorruptEntry("empty.png", b"", "zero-length .png"),
        CorruptEntry("folder.pt", None, "a folder named x.pt"),
        CorruptEntry("folder.safetensors", None, "a folder named x.safetensors"),
        CorruptEntry(b"bad-\xff\xfe-name.pt", good, "a valid embedding under a non-UTF-8 file name"),
        CorruptEntry(b"junk-\xe9.pt", b"\x00\x01garbage", "garbage under a non-UTF-8 file name"),
    ]


def write_entry(folder: Path, entry: CorruptEntry) -> Path:
    """Create `entry` in `folder`; returns its path (bytes names go through os.fsencode/fsdecode)."""
    name = os.fsdecode(entry.relative) if isinstance(entry.relative, bytes) else entry.relative
    path = folder / name
    if entry.data is None:
        path.mkdir()
        (path / "readme.txt").write_text("a folder, not an embedding")
    else:
        path.write_bytes(entry.data)
    return path


def timed(function, *args, **kwargs):
    """(result or the exception raised, seconds)."""
    started = time.perf_counter()
    try:
        outcome = function(*args, **kwargs)
    except Exception as exc:  # noqa: BLE001 - the caller inspects it
        outcome = exc
    return outcome, time.perf_counter() - started


# --- training helpers ---------------------------------------------------------------------------


def write_dataset(folder: Path, count: int = 2, size: int = 64, seed: int = 0) -> Path:
    """Tiny noise pictures named like preprocess output, one with a non-UTF-8 caption file."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for index in range(count):
        pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{index:05d}-0-a red car.png")
    (folder / "00000-0-a red car.txt").write_bytes(b"a red car, caf\xe9 \xff\xfe latin-1 caption")
    return folder


def cli_env() -> dict:
    return dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", GRADIO_ANALYTICS_ENABLED="False",
                PYTHONUNBUFFERED="1", PYTHONPATH=str(REPO_ROOT))


def cli(*argv: str, cwd: Path | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    """`python -m ti ARGV` in a subprocess (text output, never raises on exit status)."""
    return subprocess.run([sys.executable, "-m", "ti", *argv], cwd=cwd or REPO_ROOT, env=cli_env(),
                          capture_output=True, text=True, timeout=timeout, errors="replace")


def train_command(name: str, embeddings_dir: Path, data_dir: Path, log_dir: Path, steps: int,
                  save_every: int) -> list[str]:
    return [sys.executable, "-m", "ti", "train-embedding", name, "--model", "demo", "--embeddings-dir",
            str(embeddings_dir), "--data", str(data_dir), "--log-dir", str(log_dir), "--width", "64", "--height", "64",
            "--steps", str(steps), "--save-every", str(save_every), "--preview-every", "0", "--seed", "3"]


# --- kill -9 during training ----------------------------------------------------------------------


@dataclass
class KillTrial:
    """One training run killed with SIGKILL, and what it left behind."""

    kind: str  # "random" (any moment of training), "log-save" / "final-save" (right after a save began)
    start_step: int  # the step embeddings/<name>.pt held when the run started
    resumed_from: int  # the step the run said it started from ("training <name> from step N")
    reached_step: int  # the last step the run completed (its last complete loss CSV row)
    resumable_step: int  # the step embeddings/<name>.pt holds after the kill: where a new run resumes
    newest_copy_step: int  # the newest loadable log copy this run wrote (<log>/…/embeddings/<name>-<step>.pt)
    landed_in_save: bool  # a temp file was left: the kill hit a save halfway
    killed_after_save_began: bool  # (save kinds) the kill followed the sight of a save's temp file
    seconds_to_kill: float  # from the start of training to the kill
    corrupt: list[str]  # files that did not load (must stay empty)
    leftover_temp_files: list[str]  # hidden .tmp files of interrupted saves (harmless; never read)

    @property
    def steps_lost(self) -> int:
        """Steps done but not in the file the next run resumes from."""
        return max(self.reached_step - self.resumable_step, 0)

    @property
    def steps_lost_from_log_copy(self) -> int:
        """Steps done but not in the newest log-folder copy (what a user could copy back by hand)."""
        return max(self.reached_step - max(self.newest_copy_step, self.resumable_step), 0)


def embedding_step(path: Path) -> int:
    from ti.formats import load_embedding_file

    return load_embedding_file(path).step or 0


def check_saved_files(embeddings_dir: Path, log_dir: Path) -> tuple[list[str], list[str]]:
    """(files that do not load, hidden temp files) in the embeddings folder and the log folder.

    Every embedding copy and its .optim, every preview and settings file must load; the loss CSV
    may end in a cut line (it is appended a row per step, and the reader skips a partial row).
    """
    from ti.formats import load_embedding_file, load_torch_file

    corrupt, temps = [], []
    for folder in (embeddings_dir, log_dir):
        for path in sorted(Path(folder).rglob("*")):
            if not path.is_file():
                continue
            name = path.name
            try:
                if name.endswith(".tmp") and name.startswith("."):
                    temps.append(str(path))
                elif name.endswith(".optim"):
                    load_torch_file(path, kind="an optimizer state file")
                elif name.endswith((".pt", ".safetensors")) or (name.endswith(".png") and "image_embeddings" in path.parts):
                    load_embedding_file(path)
                elif name.endswith(".json"):
                    json.loads(path.read_text(encoding="utf-8"))
                elif name.endswith(".png"):
                    with Image.open(path) as image:
                        image.load()
                elif name.endswith(".csv"):
                    complete_csv_steps(path)
            except Exception as exc:  # noqa: BLE001 - collected and reported
                corrupt.append(f"{path}: {exc}")
    return corrupt, temps


def temp_files_under(folders: list[Path]) -> list[str]:
    """Hidden `.<name>.<random>.tmp` files (interrupted atomic saves) anywhere under `folders`."""
    return sorted(str(path) for folder in folders for path in Path(folder).rglob(".*.tmp"))


def complete_csv_steps(path: Path) -> list[int]:
    """The step of every complete row of a loss CSV (a cut last row is left out)."""
    import csv

    steps = []
    with open(path, encoding="utf-8", newline="") as handle:
        rows = list(csv.reader(handle))
    for row in rows[1:]:
        if len(row) == 5 and all(cell != "" for cell in row):
            try:
                float(row[3])
                steps.append(int(row[0]))
            except ValueError:
                continue
    return steps


def _loss_csvs(log_dir: Path) -> list[Path]:
    return sorted(Path(log_dir).glob("*/*/textual_inversion_loss.csv"))


def _csv_row_counts(log_dir: Path) -> dict[Path, int]:
    return {path: len(complete_csv_steps(path)) for path in _loss_csvs(log_dir)}


def _temp_files(folders: list[Path]) -> list[Path]:
    found = []
    for folder in folders:
        try:
            found += [Path(entry.path) for entry in os.scandir(folder) if entry.name.endswith(".tmp")]
        except OSError:
            continue
    return found


class _StderrReader:
    """Collects a child's stderr in a thread, so the pipe never fills and we can wait for a line."""

    def __init__(self, stream):
        import threading

        self.text = ""
        self._stream = stream
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self):
        for chunk in iter(lambda: self._stream.read1(4096) if hasattr(self._stream, "read1") else self._stream.read(4096), b""):
            self.text += chunk.decode("utf-8", "replace")

    def join(self):
        self._thread.join(timeout=5)


def run_kill_trial(workdir: Path, name: str, kind: str, rng, steps: int, save_every: int,
                   max_random_seconds: float = 1.5, timeout: float = 180) -> KillTrial:
    """Start `python -m ti train-embedding`, SIGKILL it, and inspect what it left.

    kind: "random" kills at a uniformly random moment of training (after the model loaded and
    the first step began); "log-save" kills as soon as a temp file of a log-folder save appears
    (after a random number of saves); "final-save" as soon as a temp file appears in the
    embeddings folder (a save of embeddings/<name>.pt or its .optim: the file runs resume from).
    steps: the run's --steps. Give "random" and "log-save" trials more than they can reach, so the
    kill always lands mid-run; a "final-save" trial a few more than the file holds.
    """
    import signal

    embeddings_dir, data_dir, log_dir = workdir / "embeddings", workdir / "data", workdir / "logs"
    start_step = embedding_step(embeddings_dir / f"{name}.pt")
    rows_before = _csv_row_counts(log_dir)
    temps_before = set(temp_files_under([embeddings_dir, log_dir]))  # left by earlier trials
    trial_started = time.time()
    process = subprocess.Popen(train_command(name, embeddings_dir, data_dir, log_dir, steps, save_every),
                               cwd=REPO_ROOT, env=cli_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    reader = _StderrReader(process.stderr)
    deadline = time.monotonic() + timeout
    try:
        started_line = f"training {name} from step"
        while started_line not in reader.text:
            if process.poll() is not None or time.monotonic() > deadline:
                reader.join()
                if started_line in reader.text:
                    break
                raise RuntimeError(f"training did not start (exit {process.poll()}):\n{reader.text[-2000:]}")
            time.sleep(0.01)
        training_started = time.monotonic()
        saw_save = False
        if kind == "random":
            time.sleep(rng.uniform(0.0, max_random_seconds))
        else:
            skip = rng.randrange(0, 3) if kind == "log-save" else 0
            seen = {Path(path) for path in temps_before}
            poll_seconds = 0.0005  # a save takes milliseconds; do not starve the run of CPU
            while True:
                folders = [embeddings_dir] if kind == "final-save" else [
                    path / "embeddings" for path in log_dir.glob(f"*/{name}")]
                temps = [path for path in _temp_files(folders) if path not in seen]
                if temps and (kind == "final-save" or ".optim" not in temps[0].name):
                    if skip == 0:
                        saw_save = True
                        break
                    skip -= 1
                    seen.update(temps)
                if process.poll() is not None or time.monotonic() > deadline:
                    break  # ended before the save we waited for: inspect it all the same
                time.sleep(poll_seconds)
        seconds_to_kill = time.monotonic() - training_started
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        reader.join()
    corrupt, temps = check_saved_files(embeddings_dir, log_dir)
    new_rows: list[int] = []
    for path in _loss_csvs(log_dir):
        new_rows += complete_csv_steps(path)[rows_before.get(path, 0):]
    copies = []
    for path in log_dir.glob(f"*/{name}/embeddings/{name}-*.pt"):
        try:
            if path.stat().st_mtime >= trial_started:
                copies.append(embedding_step(path))
        except Exception:  # noqa: BLE001 - already listed in `corrupt`
            continue
    import re

    started = re.search(rf"training {re.escape(name)} from step (\d+)", reader.text)
    try:
        resumable = embedding_step(embeddings_dir / f"{name}.pt")
    except Exception:  # noqa: BLE001 - already listed in `corrupt`
        resumable = -1
    return KillTrial(kind=kind, start_step=start_step, resumed_from=int(started.group(1)) if started else -1,
                     reached_step=max(new_rows, default=start_step),
                     resumable_step=resumable, newest_copy_step=max(copies, default=0),
                     landed_in_save=bool(set(temps) - temps_before), killed_after_save_began=saw_save,
                     seconds_to_kill=seconds_to_kill, corrupt=corrupt,
                     leftover_temp_files=temps)


def prepare_training_folder(workdir: Path, name: str, seed: int = 0) -> None:
    """workdir/{embeddings/<name>.pt (32 wide, for the demo model), data/ (2 images), logs/}."""
    from ti.embedding import Embedding
    from ti.formats import save_embedding_file

    (workdir / "logs").mkdir(parents=True, exist_ok=True)
    write_dataset(workdir / "data", seed=seed)
    vectors = torch.randn(1, 32, generator=torch.Generator().manual_seed(seed)) * 0.02
    save_embedding_file(Embedding(name, vectors, step=0), workdir / "embeddings" / f"{name}.pt")


def resume_to_the_end(workdir: Path, name: str, steps: int, save_every: int, timeout: float = 300) -> tuple[int, str]:
    """Run the same training command to completion; (the step it started from, its output)."""
    import re

    command = train_command(name, workdir / "embeddings", workdir / "data", workdir / "logs", steps, save_every)
    result = subprocess.run(command, cwd=REPO_ROOT, env=cli_env(), capture_output=True, text=True, timeout=timeout,
                            errors="replace")
    if result.returncode != 0:
        raise RuntimeError(f"resume failed (exit {result.returncode}):\n{result.stderr[-2000:]}")
    started = re.search(rf"training {re.escape(name)} from step (\d+)", result.stderr)
    return (int(started.group(1)) if started else -1), result.stdout + result.stderr
