"""Reading files people download, and pickled torch files in particular, without running them.

A `.pt`/`.bin` file is a pickle, and unpickling can call any function the file names. So a
pickled file goes through three independent gates, the last being the real load:

1. Structure: the bytes are read once (size-limited) and everything below works on those same
   bytes, so the file cannot change between the check and the load. Zip members must be the
   ones torch writes (A1111's member list plus torch's own `.format_version` and
   `.storage_alignment`); legacy (non-zip) files must start with torch's magic number.
2. A dry run: every pickle in the file is unpickled with `RestrictedUnpickler`, whose
   `find_class` refuses any global outside `ALLOWED_GLOBALS` (A1111's allow-list) and returns
   an inert placeholder for allowed ones, so nothing at all is called. This names the offending
   global in the error ("it names os.system").
3. The real load is `torch.load(weights_only=True)`, torch's own restricted unpickler, with
   only ParameterDict and numpy's scalar types added to its allow-list.
"""

from __future__ import annotations

import _compat_pickle
import hashlib
import io
import os
import pickle
import re
import stat
import threading
import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ti.errors import BadEmbeddingFile, UnsafeFile

MIB = 1 << 20
# Hypernetwork files reach a few hundred MiB; nothing legitimate we read is near 1 GiB.
MAX_TORCH_FILE_BYTES = 1024 * MIB
# A pickle stream inside a weights file is a few KiB; the tensors live in separate members.
MAX_PICKLE_BYTES = 64 * MIB

LFS_POINTER_PREFIX = b"version https://git-lfs"
ZIP_LOCAL_HEADER = b"PK\x03\x04"
TORCH_LEGACY_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C  # torch.serialization.MAGIC_NUMBER
# A legacy file is: magic number, protocol version, sys info, the object, the storage keys
# (then raw storage bytes, which are not pickles). A1111 checks the same five.
LEGACY_PICKLE_COUNT = 5

# A1111's member list (a1111-compat.md §10) with '.' escaped, plus the two metadata members that
# torch >= 2.5 writes into every file. Those two carry a number each and are never unpickled.
TORCH_ZIP_MEMBER = re.compile(
    r"^([^/]+)/((data/\d+)|version|byteorder|\.data/serialization_id|data\.pkl|\.format_version|\.storage_alignment)$"
)

_TORCH_STORAGE_NAMES = (
    "FloatStorage", "HalfStorage", "DoubleStorage", "BFloat16Storage", "IntStorage", "LongStorage",
    "ShortStorage", "CharStorage", "ByteStorage", "BoolStorage",
)
_TORCH_DTYPE_NAMES = ("float32", "float16", "bfloat16", "float64", "int64", "int32", "int16", "int8", "uint8", "bool")

# (module, name) pairs a weights file may name: a1111-compat.md §10, minus pytorch_lightning's
# ModelCheckpoint (never found in embedding or hypernetwork files).
ALLOWED_GLOBALS: frozenset[tuple[str, str]] = frozenset(
    {
        ("collections", "OrderedDict"),
        ("torch._utils", "_rebuild_tensor_v2"),
        ("torch._utils", "_rebuild_parameter"),
        ("torch._utils", "_rebuild_device_tensor_from_numpy"),
        ("torch.nn.modules.container", "ParameterDict"),
        ("_codecs", "encode"),
        ("builtins", "set"),
        ("numpy", "dtype"),
        ("numpy", "ndarray"),
        *((module, name) for module in ("numpy.core.multiarray", "numpy._core.multiarray") for name in ("scalar", "_reconstruct")),
        *(("torch", name) for name in _TORCH_STORAGE_NAMES + _TORCH_DTYPE_NAMES),
    }
)


