"""The genuine files in ../shared/real-files read with exactly the values in its README."""

from __future__ import annotations

import hashlib

import pytest
import torch

from ti.formats import describe_embedding, load_embedding_file

# file -> (format, name, vectors, dim, family, step, checkpoint_hash, checkpoint_name), from the README table.
REAL_FILES = {
    "test_embedding.png": ("png", "rick", 8, 768, "sd1", 60, None, None),
    "bad-hands-5.pt": ("a1111-pt", "bad-hands-5", 2, 768, "sd1", 1364, "7ab762a7", "blossom-extract"),
    "nfixer.pt": ("a1111-pt", "nfixer", 15, 1024, "sd2", 270, "cae1bee30e", "illuminatidiffusion_v1.1"),
    "EasyNegativeV2.safetensors": ("safetensors", "EasyNegativeV2", 16, 768, "sd1", None, None, None),
    "learned_embeds.bin": ("diffusers", "learned_embeds", 1, 768, "sd1", None, None, None),
    "hades.pt": ("a1111-pt", "hades", 17, 768, "sd1", None, None, None),
    "SDXL-Detail.safetensors": ("safetensors", "SDXL-Detail", 2, 2048, "sdxl", None, None, None),
}


@pytest.mark.parametrize("file_name", list(REAL_FILES))
def test_real_file_reads_as_the_readme_says(real_files_dir, file_name):
    path = real_files_dir / file_name
    file_format, name, vectors, dim, family, step, checkpoint_hash, checkpoint_name = REAL_FILES[file_name]

    embedding = load_embedding_file(path)

    assert describe_embedding(embedding) == {
        "type": "embedding",
        "name": name,
        "format": file_format,
        "vectors": vectors,
        "dim": dim,
        "model_family": family,
        "step": step,
        "checkpoint_hash": checkpoint_hash,
        "checkpoint_name": checkpoint_name,
        "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
    }
    assert embedding.vectors.dtype == torch.float32
    assert embedding.vectors.shape == (vectors, dim)
    assert torch.isfinite(embedding.vectors).all()
    assert embedding.source_path == path


def test_sdxl_file_keeps_clip_l_then_clip_g(real_files_dir):
    from safetensors.torch import load_file

    embedding = load_embedding_file(real_files_dir / "SDXL-Detail.safetensors")
    stored = load_file(real_files_dir / "SDXL-Detail.safetensors")
    assert embedding.is_sdxl
    assert torch.equal(embedding.sdxl_parts()["clip_l"], stored["clip_l"])
    assert torch.equal(embedding.sdxl_parts()["clip_g"], stored["clip_g"])


def test_hades_parameter_dict_values(real_files_dir):
    """hades.pt pickles a torch.nn.ParameterDict; its one parameter is the [17, 768] payload."""
    embedding = load_embedding_file(real_files_dir / "hades.pt")
    assert embedding.vectors[0, :3].tolist() == pytest.approx([0.5462, 0.4486, -0.2505], abs=1e-4)
    assert not embedding.vectors.requires_grad


def test_stored_name_differs_from_stem_and_stem_wins(real_files_dir):
    """nfixer.pt stores name 'nfixer-271'; A1111 names .pt embeddings by file stem."""
    assert load_embedding_file(real_files_dir / "nfixer.pt").name == "nfixer"
