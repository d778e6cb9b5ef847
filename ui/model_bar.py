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


NATIVE_SIDES = (512, 768, 1024)  # SD 1.x, SD 2.x 768-v, SDXL: sizes a user did not choose


def size_for_new_model(width: int, height: int, native_side: int) -> tuple[int, int]:
    """The txt2img size after a model switch: the new model's native size when the old size was a
    model's native square (nobody chose it), else the size the user set."""
    if width == height and int(width) in NATIVE_SIDES:
        return native_side, native_side
    return int(width), int(height)


def follow_model_size(bar: dict, services: AppServices, width: gr.Slider, height: gr.Slider) -> None:
    """After a switch (the status line changes), txt2img's size follows the model's native size."""

    def on_model_changed(width_value, height_value):
        if services.model is None:
            return gr.update(), gr.update()
        new_width, new_height = size_for_new_model(width_value, height_value, services.model.native_size)
        return gr.update(value=new_width), gr.update(value=new_height)

    bar["status"].change(on_model_changed, inputs=[width, height], outputs=[width, height])


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
