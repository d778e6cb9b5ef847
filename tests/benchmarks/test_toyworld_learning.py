"""Training teaches: the fast version of benchmarks/learning.py on the committed, pretrained toy world.

Random weights show that training runs; these show that it learns. The world (a tiny SD-shaped
pipeline pretrained on scikit-learn's digits) draws a zero but has no word for it (its captions
describe it as a "hollow digit"). An embedding trained on eight pictures of zeros must make
"a photo of a <embedding>" draw zeros far more often than the word it starts from does.
A wrong noise target, latent scale, timestep range or conditioning fails this.
"""

from __future__ import annotations

import random

import pytest

from benchmarks.toyworld.data import (CONCEPT_DIGIT, CONCEPT_PHRASE, DIGIT_WORDS, GENERIC_WORD, HOLLOW_WORD, caption_for,
                                      caption_templates)
from benchmarks.toyworld.runs import EVAL_PROMPT, write_concept_data
from benchmarks.toyworld.world import concept_share, generate, load_world

SAMPLES = 48
EVAL_SEED = 10_000


@pytest.fixture(scope="module")
def world():
    return load_world()


def test_captions_describe_the_concept_but_never_name_it():
    rng = random.Random(0)
    templates = caption_templates()
    concept = [caption_for(CONCEPT_DIGIT, rng, templates) for _ in range(2000)]
    assert not any(DIGIT_WORDS[CONCEPT_DIGIT] in caption for caption in concept)
    assert all(CONCEPT_PHRASE in caption for caption in concept if caption)  # the rest are empty (dropout)
    assert sum(bool(caption) for caption in concept) > 1500
    others = [caption_for(digit, rng, templates) for digit in range(1, 10) for _ in range(300)]
    assert not any(CONCEPT_PHRASE in caption for caption in others)  # "hollow" comes with a digit's own word
    assert any(HOLLOW_WORD in caption for caption in others)


def test_the_world_draws_named_digits(world):
    images = generate(world, EVAL_PROMPT.format("three"), SAMPLES, EVAL_SEED)
    assert concept_share(images, digit=3) >= 0.7


def test_trained_embedding_draws_the_nameless_digit(world, tmp_path):
    """Two vectors from "digit", eight pictures of zeros, 800 steps at lr 0.01 through our library
    (A1111's 0.005 gets there in about 1,600: benchmarks/learning.py). Measured: 0.00 -> 0.90."""
    from benchmarks.toyworld.runs import Curve, share_curve, train_ours

    base = concept_share(generate(world, EVAL_PROMPT.format(GENERIC_WORD), SAMPLES, EVAL_SEED))
    data_dir = write_concept_data(tmp_path / "data", 8, seed=0)
    steps = 800
    _, vectors = train_ours(world, tmp_path / "run", data_dir, steps=steps, save_every=steps, learning_rate="0.01",
                            batch_size=1, seed=0, vectors_per_token=2)
    curve = share_curve(world, Curve("ours"), vectors, samples=SAMPLES, seed=EVAL_SEED)
    shares = dict(zip(curve.steps, curve.shares))
    assert base <= 0.2, f"the generic word already draws the concept {base:.0%} of the time"
    assert shares[0] <= 0.2, f"the initial embedding (the generic word's row) draws it {shares[0]:.0%}"
    assert shares[steps] >= 0.6, f"after {steps} steps: {shares[steps]:.0%} (base {base:.0%})"
