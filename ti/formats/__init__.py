"""Read and write every embedding file kind: .pt, .bin, .safetensors, .png, .webp.

    load_embedding_file(path) -> Embedding          # by suffix; safe; sets source_path, sha256
    save_embedding_file(embedding, path) -> Path    # by suffix; atomic
    save_image_embedding(embedding, path, base_image) -> Path   # .png/.webp around a preview
    describe_embedding(embedding) -> dict           # the `info --json` fields

Pickled files are only ever opened through ti.formats.safe_load.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from PIL import Image

from ti.embedding import Embedding
from ti.errors import BadEmbeddingFile, TIError
from ti.formats.a1111_pt import a1111_pt_bytes, read_pickled_embedding
from ti.formats.diffusers_bin import diffusers_bin_bytes
from ti.formats.payload import HypernetworkNotEmbedding, looks_like_hypernetwork
from ti.formats.png_embed import embed_into_image, image_embedding_bytes, read_image_embedding
from ti.formats.safe_load import MIB, load_torch_file, read_file_bytes, sha256_hex
from ti.formats.safetensors_file import read_safetensors_embedding, safetensors_bytes

EMBEDDING_SUFFIXES = (".pt", ".bin", ".safetensors", ".png", ".webp")
# 75 vectors x 2048 floats is 600 KiB; a checkpoint dropped into embeddings/ is GiBs.
MAX_EMBEDDING_FILE_BYTES = 256 * MIB

_READERS: dict[str, Callable[[bytes, Path], Embedding]] = {
    ".pt": read_pickled_embedding,
    ".bin": read_pickled_embedding,
    ".safetensors": read_safetensors_embedding,
    ".png": read_image_embedding,
    ".webp": read_image_embedding,
}
_WRITERS: dict[str, Callable[[Embedding], bytes]] = {
    ".pt": a1111_pt_bytes,
    ".bin": diffusers_bin_bytes,
    ".safetensors": safetensors_bytes,
    ".png": lambda embedding: image_embedding_bytes(embedding, ".png"),
    ".webp": lambda embedding: image_embedding_bytes(embedding, ".webp"),
}

__all__ = [
    "EMBEDDING_SUFFIXES",
    "HypernetworkNotEmbedding",
    "SaveFailed",
    "describe_embedding",
    "embed_into_image",
    "embedding_file_bytes",
    "image_embedding_bytes",
    "load_embedding_file",
    "load_torch_file",
    "looks_like_hypernetwork",
    "save_embedding_file",
    "save_image_embedding",
    "write_file_atomically",
]


def _suffix_of(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix not in EMBEDDING_SUFFIXES:
        raise BadEmbeddingFile(path, f"unknown embedding file type {path.suffix or '(no suffix)'!r}; expected one of {' '.join(EMBEDDING_SUFFIXES)}")
    return suffix


def load_embedding_file(path: Path) -> Embedding:
    """Read an embedding file of any supported kind.

    Args:
        path: a .pt, .bin, .safetensors, .png or .webp file (suffix case ignored).
    Returns:
        the Embedding, with source_path and sha256 (of the bytes that were parsed) set.
    Raises:
        UnsafeFile: a pickle naming a global outside the allow-list (nothing was run).
        HypernetworkNotEmbedding: an A1111 hypernetwork .pt.
        BadEmbeddingFile: anything else that cannot be read, with the reason.
    """
    path = Path(path)
    if path.is_dir():  # before the suffix check: "is a folder" is the useful message
        raise BadEmbeddingFile(path, "is a folder, not an embedding file")
    reader = _READERS[_suffix_of(path)]
    data = read_file_bytes(path, MAX_EMBEDDING_FILE_BYTES)
    embedding = reader(data, path)
    return dataclasses.replace(embedding, source_path=path, sha256=sha256_hex(data))


def embedding_file_bytes(embedding: Embedding, suffix: str) -> bytes:
    """The bytes save_embedding_file would write for `suffix` (".pt", ".png", …)."""
    suffix = suffix.lower()
    if suffix not in _WRITERS:
        raise BadEmbeddingFile(Path(f"*{suffix}"), f"unknown embedding file type {suffix!r}; expected one of {' '.join(EMBEDDING_SUFFIXES)}")
    return _WRITERS[suffix](embedding)


class SaveFailed(TIError, OSError):
    """A file could not be written (disk full, no permission, read-only folder).

    An OSError too (errno kept), so callers that catch OSError still do; a TIError, so the CLI
    and the page show its one line. The file that was there before is left as it was.
    """

    def __init__(self, path: Path, cause: OSError, existed: bool):
        self.path = str(path)
        if cause.errno == errno.ENOSPC:
            what = "no space left on device"
        elif cause.errno == getattr(errno, "EDQUOT", None):
            what = "disk quota exceeded"
        else:
            what = cause.strerror or str(cause) or type(cause).__name__
        kept = "the previous file is unchanged" if existed else "nothing was written"
        super().__init__(f"{what} while saving {path} ({kept})")
        self.errno, self.strerror, self.filename = cause.errno, cause.strerror, str(path)

    def __str__(self) -> str:  # OSError's own __str__ would print "[Errno 28] …" instead
        return self.args[0]


def write_file_atomically(path: Path, data: bytes) -> Path:
    """Write `data` to `path` so readers see the old file or the new one, never a partial one.

    A temp file in the same folder (same file system, so os.replace is atomic) is written,
    fsynced, given normal permissions, then renamed over `path`; the folder is fsynced so the
    rename survives a crash. The temp name starts with '.' and ends in '.tmp', so folder
    scanners skip it.

    Raises:
        SaveFailed: the folder cannot be made or written (e.g. "no space left on device while
        saving X"); the temp file is removed and `path` keeps its previous content.
    """
    path = Path(path)
    existed = path.exists()
    temp_name = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(handle, "wb") as temp_file:
            temp_file.write(data)
            temp_file.flush()
            os.fsync(temp_file.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temp_name, 0o666 & ~umask)  # mkstemp makes 0600 files; match a normal write
        os.replace(temp_name, path)
    except BaseException as exc:
        if temp_name is not None:
            Path(temp_name).unlink(missing_ok=True)
        if isinstance(exc, OSError) and not isinstance(exc, SaveFailed):
            raise SaveFailed(path, exc, existed) from exc
        raise
    _fsync_folder(path.parent)
    return path


def _fsync_folder(folder: Path) -> None:
    try:
        folder_handle = os.open(folder, os.O_RDONLY)
    except OSError:
        return  # some platforms (Windows) cannot open folders; the rename is still atomic
    try:
        os.fsync(folder_handle)
    except OSError:
        pass  # not supported on this file system; nothing more to do
    finally:
        os.close(folder_handle)


def save_embedding_file(embedding: Embedding, path: Path) -> Path:
    """Write an embedding in the kind its suffix names, atomically.

    Args:
        embedding: what to write; its name is stored where the format has room for it.
        path: .pt (A1111), .bin (diffusers), .safetensors, .png or .webp (lossless).
    Returns:
        the path written.
    Raises:
        BadEmbeddingFile: an unknown suffix.
        SaveFailed (an OSError): the folder is not writable, or the disk is full.
    """
    path = Path(path)
    return write_file_atomically(path, embedding_file_bytes(embedding, _suffix_of(path)))


def save_image_embedding(embedding: Embedding, path: Path, base_image: Image.Image | None = None) -> Path:
    """Write a .png/.webp image embedding around `base_image` (e.g. a training preview), atomically.

    Args:
        embedding: what to store.
        path: a .png (text chunk + pixel layer) or .webp (lossless, pixel layer) file.
        base_image: the picture to wrap; a plain titled canvas when None.
    Returns:
        the path written.
    Raises:
        BadEmbeddingFile: the suffix is not .png or .webp.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".png", ".webp"):
        raise BadEmbeddingFile(path, f"an image embedding must be .png or .webp, not {path.suffix or '(no suffix)'!r}")
    return write_file_atomically(path, image_embedding_bytes(embedding, suffix, base_image))


def describe_embedding(embedding: Embedding) -> dict:
    """The `info --json` fields for an embedding (design.md §5), in that order."""
    return {
        "type": "embedding",
        "name": embedding.name,
        "format": embedding.format,
        "vectors": embedding.num_vectors,
        "dim": embedding.dim,
        "model_family": embedding.model_family,
        "step": embedding.step,
        "checkpoint_hash": embedding.checkpoint_hash,
        "checkpoint_name": embedding.checkpoint_name,
        "sha256": embedding.sha256,
    }
