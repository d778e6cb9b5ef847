"""Random draws keyed by what they are for, so a run can be resumed or split exactly.

Every random choice of a training run (the epoch's batch order, each sample's noise, timestep,
template line and tag shuffle, each "once" latent sample) comes from a generator seeded by a
hash of the run's seed and the draw's coordinates, e.g. (seed, "sample", step, micro-batch,
sample). Nothing depends on how many draws came before, so:

- resuming needs only the step (plus vectors and optimizer state): no RNG state to save;
- several processes can each build their share of a batch and get the same numbers (issue 7);
- a preview (which uses the global RNG) cannot shift the training draws.
"""

from __future__ import annotations

import hashlib
import random

import torch

SEED_BITS = 63


def derive_seed(*parts: object) -> int:
    """A 63-bit seed from the given parts (ints, strings, bools), the same on every machine.

    blake2b over the parts' repr: Python's hash() is salted per process, so it cannot be used.
    """
    digest = hashlib.blake2b(repr(parts).encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << SEED_BITS) - 1)


def generator_for(seed: int) -> torch.Generator:
    """A CPU torch generator seeded with `seed` (draws are made on the CPU, then moved, so a
    seed gives the same numbers on every device)."""
    return torch.Generator(device="cpu").manual_seed(seed)


def python_rng_for(seed: int) -> random.Random:
    """A Python RNG for list choices (template lines, tag shuffles, batch order)."""
    return random.Random(seed)
