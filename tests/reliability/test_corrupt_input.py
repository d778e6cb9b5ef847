"""Damaged, lying and odd files: each is skipped or refused with a clear reason, within 5 s
(measured), and nothing hangs or crashes; generation works beside them."""

from __future__ import annotations

import os
import threading
import time

import pytest

import reliability_kit as kit
from ti.cli import main
from ti.config import GenerateConfig
from ti.errors import BadEmbeddingFile
from ti.formats import load_embedding_file
from ti.generate import txt2img
from ti.hypernetwork import HypernetworkLibrary, create_hypernetwork
from ti.library import EmbeddingLibrary

WIDTH = 32
# Files a reader accepts (their content is the problem, found at the library level) -> reason words.
READABLE_BUT_UNUSABLE = {
    "nan.pt": "NaN or infinity",
    "inf.safetensors": "NaN or infinity",
    "wrong-width.pt": f"{WIDTH + 8} wide; this model needs {WIDTH}",
    "bad-\udcff\udcfe-name.pt": "not valid UTF-8",
}


@pytest.fixture(scope="module")
def corrupt_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("corrupt-embeddings")
    entries = kit.corrupt_entries(WIDTH)
    for entry in entries:
        kit.write_entry(folder, entry)
    (folder / "good.pt").write_bytes(kit.good_pt(WIDTH))
    return folder, entries


def test_each_damaged_file_is_refused_with_a_reason_within_5_s(corrupt_folder):
    folder, entries = corrupt_folder
    slowest = 0.0
    for entry in entries:
        path = folder / (os.fsdecode(entry.relative) if isinstance(entry.relative, bytes) else entry.relative)
        outcome, seconds = kit.timed(load_embedding_file, path)
        slowest = max(slowest, seconds)
        assert seconds < kit.SECONDS_PER_FILE, f"{entry.what}: {seconds:.1f} s"
        if path.name in READABLE_BUT_UNUSABLE:
            continue
        assert isinstance(outcome, BadEmbeddingFile), f"{entry.what}: {outcome!r}"
        assert "\n" not in str(outcome) and outcome.reason, entry.what
    print(f"slowest damaged file: {slowest:.2f} s")


def test_library_lists_every_damaged_file_as_skipped(corrupt_folder):
    folder, entries = corrupt_folder
    started = time.perf_counter()
    snapshot = EmbeddingLibrary(folder, expected_width=WIDTH).refresh()
    assert time.perf_counter() - started < kit.SECONDS_PER_FILE * len(entries)

    assert list(snapshot.embeddings) == ["good"]
    reasons = {skipped.path.name: skipped.reason for skipped in snapshot.skipped}
    files = [entry for entry in entries if entry.data is not None]
    assert len(reasons) == len(files), sorted(reasons)
    for name, words in READABLE_BUT_UNUSABLE.items():
        printable = name.replace("\udcff\udcfe", "\ufffd\ufffd")
        assert words in reasons[printable], (name, reasons[printable])
    # Nothing shown to the page or console carries lone surrogates (they break JSON and prompts).
    for skipped in snapshot.skipped:
        str(skipped.path).encode("utf-8")
        skipped.reason.encode("utf-8")
    assert reasons["zlib-bomb.png"].startswith("refused: the pixel layer decompresses to more than 16 MiB")
    assert "text chunk holds 40 MiB" in reasons["oversized-chunk.png"]
    assert reasons["empty.pt"] == "empty file (0 bytes)"
    assert "folder.pt" not in reasons  # a folder named like a file is a folder: scanned, not read


def test_generation_works_beside_them(corrupt_folder, demo_model):
    folder, _ = corrupt_folder
    snapshot = EmbeddingLibrary(folder, expected_width=WIDTH).refresh()
    config = GenerateConfig(prompt="good, wrong-width, nan", steps=1, width=64, height=64, seed=3)
    result = txt2img(demo_model, snapshot.embeddings, config)
    assert result.used_embeddings == ["good"] and len(result.images) == 1


def test_cli_info_gives_one_line_for_each(corrupt_folder, capsys):
    folder, entries = corrupt_folder
    for entry in entries:
        path = folder / (os.fsdecode(entry.relative) if isinstance(entry.relative, bytes) else entry.relative)
        status = main(["info", str(path)])
        captured = capsys.readouterr()
        if path.name in READABLE_BUT_UNUSABLE:  # info describes them (NaN and all); the library skips them
            assert status == 0, entry.what
            continue
        assert status == 2, f"{entry.what}: {captured.err}"
        assert captured.err.startswith("error: ") and captured.err.count("\n") == 1, captured.err
    assert main(["info", str(folder / "folder.pt")]) == 2
    assert "is a folder" in capsys.readouterr().err