def _numpy_safe_globals() -> list:
    """numpy's pickled helpers for torch's allow-list, under both of their module paths.

    numpy 2 moved `numpy.core` to `numpy._core`; files written with numpy 1 still name the
    old path, so each callable is registered under both names.
    """
    multiarray = np.core.multiarray if not hasattr(np, "_core") else np._core.multiarray
    entries: list = [np.dtype, np.ndarray]
    for function in (multiarray.scalar, multiarray._reconstruct):
        for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
            entries.append((function, f"{module}.{function.__name__}"))
    dtype_classes = getattr(np, "dtypes", None)  # numpy >= 1.25
    if dtype_classes is not None:
        entries += [getattr(dtype_classes, name) for name in dir(dtype_classes) if name.endswith("DType")]
    return entries


# Extra globals handed to torch's own weights_only unpickler; all are data containers.
_TORCH_EXTRA_SAFE_GLOBALS = [torch.nn.modules.container.ParameterDict, *_numpy_safe_globals()]
# torch.serialization.safe_globals swaps a process-wide list; serialise our own uses of it.
_TORCH_LOAD_LOCK = threading.Lock()


def read_file_bytes(path: Path, max_bytes: int, kind: str = "an embedding file") -> bytes:
    """Read a whole file after the checks every reader shares.

    Args:
        path: the file.
        max_bytes: refuse files larger than this (checked with stat, before reading).
        kind: what the file should be, with its article, for messages ("an embedding file").
    Returns:
        the file's bytes.
    Raises:
        BadEmbeddingFile: missing, a folder, empty, too large, unreadable, a Git LFS pointer or
        an HTML page (a failed download).
    """
    path = Path(path)
    if path.is_dir():
        raise BadEmbeddingFile(path, f"is a folder, not {kind}")
    try:
        # Non-blocking open, then fstat on the open file: a FIFO named x.pt would otherwise block
        # the read forever, and a link to /dev/zero would feed it a GiB; only regular files pass.
        descriptor = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
        with os.fdopen(descriptor, "rb") as handle:
            status = os.fstat(handle.fileno())
            if not stat.S_ISREG(status.st_mode):
                raise BadEmbeddingFile(path, f"is not a regular file (a pipe, socket or device), not {kind}")
            if status.st_size > max_bytes:
                raise BadEmbeddingFile(path, f"is {status.st_size / MIB:.0f} MiB, over the {max_bytes // MIB} MiB limit for {kind}; is it a model checkpoint?")
            data = handle.read(max_bytes + 1)
    except FileNotFoundError:
        raise BadEmbeddingFile(path, "does not exist") from None
    except OSError as exc:
        raise BadEmbeddingFile(path, f"cannot be read ({exc.strerror or exc})") from None
    if len(data) > max_bytes:  # grew after the stat
        raise BadEmbeddingFile(path, f"is over the {max_bytes // MIB} MiB limit for {kind}")
    if not data:
        raise BadEmbeddingFile(path, "is empty (0 bytes)")
    if data.startswith(LFS_POINTER_PREFIX):
        raise BadEmbeddingFile(path, "is a Git LFS pointer, not the file itself (fetch it with `git lfs pull`)")
    head = data[:256].lstrip().lower()
    if head.startswith((b"<!doctype html", b"<html")):
        raise BadEmbeddingFile(path, f"is an HTML page, not {kind} (a failed or login-walled download?)")
    return data


def sha256_hex(data: bytes) -> str:
    """Full sha256 of a file's bytes, as A1111 hashes embeddings (first 12 hex = its TI hash)."""
    return hashlib.sha256(data).hexdigest()


class _InertPlaceholder:
    """Stands in for every allowed global during the dry run: accepts any use, runs nothing."""

    def __new__(cls, *args, **kwargs):
        return object.__new__(cls)

    def __init__(self, *args, **kwargs):
        pass

    def __call__(self, *args, **kwargs):
        return _InertPlaceholder()

    def __setstate__(self, state):
        pass

    def __setitem__(self, key, value):
        pass

    def append(self, item):
        pass

    def extend(self, items):
        pass


