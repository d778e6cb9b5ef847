"""Measurements for benchmarks/train_speed.py, in a fresh process that script starts for them.

    python benchmarks/train_speed_measure.py '[{"model": "tiny", "way": "ours", "preset": "bf16", ...}, ...]'

builds the model once (every spec of one call has the same model, precision and device), runs the
specs in order and prints one JSON line for each: median wall and CPU seconds per step after the
warm-up steps, the first step's wall seconds (with compile_unet, that is where compiling happens),
the peak memory above the built model, the FLOPs torch counts for one step, the weights' bytes.

The ways:
  floor     text encoder forward+backward (gradients into its input embeddings) and UNet
            forward+backward on one fixed, precomputed batch, in the preset's precision, with
            the casts the loop makes (float32 inputs and loss); nothing else at all.
  ours      train_embedding with the preset's options, latents cached once up front.
  uncached  the same loop, but every micro-batch VAE-encodes its images again (a naive loop).

The model is built directly in the preset's dtype (as the CLI loads it with --mixed-precision),
so a run never makes a cast copy of it. Building it once per process instead of once per
measurement saves most of a small model's benchmark time. The peaks stay apart: an untimed
training step first pays what a process pays once (lazy imports, library code paged in, kernel
caches: ~70 MiB, as much as the tiny model's whole step), and before each measurement garbage is
collected, malloc hands freed memory back to the system and the high-water mark is reset
(PeakMemory). A compiled UNet is measured in a process of its own.
"""

from __future__ import annotations

import ctypes
import gc
import json
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from ti.embedding import Embedding  # noqa: E402
from ti.formats import save_embedding_file  # noqa: E402
from ti.pipeline import LoadedModel, demo_sha256  # noqa: E402
from ti.train import TrainConfig, TrainHooks, train_embedding  # noqa: E402
from ti.train.batches import TrainingBatches  # noqa: E402
from ti.train.dataset import iter_prepared_images  # noqa: E402
from ti.train.latents import pixels_to_tensor  # noqa: E402

NAME = "benchtok"
TEMPLATES_DIR = Path(__file__).resolve().parents[1] / "textual_inversion_templates"
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
MIXED_PRECISION = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}  # TrainConfig.mixed_precision


@dataclass(frozen=True)
class Preset:
    """A set of TrainConfig speed options; its precision also picks the floor it is compared with."""

    precision: str  # "fp32" | "bf16" | "fp16": the frozen modules' dtype
    gradient_checkpointing: bool = False
    channels_last: bool = False
    compile_unet: bool = False
    train_encoders: str = "both"  # SDXL: "clip_l" trains te1's half; te2's outputs are cached per chunk


PRESETS = {
    "fp32": Preset("fp32"),
    "bf16": Preset("bf16"),
    "fp16": Preset("fp16"),
    "fp32+gc": Preset("fp32", gradient_checkpointing=True),
    "bf16+gc": Preset("bf16", gradient_checkpointing=True),
    "fp32+cl": Preset("fp32", channels_last=True),
    "bf16+cl": Preset("bf16", channels_last=True),
    "fp16+cl": Preset("fp16", channels_last=True),
    "fp32+compile": Preset("fp32", compile_unet=True),
    "bf16+compile": Preset("bf16", compile_unet=True),
    "fp16+compile": Preset("fp16", compile_unet=True),
    "fp32+clip_l": Preset("fp32", train_encoders="clip_l"),
    "bf16+clip_l": Preset("bf16", train_encoders="clip_l"),
}
SDXL_ONLY_PRESETS = {name for name, preset in PRESETS.items() if preset.train_encoders != "both"}