def _in_thread_with_timeout(function, seconds: float):
    box = {}
    thread = threading.Thread(target=lambda: box.setdefault("outcome", kit.timed(function)), daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"still running after {seconds} s (hung)"
    return box["outcome"]


def test_a_pipe_or_device_named_like_an_embedding_never_hangs(tmp_path):
    os.mkfifo(tmp_path / "pipe.pt")
    (tmp_path / "zero.pt").symlink_to("/dev/zero")
    for name in ("pipe.pt", "zero.pt"):
        outcome, seconds = _in_thread_with_timeout(lambda: load_embedding_file(tmp_path / name), kit.SECONDS_PER_FILE)
        assert isinstance(outcome, BadEmbeddingFile) and "not a regular file" in str(outcome), outcome
    snapshot = _in_thread_with_timeout(lambda: EmbeddingLibrary(tmp_path, expected_width=WIDTH).refresh(), 5)[0]
    assert {s.path.name: s.reason for s in snapshot.skipped} == {
        "pipe.pt": "not a regular file (a pipe, socket or device)", "zero.pt": "not a regular file (a pipe, socket or device)"}


def test_a_folder_link_loop_lists_each_file_once(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "one.pt").write_bytes(kit.good_pt(WIDTH))
    (tmp_path / "sub" / "back-to-top").symlink_to(tmp_path, target_is_directory=True)
    snapshot = EmbeddingLibrary(tmp_path, expected_width=WIDTH).refresh()
    assert list(snapshot.embeddings) == ["one"]
    assert snapshot.skipped == [] and snapshot.warnings == []


def test_hypernetwork_folder_with_damaged_files(tmp_path):
    good = create_hypernetwork("goodnet", tmp_path, sizes=(WIDTH,), seed=1)
    data = good.read_bytes()
    (tmp_path / "truncated.pt").write_bytes(data[: len(data) // 2])
    (tmp_path / "empty.pt").write_bytes(b"")
    (tmp_path / "embedding-not-hn.pt").write_bytes(kit.good_pt(WIDTH))
    (tmp_path / "folder.pt").mkdir()
    (tmp_path / os.fsdecode(b"latin-\xe9.pt")).write_bytes(data)
    library = HypernetworkLibrary(tmp_path)
    started = time.perf_counter()
    unreadable = library.check_all()
    assert time.perf_counter() - started < kit.SECONDS_PER_FILE * 5
    assert library.names() == ["embedding-not-hn", "empty", "goodnet", "truncated"]
    assert set(unreadable) == {"truncated", "empty", "embedding-not-hn", "latin-\ufffd"}
    assert "damaged zip" in unreadable["truncated"] and "empty" in unreadable["empty"]
    assert "is an embedding" in unreadable["embedding-not-hn"] and "UTF-8" in unreadable["latin-\ufffd"]
    assert library.load("goodnet").sizes == [WIDTH]


def test_training_skips_damaged_pictures_and_reads_latin1_captions(tmp_path, demo_model):
    from ti.train import TrainConfig, train_embedding

    kit.prepare_training_folder(tmp_path, "tok")
    data = tmp_path / "data"
    (data / "00005-0-cut.png").write_bytes((data / "00001-0-a red car.png").read_bytes()[:90])
    (data / "00006-0-empty.png").write_bytes(b"")
    config = TrainConfig(name="tok", data_dir=data, width=64, height=64, max_steps=2, save_every=0, preview_every=0,
                         log_dir=str(tmp_path / "logs"), templates_dir=str(kit.REPO_ROOT / "textual_inversion_templates"))
    result = train_embedding(demo_model, config, tmp_path / "embeddings")
    assert result.stop_reason == "finished" and result.step == 2
    assert sorted(s.path.name for s in result.skipped_images) == ["00005-0-cut.png", "00006-0-empty.png"]


def test_training_on_a_picture_with_a_non_utf8_file_name(tmp_path, demo_model):
    from ti.train import TrainConfig, train_embedding

    kit.prepare_training_folder(tmp_path, "tok")
    data = tmp_path / "data"
    (data / os.fsdecode(b"00007-0-caf\xe9 cat.png")).write_bytes((data / "00001-0-a red car.png").read_bytes())
    config = TrainConfig(name="tok", data_dir=data, width=64, height=64, max_steps=2, save_every=0, preview_every=0,
                         template="style_filewords.txt", log_dir=str(tmp_path / "logs"),
                         templates_dir=str(kit.REPO_ROOT / "textual_inversion_templates"))
    assert train_embedding(demo_model, config, tmp_path / "embeddings").step == 2
