"""Write a diffusers pipeline as one original-layout (LDM / SGM) checkpoint, for single-file tests.

A1111, ComfyUI and Civitai share checkpoints in the layout of the original Stable Diffusion
code: one file, keys `model.diffusion_model.*` (UNet), `first_stage_model.*` (VAE), and
`cond_stage_model.*` (SD1) or `conditioner.embedders.{0,1}.*` (SDXL: CLIP L in the Hugging Face
layout, OpenCLIP bigG in OpenCLIP's). diffusers reads that layout (`from_single_file`); this is
the way back, driven by the model's own config so the tiny test models convert too (diffusers'
scripts/convert_diffusers_to_original_sdxl.py hard-codes SDXL's 3 levels x 2 layers).
"""

from __future__ import annotations

import torch

_RESNET_PARTS = [("norm1", "in_layers.0"), ("conv1", "in_layers.2"), ("norm2", "out_layers.0"),
                 ("conv2", "out_layers.3"), ("time_emb_proj", "emb_layers.1"), ("conv_shortcut", "skip_connection")]
_UNET_TOP = {"conv_in": "input_blocks.0.0", "time_embedding.linear_1": "time_embed.0",
             "time_embedding.linear_2": "time_embed.2", "conv_norm_out": "out.0", "conv_out": "out.2",
             "add_embedding.linear_1": "label_emb.0.0", "add_embedding.linear_2": "label_emb.0.2"}


def _unet_prefix_map(config) -> dict[str, str]:
    """diffusers prefix -> LDM prefix, from the UNet's config (levels, layers per block, attention)."""
    layers = config.layers_per_block
    levels = len(config.block_out_channels)
    prefixes = {}
    for level, block_type in enumerate(config.down_block_types):
        for j in range(layers):
            ldm = f"input_blocks.{1 + level * (layers + 1) + j}"
            prefixes[f"down_blocks.{level}.resnets.{j}."] = f"{ldm}.0."
            prefixes[f"down_blocks.{level}.attentions.{j}."] = f"{ldm}.1."
        if level < levels - 1:
            prefixes[f"down_blocks.{level}.downsamplers.0.conv."] = f"input_blocks.{(level + 1) * (layers + 1)}.0.op."
    for level, block_type in enumerate(config.up_block_types):
        for j in range(layers + 1):
            ldm = f"output_blocks.{level * (layers + 1) + j}"
            prefixes[f"up_blocks.{level}.resnets.{j}."] = f"{ldm}.0."
            prefixes[f"up_blocks.{level}.attentions.{j}."] = f"{ldm}.1."
        if level < levels - 1:
            slot = 2 if "CrossAttn" in block_type else 1
            prefixes[f"up_blocks.{level}.upsamplers.0."] = f"output_blocks.{level * (layers + 1) + layers}.{slot}."
    prefixes.update({"mid_block.resnets.0.": "middle_block.0.", "mid_block.attentions.0.": "middle_block.1.",
                     "mid_block.resnets.1.": "middle_block.2."})
    return prefixes


def unet_to_ldm(unet) -> dict[str, torch.Tensor]:
    prefixes = _unet_prefix_map(unet.config)
    converted = {}
    for key, tensor in unet.state_dict().items():
        stem, _, leaf = key.rpartition(".")
        if stem in _UNET_TOP:
            converted[f"{_UNET_TOP[stem]}.{leaf}"] = tensor
            continue
        prefix = next(p for p in prefixes if key.startswith(p))
        rest = key[len(prefix):]
        if ".resnets." in prefix:
            for ours, theirs in _RESNET_PARTS:
                if rest.startswith(ours + "."):
                    rest = theirs + rest[len(ours):]
        converted[prefixes[prefix] + rest] = tensor
    return {"model.diffusion_model." + k: v for k, v in converted.items()}