class RestrictedUnpickler(pickle.Unpickler):
    """Dry-run unpickler: refuses globals outside ALLOWED_GLOBALS; allowed ones become placeholders.

    `find_class` is the single point through which a pickle reaches any callable (GLOBAL,
    STACK_GLOBAL, INST, OBJ via the class, and the copyreg extension codes all go through it),
    so refusing there means nothing named by the file is ever imported or called.
    """

    def __init__(self, file, path: Path, kind: str):
        super().__init__(file)
        self._path = path
        self._kind = kind

    def find_class(self, module: str, name: str):
        # Protocol-2 pickles spell Python 2 names (__builtin__.eval, commands.Popen); use the
        # Python 3 names, as the stock find_class would, so the check and message agree.
        module, name = _compat_pickle.NAME_MAPPING.get((module, name), (_compat_pickle.IMPORT_MAPPING.get(module, module), name))
        if (module, name) not in ALLOWED_GLOBALS:
            raise UnsafeFile(
                self._path,
                f"refused: it names {module}.{name}, which is not allowed in {self._kind}; nothing from it was run",
            )
        return _InertPlaceholder

    def persistent_load(self, pid):
        return _InertPlaceholder()


def _dry_run_pickle(stream: io.BytesIO, path: Path, kind: str, damaged_reason: str) -> Any:
    """Unpickle one pickle from `stream` with RestrictedUnpickler; returns the inert result.

    damaged_reason is the message when the bytes do not parse as a pickle at all.
    """
    try:
        return RestrictedUnpickler(stream, path, kind).load()
    except UnsafeFile:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, KeyError, IndexError,
            AttributeError, OverflowError, MemoryError, RecursionError, UnicodeDecodeError) as exc:
        raise BadEmbeddingFile(path, f"{damaged_reason} ({_one_line(exc)})") from None


