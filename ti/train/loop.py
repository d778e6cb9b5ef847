"""The training loop: one function for embeddings and hypernetworks, read top to bottom (design.md §4).

    1. Where we start: the target's file and step, the schedules, the template.
    2. Data: images -> buckets -> latents, encoded once.
    3. What trains: the target's parameters, its optimizer and the state saved beside its file.
    4. The log folder's settings file.
    5. Steps: stop check, schedule, micro-batches (prompt -> conditioning -> UNet -> MSE),
       NaN check (the target rolls back), clip, optimizer step, CSV, progress, saves and previews.
    6. The final save to the target's file, and the result.

What differs between an embedding and a hypernetwork (which tensors train, how prompts become
conditioning, how the UNet forward is wrapped, where copies go, how a NaN is rolled back) is the
target's (target.py, embedding_target.py, hypernetwork_target.py). The UNet, VAE and text
encoder stay frozen throughout; the precision they run in and the UNet's speed options are the
run model's (speed.py). Launched as several processes, each takes its share of every batch and
the main process alone writes (parallel.py).

    train_embedding(model, config, embeddings_dir, hooks, parallel) -> TrainResult
    train_hypernetwork(model, config, hypernetwork_dir, hooks, parallel) -> TrainResult
    run_training(model, config, target, hooks, parallel) -> TrainResult
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import time
from collections import deque
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import torch
from torch import nn

from ti.errors import TrainingError
from ti.conditioning import Conditioning
from ti.locks import module_lock, move_module
from ti.sampling import sdxl_time_ids
from ti.pipeline import LoadedModel
from ti.schedule import ScheduleSegment, parse_schedule, schedule_end, value_at
from ti.templates import read_template
from ti.train.batches import BatchLayout, MicroBatch, TrainingBatches
from ti.train.config import TrainConfig
from ti.train.dataset import iter_prepared_images, list_image_files
from ti.train.embedding_target import EmbeddingTarget
from ti.train.hooks import STOP_FINISHED, STOP_INTERRUPTED, STOP_NAN, TrainHooks, TrainProgress, TrainResult
from ti.train.latents import encode_images
from ti.train.logdir import TrainLogDir, run_settings
from ti.train.parallel import SINGLE_PROCESS, DataParallel
from ti.train.speed import model_for_training
from ti.train.target import TrainingTarget

log = logging.getLogger(__name__)

_TIMING_WINDOW = 20  # steps averaged for seconds_per_step


def train_embedding(model: LoadedModel, config: TrainConfig, embeddings_dir: Path,
                    hooks: TrainHooks | None = None, parallel: DataParallel = SINGLE_PROCESS) -> TrainResult:
    """Train embeddings_dir/<config.name>.pt on config.data_dir; resumes from the step it holds.

    Returns:
        TrainResult: stop_reason "finished" (schedule done; also when there was nothing left to
        do), "interrupted" (hooks.should_stop) or "nan" (last good vectors kept). In every case
        embeddings_dir/<name>.pt holds the vectors and step reached, with its .optim beside it.
    Raises:
        TrainingError: no such embedding, wrong width, no usable image, an inpainting model.
        Any other exception ends the run after saving the vectors of the last completed step.
    """
    with model_for_training(model, config) as run_model:
        return run_training(run_model, config, EmbeddingTarget(run_model, config, embeddings_dir), hooks, parallel)


def train_hypernetwork(model: LoadedModel, config: TrainConfig, hypernetwork_dir: Path,
                       hooks: TrainHooks | None = None, parallel: DataParallel = SINGLE_PROCESS) -> TrainResult:
    """Train hypernetwork_dir/<config.name>.pt on config.data_dir; resumes from the step it holds.

    Use HypernetworkTrainConfig for A1111's hypernetwork defaults (learning rate 0.00001,
    hypernetwork.txt). Copies go to hypernetwork_dir/<name>-<step>.pt (+ .optim) every
    save_every steps; previews and hypernetwork_loss.csv to the log folder.

    Returns:
        TrainResult: as train_embedding; after a NaN the hypernetwork and its optimizer state are
        rolled back to the last good copy (or the start file) and saved as <name>.pt.
    Raises:
        TrainingError: no such hypernetwork, one with no module for this model's attention
        widths, no usable image, an inpainting model. Any other exception ends the run after
        saving the weights of the last completed step.
    """
    from ti.train.hypernetwork_target import HypernetworkTarget

    with model_for_training(model, config) as run_model:
        return run_training(run_model, config, HypernetworkTarget(run_model, config, hypernetwork_dir), hooks,
                            parallel)


def run_training(model: LoadedModel, config: TrainConfig, target: TrainingTarget,
                 hooks: TrainHooks | None = None, parallel: DataParallel = SINGLE_PROCESS) -> TrainResult:
    """The loop itself, over any TrainingTarget (see train_embedding for what it returns and raises).

    With several processes (parallel), config.batch_size is each process's share of a micro-batch.
    """
    hooks = hooks or TrainHooks()
    writes = parallel.is_main  # only the main process writes files
    started = dt.datetime.now()
    pipe = model.pipe

    # 1. Where we start: the target's step, and the schedules (parsed from step 0, so
    #    value_at(step) is the same whether or not this run is a resume).
    final_path = target.path
    start_step = step = target.start_step
    parallel.same_everywhere(start_step, f"the step {final_path} holds")
    lr_segments = parse_schedule(config.learning_rate, config.max_steps, what="learning rate")
    end_step = schedule_end(lr_segments)
    if step >= end_step:
        limit = "max_steps" if end_step == config.max_steps else "the learning rate schedule's last step"
        return TrainResult(step=step, path=final_path, stop_reason=STOP_FINISHED, log_dir=None, start_step=step,
                           message=f"{config.name} is already trained to step {step}, and {limit} is {end_step}: "
                                   f"nothing to do. Raise it to train further.")
    clip_segments = (parse_schedule(config.clip_value, config.max_steps, what="gradient clip value")
                     if config.clip_grad != "none" else None)
    if pipe.unet.config.in_channels != 4:
        raise TrainingError(f"{model.name}: the UNet takes {pipe.unet.config.in_channels} input channels "
                            f"(an inpainting model?); train {target.kind}s on a regular model")
    template_lines = read_template(config.template_path())
    target.check(template_lines, config.template_path())

    with _frozen(pipe.unet, pipe.vae, pipe.text_encoder), torch.enable_grad():
        # 2. Data: each image fitted to its bucket and VAE-encoded once, here, never per step.
        num_files = len(list_image_files(config.data_dir))
        hooks.status(f"encoding {num_files} training images from {config.data_dir}")
        images = iter_prepared_images(config.data_dir, config.width, config.height, config.no_resize,
                                      config.alpha_weight, config.filewords_regex, config.filewords_join)
        samples, skipped = encode_images(pipe.vae, images, config.latent_sampling, config.flip, config.seed,
                                         model.device,
                                         on_image=lambda done, path: hooks.status(f"encoded {done}/{num_files}: {path.name}"))
        for item in skipped:
            log.warning("skipped %s: %s", item.path, item.reason)
        if not samples:
            reasons = "; ".join(f"{s.path.name}: {s.reason}" for s in skipped[:5])
            raise TrainingError(f"{config.data_dir}: no usable training image" + (f" ({reasons})" if reasons else ""))
        layout = BatchLayout.for_dataset(len(samples), config.batch_size * parallel.num_processes, config.grad_accum)
        if layout.batch_size % parallel.num_processes:
            raise TrainingError(f"{config.data_dir}: {len(samples)} training samples are fewer than batch size "
                                f"{config.batch_size} × {parallel.num_processes} processes; lower the batch size")
        my_share = parallel.share(layout.batch_size)
        notes = _layout_notes(config, layout, len(samples), parallel.num_processes)
        noise_scheduler = _noise_scheduler(pipe)
        batches = TrainingBatches(samples, layout, template_lines, config.name, config.seed, config.shuffle_tags,
                                  config.tag_dropout, noise_scheduler.config.num_train_timesteps)

        # 3. What trains: the target's float32 Parameters and optimizer, resumed from the state
        #    saved beside its file when that state belongs to exactly this file and step.
        parameters = target.parameters()
        optimizer = target.make_optimizer(value_at(lr_segments, step))
        # fp16 gradients underflow without loss scaling (bf16 and fp32 have the range to spare).
        grad_scaler = torch.amp.GradScaler(model.device.type) if model.dtype == torch.float16 else None
        resume = target.resume(optimizer, grad_scaler)
        parallel.copy_from_main(parameters)  # identical on every process from the first step
        if resume.note:
            notes.append(resume.note)
        if resume.seed is not None and resume.seed != config.seed:
            notes.append(f"the previous run used seed {resume.seed}, this one {config.seed}: not an exact continuation")

        # 4. The log folder, with the settings this run used.
        log_dir = TrainLogDir.for_run(Path(config.log_dir), config.name, started, target.loss_csv_name) if writes else None
        if writes:
            settings = run_settings(config, model, layout, samples, skipped, start_step, end_step, parallel)
            log_dir.write_settings({**settings, **target.settings()}, started)

        # 5. Steps. The state (parameters, optimizer, step) only changes at the optimizer step,
        #    so at every check below it is consistent and can be saved as is.
        stop_reason, message_detail = STOP_FINISHED, ""
        loss_history: list[tuple[int, float]] = []
        step_times: deque[float] = deque(maxlen=_TIMING_WINDOW)
        last_preview: Path | None = None
        offloaded = target.offload_modules() if config.unload_vae else []
        hooks.status(f"training {config.name} from step {step} to {end_step}")
        try:
            for module in offloaded:  # under its lock: never while a generation in another tab uses it
                move_module(module, "cpu")
            while True:
                # 5a. Stop at the step boundary: schedule exhausted, or asked to.
                learning_rate = value_at(lr_segments, step)
                if learning_rate is None:
                    break
                if parallel.main_decides(hooks.stop_requested()):
                    stop_reason = STOP_INTERRUPTED
                    break
                step_started = time.perf_counter()
                for group in optimizer.param_groups:
                    group["lr"] = learning_rate
                optimizer.zero_grad(set_to_none=True)

                # 5b. Accumulate the step's micro-batches: prompts to conditioning (through the
                #     target), noise, UNet (wrapped by the target), MSE; each loss / grad_accum.
                step_loss, first_prompt, bad_loss = 0.0, "", None
                # The UNet's lock for the step's passes: a generation in another tab sets its
                # hypernetworks on the shared UNet under this lock, and must not reach our step.
                with module_lock(pipe.unet), target.step_context(step):
                    for micro_index in range(layout.grad_accum):
                        batch = batches.micro_batch(step, micro_index, my_share)
                        first_prompt = first_prompt or batch.prompts[0]
                        conditioning = target.encode(batch.prompts)
                        loss = denoising_loss(pipe.unet, noise_scheduler, conditioning, batch, model.dtype)
                        loss_value = float(loss.detach())
                        if not math.isfinite(loss_value):
                            bad_loss = f"the loss became {loss_value} at step {step + 1} (micro-batch {micro_index + 1})"
                            break
                        scaled = loss / layout.grad_accum
                        (grad_scaler.scale(scaled) if grad_scaler else scaled).backward()
                        step_loss += loss_value / layout.grad_accum

                # 5c. Agree across processes (loss, NaN anywhere, the mean gradient), clip and
                #     update. A non-finite gradient stops the run like a NaN loss (with fp16 the
                #     GradScaler skips such steps itself, as A1111's does).
                if parallel.is_distributed:
                    step_loss, bad_anywhere = parallel.mean([step_loss, 0.0 if bad_loss is None else 1.0])
                    if bad_anywhere and bad_loss is None:
                        bad_loss = f"the loss became NaN/inf at step {step + 1} in another training process"
                    if bad_loss is None:
                        parallel.mean_gradients(parameters)
                if bad_loss is None:
                    target.check_gradients(step, first_prompt)
                    if grad_scaler is not None:
                        grad_scaler.unscale_(optimizer)
                    _clip_gradient(parameters, config.clip_grad, clip_segments, step)
                    if grad_scaler is None and not _gradients_finite(parameters):
                        bad_loss = f"the gradient became NaN/inf at step {step + 1}"
                if bad_loss is not None:
                    optimizer.zero_grad(set_to_none=True)
                    step, kept = target.roll_back(step, optimizer, grad_scaler)
                    stop_reason = STOP_NAN
                    message_detail = (f"{bad_loss}; stopped and {kept}. "
                                      f"Try a lower learning rate (now {learning_rate:g}) or gradient clipping.")
                    break
                if grad_scaler is not None:
                    grad_scaler.step(optimizer)
                    grad_scaler.update()
                else:
                    optimizer.step()
                step += 1
                step_times.append(time.perf_counter() - step_started)

                # 5d. Record, then save and preview on their intervals (file names = step inside).
                epoch, epoch_index = layout.epoch_of(step - 1)
                loss_history.append((step, step_loss))
                if writes:
                    log_dir.append_loss(step, epoch, epoch_index + 1, step_loss, learning_rate)
                want_copy = writes and config.save_every and step % config.save_every == 0
                want_preview = writes and config.preview_every and step % config.preview_every == 0
                if want_copy or want_preview:
                    snapshot = target.snapshot(step)
                    if want_copy:
                        target.save_copy(snapshot, log_dir, optimizer, config.seed,
                                         grad_scaler.state_dict() if grad_scaler else None)
                        # The main file too: a killed run resumes from here, losing at most one interval.
                        target.save_final(step, optimizer, config.seed, grad_scaler.state_dict() if grad_scaler else None)
                    if want_preview:
                        hooks.status(f"preview at step {step}")
                        # txt2img brings unloaded modules over for the picture, and back.
                        last_preview = target.write_preview(snapshot, config.preview_prompt or first_prompt, log_dir)
                if hooks.on_progress:
                    hooks.on_progress(TrainProgress(
                        step=step, max_steps=end_step, loss=step_loss, learning_rate=learning_rate, epoch=epoch,
                        epoch_step=epoch_index + 1, seconds_per_step=sum(step_times) / len(step_times),
                        preview_path=last_preview, loss_history=loss_history))
        except BaseException:
            # An error (out of memory in a preview, a full disk, Ctrl-C outside the CLI's handler)
            # must not cost the steps done: save them, then let the error through.
            if step > start_step and writes:
                target.save_final(step, optimizer, config.seed, grad_scaler.state_dict() if grad_scaler else None)
                log.error("training stopped by an error at step %d; saved %s", step, final_path)
            raise
        finally:
            for module in offloaded:
                move_module(module, model.device)

    # 6. The final save: always <folder>/<name>.pt (and .optim), stamped with this model.
    if writes:
        target.save_final(step, optimizer, config.seed, grad_scaler.state_dict() if grad_scaler else None)
    if stop_reason == STOP_FINISHED:
        message = f"finished: {config.name} trained to step {step}, saved to {final_path}."
    elif stop_reason == STOP_INTERRUPTED:
        message = (f"interrupted at step {step}; saved to {final_path}. Train again with the same "
                   f"settings to continue from step {step}.")
    else:
        message = f"{message_detail} Saved to {final_path}."
    return TrainResult(step=step, path=final_path, stop_reason=stop_reason, message=message,
                       log_dir=log_dir.root if log_dir else None,
                       skipped_images=skipped, notes=notes, loss_history=loss_history, last_preview=last_preview,
                       start_step=start_step)


def denoising_loss(unet, noise_scheduler, conditioning: torch.Tensor, batch: MicroBatch,
                   dtype: torch.dtype) -> torch.Tensor:
    """The LDM training loss: MSE between the UNet's prediction and its target (epsilon, v or
    the clean latent, as the scheduler's prediction_type says), over all elements, weighted per
    latent pixel by alpha when the batch has weights. Computed in float32."""
    noisy_latents = noise_scheduler.add_noise(batch.latents, batch.noise, batch.timesteps)
    added = None
    if isinstance(conditioning, Conditioning):  # SDXL: pooled text embeds and size time ids too
        if conditioning.pooled is not None:
            if batch.size_conditions is not None:  # each picture's original size, crop and bucket
                time_ids = batch.size_conditions.to(dtype)
            else:
                height, width = batch.latents.shape[-2] * 8, batch.latents.shape[-1] * 8
                time_ids = sdxl_time_ids(height, width, batch.latents.shape[0], dtype, batch.latents.device)
            added = {"text_embeds": conditioning.pooled.to(dtype), "time_ids": time_ids}
        conditioning = conditioning.context
    prediction = unet(noisy_latents.to(dtype), batch.timesteps, encoder_hidden_states=conditioning.to(dtype),
                      added_cond_kwargs=added).sample
    prediction_type = noise_scheduler.config.prediction_type
    if prediction_type == "epsilon":
        target = batch.noise
    elif prediction_type == "v_prediction":
        target = noise_scheduler.get_velocity(batch.latents, batch.noise, batch.timesteps)
    elif prediction_type == "sample":
        target = batch.latents
    else:
        raise TrainingError(f"the model's scheduler predicts {prediction_type!r}; expected epsilon, v_prediction or sample")
    squared_error = (prediction.float() - target.float()) ** 2
    if batch.loss_weights is not None:
        squared_error = squared_error * batch.loss_weights
    return squared_error.mean()


def _noise_scheduler(pipe):
    """A DDPM scheduler with the model's training noise schedule (betas, steps, prediction type)."""
    from diffusers import DDPMScheduler

    return DDPMScheduler.from_config(pipe.scheduler.config)


