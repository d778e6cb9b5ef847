"""Captions for training images: the text that fills ``[filewords]`` (a1111-compat.md §6).

An image's caption is its sidecar ``<stem>.txt`` when there is one, else words from its file
name. Tag shuffle and tag dropout then work on the caption's comma-separated tags.

Differences from A1111, on purpose:
- a sidecar caption is stripped of leading and trailing whitespace (A1111 keeps the trailing
  newline most editors add, and trains on it);
- a sidecar that is not UTF-8 is read as Latin-1 rather than stopping the run (A1111 crashes);
- a file-name regex with two or more capture groups is refused (A1111 crashes joining tuples).
"""

from __future__ import annotations

import random
import re
from pathlib import Path

from ti.errors import ConfigError, TIError

CAPTION_SUFFIX = ".txt"
TAG_SEPARATOR = ","

# "00012-0-a red car.png" -> "a red car": the counter prefix A1111's image saver writes.
_NUMBERS_AT_START = re.compile(r"^[-\d]+\s*")


def _compile_word_regex(word_regex: str) -> re.Pattern[str]:
    try:
        pattern = re.compile(word_regex)
    except re.error as error:
        raise ConfigError("filename word regex", f'"{word_regex}" is not a valid regular expression: {error}') from None
    if pattern.groups > 1:
        raise ConfigError(
            "filename word regex",
            f'"{word_regex}" has {pattern.groups} capture groups; use at most one (write (?:...) for the others)',
        )
    return pattern


def _has_surrogates(text: str) -> bool:
    return any("\ud800" <= ch <= "\udfff" for ch in text)


def filewords_from_filename(filename: str, word_regex: str = "", join_string: str = " ") -> str:
    """Caption words from an image's file name, as A1111 makes them.

    The extension and any leading run of digits and dashes (plus the spaces after it) are
    removed: ``"00012-0-a red car.png"`` → ``"a red car"``. With ``word_regex``, the result is
    ``join_string.join(re.findall(word_regex, text))``.

    Args:
        filename: the image's file name (a path works too; only its last part is used).
        word_regex: a regular expression for the words to keep; ``""`` keeps the whole stem.
        join_string: what goes between the words ``word_regex`` found.

    Returns:
        The caption text.

    Raises:
        ConfigError: ``word_regex`` does not compile or has more than one capture group
            (field ``"filename word regex"``).
    """
    stem = Path(filename).stem
    # A file name that is not UTF-8 reaches Python with lone surrogates, which tokenizers refuse:
    # read its bytes as Latin-1 instead, the fallback read_caption uses for sidecars.
    stem = stem.encode("utf-8", "surrogateescape").decode("latin-1") if _has_surrogates(stem) else stem
    text = _NUMBERS_AT_START.sub("", stem)
    if word_regex:
        text = join_string.join(_compile_word_regex(word_regex).findall(text))
    return text


def caption_path_for(image_path: Path) -> Path:
    """Where an image's sidecar caption lives: the same path with ``.txt`` for the extension."""
    return Path(image_path).with_suffix(CAPTION_SUFFIX)


def read_caption(image_path: Path, word_regex: str = "", join_string: str = " ") -> str:
    """The caption for an image: its sidecar ``<stem>.txt`` if present, else its file name's words.

    The sidecar is used as written (``word_regex`` does not apply to it, as in A1111), minus
    leading and trailing whitespace; an empty sidecar gives an empty caption. It is read as
    UTF-8 (a byte-order mark is allowed); a file that is not UTF-8 is read as Latin-1, which
    never fails and keeps Western European text mostly readable.

    Args:
        image_path: the image file.
        word_regex: see ``filewords_from_filename``.
        join_string: see ``filewords_from_filename``.

    Returns:
        The caption text.

    Raises:
        TIError: the sidecar exists but cannot be read.
        ConfigError: a bad ``word_regex`` (only checked when the file name is used).
    """
    caption_path = caption_path_for(image_path)
    if caption_path.exists():
        try:
            raw = caption_path.read_bytes()
        except OSError as error:
            raise TIError(f"{caption_path}: cannot read caption: {error.strerror or error}") from None
        try:
            text = raw.decode("utf-8-sig")
        except UnicodeDecodeError:
            text = raw.decode("latin-1")
        return text.strip()
    return filewords_from_filename(Path(image_path).name, word_regex, join_string)


def apply_tag_operations(caption: str, shuffle: bool, dropout: float, rng: random.Random) -> str:
    """Tag dropout, then tag shuffle, on a comma-separated caption, as A1111 does them.

    The caption is split on ``","`` with each tag's whitespace kept; with ``dropout`` > 0 a tag
    is kept iff ``rng.random() > dropout`` (one draw per tag, in order); with ``shuffle`` the
    tags are put through ``rng.shuffle``; they are joined again with ``","``. With neither, the
    caption comes back unchanged and ``rng`` is not used, so the draws match A1111's for the
    same seed.

    Args:
        caption: the caption, e.g. ``"a cat, sitting, red"``.
        shuffle: shuffle the tags.
        dropout: the chance of dropping each tag, 0 to 1.
        rng: the random source; the result depends only on it and the arguments.

    Returns:
        The new caption.

    Raises:
        ConfigError: ``dropout`` outside 0..1 (field ``"tag dropout"``).
    """
    if not 0.0 <= dropout <= 1.0:  # also refuses NaN
        raise ConfigError("tag dropout", f"must be between 0 and 1, got {dropout}")
    tags = caption.split(TAG_SEPARATOR)
    if dropout != 0:
        tags = [tag for tag in tags if rng.random() > dropout]
    if shuffle:
        rng.shuffle(tags)
    return TAG_SEPARATOR.join(tags)
