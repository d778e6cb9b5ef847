"""Pretrain the toy world: `python -m benchmarks.toyworld.build [--out DIR]` (minutes on a CPU).

Two stages, each seeded: the VAE on the digits (reconstruction + SD's tiny KL weight, then
scaling_factor = 1 / std of the latents, as SD's 0.18215 was chosen); then the UNet on the VAE's
latents with SD's noise schedule (scaled_linear 0.00085 to 0.012, 1000 steps, epsilon target),
conditioned on the captions of data.py through a CLIP text encoder that stays frozen, as SD's
CLIP stays frozen while its UNet trains. The encoder keeps its (seeded) initial weights, token rows
scaled up so words differ (make_models): trained
together with the UNet from scratch, its output collapsed to the same context for every caption
(a first build: "three" and "seven" 0.7 apart in a context of norm 46, 6.2 at initialisation)
and the UNet learned to ignore the prompt. Frozen, every word gives a distinct context, as a
pretrained CLIP's do, and each caption's context is computed once. The tokenizer is CLIP's real
BPE (the merges file open_clip_torch ships, in the order OpenAI's SimpleTokenizer builds its
49,408 ids). The build ends by checking that each named digit's prompt draws that digit.
"""

from __future__ import annotations

import argparse
import gzip
import importlib.util
import json
import math
import random
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from benchmarks.toyworld.data import caption_for, caption_phrases, caption_templates, load_digits

WORLD_DIR = Path(__file__).resolve().parent / "model"
TEXT_WIDTH = 32
TOKEN_STD = 1.0  # of the text encoder's token rows (see make_models)


def write_clip_tokenizer(folder: Path) -> None:
    """vocab.json + merges.txt of CLIP's real tokenizer, from open_clip's bpe_simple_vocab_16e6."""
    from ti.demo import bytes_to_unicode

    spec = importlib.util.find_spec("open_clip")  # finds the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("pip install --no-deps open_clip_torch  (only its CLIP merges file is read)")
    bpe = Path(list(spec.submodule_search_locations)[0]) / "bpe_simple_vocab_16e6.txt.gz"
    lines = gzip.open(bpe).read().decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1:49152 - 256 - 2 + 1]]
    symbols = list(bytes_to_unicode().values())
    vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}, ensure_ascii=False), "utf-8")
    (folder / "merges.txt").write_text("\n".join(["#version: 0.2"] + [" ".join(m) for m in merges]) + "\n", "utf-8")
    config = {"model_max_length": 77, "bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>",
              "pad_token": "<|endoftext|>", "unk_token": "<|endoftext|>", "do_lower_case": True,
              "tokenizer_class": "CLIPTokenizer"}
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2), "utf-8")


def make_models():
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, sample_size=64,
                        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                        block_out_channels=(8, 16, 32, 32), layers_per_block=1, norm_num_groups=8)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=49408, hidden_size=TEXT_WIDTH, intermediate_size=4 * TEXT_WIDTH, num_hidden_layers=4,
        num_attention_heads=4, max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=TEXT_WIDTH,
        bos_token_id=49406, eos_token_id=49407, pad_token_id=49407))
    unet = UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
                                block_out_channels=(32, 64),
                                down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
                                cross_attention_dim=TEXT_WIDTH, attention_head_dim=4, norm_num_groups=16)
    # Token rows at std 1 rather than CLIP's initial 0.02: in a random encoder, std-0.02 rows are
    # swamped by the position rows and the layers, and "three" and "seven" come out with cosine
    # 0.95 at their own position; at std 1 it is 0.11, and a word reads the same wherever a
    # template puts it (0.92 between positions 1 and 5), as a trained CLIP's words do.
    with torch.no_grad():
        text_encoder.get_input_embeddings().weight.mul_(TOKEN_STD / 0.02)
    return vae, text_encoder, unet


def sd_noise_scheduler():
    from diffusers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                         beta_schedule="scaled_linear", prediction_type="epsilon", clip_sample=False,
                         steps_offset=1)


def train_vae(vae, images: torch.Tensor, steps: int, batch: int, log) -> float:
    optimizer = torch.optim.AdamW(vae.parameters(), lr=1e-3, weight_decay=0.0)
    generator = torch.Generator().manual_seed(1)
    vae.train()
    for step in range(1, steps + 1):
        x = images[torch.randint(len(images), (batch,), generator=generator)]
        posterior = vae.encode(x).latent_dist
        recon = vae.decode(posterior.sample(generator=generator)).sample
        loss = F.mse_loss(recon, x) + 1e-6 * posterior.kl().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step % 100 == 0 or step == steps:
            log(f"vae step {step}/{steps} mse {F.mse_loss(recon, x).item():.4f}")
    vae.eval()
    with torch.no_grad():
        moments = torch.cat([vae.encode(images[i:i + 256]).latent_dist.mean for i in range(0, len(images), 256)])
    return float(1.0 / moments.std())


