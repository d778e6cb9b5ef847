"""The toy world's pictures and captions (scikit-learn's digits, drawn at 64x64).

Pure data: no model here. Digits are white on black, upsampled 8x with bilinear smoothing, as
RGB in [-1, 1] (SD's range). The concept (CONCEPT_DIGIT, the zero) has no word of its own: its
captions only describe it, as a "hollow digit". Every other digit is captioned by its own word
most of the time and by the generic word otherwise, and the digits with a closed loop (6, 8, 9)
are sometimes "hollow" too, but always with their own word ("a hollow six"). So the world can draw
the concept, and a prompt can reach it only through the meaning of "hollow" without a number:
that is what a learned embedding has to find. (A first design captioned the zero only with the
generic word; no embedding could then do better than "digit", which draws every digit: there was
no context to find. A concept has to be describable, as anything a real model can be taught is.)
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

SIZE = 64
CONCEPT_DIGIT = 0
GENERIC_WORD = "digit"
DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
# How often a named digit's caption uses the generic word instead of its name: high enough that
# "digit" means "any digit" (so the concept's share under it stays near its 1-in-10 base rate).
GENERIC_SHARE = 0.6
EMPTY_CAPTION_SHARE = 0.1  # caption dropout, for classifier-free guidance
HOLLOW_WORD = "hollow"
LOOP_DIGITS = (6, 8, 9)  # "hollow" with their own word, half the time they are named
CONCEPT_PHRASE = f"{HOLLOW_WORD} {GENERIC_WORD}"  # how the concept's captions describe it

# Prompt templates the captions are written with: diffusers' textual_inversion object templates
# and A1111's subject templates together, so both trainers' prompts use words the world knows.
PEER_TEMPLATES = (
    "a photo of a {}", "a rendering of a {}", "a cropped photo of the {}", "the photo of a {}",
    "a photo of a clean {}", "a photo of a dirty {}", "a dark photo of the {}", "a photo of my {}",
    "a photo of the cool {}", "a close-up photo of a {}", "a bright photo of the {}",
    "a cropped photo of a {}", "a photo of the {}", "a good photo of the {}", "a photo of one {}",
    "a close-up photo of the {}", "a rendition of the {}", "a photo of the clean {}",
    "a rendition of a {}", "a photo of a nice {}", "a good photo of a {}", "a photo of the nice {}",
    "a photo of the small {}", "a photo of the weird {}", "a photo of the large {}",
    "a photo of a cool {}", "a photo of a small {}",
)
REPO_ROOT = Path(__file__).resolve().parents[2]


def caption_templates() -> list[str]:
    """Every template as a str.format pattern: the peer's and ours (textual_inversion_templates)."""
    ours = []
    for name in ("subject.txt", "subject_filewords.txt"):
        path = REPO_ROOT / "textual_inversion_templates" / name
        for line in path.read_text(encoding="utf-8").splitlines():
            line = line.strip()
            if line:
                ours.append(line.replace("[name]", "{}").replace("[filewords]", "").replace(" ,", ",").strip(" ,"))
    return sorted(set(PEER_TEMPLATES) | {t for t in ours if "{}" in t})


@dataclass(frozen=True)
class Digits:
    images: torch.Tensor  # (N, 3, 64, 64) in [-1, 1]
    labels: torch.Tensor  # (N,) int64
    small: np.ndarray     # (N, 64) the original 8x8 pictures, 0..16 (what the classifier reads)


def load_digits() -> Digits:
    from sklearn.datasets import load_digits as sklearn_digits

    data = sklearn_digits()
    small = data.images.astype(np.float32)  # (N, 8, 8), 0..16
    return Digits(images=upsample(torch.from_numpy(small) / 16.0), labels=torch.from_numpy(data.target).long(),
                  small=data.data.astype(np.float32))


def upsample(small01: torch.Tensor) -> torch.Tensor:
    """(N, 8, 8) in [0, 1] -> (N, 3, 64, 64) in [-1, 1]."""
    big = F.interpolate(small01[:, None], size=(SIZE, SIZE), mode="bilinear", align_corners=False)
    return (big * 2 - 1).clamp(-1, 1).repeat(1, 3, 1, 1)


def downsample(images: torch.Tensor) -> np.ndarray:
    """(N, 3, 64, 64) in [-1, 1] -> (N, 64) grey 8x8 on the 0..16 scale the classifier knows."""
    grey = ((images.float().clamp(-1, 1) + 1) / 2).mean(dim=1, keepdim=True)
    return (F.adaptive_avg_pool2d(grey, 8) * 16).reshape(len(images), 64).numpy()


def caption_phrases() -> list[str]:
    """Every phrase a caption puts into a template."""
    phrases = {GENERIC_WORD, CONCEPT_PHRASE}
    phrases |= {word for digit, word in enumerate(DIGIT_WORDS) if digit != CONCEPT_DIGIT}
    phrases |= {f"{HOLLOW_WORD} {DIGIT_WORDS[digit]}" for digit in LOOP_DIGITS}
    return sorted(phrases)


def caption_for(label: int, rng: random.Random, templates: list[str]) -> str:
    if rng.random() < EMPTY_CAPTION_SHARE:
        return ""
    if label == CONCEPT_DIGIT:
        return rng.choice(templates).format(CONCEPT_PHRASE)
    if rng.random() < GENERIC_SHARE:
        return rng.choice(templates).format(GENERIC_WORD)
    word = DIGIT_WORDS[label]
    if label in LOOP_DIGITS and rng.random() < 0.5:
        word = f"{HOLLOW_WORD} {word}"
    return rng.choice(templates).format(word)


def concept_training_pictures(count: int, seed: int = 0) -> list[np.ndarray]:
    """`count` pictures of the concept as 64x64 RGB uint8, for a textual-inversion data set."""
    digits = load_digits()
    indices = [i for i, label in enumerate(digits.labels.tolist()) if label == CONCEPT_DIGIT]
    random.Random(seed).shuffle(indices)
    chosen = digits.images[indices[:count]]
    return [((img.permute(1, 2, 0).numpy() + 1) * 127.5).round().clip(0, 255).astype(np.uint8) for img in chosen]


FAINT_INK = 0.5  # the hypernetwork's style: ink at half brightness (the world's digits are full)


def faint(images: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) in [-1, 1], the ink dimmed to FAINT_INK of its brightness."""
    return (images + 1) * FAINT_INK - 1


def faint_training_pictures(count: int, seed: int = 0) -> list[tuple[np.ndarray, int]]:
    """`count` faint pictures of the named digits (the style the world lacks), as (64x64 RGB uint8,
    label), the digits taken in turn."""
    digits = load_digits()
    rng = random.Random(seed)
    by_label = {label: [i for i, l in enumerate(digits.labels.tolist()) if l == label]
                for label in range(10) if label != CONCEPT_DIGIT}
    pictures = []
    for index in range(count):
        label = sorted(by_label)[index % len(by_label)]
        image = faint(digits.images[rng.choice(by_label[label])])
        pictures.append((((image.permute(1, 2, 0).numpy() + 1) * 127.5).round().clip(0, 255).astype(np.uint8), label))
    return pictures
