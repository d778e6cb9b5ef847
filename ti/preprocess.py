"""Turn a folder of raw pictures into a training set (A1111's Preprocess tab, and better).

For each picture in the source folder (sorted by name; not recursive): load it upright as RGB,
then every enabled mode saves its own outputs — split tiles of an oversized picture, a
focal-point crop, an auto-sized crop, the original size. When no mode applied, the picture is
cover-cropped to width x height. A flipped copy follows each output. Outputs are
`{index:05}-{subindex}-{stem}.png` (index: position of the source file in sorted order), or
`{index:05}-{subindex}-{caption}.png` with `caption_in_filename`; the caption goes to a
sidecar `.txt` of the same name.

Departures from A1111 worth knowing:
- a flipped copy gets the caption of its original (as a training-time flip would), so BLIP
  runs once per piece, not twice;
- existing and new captions are joined with ", " (A1111 used a space, which glues the last tag
  of one to the first words of the other);
- with "copy" and an existing caption, BLIP is not run (A1111 ran it and threw it away);
- an output whose caption is empty gets no .txt, and a stale .txt left by an earlier run under
  the same name is removed, so a new picture never pairs with an old caption;
- unreadable files and pictures no auto-crop size fits are listed with the reason, not dropped
  silently; files are written atomically (temporary name, then rename).
"""

from __future__ import annotations

import io
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from PIL import Image

from ti.crops import auto_size_crop, cover_crop_resize, flip, plan_split, split_oversized
from ti.errors import ConfigError, TIError
from ti.formats import write_file_atomically
from ti.focal_crop import focal_crop, opencv_face_detector
from ti.image_loading import load_image_for_training
from ti.preprocess_config import EXISTING_CAPTION_ACTIONS, PreprocessConfig

__all__ = [
    "EXISTING_CAPTION_ACTIONS", "PreprocessConfig", "PreprocessResult", "SkippedFile", "preprocess_folder",
    "combine_captions", "caption_to_filename", "output_basename",
    "load_image_for_training", "flip", "split_oversized", "focal_crop", "auto_size_crop", "cover_crop_resize",
]  # fmt: skip

CAPTION_SUFFIXES = {".txt"}  # sidecar captions in the source folder: read, never treated as pictures
MAX_FILENAME_CAPTION_BYTES = 180  # keeps "{index}-{sub}-{caption}.png" under the usual 255-byte limit
_UNSAFE_FILENAME_CHARS = re.compile(r'[\\/:*?"<>|\x00-\x1f]')  # forbidden on Windows, or anywhere


class Captioner(Protocol):
    """Anything that describes a picture in one line (BlipCaptioner, or a stand-in in tests)."""

    def caption(self, image: Image.Image) -> str: ...


@dataclass
class SkippedFile:
    """A source file that gave no output, and why."""

    path: Path
    reason: str


@dataclass
class PreprocessResult:
    """What a run did: files written, files skipped with reasons, whether it was cancelled."""

    images: list[Path] = field(default_factory=list)  # written pictures, in order
    captions: list[Path] = field(default_factory=list)  # written .txt files
    skipped: list[SkippedFile] = field(default_factory=list)
    sources_done: int = 0  # source files handled (written or skipped)
    sources_total: int = 0
    cancelled: bool = False
    notes: list[str] = field(default_factory=list)  # run-wide remarks, e.g. face detection off

    def summary(self) -> str:
        """One line for the UI and the CLI."""
        text = f"{self.sources_done} of {self.sources_total} files: "
        text += f"wrote {len(self.images)} pictures and {len(self.captions)} captions"
        if self.skipped:
            text += f", skipped {len(self.skipped)}"
        if self.cancelled:
            text += " (cancelled)"
        return text


ProgressCallback = Callable[[int, int, str], None]  # (files done, files total, file name)


