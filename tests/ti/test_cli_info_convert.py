"""`python -m ti info` and `python -m ti convert`: output fields, round trips, errors."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ti.cli import main
from ti.formats import load_embedding_file
from ti.formats.a1111_pt import torch_bytes_a1111_accepts

REPO_ROOT = Path(__file__).resolve().parents[2]

# file -> the README table's values, as `info --json` reports them.
EXPECTED_INFO = {
    "test_embedding.png": {"name": "rick", "format": "png", "vectors": 8, "dim": 768, "model_family": "sd1", "step": 60, "checkpoint_hash": None, "checkpoint_name": None},
    "bad-hands-5.pt": {"name": "bad-hands-5", "format": "a1111-pt", "vectors": 2, "dim": 768, "model_family": "sd1", "step": 1364, "checkpoint_hash": "7ab762a7", "checkpoint_name": "blossom-extract"},
    "nfixer.pt": {"name": "nfixer", "format": "a1111-pt", "vectors": 15, "dim": 1024, "model_family": "sd2", "step": 270, "checkpoint_hash": "cae1bee30e", "checkpoint_name": "illuminatidiffusion_v1.1"},
    "EasyNegativeV2.safetensors": {"name": "EasyNegativeV2", "format": "safetensors", "vectors": 16, "dim": 768, "model_family": "sd1", "step": None, "checkpoint_hash": None, "checkpoint_name": None},
    "learned_embeds.bin": {"name": "learned_embeds", "format": "diffusers", "vectors": 1, "dim": 768, "model_family": "sd1", "step": None, "checkpoint_hash": None, "checkpoint_name": None},
    "hades.pt": {"name": "hades", "format": "a1111-pt", "vectors": 17, "dim": 768, "model_family": "sd1", "step": None, "checkpoint_hash": None, "checkpoint_name": None},
    "SDXL-Detail.safetensors": {"name": "SDXL-Detail", "format": "safetensors", "vectors": 2, "dim": 2048, "model_family": "sdxl", "step": None, "checkpoint_hash": None, "checkpoint_name": None},
}


def _run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    status = main(list(argv))
    captured = capsys.readouterr()
    return status, captured.out, captured.err


@pytest.mark.parametrize("file_name", list(EXPECTED_INFO))
def test_info_json_for_each_real_file(real_files_dir, capsys, file_name):
    path = real_files_dir / file_name
    status, out, _ = _run_cli(capsys, "info", str(path), "--json")

    assert status == 0
    assert out.count("\n") == 1, "one JSON object on one line"
    assert json.loads(out) == {"type": "embedding", **EXPECTED_INFO[file_name], "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}


def test_info_human_readable(real_files_dir, capsys):
    status, out, _ = _run_cli(capsys, "info", str(real_files_dir / "bad-hands-5.pt"))
    assert status == 0
    lines = dict(line.split(":", 1) for line in out.splitlines())
    assert lines["name"].strip() == "bad-hands-5"
    assert lines["vectors"].strip() == "2" and lines["width"].strip() == "768"
    assert lines["checkpoint hash"].strip() == "7ab762a7"


def test_info_on_a_hypernetwork_describes_it(tmp_path, capsys):
    from ti.hypernetwork import HypernetworkStructure, create_hypernetwork

    path = create_hypernetwork("hn", tmp_path, sizes=(768, 320), structure=HypernetworkStructure(layer_structure=(1, 2, 1)))
    status, out, err = _run_cli(capsys, "info", str(path), "--json")
    assert status == 0, err
    info = json.loads(out)
    assert info["type"] == "hypernetwork" and info["name"] == "hn"
    assert info["dims"] == [768, 320] and info["layer_structure"] == [1, 2, 1]
    assert info["activation"] == "linear" and info["layer_norm"] is False and info["step"] == 0
    assert list(info) == ["type", "name", "dims", "layer_structure", "activation", "layer_norm",
                          "dropout_structure", "step", "sha256"]


SUFFIXES = [".pt", ".bin", ".safetensors", ".png", ".webp"]


@pytest.mark.parametrize("target_suffix", SUFFIXES)
@pytest.mark.parametrize("source_name", ["bad-hands-5.pt", "SDXL-Detail.safetensors", "test_embedding.png"])
def test_convert_keeps_the_vectors(real_files_dir, tmp_path, capsys, source_name, target_suffix):
    source = real_files_dir / source_name
    target = tmp_path / f"converted{target_suffix}"

    status, out, _ = _run_cli(capsys, "convert", str(source), str(target))

    assert status == 0 and out.startswith(f"wrote {target}")
    original, converted = load_embedding_file(source), load_embedding_file(target)
    assert torch.equal(converted.vectors, original.vectors)
    assert converted.name == "converted" and converted.is_sdxl == original.is_sdxl
    if target_suffix != ".bin":
        assert (converted.step, converted.checkpoint_hash, converted.checkpoint_name) == (original.step, original.checkpoint_hash, original.checkpoint_name)


def test_convert_refuses_to_overwrite_without_the_flag(real_files_dir, tmp_path, capsys):
    target = tmp_path / "out.safetensors"
    target.write_bytes(b"keep me")

    status, _, err = _run_cli(capsys, "convert", str(real_files_dir / "nfixer.pt"), str(target))
    assert status == 2 and "exists; pass --overwrite" in err and str(target) in err
    assert target.read_bytes() == b"keep me"

    status, _, _ = _run_cli(capsys, "convert", str(real_files_dir / "nfixer.pt"), str(target), "--overwrite")
    assert status == 0 and load_embedding_file(target).num_vectors == 15


@pytest.mark.parametrize(
    "make_args, expected",
    [
        (lambda d, real: [str(real / "nfixer.pt"), str(d / "out.txt")], "unknown extension '.txt'"),
        (lambda d, real: [str(d / "missing.pt"), str(d / "out.pt")], "does not exist"),
        (lambda d, real: [str(real / "nfixer.pt"), str(real / "nfixer.pt"), "--overwrite"], "is the input file itself"),
    ],
)
def test_convert_errors(real_files_dir, tmp_path, capsys, make_args, expected):
    status, out, err = _run_cli(capsys, "convert", *make_args(tmp_path, real_files_dir))
    assert status == 2 and expected in err and err.count("\n") == 1


class _Hostile:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch '{self.marker}'",))


def test_command_line_in_subprocesses(real_files_dir, tmp_path):
    """The real entry point: `python -m ti …`, run as users run it (in parallel, to save time)."""
    marker = tmp_path / "marker"
    hostile = tmp_path / "hostile.pt"
    hostile.write_bytes(pickle.dumps(_Hostile(marker), protocol=2))
    commands = {
        "info": ["info", str(real_files_dir / "nfixer.pt"), "--json"],
        "png to pt": ["convert", str(real_files_dir / "test_embedding.png"), str(tmp_path / "rick.pt")],
        "hostile": ["info", str(hostile)],
    }
    environment = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    running = {
        name: subprocess.Popen([sys.executable, "-m", "ti", *argv], cwd=REPO_ROOT, env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for name, argv in commands.items()
    }
    results = {name: (process.wait(timeout=120), *process.communicate()) for name, process in running.items()}

    status, out, err = results["info"]
    assert status == 0, err
    assert json.loads(out)["vectors"] == 15 and json.loads(out)["model_family"] == "sd2"

    status, out, err = results["png to pt"]
    assert status == 0 and out.startswith(f"wrote {tmp_path / 'rick.pt'} (a1111-pt, 8 x 768, sd1)"), err
    rick = load_embedding_file(tmp_path / "rick.pt")
    assert torch.equal(rick.vectors, load_embedding_file(real_files_dir / "test_embedding.png").vectors)
    assert (rick.name, rick.step) == ("rick", 60)

    status, out, err = results["hostile"]
    assert status == 2 and out == ""
    assert err.startswith(f"error: {hostile}: refused: it names posix.system") or "names nt.system" in err
    assert "Traceback" not in err and err.count("\n") == 1
    assert not marker.exists()


def test_info_finds_a_bare_name_in_the_folders_and_says_whether_it_fits_a_model(tmp_path, capsys):
    import json

    import torch

    from ti.cli import main
    from ti.embedding import Embedding
    from ti.formats import save_embedding_file

    embeddings, hypernetworks = tmp_path / "embeddings", tmp_path / "hypernetworks"
    save_embedding_file(Embedding("fits", torch.zeros(2, 32)), embeddings / "fits.safetensors")
    save_embedding_file(Embedding("wide", torch.zeros(1, 768)), embeddings / "wide.pt")
    for name, sizes in (("hn-fires", "32"), ("hn-idle", "768")):
        assert main(["create-hypernetwork", name, "--sizes", sizes, "--hypernetwork-dir", str(hypernetworks)]) == 0
    capsys.readouterr()
    found = {}
    for name in ("fits", "wide", "hn-fires", "hn-idle"):
        assert main(["info", name, "--json", "--model", "demo", "--device", "cpu", "--embeddings-dir", str(embeddings),
                     "--hypernetwork-dir", str(hypernetworks)]) == 0
        found[name] = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert found["fits"]["format"] == "safetensors" and found["fits"]["usable_with_model"] is True
    assert found["wide"]["usable_with_model"] is False and found["wide"]["model_fit"] == "768 wide; this model needs 32"
    assert found["hn-fires"]["usable_with_model"] is True and "fires at widths 32" in found["hn-fires"]["model_fit"]
    assert found["hn-idle"]["usable_with_model"] is False and "would change nothing" in found["hn-idle"]["model_fit"]
    assert "usable_with_model" not in json.loads(_info_json(["info", str(embeddings / "fits.safetensors")], capsys))
    assert main(["info", "missing", "--embeddings-dir", str(embeddings)]) == 2


def _info_json(arguments, capsys):
    from ti.cli import main

    assert main([*arguments, "--json"]) == 0
    return capsys.readouterr().out.strip().splitlines()[-1]


def test_convert_joins_diffusers_two_file_sdxl_output(tmp_path, capsys):
    import torch
    from safetensors.torch import save_file

    from ti.cli import main
    from ti.formats import load_embedding_file

    clip_l, clip_g = torch.randn(2, 768), torch.randn(2, 1280)
    save_file({"<my-xl>": clip_l}, str(tmp_path / "learned_embeds.safetensors"))  # as diffusers' SDXL script saves
    save_file({"<my-xl>": clip_g}, str(tmp_path / "learned_embeds_2.safetensors"))
    for out in ("my-xl.safetensors", "my-xl.pt"):
        assert main(["convert", str(tmp_path / "learned_embeds.safetensors"), str(tmp_path / out)]) == 0
        assert "joined with" in capsys.readouterr().out
        joined = load_embedding_file(tmp_path / out)
        assert joined.is_sdxl and joined.name == "my-xl" and joined.model_family == "sdxl"
        assert torch.equal(joined.sdxl_parts()["clip_l"], clip_l) and torch.equal(joined.sdxl_parts()["clip_g"], clip_g)
    save_file({"<my-xl>": torch.randn(3, 1280)}, str(tmp_path / "learned_embeds_2.safetensors"))
    assert main(["convert", str(tmp_path / "learned_embeds.safetensors"), str(tmp_path / "bad.pt")]) == 2
    assert "must be 2 x 1280" in capsys.readouterr().err
