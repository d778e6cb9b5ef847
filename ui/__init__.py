"""Gradio UI: thin tabs that map widgets to ti configs and call ti. No tensor math here.

Conventions for tab modules (ui/tab_<name>.py):
    build_<name>_tab(services: AppServices) -> dict[str, Component]
is called inside `with gr.Tab(...)`. Callbacks are a few lines: build a config dataclass from the
widget values (ConfigError -> gr.Error naming the field), call ti, return widget values. Long
work goes through services.jobs (ui/jobs.py): one background job at a time, progress polled by a
gr.Timer, Interrupt calls services.jobs.stop().
"""

from __future__ import annotations

import importlib

import gradio as gr

# (tab label, module, builder) in page order.
TABS = [
    ("txt2img", "ui.tab_txt2img", "build_txt2img_tab"),
    ("Create embedding", "ui.tab_create", "build_create_tab"),
    ("Preprocess images", "ui.tab_preprocess", "build_preprocess_tab"),
    ("Train embedding", "ui.tab_train", "build_train_tab"),
    ("Hypernetworks", "ui.tab_hypernetwork", "build_hypernetwork_tab"),
]


def build_app(services) -> gr.Blocks:
    from ui.model_bar import build_model_bar, follow_model_size

    with gr.Blocks(title="ti-studio") as app:
        gr.Markdown("# ti-studio\nTextual inversion and hypernetworks for Stable Diffusion.")
        bar = build_model_bar(services)
        built = {}
        for label, module_name, builder_name in TABS:
            module = importlib.import_module(module_name)
            with gr.Tab(label):
                built[builder_name] = getattr(module, builder_name)(services)
        txt2img = built["build_txt2img_tab"]
        follow_model_size(bar, services, txt2img["width"], txt2img["height"])
    return app