def preprocess_folder(
    config: PreprocessConfig,
    captioner: Captioner | None = None,
    on_progress: ProgressCallback | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> PreprocessResult:
    """Preprocess every picture of config.source into config.destination.

    Args:
        config: the options.
        captioner: describes pictures when config.caption is set; None loads BLIP from
            config.caption_model (pass one in to reuse a loaded model across runs).
        on_progress: called as (done, total, name) before the first file and after each one.
        should_stop: polled before each file; True ends the run, keeping what was written.

    Returns:
        The files written and skipped, and whether the run was cancelled.

    Raises:
        ConfigError: the source folder does not exist.
        TIError: the caption model cannot be loaded; a destination file cannot be written.
    """
    if not config.source.is_dir():
        raise ConfigError("source", f"{config.source} is not a folder")
    result = PreprocessResult()
    if config.caption and captioner is None:
        from ti.captioning import BlipCaptioner

        captioner = BlipCaptioner.from_pretrained(config.caption_model)
    face_detector = None
    if config.focal_crop and config.focal_face_weight > 0:
        face_detector = opencv_face_detector()
        if face_detector is None:
            result.notes.append("faces not looked for in focal crops: OpenCV (opencv-python) is not installed")
    source_files = list_source_files(config.source)
    result.sources_total = len(source_files)
    config.destination.mkdir(parents=True, exist_ok=True)
    _report(on_progress, 0, len(source_files), "")
    for index, source_path in enumerate(source_files):
        if should_stop is not None and should_stop():
            result.cancelled = True
            break
        _preprocess_one(config, index, source_path, captioner if config.caption else None, face_detector, result)
        result.sources_done += 1
        _report(on_progress, result.sources_done, len(source_files), source_path.name)
    return result


def _report(on_progress: ProgressCallback | None, done: int, total: int, name: str) -> None:
    if on_progress is not None:
        on_progress(done, total, name)


def list_source_files(folder: Path) -> list[Path]:
    """The candidate pictures of a folder: its files, sorted by name, minus hidden files and .txt captions."""
    return sorted(
        path for path in folder.iterdir()
        if path.is_file() and not path.name.startswith(".") and path.suffix.lower() not in CAPTION_SUFFIXES
    )  # fmt: skip


def _preprocess_one(config, index, source_path, captioner, face_detector, result: PreprocessResult) -> None:
    """Write every output of one source picture, or record why there is none."""
    try:
        image = load_image_for_training(source_path)
    except TIError as exc:
        result.skipped.append(SkippedFile(source_path, str(exc).removeprefix(f"{source_path}: ")))
        return
    try:
        existing = _read_existing_caption(source_path) if config.existing_caption != "ignore" else None
    except TIError as exc:
        result.skipped.append(SkippedFile(source_path, str(exc)))
        return
    pieces, skip_reason = _pieces(config, image, face_detector)
    if skip_reason and not pieces:
        result.skipped.append(SkippedFile(source_path, skip_reason))
    elif skip_reason:
        result.notes.append(f"{source_path.name}: {skip_reason} (its other outputs were written)")
    subindex = 0
    for piece in pieces:
        caption = _caption_for(piece, config.existing_caption, existing, captioner)
        variants = [piece, flip(piece)] if config.flip else [piece]
        for variant in variants:
            basename = output_basename(index, subindex, source_path.stem, caption if config.caption_in_filename else "")
            _write_output(config.destination, basename, variant, caption, result)
            subindex += 1


def _pieces(config: PreprocessConfig, image: Image.Image, face_detector) -> tuple[list[Image.Image], str]:
    """The outputs of one picture before flipping, and a reason when an enabled mode gave nothing."""
    pieces: list[Image.Image] = []
    handled = False
    skip_reason = ""
    plan = plan_split(image.size, config.width, config.height)
    if config.split and plan.ratio < 1.0 and plan.ratio <= config.split_threshold:
        pieces += split_oversized(image, config.width, config.height, config.split_overlap)
        handled = True
    if config.focal_crop:
        pieces.append(focal_crop(image, config.width, config.height, config.focal_weights(), face_detector))
        handled = True
    if config.auto_crop:
        cropped = auto_size_crop(image, **config.auto_crop_options())
        if cropped is None:
            skip_reason = (
                f"no auto-crop size fits {image.width}x{image.height} within error threshold "
                f"{config.auto_crop_error_threshold}"
            )
        else:
            pieces.append(cropped)
        handled = True
    if config.keep_original_size:
        pieces.append(image)
        handled = True
    if not handled:
        pieces.append(cover_crop_resize(image, config.width, config.height))
    return pieces, skip_reason


def _read_existing_caption(source_path: Path) -> str | None:
    caption_path = source_path.with_suffix(".txt")
    if not caption_path.is_file():
        return None
    try:
        return caption_path.read_text(encoding="utf-8-sig")  # -sig: Notepad's byte-order mark is not caption text
    except (OSError, UnicodeDecodeError) as exc:
        raise TIError(f"{caption_path}: cannot read the caption ({exc})") from exc


def _caption_for(piece: Image.Image, action: str, existing: str | None, captioner: Captioner | None) -> str:
    if action == "copy" and existing and existing.strip():
        return existing.strip()  # the new caption would be thrown away: do not compute it
    new_caption = captioner.caption(piece) if captioner is not None else ""
    return combine_captions(new_caption, existing, action)


def combine_captions(new_caption: str, existing: str | None, action: str) -> str:
    """Merge a new caption with the source's existing one.

    Args:
        new_caption: the captioner's text ("" when captioning is off).
        existing: the source's .txt contents, or None.
        action: "ignore" (new only), "copy" (existing, else new), "prepend" (existing first),
            "append" (existing last).

    Returns:
        The caption, stripped; parts joined with ", ".
    """
    new_caption = (new_caption or "").strip()
    old_caption = (existing or "").strip()
    if action == "ignore" or not old_caption:
        return new_caption
    if action == "copy":
        return old_caption
    parts = [old_caption, new_caption] if action == "prepend" else [new_caption, old_caption]
    return ", ".join(part for part in parts if part)


def caption_to_filename(caption: str, max_bytes: int = MAX_FILENAME_CAPTION_BYTES) -> str:
    """A caption made safe as part of a file name on any system.

    Drops characters Windows forbids and control characters, squeezes whitespace, and cuts at a
    word boundary so the UTF-8 form fits max_bytes (one over-long word is cut mid-word).
    """
    words = [safe for word in caption.split() if (safe := _UNSAFE_FILENAME_CHARS.sub("", word))]
    kept: list[str] = []
    for word in words:
        if len(" ".join(kept + [word]).encode("utf-8")) > max_bytes:
            break
        kept.append(word)
    text = " ".join(kept)
    if not text and words:
        text = words[0].encode("utf-8")[:max_bytes].decode("utf-8", errors="ignore")
    return text.rstrip(" .")  # Windows drops trailing dots and spaces


def output_basename(index: int, subindex: int, stem: str, caption: str = "") -> str:
    """`{index:05}-{subindex}-{caption or stem}`: the file name of an output, without extension."""
    label = caption_to_filename(caption) if caption else ""
    return f"{index:05}-{subindex}-{label or stem}"


def _write_output(destination: Path, basename: str, image: Image.Image, caption: str, result: PreprocessResult) -> None:
    """Save the picture and its caption atomically; remove a stale caption when there is none."""
    image_path = destination / f"{basename}.png"
    caption_path = destination / f"{basename}.txt"
    try:
        encoded = io.BytesIO()
        image.save(encoded, format="PNG")
        write_file_atomically(image_path, encoded.getvalue())
        if caption:
            write_file_atomically(caption_path, caption.encode("utf-8"))
        elif caption_path.exists():
            caption_path.unlink()
    except OSError as exc:
        raise TIError(f"{image_path}: cannot write ({exc})") from exc
    result.images.append(image_path)
    if caption:
        result.captions.append(caption_path)
