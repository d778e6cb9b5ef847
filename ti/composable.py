"""Composable prompts (A1111's `AND`): one prompt, several conditionings, each with a weight.

`a castle AND a dragon:0.6` is two subprompts; the UNet runs on each and on the negative prompt,
and the guided prediction is

    uncond + sum_i weight_i * cfg_scale * (cond_i - uncond)

(A1111's CFGDenoiser.combine_denoised). A1111 splits the raw prompt on the word `AND` (capitals,
whole word) before anything else, so each subprompt has its own prompt editing; a number after a
colon at the very end of a subprompt is its weight, whether or not there is an `AND`: a prompt
ending in `:1.5` is guided 1.5 times as strongly, in A1111 and here. The negative prompt is not
split (A1111 encodes it as one text, `AND` included).
"""

from __future__ import annotations

import re
from typing import NamedTuple

# A1111's own expressions (modules/prompt_parser.py), so prompts split where its do.
AND_SEPARATOR = re.compile(r"\bAND\b")
TRAILING_WEIGHT = re.compile(r"^((?:\s|.)*?)(?:\s*:\s*([-+]?(?:\d+\.?|\d*\.\d+)))?\s*$")


class Subprompt(NamedTuple):
    text: str
    weight: float


def split_composable(prompt: str) -> list[Subprompt]:
    """The subprompts of a prompt and their weights, as A1111's get_multicond_prompt_list.

    Subprompts with the same text are kept apart (A1111 encodes such a text once and adds each
    weight: the same sum)."""
    parts = []
    for subprompt in AND_SEPARATOR.split(prompt):
        match = TRAILING_WEIGHT.search(subprompt)
        text, weight = match.groups() if match is not None else (subprompt, None)
        parts.append(Subprompt(text, float(weight) if weight is not None else 1.0))
    return parts
