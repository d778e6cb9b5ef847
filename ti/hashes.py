"""File hashes as AUTOMATIC1111 computes them (a1111-compat.md §9), cached by mtime."""

from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path

from ti.formats import write_file_atomically

_CHUNK = 1 << 20


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def legacy_model_hash(path: Path) -> str:
    """Pre-2023 A1111 hash: sha256 of 64 KiB at offset 1 MiB, 8 hex digits; 'NOFILE' when missing."""
    try:
        with open(path, "rb") as handle:
            handle.seek(0x100000)
            return hashlib.sha256(handle.read(0x10000)).hexdigest()[:8]
    except FileNotFoundError:
        return "NOFILE"


class HashCache:
    """sha256 of files, remembered by (path, size, mtime) in a JSON file so big checkpoints hash once."""

    def __init__(self, cache_file: Path | None = None):
        self.cache_file = cache_file
        self._lock = threading.Lock()
        self._entries: dict[str, dict] = {}
        if cache_file and cache_file.is_file():
            try:
                self._entries = json.loads(cache_file.read_text(encoding="utf-8")).get("hashes", {})
            except (OSError, ValueError):
                self._entries = {}  # a damaged cache only costs re-hashing

    def sha256(self, path: Path) -> str:
        path = Path(path)
        stat = path.stat()
        key = str(path.resolve())
        with self._lock:
            entry = self._entries.get(key)
            if entry and entry.get("mtime") == stat.st_mtime and entry.get("size") == stat.st_size:
                return entry["sha256"]
        digest = sha256_file(path)
        with self._lock:
            self._entries[key] = {"mtime": stat.st_mtime, "size": stat.st_size, "sha256": digest}
            self._save()
        return digest

    def _save(self) -> None:
        if not self.cache_file:
            return
        write_file_atomically(self.cache_file, json.dumps({"hashes": self._entries}, indent=1).encode("utf-8"))
