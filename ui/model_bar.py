"""The model picker above the tabs, and the demo-model notice."""

from __future__ import annotations

import gradio as gr

from ui.errors import user_error
from ui.services import AppServices

DEMO_NOTICE = (
    "**You are using the built-in demo model.** It is a tiny random network, so its pictures are noise; "
    "it is here so every tab works end to end without a download. To use a real model, put a Stable "
    "Diffusion checkpoint (`.safetensors`/`.ckpt`, or a diffusers folder) in `models/Stable-diffusion/` "
    "and pick it above (Refresh updates the list), or start with `./webui.sh --model PATH`."
)


def _current_source(services: AppServices) -> str:
    model = services.model  # None for the moment a switch has let the old one go
    return model.source if model is not None else services.model_config.model


def model_status(services: AppServices) -> str:
    model = services.model
    if model is None:
        return "Loading the model…"
    if model.is_demo:
        return DEMO_NOTICE
    return f"Model **{model.name}** [{model.short_hash}] · {model.family} · {model.device} · {str(model.dtype).replace('torch.', '')}"


def build_model_bar(services: AppServices) -> dict[str, gr.components.Component]:
    with gr.Row():
        model_dropdown = gr.Dropdown(
            label="Stable Diffusion checkpoint", choices=services.model_choices(), value=_current_source(services),
            elem_id="model_dropdown", scale=4,
        )
        refresh = gr.Button("Refresh", elem_id="model_refresh", scale=0, min_width=60)
    status = gr.Markdown(model_status(services), elem_id="model_status")

    def on_refresh():
        return gr.update(choices=services.model_choices(), value=_current_source(services))

    def on_select(source: str):
        try:
            services.switch_model(source)
        except Exception as exc:
            gr.Warning(str(user_error(exc)))
            return gr.update(value=_current_source(services)), model_status(services)
        return gr.update(value=_current_source(services)), model_status(services)

    refresh.click(on_refresh, outputs=[model_dropdown])
    model_dropdown.input(on_select, inputs=[model_dropdown], outputs=[model_dropdown, status])
    return {"model": model_dropdown, "refresh": refresh, "status": status}
