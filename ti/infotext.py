"""A1111's generation-parameters text ("infotext"): format and parse (a1111-compat.md §9).

Layout::

    a prompt, which may span
    several lines
    Negative prompt: the negative prompt, which may also
    span several lines
    Steps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1, Size: 512x512, Model hash: 1234567890

The last line holds ``Key: value`` pairs joined by ``", "``; values with ``,``, ``:`` or a line
break are JSON-quoted. A reader takes the last line as parameters when at least three pairs
match A1111's pattern, so an infotext with fewer than three parameters reads back as prompt.

Differences from A1111, on purpose (files stay readable by A1111):
- values that are empty, start with ``"`` or have leading/trailing whitespace are JSON-quoted
  too, so every string value reads back exactly;
- prompt lines are not stripped on reading, and only the first ``Negative prompt:`` line starts
  the negative prompt (A1111 strips every line and the prefix from every such line);
- ``Size`` stays one ``"512x512"`` value (A1111 splits it into ``Size-1``/``Size-2``); see
  ``parse_size``.
A prompt line that itself starts with ``Negative prompt:`` cannot be told apart from the
negative prompt in this format.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from ti.errors import ConfigError
from ti.samplers import SCHEDULE_TYPES

NEGATIVE_PROMPT_PREFIX = "Negative prompt:"
PARAMETER_PATTERN = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
PARAMETER_KEY_PATTERN = re.compile(r"\w[\w \-/]+")
MIN_PARAMETERS_ON_LAST_LINE = 3
PARAMETER_SEPARATOR = ", "
TI_HASHES_KEY = "TI hashes"
AUTOMATIC_SCHEDULE = "Automatic"
# Schedule-type labels A1111 strips off the end of a sampler name ("DPM++ 2M Karras");
# longest first, so "SGM Uniform" is found before "Uniform".
SCHEDULE_TYPE_LABELS = tuple(sorted(
    ("Uniform", "Karras", "Exponential", "Polyexponential", "SGM Uniform", "KL Optimal",
     "Align Your Steps", "Simple", "Normal", "DDIM", "Beta"),
    key=len, reverse=True,
))

_SIZE_PATTERN = re.compile(r"^(\d+)x(\d+)$")
_CHARACTERS_NEEDING_QUOTES = (",", ":", "\n", "\r")
# Beyond this a float's integer form would print digits it does not hold.
_LARGEST_FLOAT_PRINTED_AS_INTEGER = 1e15


def format_parameter_value(value: object) -> str:
    """One parameter value as A1111 writes it, before quoting.

    Floats with no fractional part print as integers (``7.0`` → ``"7"``, as A1111's infotexts
    show ``CFG scale: 7``); other floats print in Python's shortest form (``7.5``); booleans as
    ``True``/``False``; anything else with ``str``.
    """
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        if math.isfinite(value) and value.is_integer() and abs(value) < _LARGEST_FLOAT_PRINTED_AS_INTEGER:
            return str(int(value))
        return repr(value)
    return str(value)


def quote_parameter_value(text: str) -> str:
    """``text`` JSON-quoted when it would not read back as itself unquoted, else unchanged."""
    needs_quotes = (
        text == ""
        or text.startswith('"')
        or text != text.strip()
        or any(character in text for character in _CHARACTERS_NEEDING_QUOTES)
    )
    return json.dumps(text, ensure_ascii=False) if needs_quotes else text


def unquote_parameter_value(text: str) -> str:
    """The inverse of ``quote_parameter_value``; text that is not valid JSON stays as it is."""
    if len(text) >= 2 and text[0] == '"' and text[-1] == '"':
        try:
            unquoted = json.loads(text)
        except json.JSONDecodeError:
            return text
        if isinstance(unquoted, str):
            return unquoted
    return text


def _check_parameter_key(key: object) -> str:
    if not isinstance(key, str) or not PARAMETER_KEY_PATTERN.fullmatch(key) or key != key.strip():
        raise ConfigError(
            "infotext parameter name",
            f"{key!r} cannot be read back; use two or more letters, digits, spaces, '-', '/' or '_', "
            f"starting with a letter or digit",
        )
    return key


def format_infotext(prompt: str, negative_prompt: str, params: Mapping[str, object]) -> str:
    """The infotext A1111 writes into a picture's ``parameters`` text.

    Args:
        prompt: the prompt; may span lines.
        negative_prompt: the negative prompt; its line is left out when it is empty.
        params: ``Key: value`` pairs, written in the mapping's order; None values are left out.

    Returns:
        ``prompt``, then ``"\\nNegative prompt: …"``, then ``"\\n"`` and the pairs joined by
        ``", "`` (nothing for an empty ``params``).

    Raises:
        ConfigError: a key that A1111's pattern would not read back (field
            ``"infotext parameter name"``).
    """
    text = prompt
    if negative_prompt:
        text += f"\n{NEGATIVE_PROMPT_PREFIX} {negative_prompt}"
    pairs = [
        f"{_check_parameter_key(key)}: {quote_parameter_value(format_parameter_value(value))}"
        for key, value in params.items()
        if value is not None
    ]
    if pairs:
        text += "\n" + PARAMETER_SEPARATOR.join(pairs)
    return text


def _parse_parameter_line(line: str) -> dict[str, str]:
    params: dict[str, str] = {}
    for key, raw_value in PARAMETER_PATTERN.findall(line):
        quoted = len(raw_value) >= 2 and raw_value[0] == '"' and raw_value[-1] == '"'
        params[key.strip()] = unquote_parameter_value(raw_value) if quoted else raw_value.rstrip()
    return params


def parse_infotext(text: str) -> tuple[str, str, dict[str, str]]:
    """Split an infotext into prompt, negative prompt and parameters.

    The last line is the parameters line when at least three ``Key: value`` pairs match
    A1111's pattern; otherwise every line is prompt. The first line that starts with
    ``Negative prompt:`` starts the negative prompt, and every line after it up to the
    parameters line belongs to it. Windows line ends are accepted; trailing line breaks are
    ignored.

    Args:
        text: the infotext, e.g. a PNG's ``parameters`` chunk.

    Returns:
        ``(prompt, negative_prompt, params)``; params maps each key to its value as text, with
        quoted values unquoted, in the order they appear.
    """
    lines = text.replace("\r\n", "\n").rstrip("\n").split("\n")
    params: dict[str, str] = {}
    if len(PARAMETER_PATTERN.findall(lines[-1])) >= MIN_PARAMETERS_ON_LAST_LINE:
        params = _parse_parameter_line(lines.pop())
    prompt_lines: list[str] = []
    negative_lines: list[str] | None = None
    for line in lines:
        if negative_lines is None and line.startswith(NEGATIVE_PROMPT_PREFIX):
            first_line = line[len(NEGATIVE_PROMPT_PREFIX):]
            negative_lines = [first_line[1:] if first_line.startswith(" ") else first_line]
        elif negative_lines is not None:
            negative_lines.append(line)
        else:
            prompt_lines.append(line)
    return "\n".join(prompt_lines), "\n".join(negative_lines or []), params


def parse_size(value: str) -> tuple[int, int]:
    """``"512x768"`` → ``(512, 768)``.

    Raises:
        ConfigError: not ``<width>x<height>`` (field ``"Size"``).
    """
    match = _SIZE_PATTERN.match(value.strip())
    if match is None:
        raise ConfigError("Size", f'"{value}" is not <width>x<height>, e.g. 512x512')
    return int(match.group(1)), int(match.group(2))


def _clean_embedding_name(name: str) -> str:
    # A1111 removes ":" and "," from names so that the value splits back into pairs.
    return name.replace(":", "").replace(",", "").strip()


def format_ti_hashes(hashes: Mapping[str, str]) -> str:
    """The ``TI hashes`` value: ``"name: hash, name2: hash2"``, with ``:`` and ``,`` removed
    from names (as A1111 does).

    Raises:
        ConfigError: a name that is empty once cleaned, two names that clean to the same text,
            or a hash that is empty or holds ``:``/``,`` (field ``"TI hashes"``).
    """
    pairs: dict[str, str] = {}
    for name, short_hash in hashes.items():
        clean_name = _clean_embedding_name(name)
        if not clean_name:
            raise ConfigError(TI_HASHES_KEY, f"embedding name {name!r} is empty once ':' and ',' are removed")
        if clean_name in pairs:
            raise ConfigError(TI_HASHES_KEY, f"embedding names {name!r} and another both read as {clean_name!r}")
        short_hash = str(short_hash).strip()
        if not short_hash or any(character in short_hash for character in ",:"):
            raise ConfigError(TI_HASHES_KEY, f"hash {short_hash!r} of {name!r} must be non-empty, without ':' or ','")
        pairs[clean_name] = short_hash
    return PARAMETER_SEPARATOR.join(f"{name}: {short_hash}" for name, short_hash in pairs.items())


def parse_ti_hashes(value: str) -> dict[str, str]:
    """``"tree: 0123456789ab, sky: ba9876543210"`` → ``{"tree": "0123456789ab", ...}``.

    Blank items are skipped.

    Raises:
        ConfigError: an item that is not ``name: hash`` (field ``"TI hashes"``); the message
            quotes it.
    """
    hashes: dict[str, str] = {}
    for item in value.split(","):
        if not item.strip():
            continue
        name, separator, short_hash = item.partition(":")
        if not separator or not name.strip() or not short_hash.strip():
            raise ConfigError(TI_HASHES_KEY, f'"{item.strip()}" in "{value}" is not "name: hash"')
        hashes[name.strip()] = short_hash.strip()
    return hashes


def sampler_and_schedule(params: Mapping[str, str]) -> tuple[str | None, str]:
    """The sampler and schedule type of parsed infotext params, old combined names included.

    Since A1111 1.9 these are two keys (``Sampler: DPM++ 2M, Schedule type: Karras``); older
    infotexts combine them (``Sampler: DPM++ 2M Karras``). Without ``Schedule type``, a known
    schedule label at the end of the sampler name is split off; otherwise the schedule is
    ``"Automatic"`` (the sampler's default). The names are not checked against the samplers
    this program offers.

    Args:
        params: from ``parse_infotext``.

    Returns:
        ``(sampler, schedule_type)``; sampler is None when ``Sampler`` is missing or empty.
    """
    sampler = (params.get("Sampler") or "").strip() or None
    schedule_type = (params.get("Schedule type") or "").strip()
    if schedule_type:
        return sampler, schedule_type
    if sampler is not None:
        for label in SCHEDULE_TYPE_LABELS:
            suffix = " " + label
            if sampler.endswith(suffix) and len(sampler) > len(suffix):
                return sampler[: -len(suffix)].strip(), label
    return sampler, AUTOMATIC_SCHEDULE


@dataclass
class PastedParameters:
    """What an infotext sets in the txt2img form (A1111's "read generation parameters").

    fields: GenerateConfig field -> value, only for what the text gives (plus A1111's defaults
        for Clip skip and Schedule type, which a missing key means).
    unknown: the keys not applied (Model, Hires upscale, …), as written, to show the user.
    problems: values that could not be read; their keys are in unknown too.
    """

    fields: dict[str, object] = field(default_factory=dict)
    unknown: dict[str, str] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


def read_generation_parameters(text: str, known_samplers: Sequence[str] = ()) -> PastedParameters:
    """An infotext -> the txt2img fields it sets (pure; the UI fills its widgets from it).

    known_samplers: the sampler names on offer; another sampler is a problem, not applied.
    """
    prompt, negative, params = parse_infotext(text)
    pasted = PastedParameters(fields={"prompt": prompt, "negative_prompt": negative,
                                      "clip_skip": 1, "schedule_type": AUTOMATIC_SCHEDULE})
    readers = {"Steps": ("steps", int), "CFG scale": ("cfg_scale", float), "Seed": ("seed", int),
               "Clip skip": ("clip_skip", int)}
    for key, value in params.items():
        if key in readers:
            name, convert = readers[key]
            try:
                pasted.fields[name] = convert(value)
            except ValueError:
                pasted.problems.append(f"{key}: {value!r} is not a number")
                pasted.unknown[key] = value
        elif key == "Size":
            try:
                pasted.fields["width"], pasted.fields["height"] = parse_size(value)
            except ConfigError as error:
                pasted.problems.append(str(error))
                pasted.unknown[key] = value
        elif key not in ("Sampler", "Schedule type"):
            pasted.unknown[key] = value
    sampler, schedule_type = sampler_and_schedule(params)
    if sampler is not None:
        if known_samplers and sampler not in known_samplers:
            pasted.problems.append(f"Sampler: {sampler!r} is not one of ours")
            pasted.unknown["Sampler"] = params["Sampler"]
        else:
            pasted.fields["sampler"] = sampler
    if schedule_type in SCHEDULE_TYPES:
        pasted.fields["schedule_type"] = schedule_type
    else:
        pasted.problems.append(f"Schedule type: {schedule_type!r} is not one of ours ({', '.join(SCHEDULE_TYPES)})")
        pasted.unknown["Schedule type"] = schedule_type
    return pasted
