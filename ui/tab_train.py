"""Train embedding tab: every A1111 option, a background job, live loss plot and preview."""

from __future__ import annotations

import gradio as gr
import pandas as pd

from ti.samplers import sampler_names
from ti.templates import list_templates
from ti.train import TrainHooks, train_embedding
from ti.train.config import CLIP_GRAD_MODES, LATENT_SAMPLING_METHODS
from ui.errors import user_error
from ui.services import AppServices
from ui.train_form import build_train_config, progress_text


def embedding_names(services: AppServices) -> list[str]:
    """Embeddings that can be trained: <name>.pt files at the top of the embeddings folder."""
    services.library.refresh()
    folder = services.paths.embeddings_dir
    return sorted((p.stem for p in folder.glob("*.pt")), key=str.lower) if folder.is_dir() else []


def loss_frame(history) -> pd.DataFrame:
    return pd.DataFrame(history or [], columns=["step", "loss"])


def build_train_tab(services: AppServices) -> dict[str, gr.components.Component]:
    templates = list(list_templates(services.paths.templates_dir)) or ["style_filewords.txt"]
    w: dict[str, gr.components.Component] = {}
    with gr.Row():
        with gr.Column():
            with gr.Row():
                w["name"] = gr.Dropdown(label="Embedding", choices=embedding_names(services), elem_id="train_embedding", scale=4)
                refresh = gr.Button("Refresh", elem_id="train_refresh", scale=0, min_width=80)
            w["learning_rate"] = gr.Textbox(label="Embedding learning rate", value="0.005", elem_id="train_lr",
                                            info="a rate, or a schedule: 0.005:100, 1e-3:1000, 1e-5")
            with gr.Row():
                w["clip_grad"] = gr.Dropdown(label="Gradient clipping", choices=list(CLIP_GRAD_MODES), value="none")
                w["clip_value"] = gr.Textbox(label="Clip value", value="0.1")
            with gr.Row():
                w["batch_size"] = gr.Number(label="Batch size", value=1, precision=0, elem_id="train_batch_size")
                w["grad_accum"] = gr.Number(label="Gradient accumulation steps", value=1, precision=0)
            w["data_dir"] = gr.Textbox(label="Dataset directory", elem_id="train_data_dir")
            w["log_dir"] = gr.Textbox(label="Log directory", value=str(services.paths.log_dir), elem_id="train_log_dir")
            w["template"] = gr.Dropdown(label="Prompt template", choices=templates,
                                        value="style_filewords.txt" if "style_filewords.txt" in templates else templates[0],
                                        elem_id="train_template")
            with gr.Row():
                w["width"] = gr.Slider(label="Width", minimum=64, maximum=2048, step=8, value=512, elem_id="train_width")
                w["height"] = gr.Slider(label="Height", minimum=64, maximum=2048, step=8, value=512, elem_id="train_height")
            w["no_resize"] = gr.Checkbox(label="Do not resize images (keep each image's size, rounded to 64)")
            w["max_steps"] = gr.Number(label="Max steps", value=100000, precision=0, elem_id="train_max_steps")
            with gr.Row():
                w["preview_every"] = gr.Number(label="Save an image every N steps (0 = off)", value=500, precision=0,
                                               elem_id="train_preview_every")
                w["save_every"] = gr.Number(label="Save an embedding copy every N steps (0 = off)", value=500,
                                            precision=0, elem_id="train_save_every")
            w["png_embedding"] = gr.Checkbox(label="Save images with the embedding in PNG chunks", value=True)
            with gr.Accordion("Preview", open=False):
                w["preview_prompt"] = gr.Textbox(label="Preview prompt (empty = a training prompt)")
                w["preview_negative_prompt"] = gr.Textbox(label="Preview negative prompt")
                with gr.Row():
                    w["preview_sampler"] = gr.Dropdown(label="Sampler", choices=sampler_names(), value="Euler a")
                    w["preview_steps"] = gr.Number(label="Preview steps", value=20, precision=0, elem_id="train_preview_steps")
                    w["preview_cfg"] = gr.Number(label="Preview CFG scale", value=7)
                    w["preview_seed"] = gr.Number(label="Preview seed (-1 = random)", value=-1, precision=0)
            with gr.Accordion("Captions, data and memory", open=False):
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
                w["unload_vae"] = gr.Checkbox(label="Move the VAE to the CPU while training (saves VRAM)")
            with gr.Row():
                interrupt = gr.Button("Interrupt", elem_id="train_interrupt")
                start = gr.Button("Train Embedding", variant="primary", elem_id="train_start")
        with gr.Column():
            status = gr.Markdown("Not training.", elem_id="train_status")
            plot = gr.LinePlot(loss_frame([]), x="step", y="loss", title="Loss", elem_id="train_loss_plot", height=260)
            preview = gr.Image(label="Latest preview", type="filepath", interactive=False, elem_id="train_preview")
    timer = gr.Timer(1.0)
    field_names = list(w)

    def on_start(*values):
        try:
            config = build_train_config(dict(zip(field_names, values)), services.paths.templates_dir)
            model, embeddings_dir = services.model, services.paths.embeddings_dir

            def work(progress):
                def report(p):
                    progress.update(step=p.step, total=p.max_steps, loss=p.loss, learning_rate=p.learning_rate,
                                    loss_history=list(p.loss_history),
                                    preview=str(p.preview_path) if p.preview_path else None)

                hooks = TrainHooks(on_progress=report, should_stop=progress.should_stop,
                                   on_status=lambda text: progress.update(message=text))
                progress.update(step=0, total=config.max_steps)
                return train_embedding(model, config, embeddings_dir, hooks)

            services.jobs.start("train-embedding", f"Training {config.name}", work)
        except Exception as exc:
            raise user_error(exc) from exc
        return progress_text(services.jobs.snapshot())

    def on_tick():
        snapshot = services.jobs.snapshot()
        history = snapshot.details.get("loss_history", [])
        if snapshot.result is not None and getattr(snapshot.result, "loss_history", None):
            history = snapshot.result.loss_history
        preview_path = snapshot.details.get("preview")
        if snapshot.result is not None and getattr(snapshot.result, "last_preview", None):
            preview_path = str(snapshot.result.last_preview)
        return progress_text(snapshot), loss_frame(history), preview_path

    refresh.click(lambda: gr.update(choices=embedding_names(services)), outputs=[w["name"]])
    start.click(on_start, inputs=[w[n] for n in field_names], outputs=[status])
    interrupt.click(lambda: services.jobs.stop())
    timer.tick(on_tick, outputs=[status, plot, preview])
    return {**w, "start": start, "interrupt": interrupt, "status": status, "plot": plot, "preview": preview}