class PeakMemory:
    """Peak memory above the level at start: CUDA allocator stats; on Linux the kernel's
    resident high-water mark, reset at start (/proc/self/clear_refs), else RSS sampled every 2 ms."""

    def __init__(self, device: torch.device):
        self.device = device
        self.peak_bytes = 0

    @staticmethod
    def _status_bytes(field: str) -> int:
        with open("/proc/self/status") as handle:
            line = next(line for line in handle if line.startswith(field + ":"))
        return int(line.split()[1]) * 1024  # the kernel writes kB

    def __enter__(self) -> "PeakMemory":
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self._base = torch.cuda.memory_allocated()
            return self
        # Memory freed earlier (float32 weights cast to bf16, the previous measurement) but kept
        # by malloc would be reused by the run without showing in the RSS: hand it back first.
        gc.collect()
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except OSError:
            pass
        self._base = self._status_bytes("VmRSS")
        try:
            with open("/proc/self/clear_refs", "w") as handle:
                handle.write("5")  # VmHWM := VmRSS now
            self._thread = None
        except OSError:
            self._max, self._running = self._base, True
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while self._running:
            self._max = max(self._max, self._status_bytes("VmRSS"))
            time.sleep(0.002)

    def __exit__(self, *exc) -> bool:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.peak_bytes = torch.cuda.max_memory_allocated() - self._base
        elif self._thread is None:
            self.peak_bytes = self._status_bytes("VmHWM") - self._base
        else:
            self._running = False
            self._thread.join()
            self.peak_bytes = self._max - self._base
        return False


def build_sd15_shaped(device: torch.device, dtype: torch.dtype) -> LoadedModel:
    """Random weights, SD1.5's shapes: diffusers' default UNet config with cross_attention_dim
    768, a 768-wide 12-layer CLIP text encoder, SD's VAE config. Nothing is downloaded."""
    from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from ti.demo import build_demo_tokenizer
    from ti.samplers import make_scheduler

    tokenizer = build_demo_tokenizer()
    torch.manual_seed(0)
    with torch.device(device):  # initialised where it runs: on a GPU, seconds instead of a CPU init and a copy
        unet = UNet2DConditionModel(cross_attention_dim=768)
        vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4,
                            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                            sample_size=512)
        text_encoder = CLIPTextModel(CLIPTextConfig(
            vocab_size=len(tokenizer), hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
            num_attention_heads=12, max_position_embeddings=77, bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id))
    pipe = StableDiffusionPipeline(unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                                   scheduler=make_scheduler("Euler a", None), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    for module in (unet, vae, text_encoder):
        module.eval().requires_grad_(False)
    pipe.to(device=device, dtype=dtype)
    return LoadedModel(pipe=pipe, name="sd15-shaped-random", source="benchmark", sha256="0" * 64, device=device,
                       dtype=dtype)


def build_sdxl_shaped(device: torch.device, dtype: torch.dtype) -> LoadedModel:
    """Random weights, SDXL base's shapes: its UNet config (320/640/1280 channels, 2048-wide cross
    attention, pooled text and time-id conditioning), CLIP ViT-L (768, 12 layers) and OpenCLIP
    bigG (1280, 32 layers) text encoders, SD's VAE with SDXL's scaling and force_upcast. On a CPU
    it is reduced (SDXL_CPU_REDUCTION): 2 instead of 10 transformer layers in the deepest level
    and 8 of bigG's 32 layers, so a step fits a few seconds; on CUDA it is full size."""
    from diffusers import AutoencoderKL, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from ti.demo import build_demo_tokenizer
    from ti.samplers import make_scheduler

    full = device.type == "cuda"
    tokenizer = build_demo_tokenizer()
    ids = dict(vocab_size=len(tokenizer), max_position_embeddings=77, bos_token_id=tokenizer.bos_token_id,
               eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    with torch.device(device):
        unet = UNet2DConditionModel(
            sample_size=128, block_out_channels=(320, 640, 1280), layers_per_block=2,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            transformer_layers_per_block=(1, 2, 10) if full else (1, 2, 2), attention_head_dim=(5, 10, 20),
            cross_attention_dim=2048, use_linear_projection=True, addition_embed_type="text_time",
            addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816)
        vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4,
                            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                            sample_size=1024, scaling_factor=0.13025, force_upcast=True)
        text_encoder = CLIPTextModel(CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                                    num_attention_heads=12, hidden_act="quick_gelu", **ids))
        text_encoder_2 = CLIPTextModelWithProjection(CLIPTextConfig(
            hidden_size=1280, intermediate_size=5120, num_hidden_layers=32 if full else 8, num_attention_heads=20,
            hidden_act="gelu", projection_dim=1280, **ids))
    pipe = StableDiffusionXLPipeline(vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2,
                                     tokenizer=tokenizer, tokenizer_2=tokenizer, unet=unet,
                                     scheduler=make_scheduler("Euler", None), add_watermarker=False)
    for module in (unet, vae, text_encoder, text_encoder_2):
        module.eval().requires_grad_(False)
    pipe.to(device=device, dtype=dtype)
    return LoadedModel(pipe=pipe, name="sdxl-shaped-random", source="benchmark", sha256="0" * 64, device=device,
                       dtype=dtype)


