"""Hostile and damaged pickled files are refused, and nothing in them runs."""

from __future__ import annotations

import io
import os
import pickle
import shlex
import struct
import subprocess
import zipfile
from pathlib import Path

import pytest
import torch

from ti.errors import BadEmbeddingFile, UnsafeFile
from ti.formats import load_embedding_file
from ti.formats.a1111_pt import torch_bytes_a1111_accepts
from ti.formats.safe_load import load_torch_bytes, load_torch_file


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


class EvalCode:
    def __init__(self, code: str, function=eval):
        self.code, self.function = code, function

    def __reduce__(self):
        return (self.function, (self.code,))


class WritesMarkerOnSetstate:
    """An arbitrary class whose unpickling (BUILD -> __setstate__) has a side effect."""

    def __init__(self, marker: str):
        self.marker = marker

    def __setstate__(self, state):
        Path(state["marker"]).write_text("ran")


def _getattr_chain(marker: Path) -> bytes:
    """Protocol 0: getattr(__import__('os'), 'system')('touch marker'), no class needed."""
    return f"cbuiltins\ngetattr\n(cbuiltins\n__import__\n(Vos\ntRVsystem\ntR(Vtouch {marker}\ntR.".encode()


def _inst_opcode(marker: Path) -> bytes:
    """Protocol 0 INST: instantiate os.system with the command."""
    return f"(Vtouch {marker}\nios\nsystem\n.".encode()


def _zip_with_extra_member(marker: Path) -> bytes:
    clean = torch_bytes_a1111_accepts({"emb_params": torch.zeros(1, 4)})
    source = zipfile.ZipFile(io.BytesIO(clean))
    output = io.BytesIO()
    with zipfile.ZipFile(output, "w") as archive:
        for member in source.infolist():
            archive.writestr(member.filename, source.read(member))
        archive.writestr("archive/payload.py", f"open({str(marker)!r}, 'w')")
    return output.getvalue()


def _zip_with_two_pickles(marker: Path) -> bytes:
    output = io.BytesIO()
    with zipfile.ZipFile(output, "w") as archive:
        archive.writestr("a/data.pkl", pickle.dumps({"x": 1}, protocol=2))
        archive.writestr("b/data.pkl", pickle.dumps(ShellCommand(f"touch {shlex.quote(str(marker))}"), protocol=2))
    return output.getvalue()


def _torch_save(obj, legacy: bool = False) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer, _use_new_zipfile_serialization=not legacy)
    return buffer.getvalue()


def _stack_global_from_memo(command: str) -> bytes:
    """Protocol 4: 'posix'/'system' memoized, popped, fetched back with BINGET, then STACK_GLOBAL."""
    def short_unicode(text: str) -> bytes:
        return b"\x8c" + bytes([len(text)]) + text.encode()

    return (
        b"\x80\x04" + short_unicode(os.name if os.name != "nt" else "nt") + b"\x94" + b"0"
        + short_unicode("system") + b"\x94" + b"0"
        + b"h\x00h\x01\x93" + short_unicode(command) + b"\x85R."
    )


