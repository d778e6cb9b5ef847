"""Hypernetworks tab: create one (A1111's form) and train it (the Train embedding tab's options).

Create writes <hypernetwork dir>/<name>.pt at once. Train runs as the one background job
("train-hypernetwork") through services.jobs; a gr.Timer polls it for the status, loss plot and
latest preview. Widget elem_ids start with `hn_`. Pure mappings: ui/hypernetwork_form.py and
ui/train_form.py (HYPERNETWORK_FORM); the shared training widgets: ui/train_widgets.py.
"""

from __future__ import annotations

import gradio as gr

from ti.hypernetwork import WEIGHT_INITS, attention_widths, create_form_activations, create_hypernetwork
from ti.train import train_hypernetwork
from ui.errors import user_error
from ui.hypernetwork_form import (
    CREATE_SIZES,
    created_text,
    default_sizes,
    model_widths_hint,
    sizes_from_form,
    structure_from_form,
)
from ui.services import AppServices
from ui.train_form import HYPERNETWORK_FORM, build_train_config, progress_text
from ui.train_widgets import build_training_monitor, build_training_options, monitor_values, training_work

JOB_KIND = HYPERNETWORK_FORM.job_kind


def trainable_hypernetworks(services: AppServices) -> list[str]:
    """Hypernetworks that can be trained: <name>.pt at the top of the folder (names safe for the page)."""
    folder = services.paths.hypernetwork_dir
    found = services.hypernetworks.scan()
    return sorted((name for name, path in found.items() if path.parent == folder), key=str.lower)


def _model_widths(services: AppServices) -> list[int]:
    with services.using_model() as model:
        return attention_widths(model.pipe.unet)


def _build_create_section(services: AppServices) -> dict[str, gr.components.Component]:
    checked, other = default_sizes(_model_widths(services))
    c: dict[str, gr.components.Component] = {}
    c["name"] = gr.Textbox(label="Name", elem_id="hn_create_name")
    c["sizes"] = gr.CheckboxGroup(label="Modules", choices=CREATE_SIZES, value=checked, elem_id="hn_create_sizes")
    c["other_sizes"] = gr.Textbox(label="Other sizes (comma-separated widths)", value=other, elem_id="hn_create_other_sizes")
    gr.Markdown(model_widths_hint(_model_widths(services)), elem_id="hn_create_model_widths")
    c["layers"] = gr.Textbox(label="Enter hypernetwork layer structure", value="1, 2, 1", elem_id="hn_create_layers")
    with gr.Row():
        c["activation"] = gr.Dropdown(label="Select activation function of hypernetwork", choices=create_form_activations(),
                                      value="linear", elem_id="hn_create_activation")
        c["weight_init"] = gr.Dropdown(label="Select layer weights initialization", choices=list(WEIGHT_INITS),
                                       value="Normal", elem_id="hn_create_init")
    with gr.Row():
        c["layer_norm"] = gr.Checkbox(label="Add layer normalization", elem_id="hn_create_layer_norm")
        c["use_dropout"] = gr.Checkbox(label="Use dropout", elem_id="hn_create_dropout")
    c["dropout_structure"] = gr.Textbox(label="Enter hypernetwork dropout structure (used only with dropout)",
                                        value="0, 0, 0", elem_id="hn_create_dropout_structure")
    c["overwrite"] = gr.Checkbox(label="Overwrite old hypernetwork", elem_id="hn_create_overwrite")
    return c


def build_hypernetwork_tab(services: AppServices) -> dict[str, gr.components.Component]:
    w: dict[str, gr.components.Component] = {}
    with gr.Row():
        with gr.Column():
            with gr.Accordion("Create hypernetwork", open=True):
                c = _build_create_section(services)
                create = gr.Button("Create hypernetwork", variant="primary", elem_id="hn_create_button")
                created = gr.Markdown("", elem_id="hn_create_result")
            gr.Markdown("### Train hypernetwork")
            with gr.Row():
                w["name"] = gr.Dropdown(label="Hypernetwork", choices=trainable_hypernetworks(services), elem_id="hn_name", scale=4)
                refresh = gr.Button("Refresh", elem_id="hn_refresh", scale=0, min_width=80)
            w.update(build_training_options(services, HYPERNETWORK_FORM, prefix="hn_"))
            with gr.Row():
                interrupt = gr.Button("Interrupt", elem_id="hn_interrupt")
                start = gr.Button("Train Hypernetwork", variant="primary", elem_id="hn_train")
        with gr.Column():
            status, plot, preview = build_training_monitor(prefix="hn_")
    timer = gr.Timer(1.0)
    create_fields, train_fields = list(c), list(w)

    def on_create_hypernetwork(*values):
        form = dict(zip(create_fields, values))
        try:
            sizes = sizes_from_form(form["sizes"], form["other_sizes"])
            structure = structure_from_form(form["layers"], form["activation"], form["weight_init"], form["layer_norm"],
                                            form["use_dropout"], form["dropout_structure"])
            path = create_hypernetwork(form["name"] or "", services.paths.hypernetwork_dir, sizes, structure,
                                       overwrite=bool(form["overwrite"]))
        except Exception as exc:
            raise user_error(exc) from exc
        names = trainable_hypernetworks(services)
        return created_text(path, sizes, structure, _model_widths(services)), gr.update(choices=names, value=path.stem)

    def on_train_hypernetwork(*values):
        try:
            # The library's embeddings work in the training prompts and previews, as in generation.
            values = {**dict(zip(train_fields, values)), "embeddings_dir": str(services.paths.embeddings_dir)}
            config = build_train_config(values, services.paths.templates_dir, HYPERNETWORK_FORM,
                                        log_root=services.paths.log_dir,
                                        data_root=services.paths.data_root)
            work = training_work(train_hypernetwork, services.using_model, config, services.paths.hypernetwork_dir)
            services.jobs.start(JOB_KIND, f"Training {config.name}", work)
        except Exception as exc:
            raise user_error(exc) from exc
        return progress_text(services.jobs.snapshot(), JOB_KIND)

    def on_interrupt_hypernetwork():
        services.jobs.stop(JOB_KIND)

    def on_hypernetwork_tick():
        return monitor_values(services.jobs.snapshot(), JOB_KIND)

    create.click(on_create_hypernetwork, inputs=[c[n] for n in create_fields], outputs=[created, w["name"]])
    refresh.click(lambda: gr.update(choices=trainable_hypernetworks(services)), outputs=[w["name"]])
    start.click(on_train_hypernetwork, inputs=[w[n] for n in train_fields], outputs=[status])
    interrupt.click(on_interrupt_hypernetwork)
    timer.tick(on_hypernetwork_tick, outputs=[status, plot, preview])
    return {**{f"create_{n}": widget for n, widget in c.items()}, **w, "create": create, "created": created,
            "start": start, "interrupt": interrupt, "status": status, "plot": plot, "preview": preview}
