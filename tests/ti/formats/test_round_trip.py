"""Every writer round-trips, writes what A1111 and diffusers accept, and saves atomically."""

from __future__ import annotations

import hashlib
import io
import os
import struct
import zipfile
from pathlib import Path

import pytest
import torch

from ti.embedding import Embedding
from ti.errors import BadEmbeddingFile
from ti.formats import EMBEDDING_SUFFIXES, embedding_file_bytes, load_embedding_file, save_embedding_file
from ti.formats.a1111_pt import A1111_ZIP_MEMBER
from ti.formats.safe_load import ALLOWED_GLOBALS, RestrictedUnpickler


def _vectors(rows: int, width: int, seed: int) -> torch.Tensor:
    return torch.randn(rows, width, generator=torch.Generator().manual_seed(seed))


EMBEDDINGS = {
    "sd1 multi-vector with metadata": Embedding("style-one", _vectors(4, 768, 1), step=1500, checkpoint_hash="7ab762a7c1", checkpoint_name="blossom-extract"),
    "sd2 single vector, no metadata": Embedding("neg2", _vectors(1, 1024, 2)),
    "sdxl clip_l + clip_g": Embedding("xl_detail", _vectors(2, 2048, 3), step=40, checkpoint_hash="abcdef0123", is_sdxl=True),
    "odd width (unknown family)": Embedding("w32", _vectors(3, 32, 4), step=0),
}
# diffusers' .bin is {token: tensor}: there is no room for step or the checkpoint.
KEEPS_METADATA = {".pt": True, ".bin": False, ".safetensors": True, ".png": True, ".webp": True}
FORMAT_OF = {".pt": "a1111-pt", ".bin": "diffusers", ".safetensors": "safetensors", ".png": "png", ".webp": "webp"}


@pytest.mark.parametrize("suffix", EMBEDDING_SUFFIXES)
@pytest.mark.parametrize("case", list(EMBEDDINGS))
def test_write_then_read_gives_the_same_embedding(tmp_path, suffix, case):
    original = EMBEDDINGS[case]
    path = save_embedding_file(original, tmp_path / f"{original.name}{suffix}")

    loaded = load_embedding_file(path)

    assert torch.equal(loaded.vectors, original.vectors)
    assert loaded.name == original.name
    assert loaded.is_sdxl == original.is_sdxl
    assert loaded.model_family == original.model_family
    assert loaded.format == FORMAT_OF[suffix]
    # SDXL .pt and image embeddings hold the two tensors only (A1111's loader detaches every key).
    if KEEPS_METADATA[suffix] and not (original.is_sdxl and suffix != ".safetensors"):
        assert (loaded.step, loaded.checkpoint_hash, loaded.checkpoint_name) == (original.step, original.checkpoint_hash, original.checkpoint_name)
    else:
        assert (loaded.step, loaded.checkpoint_hash) == (None, None)
    assert loaded.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


def test_image_embedding_name_comes_from_the_data_not_the_stem(tmp_path):
    path = save_embedding_file(EMBEDDINGS["sd2 single vector, no metadata"], tmp_path / "renamed.png")
    assert load_embedding_file(path).name == "neg2"


@pytest.mark.parametrize("suffix", [".pt", ".bin"])
@pytest.mark.parametrize("case", list(EMBEDDINGS))
def test_pickled_files_hold_only_members_a1111_accepts(suffix, case):
    raw = embedding_file_bytes(EMBEDDINGS[case], suffix)
    archive = zipfile.ZipFile(io.BytesIO(raw))
    names = archive.namelist()

    assert all(A1111_ZIP_MEMBER.match(name) for name in names), names
    assert sum(name.endswith("/data.pkl") for name in names) == 1
    assert not any(name.endswith((".format_version", ".storage_alignment")) for name in names)
    # A1111's restricted unpickler (same allow-list) accepts the pickle.
    pickle_name = next(name for name in names if name.endswith("data.pkl"))
    RestrictedUnpickler(io.BytesIO(archive.read(pickle_name)), Path("x"), "an embedding file").load()
    assert archive.testzip() is None


def test_pt_tensor_data_stays_64_byte_aligned():
    raw = embedding_file_bytes(EMBEDDINGS["sd1 multi-vector with metadata"], ".pt")
    for member in zipfile.ZipFile(io.BytesIO(raw)).infolist():
        name_length, extra_length = struct.unpack("<HH", raw[member.header_offset + 26 : member.header_offset + 30])
        assert (member.header_offset + 30 + name_length + extra_length) % 64 == 0, member.filename


def test_pt_has_a1111_keys_and_plain_torch_load_reads_it():
    embedding = EMBEDDINGS["sd1 multi-vector with metadata"]
    raw = embedding_file_bytes(embedding, ".pt")
    for weights_only in (True, False):
        loaded = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=weights_only)
        assert set(loaded) == {"string_to_token", "string_to_param", "name", "step", "sd_checkpoint", "sd_checkpoint_name"}
        assert loaded["string_to_token"] == {"*": 265}
        assert list(loaded["string_to_param"]) == ["*"]
        assert torch.equal(loaded["string_to_param"]["*"], embedding.vectors)
        assert (loaded["name"], loaded["step"], loaded["sd_checkpoint"], loaded["sd_checkpoint_name"]) == (
            "style-one", 1500, "7ab762a7c1", "blossom-extract")


