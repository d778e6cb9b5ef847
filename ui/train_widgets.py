"""The training options, job and monitor both training tabs share (Train embedding, Hypernetworks).

    build_training_options(services, form, prefix) -> {TrainConfig field: widget}
    build_training_monitor(prefix) -> status, loss plot, latest preview
    training_work(train, using_model, config, folder) -> a services.jobs work function
    monitor_values(snapshot, job_kind) -> (status text, loss frame, preview path)

Widget elem_ids are `<prefix><name>` (train_lr, hn_lr, …). Callbacks stay in the tabs, each with
its own name.
"""

from __future__ import annotations

from dataclasses import fields

import gradio as gr
import pandas as pd

from ti.samplers import sampler_names
from ti.templates import list_templates
from ti.train import TrainHooks
from ti.train.config import CLIP_GRAD_MODES, LATENT_SAMPLING_METHODS, TRAIN_ENCODER_CHOICES
from ui.services import AppServices
from ui.train_form import MIXED_PRECISION_CHOICES, MIXED_PRECISION_INFO, TrainForm, progress_text


MAX_PLOT_POINTS = 500  # the page polls every second: a 100k-step run must not send 100k points each time


def downsample_history(history, max_points: int = MAX_PLOT_POINTS) -> list[tuple[int, float]]:
    """At most max_points (step, loss) pairs: consecutive steps averaged in equal buckets, each
    shown at its last step, so the curve keeps its shape and ends at the latest step."""
    history = list(history or [])
    if len(history) <= max_points:
        return history
    bucket = -(-len(history) // max_points)  # ceil
    points = []
    for start in range(0, len(history), bucket):
        part = history[start:start + bucket]
        points.append((part[-1][0], sum(loss for _, loss in part) / len(part)))
    return points


def loss_frame(history) -> pd.DataFrame:
    return pd.DataFrame(downsample_history(history), columns=["step", "loss"])


def build_training_options(services: AppServices, form: TrainForm, prefix: str) -> dict[str, gr.components.Component]:
    """Every TrainConfig option but the name, as widgets with A1111's defaults for `form`."""
    templates = list(list_templates(services.paths.templates_dir)) or [form.template]
    w: dict[str, gr.components.Component] = {}
    w["learning_rate"] = gr.Textbox(label=form.label("learning_rate"), value=form.learning_rate, elem_id=f"{prefix}lr",
                                    info=f"a rate, or a schedule: {form.learning_rate}:100, 1e-3:1000, 1e-5")
    with gr.Row():
        w["clip_grad"] = gr.Dropdown(label="Gradient clipping", choices=list(CLIP_GRAD_MODES), value="none")
        w["clip_value"] = gr.Textbox(label="Clip value", value="0.1")
    with gr.Row():
        w["batch_size"] = gr.Number(label="Batch size", value=1, precision=0, elem_id=f"{prefix}batch_size")
        w["grad_accum"] = gr.Number(label="Gradient accumulation steps", value=1, precision=0)
    w["data_dir"] = gr.Textbox(label="Dataset directory", elem_id=f"{prefix}data_dir")
    w["log_dir"] = gr.Textbox(label="Log directory", value=str(services.paths.log_dir), elem_id=f"{prefix}log_dir")
    w["template"] = gr.Dropdown(label="Prompt template", choices=templates,
                                value=form.template if form.template in templates else templates[0],
                                elem_id=f"{prefix}template")
    w["clip_skip"] = gr.Slider(label=form.label("clip_skip"), minimum=1, maximum=12, step=1, value=1,
                               elem_id=f"{prefix}clip_skip", info=form.config_class.help_for("clip_skip"))
    if form.has_train_encoders:
        w["train_encoders"] = gr.Dropdown(label=form.label("train_encoders"), choices=list(TRAIN_ENCODER_CHOICES),
                                          value="both", info=form.config_class.help_for("train_encoders"),
                                          elem_id=f"{prefix}train_encoders")
    with gr.Row():
        w["width"] = gr.Slider(label="Width", minimum=64, maximum=2048, step=8, value=512, elem_id=f"{prefix}width")
        w["height"] = gr.Slider(label="Height", minimum=64, maximum=2048, step=8, value=512, elem_id=f"{prefix}height")
    w["no_resize"] = gr.Checkbox(label="Do not resize images (keep each image's size, rounded to 64)")
    w["max_steps"] = gr.Number(label="Max steps", value=100000, precision=0, elem_id=f"{prefix}max_steps")
    with gr.Row():
        w["preview_every"] = gr.Number(label="Save an image every N steps (0 = off)", value=500, precision=0,
                                       elem_id=f"{prefix}preview_every")
        w["save_every"] = gr.Number(label=f"{form.label('save_every')} (0 = off)", value=500, precision=0,
                                    elem_id=f"{prefix}save_every")
    if form.has_png_embedding:
        w["png_embedding"] = gr.Checkbox(label="Save images with the embedding in PNG chunks", value=True)
    with gr.Accordion("Preview", open=False):
        w["preview_prompt"] = gr.Textbox(label="Preview prompt (empty = a training prompt)")
        w["preview_negative_prompt"] = gr.Textbox(label="Preview negative prompt")
        with gr.Row():
            w["preview_sampler"] = gr.Dropdown(label="Sampler", choices=sampler_names(), value="Euler a")
            w["preview_steps"] = gr.Number(label="Preview steps", value=20, precision=0, elem_id=f"{prefix}preview_steps")
            w["preview_cfg"] = gr.Number(label="Preview CFG scale", value=7)
            w["preview_seed"] = gr.Number(label="Preview seed (-1 = random)", value=-1, precision=0)
    with gr.Accordion("Captions and data", open=False):
        with gr.Row():
            w["shuffle_tags"] = gr.Checkbox(label="Shuffle tags by ',' when creating prompts")
            w["tag_dropout"] = gr.Slider(label="Drop out tags when creating prompts", minimum=0, maximum=1,
                                         step=0.1, value=0)
        w["latent_sampling"] = gr.Radio(label="Latent sampling method", choices=list(LATENT_SAMPLING_METHODS),
                                        value="once")
        w["alpha_weight"] = gr.Checkbox(label="Use PNG alpha channel as loss weight")
        w["flip"] = gr.Checkbox(label="Add horizontally flipped copies")
        with gr.Row():
            w["filewords_regex"] = gr.Textbox(label="Filename word regex")
            w["filewords_join"] = gr.Textbox(label="Filename join string", value=" ")
        w["seed"] = gr.Number(label="Seed (batches, noise, timesteps)", value=0, precision=0)
    w.update(_build_speed_options(form, prefix))
    return w


def _build_speed_options(form: TrainForm, prefix: str) -> dict[str, gr.components.Component]:
    """The "Speed and memory" accordion: options that change how fast and in how much memory a run
    trains, never what it trains. Defaults are TrainConfig's."""
    help_for = form.config_class.help_for
    default = {spec.name: spec.default for spec in fields(form.config_class)}
    w: dict[str, gr.components.Component] = {}
    with gr.Accordion("Speed and memory", open=False, elem_id=f"{prefix}speed"):
        w["mixed_precision"] = gr.Dropdown(label=form.label("mixed_precision"), choices=MIXED_PRECISION_CHOICES,
                                           value=default["mixed_precision"], info=MIXED_PRECISION_INFO,
                                           elem_id=f"{prefix}mixed_precision")
        for name in ("gradient_checkpointing", "channels_last", "compile_unet"):
            if name == "compile_unet" and not form.has_compile_unet:
                continue
            w[name] = gr.Checkbox(label=form.label(name), value=default[name], info=help_for(name),
                                  elem_id=f"{prefix}{name}")
        w["unload_vae"] = gr.Checkbox(label=form.label("unload_vae"), elem_id=f"{prefix}unload")
    return w


def build_training_monitor(prefix: str) -> tuple[gr.Markdown, gr.LinePlot, gr.Image]:
    status = gr.Markdown("Not training.", elem_id=f"{prefix}status")
    plot = gr.LinePlot(loss_frame([]), x="step", y="loss", title="Loss", elem_id=f"{prefix}loss_plot", height=260)
    preview = gr.Image(label="Latest preview", type="filepath", interactive=False, elem_id=f"{prefix}preview")
    return status, plot, preview


def training_work(train, using_model, config, folder):
    """The job function for services.jobs.start: train(model, config, folder, hooks), reporting progress.

    using_model: services.using_model; the run holds the model as "training" from start to end,
    so the model picker refuses to switch it meanwhile."""

    def work(progress):
        def report(p):
            progress.update(step=p.step, total=p.max_steps, loss=p.loss, learning_rate=p.learning_rate,
                            # The loop only appends to its history: shared, not copied every step.
                            seconds_per_step=p.seconds_per_step, loss_history=p.loss_history,
                            preview=str(p.preview_path) if p.preview_path else None)

        hooks = TrainHooks(on_progress=report, should_stop=progress.should_stop,
                           on_status=lambda text: progress.update(message=text))
        progress.update(total=config.max_steps)  # no step yet: the first one reported may be a resume's 5001
        with using_model("training") as model:
            return train(model, config, folder, hooks)

    return work


def monitor_values(snapshot, job_kind: str) -> tuple[str, pd.DataFrame, str | None]:
    """Status text, loss frame and latest preview for a tab whose runs are `job_kind` jobs."""
    if snapshot.kind != job_kind:
        return progress_text(snapshot, job_kind), loss_frame([]), None
    history = snapshot.details.get("loss_history", [])
    if snapshot.result is not None and getattr(snapshot.result, "loss_history", None):
        history = snapshot.result.loss_history
    preview_path = snapshot.details.get("preview")
    if snapshot.result is not None and getattr(snapshot.result, "last_preview", None):
        preview_path = str(snapshot.result.last_preview)
    return progress_text(snapshot, job_kind), loss_frame(history), preview_path
