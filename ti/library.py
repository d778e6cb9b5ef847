"""The embeddings folder: scan (recursively), reload what changed, look up by name, list what was skipped."""

from __future__ import annotations

import logging
import os
import stat as stat_module
import threading
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ti.embedding import Embedding
from ti.errors import TIError

log = logging.getLogger(__name__)

_SCAN_SUFFIXES = (".pt", ".bin", ".safetensors", ".png", ".webp")


@dataclass
class SkippedFile:
    """A file the library does not use. In a snapshot, `path` is for people: bytes of the name
    that are not UTF-8 show as U+FFFD."""

    path: Path
    reason: str
    # A readable embedding of the wrong width for this model (A1111 lists these as "skipped").
    embedding: Embedding | None = None


@dataclass
class LibrarySnapshot:
    """What the folder held at the last refresh."""

    embeddings: dict[str, Embedding] = field(default_factory=dict)
    skipped: list[SkippedFile] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def is_utf8_name(text: str) -> bool:
    """False for names with bytes that are not UTF-8 (Python keeps them as lone surrogates)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def printable_text(text: str) -> str:
    """`text` with bytes that are not UTF-8 shown as U+FFFD, for messages and the page.

    Such names come from other systems (latin-1 archives, old Windows); as str they hold lone
    surrogates, which a tokenizer, a JSON encoder (the web page) or a strict console refuses.
    """
    if is_utf8_name(text):
        return text
    try:
        raw = text.encode("utf-8", "surrogateescape")  # the bytes os.fsdecode turned into surrogates
    except UnicodeEncodeError:  # other lone surrogates (from JSON "\ud800" escapes)
        raw = text.encode("utf-8", "surrogatepass")
    return raw.decode("utf-8", "replace")


def printable_path(path: Path) -> Path:
    """printable_text for a path."""
    return path if is_utf8_name(str(path)) else Path(printable_text(str(path)))


def _width_reason(embedding: Embedding, expected_width: int) -> str | None:
    if embedding.is_sdxl and embedding.dim != expected_width:
        return f"SDXL embedding ({embedding.dim} wide, clip_l + clip_g); this model needs {expected_width}"
    if embedding.dim != expected_width:
        return f"{embedding.dim} wide; this model needs {expected_width}"
    return None


class EmbeddingLibrary:
    """Embeddings in a folder, kept in step with the files.

    refresh() is cheap when nothing changed (a stat per file) and re-reads only new or changed
    files, so it runs before every generation: new, edited-in-place and deleted files take
    effect without a restart.
    """

    def __init__(self, folder: Path, expected_width: int | None = None):
        self.folder = Path(folder)
        self.expected_width = expected_width
        self._lock = threading.Lock()
        self._file_cache: dict[Path, tuple[tuple[int, int], Embedding | SkippedFile]] = {}
        self._signature: tuple | None = None
        self.snapshot = LibrarySnapshot()

    def set_expected_width(self, width: int | None) -> None:
        with self._lock:
            if width != self.expected_width:
                self.expected_width = width
                self._signature = None  # force the width check to run again

    def _scan_files(self) -> list[Path]:
        if not self.folder.is_dir():
            return []
        files = []
        seen_folders: set[tuple[int, int]] = set()
        for root, dirs, names in os.walk(self.folder, followlinks=True):
            # Links are followed (A1111 does), so a link to a parent folder would list the same
            # files again at every depth until the path gets too long: walk each folder once.
            try:
                folder_status = os.stat(root)
                folder_id = (folder_status.st_dev, folder_status.st_ino)
            except OSError:
                dirs[:] = []
                continue
            if folder_id in seen_folders:
                dirs[:] = []
                continue
            seen_folders.add(folder_id)
            dirs.sort()
            for name in sorted(names):
                path = Path(root) / name
                lower = name.lower()
                if not lower.endswith(_SCAN_SUFFIXES):
                    continue
                if ".preview." in lower:  # A1111 preview images beside embeddings
                    continue
                files.append(path)
        return files

    def refresh(self, force: bool = False) -> LibrarySnapshot:
        """Re-scan the folder; re-read only files whose size or mtime changed."""
        from ti.formats import load_embedding_file

        with self._lock:
            files = self._scan_files()
            stats: dict[Path, tuple[int, int]] = {}
            for path in files:
                try:
                    st = path.stat()
                except OSError:
                    continue  # vanished between listing and stat
                if not stat_module.S_ISREG(st.st_mode):  # a FIFO or device named x.pt: never opened
                    stats[path] = (-1, 0)
                    continue
                stats[path] = (st.st_size, st.st_mtime_ns)
            signature = (self.expected_width, tuple(sorted((str(p), s) for p, s in stats.items())))
            if not force and signature == self._signature:
                return self.snapshot
            new_cache = {}
            for path, stat in stats.items():
                cached = self._file_cache.get(path)
                if cached and cached[0] == stat and not force:
                    new_cache[path] = cached
                    continue
                if stat[0] == -1:
                    result: Embedding | SkippedFile = SkippedFile(path, "not a regular file (a pipe, socket or device)")
                elif stat[0] == 0:
                    result = SkippedFile(path, "empty file (0 bytes)")
                else:
                    try:
                        result = load_embedding_file(path)
                    except TIError as exc:
                        result = SkippedFile(path, getattr(exc, "reason", str(exc)))
                    except Exception as exc:  # a reader bug must not take the whole library down
                        log.exception("unexpected error reading %s", path)
                        result = SkippedFile(path, f"could not be read ({type(exc).__name__}: {exc})")
                new_cache[path] = (stat, result)
            self._file_cache = new_cache
            self.snapshot = self._build_snapshot()
            self._signature = signature
            return self.snapshot

    def _build_snapshot(self) -> LibrarySnapshot:
        snapshot = LibrarySnapshot()
        # Shallower paths first, then alphabetical: the winner of a duplicate name is predictable.
        ordered = sorted(self._file_cache.items(), key=lambda item: (len(item[0].parts), str(item[0]).lower()))
        owners: dict[str, Path] = {}
        for path, (_, result) in ordered:
            if isinstance(result, SkippedFile):
                snapshot.skipped.append(result)
                continue
            if not is_utf8_name(result.name):
                snapshot.skipped.append(SkippedFile(path, "its name is not valid UTF-8 (a file name from another "
                                                          "system?), so no prompt can use it; rename the file"))
                continue
            reason = _width_reason(result, self.expected_width) if self.expected_width else None
            if reason:
                snapshot.skipped.append(SkippedFile(path, reason, result))
                continue
            if not torch.isfinite(result.vectors).all():
                snapshot.skipped.append(SkippedFile(path, "vectors contain NaN or infinity"))
                continue
            key = result.name.lower()
            if key in owners:
                snapshot.warnings.append(
                    f"two embeddings are named {result.name!r}: using {owners[key]}, ignoring {path}"
                )
                snapshot.skipped.append(SkippedFile(path, f"duplicate name {result.name!r} (using {owners[key]})"))
                continue
            owners[key] = path
            snapshot.embeddings[result.name] = result
        snapshot.embeddings = dict(sorted(snapshot.embeddings.items(), key=lambda kv: kv[0].lower()))
        # What the page and the console show: no lone surrogates from non-UTF-8 folder names.
        snapshot.skipped = sorted((SkippedFile(printable_path(s.path), s.reason, s.embedding) for s in snapshot.skipped),
                                  key=lambda s: str(s.path).lower())
        snapshot.warnings = [printable_text(warning) for warning in snapshot.warnings]
        return snapshot

    def vectors_by_name(self) -> dict[str, torch.Tensor]:
        return {name: emb.vectors for name, emb in self.snapshot.embeddings.items()}


def usable_embeddings(folder: Path | str | None, width: int) -> dict[str, Embedding]:
    """The embeddings of `folder` a model of text width `width` can use, by name ({} without a folder)."""
    if not folder or not Path(folder).is_dir():
        return {}
    return dict(EmbeddingLibrary(Path(folder), expected_width=width).refresh().embeddings)
