"""Crafted pickles in embeddings/ and models/hypernetworks/: refused with a reason, nothing runs,
and the library, the CLI and generation keep working (the readers' own tests are in
tests/ti/formats/test_safe_load.py; this is the level users meet)."""

from __future__ import annotations

import time

import pytest
import torch

import reliability_kit as kit
from ti.cli import main
from ti.config import GenerateConfig
from ti.errors import UnsafeFile
from ti.generate import txt2img
from ti.hypernetwork import HypernetworkLibrary, create_hypernetwork
from ti.library import EmbeddingLibrary

WIDTH = 32  # the demo model's text encoder


@pytest.fixture
def hostile_folders(tmp_path):
    """embeddings/ and hypernetworks/ holding every hostile file, plus one good file each."""
    marker = tmp_path / "MARKER-code-ran"
    embeddings, hypernetworks = tmp_path / "embeddings", tmp_path / "hypernetworks"
    embeddings.mkdir()
    hypernetworks.mkdir()
    files = kit.hostile_files(marker)
    for hostile in files:
        (embeddings / hostile.file_name).write_bytes(hostile.data)
        (hypernetworks / hostile.file_name).write_bytes(hostile.data)
    (embeddings / "good.pt").write_bytes(kit.good_pt(WIDTH))
    create_hypernetwork("goodnet", hypernetworks, sizes=(WIDTH,), seed=1)
    return marker, embeddings, hypernetworks, files


def test_at_least_ten_hostile_files_and_they_are_live(tmp_path):
    """Without the guard, the payloads do run: a plain torch.load/pickle.loads writes the marker."""
    files = kit.hostile_files(tmp_path / "unused")
    assert len(files) >= 10
    live = 0
    for index, hostile in enumerate(files):
        marker = tmp_path / f"live-{index}"
        data = next(f.data for f in kit.hostile_files(marker) if f.file_name == hostile.file_name)
        kit.run_unguarded(data)
        time.sleep(0.05 if "popen" in hostile.file_name else 0)  # Popen runs `touch` in a child
        live += marker.exists()
    # Every payload but the inert extra zip members (refused for being there at all) is live.
    assert live >= len(files) - 1


def test_library_skips_every_hostile_file_with_a_reason(hostile_folders):
    marker, embeddings, _, files = hostile_folders
    started = time.perf_counter()
    snapshot = EmbeddingLibrary(embeddings, expected_width=WIDTH).refresh()
    elapsed = time.perf_counter() - started

    assert list(snapshot.embeddings) == ["good"]
    reasons = {skipped.path.name: skipped.reason for skipped in snapshot.skipped}
    assert sorted(reasons) == sorted(hostile.file_name for hostile in files)
    for name, reason in reasons.items():
        assert reason.startswith("refused: it ") and ("names" in reason or "holds" in reason), (name, reason)
    assert not marker.exists(), "code from a hostile file ran"
    assert elapsed < kit.SECONDS_PER_FILE * len(files)


def test_hypernetwork_library_refuses_them_and_keeps_the_good_one(hostile_folders):
    marker, _, hypernetworks, files = hostile_folders
    library = HypernetworkLibrary(hypernetworks)
    unreadable = library.check_all()

    pickled_pt = {f.file_name[:-3] for f in files if f.file_name.endswith(".pt")}
    assert set(unreadable) == pickled_pt
    assert all(reason.startswith("refused: it ") for reason in unreadable.values())
    with pytest.raises(UnsafeFile, match="os-system.pt: refused: it names (posix|nt).system"):
        library.load("os-system")
    assert library.load("goodnet").sizes == [WIDTH]
    assert not marker.exists()


def test_cli_info_refuses_each_with_one_line_and_status_2(hostile_folders, capsys):
    marker, embeddings, hypernetworks, files = hostile_folders
    for folder in (embeddings, hypernetworks):
        for hostile in files:
            status = main(["info", str(folder / hostile.file_name)])
            err = capsys.readouterr().err
            assert status == 2, hostile.file_name
            assert err.count("\n") == 1 and err.startswith(f"error: {folder / hostile.file_name}: refused: "), err
    assert not marker.exists()


def test_cli_info_in_a_fresh_process(hostile_folders):
    """The same through `python -m ti info`, as users run it: exit 2, one line, no traceback."""
    marker, embeddings, _, _ = hostile_folders
    result = kit.cli("info", str(embeddings / "os-system-zip.pt"))
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.strip().count("\n") == 0
    assert "refused: it names posix.system" in result.stderr or "refused: it names nt.system" in result.stderr
    assert not marker.exists()


def test_generation_still_works_beside_them(hostile_folders, demo_model):
    marker, embeddings, hypernetworks, _ = hostile_folders
    library, nets = EmbeddingLibrary(embeddings, expected_width=WIDTH), HypernetworkLibrary(hypernetworks)
    config = GenerateConfig(prompt="a photo of good <hypernet:goodnet:0.5>", steps=1, width=64, height=64, seed=5)
    result = txt2img(demo_model, library.refresh().embeddings, config, hypernetworks=nets)
    assert result.used_embeddings == ["good"] and len(result.images) == 1
    assert torch.isfinite(torch.tensor(list(result.images[0].image.getdata()), dtype=torch.float32)).all()

    refused = GenerateConfig(prompt="a photo <hypernet:eval:1>", steps=1, width=64, height=64, seed=5)
    with pytest.raises(UnsafeFile, match="refused: it names builtins.eval"):
        txt2img(demo_model, library.refresh().embeddings, refused, hypernetworks=nets)
    assert not marker.exists()