def test_writers_are_deterministic():
    """The same embedding gives the same bytes, hence the same TI hash."""
    for suffix in EMBEDDING_SUFFIXES:
        embedding = EMBEDDINGS["sd1 multi-vector with metadata"]
        assert embedding_file_bytes(embedding, suffix) == embedding_file_bytes(embedding, suffix), suffix


def test_diffusers_loader_accepts_our_bin(tmp_path):
    """diffusers' own file loader and token extraction take our .bin as a 4-vector token."""
    from diffusers.loaders.textual_inversion import TextualInversionLoaderMixin
    from diffusers.models.model_loading_utils import load_state_dict

    embedding = EMBEDDINGS["sd1 multi-vector with metadata"]
    bin_path = save_embedding_file(embedding, tmp_path / "style-one.bin")
    state_dict = load_state_dict(str(bin_path))

    class VocabOnly:
        def get_vocab(self):
            return {}

    tokens, tensors = TextualInversionLoaderMixin._retrieve_tokens_and_embeddings([None], [state_dict], VocabOnly())
    tokens, rows = TextualInversionLoaderMixin._extend_tokens_and_embeddings(tokens, tensors, VocabOnly())
    assert tokens == ["style-one", "style-one_1", "style-one_2", "style-one_3"]
    assert torch.equal(torch.stack(rows), embedding.vectors)


def test_atomic_save_keeps_the_old_file_when_writing_fails(tmp_path, monkeypatch):
    path = save_embedding_file(EMBEDDINGS["sd2 single vector, no metadata"], tmp_path / "neg2.safetensors")
    before = path.read_bytes()

    def failing_replace(source, target):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        save_embedding_file(EMBEDDINGS["sd1 multi-vector with metadata"], path)

    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["neg2.safetensors"], "temp file left behind"


def test_saved_file_has_normal_permissions(tmp_path):
    path = save_embedding_file(EMBEDDINGS["sd2 single vector, no metadata"], tmp_path / "sub" / "neg2.pt")
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask


def test_unknown_suffix_is_refused(tmp_path):
    with pytest.raises(BadEmbeddingFile, match=r"unknown embedding file type '\.txt'"):
        save_embedding_file(EMBEDDINGS["sd2 single vector, no metadata"], tmp_path / "x.txt")
    (tmp_path / "x.ckpt").write_bytes(b"x")
    with pytest.raises(BadEmbeddingFile, match="unknown embedding file type"):
        load_embedding_file(tmp_path / "x.ckpt")


def test_upper_case_suffix_reads(tmp_path):
    path = save_embedding_file(EMBEDDINGS["sd2 single vector, no metadata"], tmp_path / "neg2.PT")
    assert load_embedding_file(path).num_vectors == 1


def test_safetensors_file_is_read_by_the_safetensors_library(tmp_path):
    from safetensors import safe_open

    embedding = EMBEDDINGS["sdxl clip_l + clip_g"]
    path = save_embedding_file(embedding, tmp_path / "xl_detail.safetensors")
    with safe_open(str(path), framework="pt") as handle:
        assert handle.metadata() == {"name": "xl_detail", "step": "40", "sd_checkpoint": "abcdef0123"}
        assert torch.equal(handle.get_tensor("clip_l"), embedding.vectors[:, :768])
        assert torch.equal(handle.get_tensor("clip_g"), embedding.vectors[:, 768:])


def test_pickle_allow_list_has_no_callables_that_run_code():
    risky = {("builtins", "eval"), ("builtins", "exec"), ("builtins", "getattr"), ("os", "system"), ("builtins", "__import__")}
    assert not risky & ALLOWED_GLOBALS


@pytest.mark.parametrize("suffix", [".pt", ".png"])
def test_an_sdxl_file_passes_a1111s_sdxl_loader(tmp_path, suffix):
    """A1111 v1.10 (textual_inversion.py, create_embedding_from_data) for a dict with clip_g:
    `emb = {k: v.detach().to(device, torch.float32) for k, v in data.items()}`, shape = sum of the
    widths. Anything but tensors in the dict breaks it; ours holds exactly clip_l and clip_g."""
    from ti.formats.payload import a1111_dict

    embedding = EMBEDDINGS["sdxl clip_l + clip_g"]
    data = a1111_dict(embedding)
    assert set(data) == {"clip_l", "clip_g"}
    a1111_view = {key: value.detach().to("cpu", torch.float32) for key, value in data.items()}
    assert sum(value.shape[-1] for value in a1111_view.values()) == 2048
    path = save_embedding_file(embedding, tmp_path / f"xl_detail{suffix}")
    if suffix == ".pt":
        stored = torch.load(path, weights_only=True)
        assert set(stored) == {"clip_l", "clip_g"}
    back = load_embedding_file(path)  # ours reads it back: name from the file, no step (none stored)
    assert back.is_sdxl and torch.equal(back.vectors, embedding.vectors) and back.name == "xl_detail"
