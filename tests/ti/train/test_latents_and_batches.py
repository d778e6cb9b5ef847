"""The latent cache, alpha weights, seeded draws and the batch plan."""

from collections import Counter

import pytest
import torch
from PIL import Image

from ti.train.batches import BatchLayout, TrainingBatches, plan_epoch
from ti.train.dataset import iter_prepared_images
from ti.train.latents import CachedSample, alpha_loss_weight, encode_images
from ti.train.seeds import derive_seed


def test_uniform_alpha_gives_weight_one_not_nan():
    for value in (255, 128, 0):
        weight = alpha_loss_weight(Image.new("L", (64, 64), value))
        assert weight.shape == (1, 8, 8)
        assert torch.equal(weight, torch.ones(1, 8, 8))


def test_alpha_weight_is_shifted_to_zero_and_has_mean_one():
    alpha = Image.new("L", (64, 64), 0)
    alpha.paste(255, (0, 0, 32, 64))  # left half opaque
    weight = alpha_loss_weight(alpha)
    assert float(weight.min()) == 0.0
    assert float(weight.mean()) == pytest.approx(1.0)
    assert float(weight[0, :, :4].min()) == pytest.approx(2.0)


def _encode(vae, folder, method, flip=False, seed=0, with_alpha=False):
    images = iter_prepared_images(folder, 64, 64, no_resize=False, with_alpha=with_alpha)
    return encode_images(vae, images, method, flip, seed, torch.device("cpu"))


def test_latent_cache_methods(tiny_pipe, tmp_path, kit):
    kit.write_images(tmp_path, 2)
    scaling = tiny_pipe.vae.config.scaling_factor
    deterministic, _ = _encode(tiny_pipe.vae, tmp_path, "deterministic")
    once, _ = _encode(tiny_pipe.vae, tmp_path, "once")
    once_again, _ = _encode(tiny_pipe.vae, tmp_path, "once")
    once_other_seed, _ = _encode(tiny_pipe.vae, tmp_path, "once", seed=1)
    random_samples, _ = _encode(tiny_pipe.vae, tmp_path, "random")
    assert deterministic[0].latent.shape == (4, 8, 8) and deterministic[0].latent_std is None
    with torch.no_grad():
        pixels = torch.from_numpy(__import__("numpy").asarray(Image.open(deterministic[0].source), dtype="float32"))
        mean = tiny_pipe.vae.encode((pixels / 127.5 - 1).permute(2, 0, 1)[None]).latent_dist.mean[0]
    assert torch.allclose(deterministic[0].latent, mean * scaling, atol=1e-5)
    assert torch.equal(once[0].latent, once_again[0].latent)  # seeded per file
    assert not torch.equal(once[0].latent, once_other_seed[0].latent)
    assert not torch.equal(once[0].latent, deterministic[0].latent)
    assert random_samples[0].latent_std is not None
    first = random_samples[0].latent_for_use(torch.Generator().manual_seed(1))
    second = random_samples[0].latent_for_use(torch.Generator().manual_seed(2))
    assert not torch.equal(first, second)


def test_flip_adds_a_separately_encoded_mirror_and_unreadable_files_are_listed(tiny_pipe, tmp_path, kit):
    kit.write_images(tmp_path, 2, mode="RGBA")
    (tmp_path / "zz-broken.jpg").write_bytes(b"nope")
    samples, skipped = _encode(tiny_pipe.vae, tmp_path, "deterministic", flip=True, with_alpha=True)
    assert [(s.source.name[:5], s.flipped) for s in samples] == [("00000", False), ("00000", True),
                                                                  ("00001", False), ("00001", True)]
    assert not torch.allclose(samples[0].latent.flip(-1), samples[1].latent)  # not just a mirrored latent
    assert torch.allclose(samples[0].loss_weight.flip(-1), samples[1].loss_weight)
    assert [s.path.name for s in skipped] == ["zz-broken.jpg"]


def test_derive_seed_is_stable_and_63_bit():
    assert derive_seed(0, "sample", 1, 0, 0) == derive_seed(0, "sample", 1, 0, 0)
    assert derive_seed(0, "sample", 1, 0, 0) != derive_seed(0, "sample", 1, 0, 1)
    assert 0 <= derive_seed(2**62, "x") < 2**63
    # Fixed forever: the same seed must give the same run on every machine and Python version.
    assert derive_seed(0, "epoch", 0) == 5812092373217861684


