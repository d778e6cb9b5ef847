"""Training runs on the toy world through our library, and how their results are measured.

A run gives vectors (or a hypernetwork) at several steps and the seconds each step was reached;
`share_curve` generates the same seeds at every step and reports the classifier's share.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from benchmarks.toyworld.data import (CONCEPT_DIGIT, CONCEPT_PHRASE, DIGIT_WORDS, GENERIC_WORD, concept_training_pictures,
                                      load_digits)
from benchmarks.toyworld.world import concept_share, digit_reader, generate

CONCEPT_NAME = "nameless-digit"
EVAL_PROMPT = "a photo of a {}"
TEMPLATES_DIR = Path(__file__).resolve().parents[2] / "textual_inversion_templates"


@dataclass
class Curve:
    label: str
    steps: list[int] = field(default_factory=list)
    shares: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    wall_seconds: float = 0.0
    settings: dict = field(default_factory=dict)


def write_concept_data(folder: Path, count: int, seed: int = 0) -> Path:
    """`count` pictures of the concept as PNGs, and nothing else (diffusers' script reads every file)."""
    folder.mkdir(parents=True, exist_ok=True)
    for index, array in enumerate(concept_training_pictures(count, seed)):
        Image.fromarray(array).save(folder / f"{index:03d}.png")
    return folder


def train_ours(model, work: Path, data_dir: Path, *, steps: int, save_every: int, learning_rate: str,
               batch_size: int, seed: int, template: str = "subject.txt", label: str = "ours",
               vectors_per_token: int = 1) -> tuple[Curve, dict]:
    """Create <CONCEPT_NAME> (init "digit", vectors_per_token vectors) and train it; returns
    (timing, {step: vectors})."""
    from ti.create import create_embedding
    from ti.formats import load_embedding_file
    from ti.train import TrainConfig, train_embedding

    embeddings_dir = work / "embeddings"
    path = create_embedding(model, CONCEPT_NAME, GENERIC_WORD, vectors_per_token, embeddings_dir, overwrite=True)
    vectors = {0: load_embedding_file(path).vectors}
    config = TrainConfig(name=CONCEPT_NAME, data_dir=data_dir, learning_rate=learning_rate, batch_size=batch_size,
                         template=template, **toy_training_options(work, steps, save_every, seed))
    wall, reached = run_timed(train_embedding, model, config, embeddings_dir)
    for copy in sorted((work / "log").glob(f"*/{CONCEPT_NAME}/embeddings/{CONCEPT_NAME}-*.pt")):
        step = int(copy.stem.rsplit("-", 1)[1])
        vectors[step] = load_embedding_file(copy).vectors
    curve = Curve(label, wall_seconds=wall,
                  settings={"learning_rate": learning_rate, "batch_size": batch_size, "template": template})
    curve.seconds = [reached.get(step, wall) for step in sorted(vectors)]
    return curve, vectors


def toy_training_options(work: Path, steps: int, save_every: int, seed: int) -> dict:
    """TrainConfig options every toy-world run shares: 64 px, no previews, logs under work."""
    return dict(templates_dir=str(TEMPLATES_DIR), width=64, height=64, max_steps=steps, save_every=save_every,
                preview_every=0, log_dir=str(work / "log"), seed=seed)


def run_timed(train, model, config, folder: Path) -> tuple[float, dict[int, float]]:
    """train(model, config, folder, hooks); returns (wall seconds, {step: seconds when it was reached})."""
    from ti.train import TrainHooks

    reached: dict[int, float] = {0: 0.0}
    started = time.perf_counter()
    train(model, config, folder, TrainHooks(on_progress=lambda p: reached.setdefault(p.step, time.perf_counter() - started)))
    return time.perf_counter() - started, reached


def share_curve(model, curve: Curve, vectors_by_step: dict, *, samples: int, seed: int) -> Curve:
    """Fill curve.steps/shares: the concept's share in `samples` pictures of EVAL_PROMPT per step."""
    from ti.embedding import Embedding

    curve.steps = sorted(vectors_by_step)
    curve.shares = []
    for step in curve.steps:
        embedding = Embedding(name=CONCEPT_NAME, vectors=vectors_by_step[step].float())
        images = generate(model, EVAL_PROMPT.format(CONCEPT_NAME), samples, seed, {CONCEPT_NAME: embedding})
        curve.shares.append(concept_share(images))
    return curve


def base_rates(model, *, samples: int, seed: int) -> dict[str, float]:
    """The concept's share without any embedding: the generic word, no prompt, and each digit's own word."""
    rates = {f'"{EVAL_PROMPT.format(GENERIC_WORD)}"': concept_share(generate(model, EVAL_PROMPT.format(GENERIC_WORD),
                                                                              samples, seed)),
             '"" (empty prompt)': concept_share(generate(model, "", samples, seed))}
    return rates


def world_quality(model, *, samples: int, seed: int) -> dict[str, float]:
    """For each named digit, the share of "a photo of a <word>" pictures the classifier reads as that
    digit; and for the concept, that share for its description, "a photo of a hollow digit"."""
    reader = digit_reader()
    quality = {}
    for digit, word in [*((d, w) for d, w in enumerate(DIGIT_WORDS) if d != CONCEPT_DIGIT),
                        (CONCEPT_DIGIT, CONCEPT_PHRASE)]:
        images = generate(model, EVAL_PROMPT.format(word), samples, seed)
        quality[word] = float((reader.digits(images) == digit).mean())
    return quality


def real_concept_share() -> float:
    digits = load_digits()
    return float(np.mean(digit_reader().digits(digits.images[digits.labels == CONCEPT_DIGIT]) == CONCEPT_DIGIT))