def _check_zip_archive(data: bytes, path: Path, kind: str) -> None:
    """Check a zip-format torch file's members, then dry-run its data.pkl."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        members = archive.infolist()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, OSError) as exc:
        raise BadEmbeddingFile(path, f"is a damaged zip archive, perhaps a truncated download ({_one_line(exc)})") from None
    names = [member.filename for member in members]
    unexpected = [name for name in names if not TORCH_ZIP_MEMBER.match(name)]
    if unexpected:
        raise UnsafeFile(path, f"refused: it holds {unexpected[0]!r}, which is not part of a torch weights file")
    roots = {name.split("/", 1)[0] for name in names}
    pickles = [member for member in members if member.filename.endswith("/data.pkl")]
    if len(pickles) != 1 or len(roots) != 1:
        raise UnsafeFile(path, f"refused: a torch file holds exactly one folder with one data.pkl; found {len(pickles)} data.pkl in {len(roots)} folder(s)")
    # torch stores members uncompressed; a deflated archive claiming GiBs is a zip bomb.
    if sum(member.file_size for member in members) > MAX_TORCH_FILE_BYTES or pickles[0].file_size > MAX_PICKLE_BYTES:
        raise BadEmbeddingFile(path, f"refused: its zip members unpack to more than {MAX_TORCH_FILE_BYTES // MIB} MiB")
    try:
        # torch does not check member checksums; a flipped bit in a tensor would load silently.
        damaged_member = archive.testzip()
        pickle_bytes = archive.read(pickles[0])
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, NotImplementedError, zlib.error) as exc:
        raise BadEmbeddingFile(path, f"is a damaged zip archive ({_one_line(exc)})") from None
    if damaged_member is not None:
        raise BadEmbeddingFile(path, f"is damaged: its member {damaged_member!r} fails its checksum")
    _dry_run_pickle(io.BytesIO(pickle_bytes), path, kind, "is damaged: its data.pkl does not parse")


def _check_legacy_pickles(data: bytes, path: Path, kind: str) -> None:
    """Dry-run the pickles at the start of a legacy (pre-zip) torch file, or of any other pickle.

    A hostile file need not look like torch's format at all, so the first pickle is dry-run
    before its value is compared with torch's magic number: it gets the precise refusal.
    """
    stream = io.BytesIO(data)
    magic = _dry_run_pickle(stream, path, kind, "is not a torch file, neither a zip archive nor a pickle")
    if magic != TORCH_LEGACY_MAGIC_NUMBER:
        raise BadEmbeddingFile(path, "is a pickle but not a torch file (no torch magic number)")
    for _ in range(LEGACY_PICKLE_COUNT - 1):
        _dry_run_pickle(stream, path, kind, "is a damaged or truncated legacy torch file")


def check_torch_bytes(data: bytes, path: Path, kind: str = "an embedding file") -> None:
    """Run gates 1 and 2 (structure and dry run) over a pickled torch file's bytes.

    Like torch.load, a file is a zip archive exactly when it starts with a zip local header.

    Raises:
        UnsafeFile: a global outside the allow-list, or zip members torch never writes.
        BadEmbeddingFile: damaged, truncated, or not a torch file at all.
    """
    if data.startswith(ZIP_LOCAL_HEADER):
        _check_zip_archive(data, path, kind)
    elif data[8:10] == b'{"':  # a u64 header length, then the JSON header
        raise BadEmbeddingFile(path, f"is a safetensors file, not a pickle; rename it to {Path(path).stem}.safetensors")
    else:
        _check_legacy_pickles(data, path, kind)


def load_torch_bytes(data: bytes, path: Path, kind: str = "an embedding file") -> Any:
    """Safely load a pickled torch file's bytes (all three gates); tensors land on the CPU.

    Args:
        data: the file's bytes (from read_file_bytes).
        path: the file, for messages.
        kind: what the file should be, for messages.
    Returns:
        the unpickled object (usually a dict).
    Raises:
        UnsafeFile, BadEmbeddingFile: see check_torch_bytes; also when torch's loader refuses.
    """
    check_torch_bytes(data, path, kind)
    with _TORCH_LOAD_LOCK, torch.serialization.safe_globals(_TORCH_EXTRA_SAFE_GLOBALS):
        try:
            return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            # torch's own weights_only gate said no after ours passed: still refuse, quoting it.
            raise UnsafeFile(path, f"refused by torch's weights-only loader: {_torch_refusal_reason(exc)}") from None
        except (RuntimeError, EOFError, ValueError, TypeError, KeyError, IndexError, AttributeError,
                OSError, zipfile.BadZipFile, OverflowError, MemoryError) as exc:
            # torch raises RuntimeError for damaged archives ("PytorchStreamReader failed ...").
            raise BadEmbeddingFile(path, f"is damaged: torch cannot read it ({_one_line(exc)})") from None


def load_torch_file(path: Path, max_bytes: int = MAX_TORCH_FILE_BYTES, kind: str = "an embedding file") -> Any:
    """read_file_bytes + load_torch_bytes: the only way ti-studio opens a .pt/.bin/.ckpt pickle."""
    return load_torch_bytes(read_file_bytes(path, max_bytes, kind), Path(path), kind)


def _one_line(exc: BaseException) -> str:
    """The first line of an exception's message, and of that its first sentence (torch follows
    "…archive is corrupted." with paragraphs of advice)."""
    text = str(exc).strip().splitlines()
    line = text[0] if text else type(exc).__name__
    first_sentence, period, rest = line.partition(". ")
    return (first_sentence if period and rest else line)[:200]


def _torch_refusal_reason(exc: BaseException) -> str:
    """The global torch's weights-only unpickler refused, from its (multi-paragraph) message."""
    named = re.search(r"GLOBAL ([\w.]+)", str(exc))
    if named:
        return f"it names {named.group(1)}, which is not allowed"
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    detail = [line for line in lines if "WeightsUnpickler error" in line or "Unsupported" in line]
    return (detail or lines or [type(exc).__name__])[0].replace("WeightsUnpickler error:", "").strip()[:200]
