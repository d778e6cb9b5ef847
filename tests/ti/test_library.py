"""The embeddings folder: hot reload, skipped files with reasons, duplicates."""

import os
import time

import torch

from ti.embedding import Embedding
from ti.library import EmbeddingLibrary


def write(path, name, n=1, dim=32, fill=None):
    from ti.formats import save_embedding_file

    vectors = torch.full((n, dim), float(fill)) if fill is not None else torch.randn(n, dim)
    path.parent.mkdir(parents=True, exist_ok=True)
    return save_embedding_file(Embedding(name=name, vectors=vectors, step=1), path)


def bump_mtime(path):
    later = time.time() + 5
    os.utime(path, (later, later))


def test_new_changed_and_deleted_files_take_effect(tmp_path):
    library = EmbeddingLibrary(tmp_path, expected_width=32)
    assert library.refresh().embeddings == {}
    write(tmp_path / "one.pt", "one", fill=1)
    write(tmp_path / "sub" / "deeper" / "two.safetensors", "two", n=2)
    snap = library.refresh()
    assert sorted(snap.embeddings) == ["one", "two"]
    # changed in place (same name, new content), in a subfolder too
    write(tmp_path / "one.pt", "one", fill=2)
    bump_mtime(tmp_path / "one.pt")
    assert library.refresh().embeddings["one"].vectors[0, 0] == 2
    (tmp_path / "sub" / "deeper" / "two.safetensors").unlink()
    assert sorted(library.refresh().embeddings) == ["one"]


def test_wrong_width_and_broken_files_are_skipped_with_reasons(tmp_path):
    write(tmp_path / "wide.pt", "wide", dim=768)
    (tmp_path / "empty.pt").write_bytes(b"")
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file at all")
    (tmp_path / "readme.txt").write_text("ignored")
    write(tmp_path / "nan.pt", "nan", fill=float("nan"))
    write(tmp_path / "good.pt", "good")
    snap = EmbeddingLibrary(tmp_path, expected_width=32).refresh()
    assert list(snap.embeddings) == ["good"]
    reasons = {s.path.name: s.reason for s in snap.skipped}
    assert reasons["wide.pt"] == "768 wide; this model needs 32"
    assert "empty" in reasons["empty.pt"]
    assert reasons["junk.safetensors"]
    assert "NaN" in reasons["nan.pt"]
    assert "readme.txt" not in reasons


def test_width_change_rechecks(tmp_path):
    write(tmp_path / "wide.pt", "wide", dim=768)
    library = EmbeddingLibrary(tmp_path, expected_width=32)
    assert library.refresh().embeddings == {}
    library.set_expected_width(768)
    assert list(library.refresh().embeddings) == ["wide"]


def test_duplicate_names_resolved_deterministically_with_warning(tmp_path):
    write(tmp_path / "b" / "same.pt", "same", fill=2)
    write(tmp_path / "same.safetensors", "same", fill=1)
    write(tmp_path / "a" / "same.bin", "same", fill=3)
    snap = EmbeddingLibrary(tmp_path, expected_width=32).refresh()
    assert snap.embeddings["same"].vectors[0, 0] == 1  # the shallowest path wins
    assert len(snap.warnings) == 2 and all("same" in w for w in snap.warnings)


def test_unchanged_folder_is_not_reread(tmp_path, monkeypatch):
    write(tmp_path / "one.pt", "one")
    library = EmbeddingLibrary(tmp_path, expected_width=32)
    library.refresh()
    import ti.formats

    def boom(path):
        raise AssertionError("re-read an unchanged file")

    monkeypatch.setattr(ti.formats, "load_embedding_file", boom)
    assert list(library.refresh().embeddings) == ["one"]