# name -> (builder(marker) -> bytes, expected words in the refusal)
HOSTILE_FILES = {
    "os.system raw pickle": (lambda m: pickle.dumps(ShellCommand(f"touch {shlex.quote(str(m))}"), protocol=2), "system"),
    "os.system protocol 4 (STACK_GLOBAL)": (lambda m: pickle.dumps(ShellCommand(f"touch {shlex.quote(str(m))}"), protocol=4), "system"),
    "os.system inside torch zip": (lambda m: _torch_save({"x": ShellCommand(f"touch {shlex.quote(str(m))}")}), "system"),
    "nested in string_to_param": (
        lambda m: _torch_save({"string_to_param": {"*": [ShellCommand(f"touch {shlex.quote(str(m))}")]}, "name": "x"}),
        "system",
    ),
    "subprocess.Popen": (lambda m: _torch_save({"p": PopenCommand(["touch", str(m)])}), "subprocess.Popen"),
    "builtins.eval": (lambda m: _torch_save({"e": EvalCode(f"open({str(m)!r}, 'w')")}), "builtins.eval"),
    "builtins.exec": (lambda m: _torch_save(EvalCode(f"open({str(m)!r}, 'w').close()", exec)), "builtins.exec"),
    "getattr chain to os.system": (_getattr_chain, "builtins.getattr"),
    "INST opcode": (_inst_opcode, "os.system"),
    "arbitrary class __setstate__": (lambda m: _torch_save({"o": WritesMarkerOnSetstate(str(m))}), "WritesMarkerOnSetstate"),
    "legacy torch file, evil after the header pickles": (
        lambda m: _torch_save({"string_to_param": {"*": torch.zeros(1, 4)}, "x": ShellCommand(f"touch {shlex.quote(str(m))}")}, legacy=True),
        "system",
    ),
    "STACK_GLOBAL through the memo": (lambda m: _stack_global_from_memo(f"touch {m}"), "system"),
    "torch.nn.Linear (a class torch could build)": (lambda m: _torch_save({"layer": torch.nn.Linear(2, 2)}), "torch.nn.modules.linear.Linear"),
    "zip with an extra member": (_zip_with_extra_member, "payload.py"),
    "zip with two data.pkl": (_zip_with_two_pickles, "data.pkl"),
}


@pytest.mark.parametrize("case", list(HOSTILE_FILES), ids=list(HOSTILE_FILES))
def test_hostile_file_is_refused_and_nothing_runs(case, tmp_path):
    marker = tmp_path / "marker"
    build, expected = HOSTILE_FILES[case]
    hostile = tmp_path / "hostile.pt"
    hostile.write_bytes(build(marker))

    with pytest.raises(UnsafeFile) as refusal:
        load_embedding_file(hostile)

    assert expected in str(refusal.value)
    assert str(hostile) in str(refusal.value)
    assert not marker.exists(), "code from the hostile file ran"


def test_refusal_message_names_the_global(tmp_path):
    hostile = tmp_path / "evil.bin"
    hostile.write_bytes(pickle.dumps(ShellCommand("true"), protocol=2))
    with pytest.raises(UnsafeFile, match=r"evil\.bin: refused: it names (posix|nt)\.system, which is not allowed in an embedding file"):
        load_embedding_file(hostile)


@pytest.mark.parametrize("case", ["os.system raw pickle", "getattr chain to os.system", "INST opcode", "STACK_GLOBAL through the memo"])
def test_hostile_pickle_would_run_without_the_guard(tmp_path, case):
    """The hand-made payloads above are valid and live: a plain unpickle does write the marker."""
    marker = tmp_path / "marker"
    pickle.loads(HOSTILE_FILES[case][0](marker))
    assert marker.exists()


def _flip_byte(data: bytes, offset: int) -> bytes:
    return data[:offset] + bytes([data[offset] ^ 0xFF]) + data[offset + 1 :]


def _member_data_offset(data: bytes, name: str) -> int:
    """Where a stored zip member's bytes start (after its local header)."""
    member = zipfile.ZipFile(io.BytesIO(data)).getinfo(name)
    return member.header_offset + 30 + len(member.filename) + len(member.extra)


def _safetensors_bytes() -> bytes:
    from safetensors.torch import save

    return save({"emb_params": torch.ones(1, 4)})


