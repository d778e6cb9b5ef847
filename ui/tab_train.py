"""Train embedding tab: every A1111 option, a background job, live loss plot and preview.

The options, job and monitor are shared with the Hypernetworks tab (ui/train_widgets.py).
"""

from __future__ import annotations

import gradio as gr

from ti.train import train_embedding
from ti.library import is_utf8_name
from ui.errors import user_error
from ui.services import AppServices
from ui.train_form import EMBEDDING_FORM, build_train_config, progress_text
from ui.train_widgets import build_training_monitor, build_training_options, loss_frame, monitor_values, training_work

__all__ = ["build_train_tab", "embedding_names", "loss_frame"]


def embedding_names(services: AppServices) -> list[str]:
    """Embeddings that can be trained: <name>.pt files at the top of the embeddings folder
    (<name>.safetensors on an SDXL model, where SDXL embeddings keep their step)."""
    services.library.refresh()
    folder = services.paths.embeddings_dir
    if not folder.is_dir():
        return []
    # Names that are not UTF-8 cannot travel to the page (Gradio's JSON refuses lone surrogates).
    pattern = "*.safetensors" if services.model is not None and services.model.is_sdxl else "*.pt"
    return sorted((p.stem for p in folder.glob(pattern) if is_utf8_name(p.name)), key=str.lower)


def build_train_tab(services: AppServices) -> dict[str, gr.components.Component]:
    w: dict[str, gr.components.Component] = {}
    with gr.Row():
        with gr.Column():
            with gr.Row():
                w["name"] = gr.Dropdown(label="Embedding", choices=embedding_names(services), elem_id="train_embedding", scale=4)
                refresh = gr.Button("Refresh", elem_id="train_refresh", scale=0, min_width=80)
            w.update(build_training_options(services, EMBEDDING_FORM, prefix="train_"))
            with gr.Row():
                interrupt = gr.Button("Interrupt", elem_id="train_interrupt")
                start = gr.Button("Train Embedding", variant="primary", elem_id="train_start")
        with gr.Column():
            status, plot, preview = build_training_monitor(prefix="train_")
    timer = gr.Timer(1.0)
    field_names = list(w)

    def on_start(*values):
        try:
            config = build_train_config(dict(zip(field_names, values)), services.paths.templates_dir, EMBEDDING_FORM,
                                        log_root=services.paths.log_dir,
                                        data_root=services.paths.data_root)
            work = training_work(train_embedding, services.using_model, config, services.paths.embeddings_dir)
            services.jobs.start(EMBEDDING_FORM.job_kind, f"Training {config.name}", work)
        except Exception as exc:
            raise user_error(exc) from exc
        return progress_text(services.jobs.snapshot(), EMBEDDING_FORM.job_kind)

    def on_tick():
        return monitor_values(services.jobs.snapshot(), EMBEDDING_FORM.job_kind)

    refresh.click(lambda: gr.update(choices=embedding_names(services)), outputs=[w["name"]])
    start.click(on_start, inputs=[w[n] for n in field_names], outputs=[status])
    def on_interrupt_training():
        services.jobs.stop(EMBEDDING_FORM.job_kind)  # training only, never a preprocess run

    interrupt.click(on_interrupt_training)
    timer.tick(on_tick, outputs=[status, plot, preview])
    return {**w, "start": start, "interrupt": interrupt, "status": status, "plot": plot, "preview": preview}