def build_tiny(device: torch.device, dtype: torch.dtype) -> LoadedModel:
    from ti.demo import build_demo_pipeline

    pipe = build_demo_pipeline()
    pipe.to(device=device, dtype=dtype)
    return LoadedModel(pipe=pipe, name="demo", source="demo", sha256=demo_sha256(pipe), device=device, dtype=dtype,
                       is_demo=True)


BUILDERS = {"tiny": build_tiny, "sd15": build_sd15_shaped, "sdxl": build_sdxl_shaped}


def make_workspace(model: LoadedModel, size: int, num_images: int) -> tuple[Path, Path, Path]:
    root = Path(tempfile.mkdtemp(prefix="ti-train-bench-"))
    data, embeddings = root / "data", root / "embeddings"
    data.mkdir()
    embeddings.mkdir()
    rng = np.random.default_rng(0)
    for index in range(num_images):
        pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(data / f"{index:05d}-0-a red car, blue sky.png")
    vectors = torch.randn(2, model.text_width, generator=torch.Generator().manual_seed(0)) * 0.02
    suffix = ".safetensors" if model.is_sdxl else ".pt"  # where SDXL training looks for it
    save_embedding_file(Embedding(NAME, vectors=vectors, step=0, is_sdxl=model.is_sdxl), embeddings / f"{NAME}{suffix}")
    return root, data, embeddings