def _deflated_zip_bomb() -> bytes:
    """A deflated member whose central-directory entry claims ~4 GiB once unpacked."""
    output = io.BytesIO()
    with zipfile.ZipFile(output, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("archive/data.pkl", pickle.dumps({"x": 1}, protocol=2))
        archive.writestr("archive/data/0", b"\0" * 4096)
    data = bytearray(output.getvalue())
    entry = data.rfind(b"PK\x01\x02")  # the last central-directory entry: archive/data/0
    data[entry + 24 : entry + 28] = struct.pack("<I", 0xFFFFFF00)  # its uncompressed size
    return bytes(data)


DAMAGED_FILES = {
    "empty": (lambda good: b"", "empty"),
    "git lfs pointer": (
        lambda good: b"version https://git-lfs.github.com/spec/v1\noid sha256:4d7a2146\nsize 7083\n",
        "Git LFS pointer",
    ),
    "html page": (lambda good: b"<!DOCTYPE html><html><body>Sign in</body></html>", "HTML page"),
    "truncated zip": (lambda good: good[: len(good) // 2], "damaged zip"),
    "zip with no end record": (lambda good: good[:200], "damaged zip"),
    "bit flip in data.pkl": (lambda good: _flip_byte(good, _member_data_offset(good, "archive/data.pkl") + 10), "damaged"),
    "bit flip in tensor data": (lambda good: _flip_byte(good, _member_data_offset(good, "archive/data/0") + 5), "checksum"),
    "random bytes": (lambda good: bytes(range(256)) * 4, "not a torch file"),
    "plain pickle, not torch": (lambda good: pickle.dumps([1, 2, 3], protocol=2), "not a torch file"),
    "safetensors named .pt": (lambda good: _safetensors_bytes(), "rename it to damaged.safetensors"),
    "deflated zip bomb": (lambda good: _deflated_zip_bomb(), "unpack to more than"),
    "legacy file cut short": (lambda good: _torch_save({"emb_params": torch.zeros(1, 4)}, legacy=True)[:60], "truncated"),
}


@pytest.mark.parametrize("case", list(DAMAGED_FILES), ids=list(DAMAGED_FILES))
def test_damaged_file_gives_one_clear_line(case, tmp_path):
    good = torch_bytes_a1111_accepts({"emb_params": torch.arange(8.0).reshape(2, 4)})
    build, expected = DAMAGED_FILES[case]
    damaged = tmp_path / "damaged.pt"
    damaged.write_bytes(build(good))

    with pytest.raises(BadEmbeddingFile) as failure:
        load_embedding_file(damaged)

    message = str(failure.value)
    assert expected in message
    assert message.startswith(str(damaged))
    assert "\n" not in message


def test_folder_and_missing_file(tmp_path):
    folder = tmp_path / "looks-like.pt"
    folder.mkdir()
    with pytest.raises(BadEmbeddingFile, match="is a folder"):
        load_embedding_file(folder)
    with pytest.raises(BadEmbeddingFile, match="does not exist"):
        load_embedding_file(tmp_path / "missing.pt")


def test_size_limit_is_checked_before_reading(tmp_path):
    big = tmp_path / "big.pt"
    big.write_bytes(b"\0" * 2048)
    with pytest.raises(BadEmbeddingFile, match="limit"):
        load_torch_file(big, max_bytes=1024)


def test_legacy_and_zip_torch_files_load():
    tensor = torch.arange(6.0).reshape(2, 3)
    for legacy in (False, True):
        loaded = load_torch_bytes(_torch_save({"emb_params": tensor, "step": 3}, legacy=legacy), Path("x.pt"))
        assert torch.equal(loaded["emb_params"], tensor) and loaded["step"] == 3


def test_numpy_scalars_and_sets_are_allowed():
    """A1111's allow-list covers numpy scalars (e.g. a numpy step) and builtins.set."""
    import numpy as np

    loaded = load_torch_bytes(_torch_save({"step": np.int64(7), "tags": {"a"}, "array": np.zeros(2, dtype=np.float32)}), Path("x.pt"))
    assert int(loaded["step"]) == 7 and loaded["tags"] == {"a"}


def test_torch_metadata_members_are_accepted():
    """torch >= 2.5 adds .format_version/.storage_alignment; plain torch.save output must load."""
    raw = _torch_save({"<tok>": torch.ones(1, 4)})
    assert any(name.endswith(".format_version") for name in zipfile.ZipFile(io.BytesIO(raw)).namelist())
    assert torch.equal(load_torch_bytes(raw, Path("x.bin"))["<tok>"], torch.ones(1, 4))