def test_layout_clamps_like_a1111():
    assert BatchLayout.for_dataset(10, 4, 1) == BatchLayout(4, 1, 2, 2)
    assert BatchLayout.for_dataset(3, 8, 5) == BatchLayout(3, 1, 1, 1)
    layout = BatchLayout.for_dataset(10, 2, 2)
    assert (layout.batches_per_epoch, layout.steps_per_epoch) == (5, 2)  # the odd batch is dropped
    assert layout.epoch_of(0) == (0, 0) and layout.epoch_of(3) == (1, 1)


def test_epoch_plan_groups_by_bucket_and_is_seeded():
    groups = [[0, 1, 2, 3, 4], [5, 6, 7], [8]]
    plan = plan_epoch(groups, 2, seed=0, epoch=0)
    assert len(plan) == 9 // 2
    for batch in plan:
        assert len(batch) == 2
        assert any(set(batch) <= set(group) for group in groups)  # one bucket per batch
    assert plan == plan_epoch(groups, 2, seed=0, epoch=0)
    assert plan != plan_epoch(groups, 2, seed=0, epoch=1) or plan != plan_epoch(groups, 2, seed=1, epoch=0)
    whole = plan_epoch([list(range(6))], 3, seed=5, epoch=2)
    assert Counter(i for batch in whole for i in batch) == Counter(range(6))  # each sample once


def _fake_samples(count):
    return [CachedSample(source=__import__("pathlib").Path(f"{i}.png"), flipped=False, caption=f"tag{i}, red, blue",
                         bucket=(64, 64), latent=torch.full((4, 8, 8), float(i)), latent_std=None, loss_weight=None)
            for i in range(count)]


def test_micro_batches_depend_only_on_step_and_position():
    def batches():
        layout = BatchLayout.for_dataset(6, 2, 2)
        return TrainingBatches(_fake_samples(6), layout, ["a photo of [name], [filewords]", "[name] art"], "tok",
                               seed=3, shuffle_tags=True, tag_dropout=0.3, num_train_timesteps=1000)

    fresh, used = batches(), batches()
    for step in range(4):  # walk through two epochs first
        used.micro_batch(step, 0)
    late_fresh, late_used = fresh.micro_batch(3, 1), used.micro_batch(3, 1)
    assert late_fresh.prompts == late_used.prompts
    assert torch.equal(late_fresh.noise, late_used.noise) and torch.equal(late_fresh.timesteps, late_used.timesteps)
    assert torch.equal(late_fresh.latents, late_used.latents)
    assert all("tok" in prompt for prompt in late_fresh.prompts)
    assert late_fresh.latents.shape == (2, 4, 8, 8) and late_fresh.loss_weights is None
    assert not torch.equal(fresh.micro_batch(0, 0).noise, fresh.micro_batch(0, 1).noise)
    assert 0 <= int(late_fresh.timesteps.min()) and int(late_fresh.timesteps.max()) < 1000


def test_an_fp16_vae_that_asks_for_upcast_encodes_the_cache_in_float32(tiny_pipe, tmp_path, kit):
    """SDXL's VAE overflows in fp16 and says so (force_upcast): its latents must come out finite,
    equal to a float32 encode, and the shared VAE must be fp16 again afterwards."""
    import copy

    from ti.train.speed import cast_copy

    kit.write_images(tmp_path, 2)
    loud = copy.deepcopy(tiny_pipe.vae)
    with torch.no_grad():
        weight = loud.encoder.conv_in.weight
        weight.mul_(3e4 / weight.abs().max())  # each weight fits fp16; their sums pass its 65504
    vae16 = cast_copy(loud, torch.float16)
    vae16.register_to_config(force_upcast=False)
    overflowed, _ = _encode(vae16, tmp_path, "deterministic")
    assert not all(torch.isfinite(sample.latent).all() for sample in overflowed)  # the trap is real

    vae16.register_to_config(force_upcast=True)
    upcast, _ = _encode(vae16, tmp_path, "deterministic")
    reference, _ = _encode(cast_copy(vae16, torch.float32), tmp_path, "deterministic")
    assert vae16.dtype == torch.float16
    for got, want in zip(upcast, reference):
        assert torch.isfinite(got.latent).all()
        assert torch.equal(got.latent, want.latent)