class StepClock:
    """Wall and CPU time stamps at step boundaries. Wall time is what a user waits; CPU time (of the
    whole process) leaves out the time other work on a shared machine held the cores, though with
    several threads it counts their spinning while they wait for each other. On CUDA each stamp
    waits for the queued kernels first, or it would come before the step's work is done."""

    def __init__(self, device: torch.device):
        self.device = device
        self.stamps: list[tuple[float, float]] = []

    def stamp(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        self.stamps.append((time.perf_counter(), time.process_time()))

    def result(self, warmup: int) -> dict:
        """Median wall and CPU seconds per step after `warmup` steps; the first step's wall seconds."""
        walls, cpus = (np.diff(column) for column in zip(*self.stamps))
        return {"wall": float(statistics.median(walls[warmup:])), "cpu": float(statistics.median(cpus[warmup:])),
                "first_step": float(walls[0])}


def measure_ours(model: LoadedModel, preset: Preset, size: int, batch_size: int, steps: int, warmup: int,
                 cache: bool) -> dict:
    """train_embedding with the preset's options for warmup + steps steps; FLOPs counted on the
    first (a warm-up step), except with compile_unet: compiled kernels are not torch ops to count."""
    # As many pictures as one batch takes: each is VAE-encoded once up front, which at SD size costs
    # about a step per picture, and which pictures a step trains on does not change its cost.
    root, data, embeddings = make_workspace(model, size, num_images=batch_size)
    config = TrainConfig(name=NAME, data_dir=data, width=size, height=size, batch_size=batch_size,
                         max_steps=warmup + steps, save_every=0, preview_every=0, log_dir=str(root / "logs"),
                         templates_dir=str(TEMPLATES_DIR), mixed_precision=MIXED_PRECISION[preset.precision],
                         gradient_checkpointing=preset.gradient_checkpointing, channels_last=preset.channels_last,
                         compile_unet=preset.compile_unet, train_encoders=preset.train_encoders)
    clock = StepClock(model.device)
    flop_counter = None if preset.compile_unet else FlopCounterMode(display=False)

    def loop_started(text: str) -> None:  # the status line just before the first step
        if text.startswith("training "):
            if flop_counter is not None:
                flop_counter.__enter__()
            clock.stamp()

    def step_done(progress) -> None:
        if progress.step == 1 and flop_counter is not None:
            flop_counter.__exit__(None, None, None)
        clock.stamp()

    hooks = TrainHooks(on_progress=step_done, on_status=loop_started)
    original_micro_batch = TrainingBatches.micro_batch
    if not cache:
        pixels_by_source = {item.path: pixels_to_tensor(item.pixels)
                            for item in iter_prepared_images(data, size, size, False, False)}
        vae, scaling = model.pipe.vae, float(model.pipe.vae.config.scaling_factor)

        def micro_batch_encoding_again(self, step, micro_index, positions=None):
            batch = original_micro_batch(self, step, micro_index, positions)
            indices = self.sample_indices(step, micro_index)[positions or slice(None)]
            pixels = torch.cat([pixels_by_source[self.samples[i].source] for i in indices])
            with torch.no_grad():
                latents = vae.encode(pixels.to(model.device, model.dtype)).latent_dist.sample()
            batch.latents = latents.float() * scaling
            return batch

        TrainingBatches.micro_batch = micro_batch_encoding_again  # benchmark only, restored below
    try:
        with PeakMemory(model.device) as memory:
            train_embedding(model, config, embeddings, hooks)
    finally:
        TrainingBatches.micro_batch = original_micro_batch
        shutil.rmtree(root, ignore_errors=True)
    flops = flop_counter.get_total_flops() if flop_counter is not None else None
    return {**clock.result(warmup), "peak": memory.peak_bytes, "flops": flops}


def measure_floor(model: LoadedModel, size: int, batch_size: int, steps: int, warmup: int) -> dict:
    """Text encoder + UNet forward/backward on one precomputed batch: no data, no optimizer. The
    casts are the loop's: a float32 leaf cast to the model's dtype where the hook splices vectors
    in, the prediction back to float32 for the loss."""
    pipe, device, dtype = model.pipe, model.device, model.dtype
    generator = torch.Generator().manual_seed(0)
    latent_shape = (batch_size, 4, size // 8, size // 8)
    noisy = torch.randn(latent_shape, generator=generator).to(device, dtype)
    noise = torch.randn(latent_shape, generator=generator).to(device)
    timesteps = torch.full((batch_size,), 500, device=device)
    input_ids = pipe.tokenizer(["a painting of a red car, blue sky"] * batch_size, padding="max_length",
                               max_length=77, return_tensors="pt").input_ids.to(device)
    token_embedding = pipe.text_encoder.get_input_embeddings()
    with torch.no_grad():
        fixed_embeds = token_embedding(input_ids).float()

    class LeafEmbedding(torch.nn.Module):  # the text encoder's input embeddings, a float32 leaf with a gradient
        def forward(self, ids):
            return self.leaf.to(dtype)

    leaf_module = LeafEmbedding()

    def sd_floor_step() -> None:
        leaf_module.leaf = fixed_embeds.clone().requires_grad_(True)
        conditioning = pipe.text_encoder(input_ids)[0]
        prediction = pipe.unet(noisy, timesteps, encoder_hidden_states=conditioning).sample
        torch.nn.functional.mse_loss(prediction.float(), noise).backward()

    floor_step = (_sdxl_floor_step(model, input_ids, leaf_module, fixed_embeds, noisy, noise, timesteps, size)
                  if model.is_sdxl else sd_floor_step)
    clock = StepClock(device)
    pipe.text_encoder.set_input_embeddings(leaf_module)
    try:
        with PeakMemory(device) as memory, torch.enable_grad():
            clock.stamp()
            with FlopCounterMode(display=False) as flop_counter:  # the first warm-up step, counted
                floor_step()
            clock.stamp()
            for _ in range(warmup - 1 + steps):
                floor_step()
                clock.stamp()
    finally:
        pipe.text_encoder.set_input_embeddings(token_embedding)
    return {**clock.result(warmup), "peak": memory.peak_bytes, "flops": flop_counter.get_total_flops()}


def _sdxl_floor_step(model, input_ids, leaf_module, fixed_embeds, noisy, noise, timesteps, size):
    """SDXL's floor: both text encoders forward+backward (gradients into each one's input
    embeddings through a float32 leaf, as the hook's splice), their penultimate layers side by
    side, encoder 2's pooled output and the size time ids into the UNet."""
    pipe, dtype = model.pipe, model.dtype
    embedding_2 = pipe.text_encoder_2.get_input_embeddings()
    with torch.no_grad():
        fixed_embeds_2 = embedding_2(input_ids).float()
    leaf_module_2 = type(leaf_module)()
    time_ids = torch.tensor([[size, size, 0, 0, size, size]] * len(input_ids), dtype=dtype, device=input_ids.device)

    def floor_step() -> None:
        leaf_module.leaf = fixed_embeds.clone().requires_grad_(True)
        leaf_module_2.leaf = fixed_embeds_2.clone().requires_grad_(True)
        pipe.text_encoder_2.set_input_embeddings(leaf_module_2)
        try:
            context_1 = pipe.text_encoder(input_ids, output_hidden_states=True).hidden_states[-2]
            out_2 = pipe.text_encoder_2(input_ids, output_hidden_states=True)
        finally:
            pipe.text_encoder_2.set_input_embeddings(embedding_2)
        context = torch.cat([context_1, out_2.hidden_states[-2]], dim=-1)
        prediction = pipe.unet(noisy, timesteps, encoder_hidden_states=context,
                               added_cond_kwargs={"text_embeds": out_2.text_embeds, "time_ids": time_ids}).sample
        torch.nn.functional.mse_loss(prediction.float(), noise).backward()

    return floor_step


def weight_bytes(model: LoadedModel) -> int:
    modules = [model.pipe.unet, model.pipe.vae, model.pipe.text_encoder]
    if model.is_sdxl:
        modules.append(model.pipe.text_encoder_2)
    return sum(t.numel() * t.element_size() for m in modules for t in [*m.parameters(), *m.buffers()])


def measure(model: LoadedModel, spec: dict) -> dict:
    """spec: way, preset, size, batch_size, steps, warmup (see train_speed.py)."""
    preset = PRESETS[spec["preset"]]
    warmup = max(1, spec["warmup"])  # the first step is the one whose FLOPs are counted
    if spec["way"] == "floor":
        result = measure_floor(model, spec["size"], spec["batch_size"], spec["steps"], warmup)
    else:
        result = measure_ours(model, preset, spec["size"], spec["batch_size"], spec["steps"], warmup,
                              cache=spec["way"] == "ours")
    return {**result, "weights": weight_bytes(model)}


def main(specs: list[dict]) -> None:
    first = specs[0]
    precision = PRESETS[first["preset"]].precision
    if any((s["model"], PRESETS[s["preset"]].precision, s["device"]) != (first["model"], precision, first["device"])
           for s in specs):
        raise ValueError("one process measures one model in one precision on one device")
    torch.set_num_threads(first.get("threads") or torch.get_num_threads())
    model = BUILDERS[first["model"]](torch.device(first["device"]), DTYPES[precision])
    # One untimed training step first, so that what a process pays once is in no measurement's peak.
    measure_ours(model, PRESETS[precision], first["size"], batch_size=1, steps=1, warmup=0, cache=True)
    for spec in specs:
        print(json.dumps(measure(model, spec)), flush=True)


if __name__ == "__main__":
    main(json.loads(sys.argv[1]))
