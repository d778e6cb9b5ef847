"""Which samples each optimizer step trains on, and everything random about them.

An epoch is a list of micro-batches, each from a single bucket (so its latents stack). The
epoch's order comes from a generator seeded by (seed, epoch); each sample's template line, tag
shuffle, latent sample, timestep and noise from one seeded by (seed, step, micro-batch, sample).
See seeds.py for why.

Batching follows A1111's GroupedBatchSampler: every bucket gets its full batches, the leftovers
are filled by random batches drawn from buckets in proportion to what they have left over, and
the batches are shuffled. An epoch has N // batch_size micro-batches and
N // batch_size // grad_accum optimizer steps; the tail that does not fill an accumulation
group is dropped, as in A1111.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ti.captions import apply_tag_operations
from ti.templates import render_prompt
from ti.train.latents import CachedSample
from ti.train.seeds import derive_seed, generator_for, python_rng_for


@dataclass
class MicroBatch:
    """The inputs of one forward/backward pass."""

    prompts: list[str]
    latents: torch.Tensor  # [B, 4, h, w] float32
    noise: torch.Tensor  # [B, 4, h, w] float32
    timesteps: torch.Tensor  # [B] int64
    loss_weights: torch.Tensor | None  # [B, 1, h, w] float32; None when no sample has alpha weights
    size_conditions: torch.Tensor | None = None  # [B, 6] SDXL time ids of each sample (latents.size_conditions)


@dataclass(frozen=True)
class BatchLayout:
    """Batch sizes after clamping to the dataset, and what an epoch holds."""

    batch_size: int
    grad_accum: int
    batches_per_epoch: int
    steps_per_epoch: int

    @classmethod
    def for_dataset(cls, num_samples: int, batch_size: int, grad_accum: int) -> "BatchLayout":
        """A1111's clamping: batch_size <= N and grad_accum <= N // batch_size."""
        batch_size = max(1, min(batch_size, num_samples))
        batches_per_epoch = num_samples // batch_size
        grad_accum = max(1, min(grad_accum, batches_per_epoch))
        return cls(batch_size, grad_accum, batches_per_epoch, batches_per_epoch // grad_accum)

    def epoch_of(self, step: int) -> tuple[int, int]:
        """(epoch, step within that epoch), both 0-based, for optimizer step `step`."""
        return divmod(step, self.steps_per_epoch)


def plan_epoch(groups: list[list[int]], batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """The micro-batches of one epoch: lists of sample indices, each list from one group."""
    rng = python_rng_for(derive_seed(seed, "epoch", epoch))
    total = sum(len(group) for group in groups)
    num_batches = total // batch_size
    expected = [len(group) / total * num_batches * batch_size for group in groups]
    full_batches = [int(share) // batch_size for share in expected]
    num_filler = num_batches - sum(full_batches)
    # A bucket's chance to supply a filler batch is its share of the leftover samples.
    filler_weights = [share % batch_size for share in expected]
    batches: list[list[int]] = []
    for group, count in zip(groups, full_batches):
        shuffled = list(group)
        rng.shuffle(shuffled)
        batches.extend(shuffled[i * batch_size:(i + 1) * batch_size] for i in range(count))
    for _ in range(num_filler):
        group = rng.choices(groups, weights=filler_weights)[0] if sum(filler_weights) > 0 else rng.choice(groups)
        # Without replacement when the bucket is big enough; A1111 always repeats samples.
        batch = rng.sample(group, batch_size) if len(group) >= batch_size else rng.choices(group, k=batch_size)
        batches.append(batch)
    rng.shuffle(batches)
    return batches


class TrainingBatches:
    """Builds the micro-batches of any step from the cache, identically on every run."""

    def __init__(self, samples: list[CachedSample], layout: BatchLayout, template_lines: list[str], name: str,
                 seed: int, shuffle_tags: bool, tag_dropout: float, num_train_timesteps: int):
        self.samples = samples
        self.layout = layout
        self.template_lines = template_lines
        self.name = name
        self.seed = seed
        self.shuffle_tags = shuffle_tags
        self.tag_dropout = tag_dropout
        self.num_train_timesteps = num_train_timesteps
        by_bucket: dict[tuple[int, int], list[int]] = {}
        for index, sample in enumerate(samples):
            by_bucket.setdefault(sample.bucket, []).append(index)
        self.groups = [by_bucket[bucket] for bucket in sorted(by_bucket)]
        self._planned_epoch: int | None = None
        self._plan: list[list[int]] = []

    def sample_indices(self, step: int, micro_index: int) -> list[int]:
        """Which samples micro-batch `micro_index` of optimizer step `step` uses."""
        epoch, epoch_step = self.layout.epoch_of(step)
        if epoch != self._planned_epoch:
            self._plan = plan_epoch(self.groups, self.layout.batch_size, self.seed, epoch)
            self._planned_epoch = epoch
        return self._plan[epoch_step * self.layout.grad_accum + micro_index]

    def prompt_for(self, sample: CachedSample, step: int, micro_index: int, sample_index: int) -> str:
        """A random template line with [name] and [filewords] (tags shuffled/dropped) filled in."""
        rng = python_rng_for(derive_seed(self.seed, "prompt", step, micro_index, sample_index))
        line = rng.choice(self.template_lines)
        filewords = apply_tag_operations(sample.caption, self.shuffle_tags, self.tag_dropout, rng)
        return render_prompt(line, self.name, filewords)

    def micro_batch(self, step: int, micro_index: int, positions: slice | None = None) -> MicroBatch:
        """Prompts, latents, noise and timesteps of one micro-batch, or of the positions of it one
        process of a data-parallel run computes (parallel.py).

        Sample i of micro-batch j is sample j·batch_size + i of the step's global batch; its
        draws come from (seed, step, j, j·batch_size + i) whoever computes them.
        """
        prompts, latents, noises, timesteps, weights, sizes = [], [], [], [], [], []
        indices = self.sample_indices(step, micro_index)
        for position in range(len(indices))[positions or slice(None)]:
            sample = self.samples[indices[position]]
            sample_index = micro_index * self.layout.batch_size + position
            generator = generator_for(derive_seed(self.seed, "sample", step, micro_index, sample_index))
            latent = sample.latent_for_use(generator)  # draws first, and only for "random"
            timesteps.append(torch.randint(0, self.num_train_timesteps, (1,), generator=generator))
            noises.append(torch.randn(latent.shape, generator=generator, dtype=torch.float32))
            latents.append(latent)
            weights.append(sample.loss_weight)
            sizes.append(sample.size_conditions)
            prompts.append(self.prompt_for(sample, step, micro_index, sample_index))
        stacked_latents = torch.stack(latents)
        device = stacked_latents.device
        loss_weights = None
        if any(weight is not None for weight in weights):
            ones = torch.ones((1, *stacked_latents.shape[2:]), device=device)
            loss_weights = torch.stack([weight if weight is not None else ones for weight in weights])
        size_conditions = (torch.tensor(sizes, dtype=torch.float32, device=device)
                           if all(size is not None for size in sizes) else None)
        return MicroBatch(prompts=prompts, latents=stacked_latents, noise=torch.stack(noises).to(device),
                          timesteps=torch.cat(timesteps).to(device), loss_weights=loss_weights,
                          size_conditions=size_conditions)