def caption_contexts(text_encoder, tokenizer, captions: list[str]) -> torch.Tensor:
    """The frozen text encoder's output for each caption, (len(captions), 77, width)."""
    with torch.no_grad():
        ids = tokenizer(captions, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
        return torch.cat([text_encoder(ids[i:i + 256])[0] for i in range(0, len(ids), 256)])


def train_denoiser(unet, text_encoder, tokenizer, vae, digits, steps: int, batch: int, log) -> None:
    scheduler = sd_noise_scheduler()
    with torch.no_grad():
        dists = [vae.encode(digits.images[i:i + 256]).latent_dist for i in range(0, len(digits.images), 256)]
    mean = torch.cat([d.mean for d in dists])
    std = torch.cat([d.std for d in dists])
    scale = vae.config.scaling_factor
    templates = caption_templates()
    captions = sorted({""} | {t.format(phrase) for t in templates for phrase in caption_phrases()})
    contexts = caption_contexts(text_encoder, tokenizer, captions)
    caption_index = {caption: i for i, caption in enumerate(captions)}
    rng = random.Random(2)
    generator = torch.Generator().manual_seed(3)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=1e-3, weight_decay=1e-2)
    lr_at = lambda step: min(1.0, step / 200) * (0.1 + 0.9 * 0.5 * (1 + math.cos(step / steps * math.pi)))
    unet.train()
    average = None
    for step in range(1, steps + 1):
        index = torch.randint(len(mean), (batch,), generator=generator)
        latents = (mean[index] + std[index] * torch.randn(mean[index].shape, generator=generator)) * scale
        context = contexts[[caption_index[caption_for(int(digits.labels[i]), rng, templates)] for i in index]]
        noise = torch.randn(latents.shape, generator=generator)
        timesteps = torch.randint(0, 1000, (batch,), generator=generator)
        noisy = scheduler.add_noise(latents, noise, timesteps)
        loss = F.mse_loss(unet(noisy, timesteps, context).sample, noise)
        for group in optimizer.param_groups:
            group["lr"] = 1e-3 * lr_at(step)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        optimizer.step()
        average = loss.item() if average is None else 0.98 * average + 0.02 * loss.item()
        if step % 100 == 0 or step == steps:
            log(f"denoiser step {step}/{steps} loss {average:.4f}")
    unet.eval()


def check_world(out: Path, log) -> dict[str, float]:
    """Each named digit's "a photo of a <word>": the share of 32 pictures the classifier reads as it."""
    from benchmarks.toyworld.runs import world_quality
    from benchmarks.toyworld.world import load_world

    quality = world_quality(load_world(out), samples=32, seed=10_000)
    log("each prompt read as its digit: " + ", ".join(f"{k} {v:.2f}" for k, v in quality.items()))
    return quality


def build(out: Path, vae_steps: int, denoiser_steps: int, batch: int) -> Path:
    from diffusers import EulerAncestralDiscreteScheduler, StableDiffusionPipeline
    from transformers import CLIPTokenizer

    started = time.perf_counter()
    log = lambda text: print(f"[{time.perf_counter() - started:6.0f}s] {text}", flush=True)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tokenizer_dir:  # save_pretrained copies it into out/tokenizer
        write_clip_tokenizer(Path(tokenizer_dir))
        tokenizer = CLIPTokenizer.from_pretrained(tokenizer_dir)
    assert len(tokenizer) == 49408, len(tokenizer)
    digits = load_digits()
    vae, text_encoder, unet = make_models()
    scale = train_vae(vae, digits.images, vae_steps, min(batch, 32), log)
    vae.register_to_config(scaling_factor=scale)
    log(f"vae scaling_factor {scale:.4f}")
    vae.requires_grad_(False)
    text_encoder.requires_grad_(False).eval()
    train_denoiser(unet, text_encoder, tokenizer, vae, digits, denoiser_steps, batch, log)
    scheduler = EulerAncestralDiscreteScheduler.from_config(sd_noise_scheduler().config)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.save_pretrained(str(out), safe_serialization=True)
    log(f"saved {out}")
    check_world(out, log)
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=WORLD_DIR)
    parser.add_argument("--vae-steps", type=int, default=500)
    parser.add_argument("--denoiser-steps", type=int, default=4000)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    build(args.out, args.vae_steps, args.denoiser_steps, args.batch)


if __name__ == "__main__":
    main()