def _clip_gradient(parameters: list[nn.Parameter], mode: str, segments: list[ScheduleSegment] | None,
                   step: int) -> None:
    with_gradients = [parameter for parameter in parameters if parameter.grad is not None]
    if mode == "none" or segments is None or not with_gradients:
        return
    clip_value = value_at(segments, step)
    if clip_value is None:  # the clip schedule ended before the learning rate's: keep its last value
        clip_value = segments[-1].value
    if mode == "value":
        torch.nn.utils.clip_grad_value_(with_gradients, clip_value)
    else:
        torch.nn.utils.clip_grad_norm_(with_gradients, clip_value)


def _gradients_finite(parameters: list[nn.Parameter]) -> bool:
    """All gradients finite, checked with one device sync (not one per tensor)."""
    checks = [torch.isfinite(parameter.grad).all() for parameter in parameters if parameter.grad is not None]
    return bool(torch.stack(checks).all()) if checks else True


@contextmanager
def _frozen(*modules: nn.Module) -> Iterator[None]:
    """No gradients for the model's own weights while training; their flags restored after."""
    flags = [(parameter, parameter.requires_grad) for module in modules for parameter in module.parameters()]
    try:
        for parameter, _ in flags:
            parameter.requires_grad_(False)
        yield
    finally:
        for parameter, flag in flags:
            parameter.requires_grad_(flag)


def _layout_notes(config: TrainConfig, layout: BatchLayout, num_samples: int, num_processes: int) -> list[str]:
    notes = []
    if num_processes > 1:
        notes.append(f"{num_processes} processes, each with batch size {layout.batch_size // num_processes}: "
                     f"{layout.batch_size} samples per micro-batch in all")
    elif layout.batch_size != config.batch_size:
        notes.append(f"batch size {config.batch_size} is more than the {num_samples} samples; using {layout.batch_size}")
    if layout.grad_accum != config.grad_accum:
        notes.append(f"gradient accumulation {config.grad_accum} is more than the {layout.batches_per_epoch} batches "
                     f"of an epoch; using {layout.grad_accum}")
    return notes
