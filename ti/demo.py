"""The built-in demo model: a tiny Stable-Diffusion-shaped pipeline made in-process.

No download, ready in a second or two, deterministic (fixed seeds). Its pictures are noise; it
exists so a fresh machine can run every tab end to end, and so tests have a real pipeline.
"""

from __future__ import annotations

import json
import tempfile
from collections import Counter
from functools import lru_cache
from pathlib import Path

import torch

# Words the demo tokenizer learns merges from: prompt and template vocabulary, so that common
# words become single tokens like in CLIP's real vocabulary.
_CORPUS = """
a an the of in on at by with and or photo picture painting drawing rendering illustration style
portrait landscape tree trees monet van gogh art artwork cat dog house car red blue green yellow
black white small large big little old new good bad beautiful nice clean dirty dark bright cool
weird close up cropped one two three four five six seven eight nine ten man woman person face hands
sky sun moon water sea river mountain forest city street flower flowers bird birds fish horse
render detailed high quality low worst best masterpiece blurry sharp light shadow night day
in the style of a photo of a rendition of a painting of a drawing of my your this that
""".split()

_MERGES = 600


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable unicode map (the same table CLIPTokenizer uses)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, chars)))


def learn_bpe_merges(words: list[str], num_merges: int) -> list[tuple[str, str]]:
    """A plain BPE learner over whole words (last symbol carries '</w>', as in CLIP)."""
    word_counts = Counter(words)
    splits = {w: tuple(w[:-1]) + (w[-1] + "</w>",) for w in word_counts}
    merges: list[tuple[str, str]] = []
    for _ in range(num_merges):
        pairs: Counter = Counter()
        for word, symbols in splits.items():
            for pair in zip(symbols, symbols[1:]):
                pairs[pair] += word_counts[word]
        if not pairs:
            break
        # Ties broken by the pair text so the vocabulary is the same on every machine.
        best = min(pairs, key=lambda p: (-pairs[p], p))
        merges.append(best)
        for word, symbols in splits.items():
            out, i = [], 0
            while i < len(symbols):
                if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == best:
                    out.append(symbols[i] + symbols[i + 1])
                    i += 2
                else:
                    out.append(symbols[i])
                    i += 1
            splits[word] = tuple(out)
    return merges


def write_demo_tokenizer_files(folder: Path) -> Path:
    """Write vocab.json + merges.txt in the layout CLIPTokenizer accepts; returns the folder."""
    folder.mkdir(parents=True, exist_ok=True)
    byte_symbols = list(bytes_to_unicode().values())
    vocab_list = byte_symbols + [s + "</w>" for s in byte_symbols]
    merges = learn_bpe_merges(_CORPUS, _MERGES)
    seen = set(vocab_list)
    for a, b in merges:
        merged = a + b
        if merged not in seen:
            vocab_list.append(merged)
            seen.add(merged)
    vocab_list += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {tok: i for i, tok in enumerate(vocab_list)}
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    # transformers 4 drops the first merge line unless it is a '#version' header.
    lines = ["#version: 0.2"] + [f"{a} {b}" for a, b in merges]
    (folder / "merges.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder


@lru_cache(maxsize=1)
def _tokenizer_dir() -> Path:
    return write_demo_tokenizer_files(Path(tempfile.mkdtemp(prefix="ti-demo-tokenizer-")))


def build_demo_tokenizer():
    from transformers import CLIPTokenizer

    # from_pretrained on the folder (transformers 5 ignores vocab_file= given to the constructor).
    tokenizer = CLIPTokenizer.from_pretrained(str(_tokenizer_dir()), model_max_length=77)
    if len(tokenizer) <= 2:  # an empty tokenizer would silently encode everything as nothing
        raise RuntimeError("demo tokenizer came out empty")
    return tokenizer


def build_demo_pipeline(text_width: int = 32, seed: int = 0, scheduler_name: str = "Euler a"):
    """A tiny SD-shaped StableDiffusionPipeline with fixed random weights.

    text_width is the CLIP hidden size (32 for the demo and tests; 768 makes SD1-wide embeddings
    fit, for interop tests). The VAE downsamples by 8 like SD's, so image sizes mean the same.
    """
    from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from ti.samplers import make_scheduler

    tokenizer = build_demo_tokenizer()
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=64,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=text_width,
        attention_head_dim=8,
        norm_num_groups=32,
    )
    torch.manual_seed(seed + 1)
    vae = AutoencoderKL(
        block_out_channels=(8, 8, 16, 16),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4,
        norm_num_groups=8,
        layers_per_block=1,
        sample_size=64,
    )
    torch.manual_seed(seed + 2)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=text_width,
            intermediate_size=text_width * 2,
            num_hidden_layers=5,
            num_attention_heads=4,
            max_position_embeddings=77,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    pipe = StableDiffusionPipeline(
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        scheduler=make_scheduler(scheduler_name, None),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    for module in (unet, vae, text_encoder):
        module.eval().requires_grad_(False)
    return pipe


def build_demo_sdxl_pipeline(seed: int = 0):
    """A tiny SDXL-shaped StableDiffusionXLPipeline with fixed random weights, for tests.

    Its two text encoders are SDXL's real widths (768 and 1280, few and narrow layers), so real
    SDXL embeddings ({clip_l: 768, clip_g: 1280}) fit; the UNet takes SDXL's added conditioning
    (pooled text embeds and the six time ids). Tokenizer 2 pads with "!" (id 0), as SDXL's does.
    """
    from diffusers import AutoencoderKL, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    from ti.samplers import make_scheduler

    tokenizer = build_demo_tokenizer()
    tokenizer_2 = CLIPTokenizer.from_pretrained(str(_tokenizer_dir()), model_max_length=77, pad_token="!")

    def text_config(width: int, heads: int, **extra) -> CLIPTextConfig:
        return CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=width, intermediate_size=64, num_hidden_layers=3,
                              num_attention_heads=heads, max_position_embeddings=77, bos_token_id=tokenizer.bos_token_id,
                              eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, **extra)

    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(text_config(768, 12))
    torch.manual_seed(seed + 1)
    text_encoder_2 = CLIPTextModelWithProjection(text_config(1280, 20, projection_dim=1280))
    torch.manual_seed(seed + 2)
    unet = UNet2DConditionModel(
        sample_size=64, block_out_channels=(32, 64), layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=768 + 1280, attention_head_dim=8, norm_num_groups=32, use_linear_projection=True,
        addition_embed_type="text_time", addition_time_embed_dim=8, projection_class_embeddings_input_dim=6 * 8 + 1280,
    )
    torch.manual_seed(seed + 3)
    vae = AutoencoderKL(
        block_out_channels=(8, 8, 16, 16), in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4, latent_channels=4, norm_num_groups=8, layers_per_block=1,
        sample_size=64, scaling_factor=0.13025, force_upcast=True,
    )
    pipe = StableDiffusionXLPipeline(vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2,
                                     tokenizer=tokenizer, tokenizer_2=tokenizer_2, unet=unet,
                                     scheduler=make_scheduler("Euler", None), add_watermarker=False)
    pipe.set_progress_bar_config(disable=True)
    for module in (unet, vae, text_encoder, text_encoder_2):
        module.eval().requires_grad_(False)
    return pipe