def vae_to_ldm(vae) -> dict[str, torch.Tensor]:
    levels = len(vae.config.block_out_channels)
    renames = []
    for i in range(levels):
        renames += [(f"encoder.down_blocks.{i}.resnets.", f"encoder.down.{i}.block."),
                    (f"encoder.down_blocks.{i}.downsamplers.0.", f"encoder.down.{i}.downsample."),
                    (f"decoder.up_blocks.{i}.resnets.", f"decoder.up.{levels - 1 - i}.block."),
                    (f"decoder.up_blocks.{i}.upsamplers.0.", f"decoder.up.{levels - 1 - i}.upsample.")]
    renames += [("mid_block.resnets.0.", "mid.block_1."), ("mid_block.resnets.1.", "mid.block_2."),
                ("mid_block.attentions.0.", "mid.attn_1."), ("conv_shortcut", "nin_shortcut"),
                ("conv_norm_out", "norm_out")]
    attention = [("group_norm.", "norm."), ("to_q.", "q."), ("to_k.", "k."), ("to_v.", "v."), ("to_out.0.", "proj_out.")]
    converted = {}
    for key, tensor in vae.state_dict().items():
        new = key
        for theirs, ours in renames:
            new = new.replace(theirs, ours)
        if ".attn_1." in new:
            for theirs, ours in attention:
                new = new.replace(".attn_1." + theirs, ".attn_1." + ours)
            if new.endswith(".weight") and tensor.ndim == 2:  # linear in diffusers, 1x1 conv in LDM
                tensor = tensor[:, :, None, None]
        converted["first_stage_model." + new] = tensor
    return converted


def clip_to_ldm(text_encoder, prefix: str) -> dict[str, torch.Tensor]:
    """CLIP ViT-L keys as the original checkpoints hold them (transformers 5 drops `text_model.`)."""
    return {prefix + (k if k.startswith("text_model.") else "text_model." + k): v
            for k, v in text_encoder.state_dict().items()}


def open_clip_to_ldm(text_encoder, prefix: str) -> dict[str, torch.Tensor]:
    """CLIPTextModelWithProjection -> OpenCLIP's layout (q/k/v in one in_proj, projection transposed)."""
    renames = [("text_model.encoder.layers.", "transformer.resblocks."), (".layer_norm1.", ".ln_1."),
               (".layer_norm2.", ".ln_2."), (".mlp.fc1.", ".mlp.c_fc."), (".mlp.fc2.", ".mlp.c_proj."),
               (".self_attn.out_proj.", ".attn.out_proj."), ("text_model.final_layer_norm.", "ln_final."),
               ("text_model.embeddings.token_embedding.weight", "token_embedding.weight"),
               ("text_model.embeddings.position_embedding.weight", "positional_embedding")]
    state = text_encoder.state_dict()
    converted = {}
    for key, tensor in state.items():
        if ".self_attn." in key and key.rsplit(".", 2)[-2] in ("q_proj", "k_proj", "v_proj"):
            if ".q_proj." not in key:
                continue
            layer, leaf = key.split(".self_attn.q_proj.")
            joined = torch.cat([state[f"{layer}.self_attn.{p}_proj.{leaf}"] for p in "qkv"])
            key, tensor = f"{layer}.attn.in_proj_{leaf}", joined
        if key == "text_projection.weight":
            key, tensor = "text_projection", tensor.T.contiguous()
        for theirs, ours in renames:
            key = key.replace(theirs, ours)
        converted[prefix + key] = tensor
    return converted


def pipeline_to_ldm(pipe) -> dict[str, torch.Tensor]:
    """The whole pipeline as one original-layout state dict (SD 1.x or SDXL base)."""
    state = {**unet_to_ldm(pipe.unet), **vae_to_ldm(pipe.vae)}
    if getattr(pipe, "text_encoder_2", None) is not None:
        state.update(clip_to_ldm(pipe.text_encoder, "conditioner.embedders.0.transformer."))
        state.update(open_clip_to_ldm(pipe.text_encoder_2, "conditioner.embedders.1.model."))
    else:
        state.update(clip_to_ldm(pipe.text_encoder, "cond_stage_model.transformer."))
    return {k: v.detach().contiguous() for k, v in state.items()}
