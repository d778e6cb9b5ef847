"""Preprocess images tab: folder in, training set out (crops, flips, splits, BLIP captions).

The run goes through services.jobs, so the page stays responsive; a gr.Timer polls the job's
snapshot for the progress line and, at the end, the summary, skipped files and a few outputs.
"""

from __future__ import annotations

import html
from dataclasses import fields

import gradio as gr
from PIL import Image

from ti.crops import AUTO_CROP_OBJECTIVES
from ti.errors import ConfigError
from ti.preprocess import EXISTING_CAPTION_ACTIONS, PreprocessConfig, PreprocessResult, preprocess_folder
from ui.folders import folder_inside
from ui.errors import user_error
from ui.jobs import JobSnapshot
from ui.services import AppServices

JOB_KIND = "preprocess"
GALLERY_SIZE = 8  # outputs shown when a run ends
THUMBNAIL_SIDE = 256
POLL_SECONDS = 0.5
DEFAULTS = {f.name: f.default for f in fields(PreprocessConfig)}
# PreprocessConfig fields, in the order the callbacks receive the widget values.
CONFIG_FIELDS = [f.name for f in fields(PreprocessConfig)]
OBJECTIVE_LABELS = {"max-area": "Maximize area", "min-error": "Minimize error"}


def config_from_values(values: dict) -> PreprocessConfig:
    """Widget values by PreprocessConfig field name -> a validated config (ConfigError names the field)."""
    cleaned = {name: value.strip() if isinstance(value, str) else value for name, value in values.items()}
    for name, value in cleaned.items():
        if value is None:  # a cleared number box
            raise ConfigError(name.replace("_", " "), "no value given")
    return PreprocessConfig(**cleaned)


def start_preprocess(services: AppServices, values: dict) -> str:
    """Validate, then start the run as the one background job. Raises gr.Error (bad field, job busy)."""
    try:
        root = services.paths.data_root
        values = {**values, "source": str(folder_inside(values.get("source") or "", root, "Source directory")),
                  "destination": str(folder_inside(values.get("destination") or "", root, "Destination directory"))
                  } if root is not None else values
        config = config_from_values(values)
        if not config.source.is_dir():
            raise gr.Error(f"source: {config.source} is not a folder")

        def work(progress):
            progress.update(step=0, total=0, message="", destination=str(config.destination))
            return preprocess_folder(
                config,
                on_progress=lambda done, total, name: progress.update(step=done, total=total, message=name),
                should_stop=progress.should_stop,
            )

        services.jobs.start(JOB_KIND, f"Preprocessing {config.source}", work)
    except gr.Error:
        raise
    except Exception as exc:
        raise user_error(exc) from exc
    loading = " (loading the caption model first)" if config.caption else ""
    return f"Starting{loading}…"


def progress_text(snap: JobSnapshot) -> str:
    """'12/40 images · name' while running; the outcome line when done."""
    if snap.running:
        if snap.total <= 0:
            return "Starting…"
        line = f"{snap.step}/{snap.total} images"
        return f"{line} · {html.escape(snap.message)}" if snap.message else line
    if snap.error:
        return f"⚠ {html.escape(snap.error)}"
    return "Interrupted." if isinstance(snap.result, PreprocessResult) and snap.result.cancelled else "Done."


def result_markdown(result: PreprocessResult, destination: str = "") -> str:
    """The summary, the skipped files with reasons, and the notes of a finished run."""
    lines = [f"**{html.escape(result.summary())}**"]
    if destination:
        lines.append(f"\nOutputs in `{html.escape(destination)}`.")
    if result.skipped:
        lines += ["", f"**Skipped** ({len(result.skipped)}):", ""]
        lines += [f"- `{html.escape(s.path.name)}`: {html.escape(s.reason)}" for s in result.skipped]
    if result.notes:
        lines += ["", "**Notes:**", ""] + [f"- {html.escape(note)}" for note in result.notes]
    return "\n".join(lines)


def thumbnails(result: PreprocessResult, count: int = GALLERY_SIZE) -> list[tuple[Image.Image, str]]:
    """Small copies of the first outputs (read here, so the destination need not be a served folder)."""
    items = []
    for path in result.images[:count]:
        try:
            with Image.open(path) as image:
                image.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE))
                items.append((image.copy(), path.name))
        except OSError:
            continue
    return items


def poll(services: AppServices):
    """Timer tick: (progress line, result markdown, gallery, timer). Stops the timer once the job ended."""
    snap = services.jobs.snapshot()
    if snap.kind != JOB_KIND:
        return gr.skip(), gr.skip(), gr.skip(), gr.Timer(active=False)
    if snap.running:
        return progress_text(snap), gr.skip(), gr.skip(), gr.skip()
    result = snap.result if isinstance(snap.result, PreprocessResult) else None
    summary = result_markdown(result, snap.details.get("destination", "")) if result else ""
    gallery = thumbnails(result) if result else []
    return progress_text(snap), summary, gallery, gr.Timer(active=False)


def interrupt(services: AppServices) -> str:
    if services.jobs.stop(JOB_KIND):
        return "Stopping after the current picture…"
    return gr.skip()


def build_preprocess_tab(services: AppServices) -> dict[str, gr.components.Component]:
    w: dict[str, gr.components.Component] = {}
    with gr.Row():
        with gr.Column(scale=3):
            w["source"] = gr.Textbox(label="Source directory", elem_id="preprocess_source",
                                     placeholder="folder of raw pictures (and optional <name>.txt captions)")
            w["destination"] = gr.Textbox(label="Destination directory", elem_id="preprocess_destination",
                                          placeholder="created if missing; not the source folder, nor inside it")
            with gr.Row():
                w["width"] = gr.Slider(label="Width", minimum=64, maximum=2048, step=8, value=DEFAULTS["width"],
                                       elem_id="preprocess_width")
                w["height"] = gr.Slider(label="Height", minimum=64, maximum=2048, step=8, value=DEFAULTS["height"],
                                        elem_id="preprocess_height")
            w["existing_caption"] = gr.Radio(label="Existing caption txt action", choices=list(EXISTING_CAPTION_ACTIONS),
                                             value=DEFAULTS["existing_caption"], elem_id="preprocess_existing_caption")
            with gr.Row():
                w["keep_original_size"] = gr.Checkbox(label="Keep original size", value=False,
                                                      elem_id="preprocess_keep_original_size")
                w["flip"] = gr.Checkbox(label="Create flipped copies", value=False, elem_id="preprocess_flip")
                w["split"] = gr.Checkbox(label="Split oversized images", value=False, elem_id="preprocess_split")
                w["focal_crop"] = gr.Checkbox(label="Auto focal point crop", value=False, elem_id="preprocess_focal_crop")
                w["auto_crop"] = gr.Checkbox(label="Auto-sized crop", value=False, elem_id="preprocess_auto_crop")
            with gr.Row():
                w["caption"] = gr.Checkbox(label="Use BLIP for caption", value=False, elem_id="preprocess_caption")
                w["caption_in_filename"] = gr.Checkbox(label="Caption in file name", value=False,
                                                       elem_id="preprocess_caption_in_filename")
            with gr.Column(visible=False, elem_id="preprocess_caption_options") as caption_options:
                w["caption_model"] = gr.Textbox(label="Caption model (local BLIP folder or hub id)",
                                                value=DEFAULTS["caption_model"], elem_id="preprocess_caption_model")
            with gr.Column(visible=False, elem_id="preprocess_split_options") as split_options:
                with gr.Row():
                    w["split_threshold"] = gr.Slider(label="Split image threshold", minimum=0, maximum=1, step=0.05,
                                                     value=DEFAULTS["split_threshold"], elem_id="preprocess_split_threshold")
                    w["split_overlap"] = gr.Slider(label="Split image overlap ratio", minimum=0, maximum=0.9, step=0.05,
                                                   value=DEFAULTS["split_overlap"], elem_id="preprocess_split_overlap")
            with gr.Column(visible=False, elem_id="preprocess_focal_options") as focal_options:
                with gr.Row():
                    w["focal_face_weight"] = gr.Slider(label="Focal point face weight", minimum=0, maximum=1, step=0.05,
                                                       value=DEFAULTS["focal_face_weight"], elem_id="preprocess_focal_face")
                    w["focal_entropy_weight"] = gr.Slider(label="Focal point entropy weight", minimum=0, maximum=1,
                                                          step=0.05, value=DEFAULTS["focal_entropy_weight"],
                                                          elem_id="preprocess_focal_entropy")
                    w["focal_edges_weight"] = gr.Slider(label="Focal point edges weight", minimum=0, maximum=1, step=0.05,
                                                        value=DEFAULTS["focal_edges_weight"], elem_id="preprocess_focal_edges")
            with gr.Column(visible=False, elem_id="preprocess_auto_options") as auto_options:
                with gr.Row():
                    w["auto_crop_min_size"] = gr.Slider(label="Dimension lower bound", minimum=64, maximum=2048, step=64,
                                                        value=DEFAULTS["auto_crop_min_size"], elem_id="preprocess_auto_min_size")
                    w["auto_crop_max_size"] = gr.Slider(label="Dimension upper bound", minimum=64, maximum=2048, step=64,
                                                        value=DEFAULTS["auto_crop_max_size"], elem_id="preprocess_auto_max_size")
                with gr.Row():
                    w["auto_crop_min_area"] = gr.Number(label="Area lower bound (pixels)", precision=0,
                                                        value=DEFAULTS["auto_crop_min_area"], elem_id="preprocess_auto_min_area")
                    w["auto_crop_max_area"] = gr.Number(label="Area upper bound (pixels)", precision=0,
                                                        value=DEFAULTS["auto_crop_max_area"], elem_id="preprocess_auto_max_area")
                with gr.Row():
                    w["auto_crop_objective"] = gr.Radio(
                        label="Resizing objective", value=DEFAULTS["auto_crop_objective"], elem_id="preprocess_auto_objective",
                        choices=[(OBJECTIVE_LABELS.get(o, o), o) for o in AUTO_CROP_OBJECTIVES])
                    w["auto_crop_error_threshold"] = gr.Slider(
                        label="Error threshold", minimum=0, maximum=1, step=0.01,
                        value=DEFAULTS["auto_crop_error_threshold"], elem_id="preprocess_auto_error_threshold")
        with gr.Column(scale=2):
            with gr.Row():
                run = gr.Button("Preprocess", variant="primary", elem_id="preprocess_run")
                stop = gr.Button("Interrupt", elem_id="preprocess_interrupt")
            status = gr.Markdown("", elem_id="preprocess_progress")
            summary = gr.Markdown("", elem_id="preprocess_summary")
            gallery = gr.Gallery(label="First outputs", columns=4, height="auto", elem_id="preprocess_gallery")
    timer = gr.Timer(POLL_SECONDS, active=False)

    inputs = [w[name] for name in CONFIG_FIELDS]

    def on_run(*values):
        message = start_preprocess(services, dict(zip(CONFIG_FIELDS, values)))
        return message, "", [], gr.Timer(active=True)

    for toggle, group in ((w["split"], split_options), (w["focal_crop"], focal_options),
                          (w["auto_crop"], auto_options), (w["caption"], caption_options)):
        toggle.change(lambda on: gr.Column(visible=bool(on)), inputs=[toggle], outputs=[group], show_progress="hidden")
    run.click(on_run, inputs=inputs, outputs=[status, summary, gallery, timer])
    stop.click(lambda: interrupt(services), outputs=[status])
    timer.tick(lambda: poll(services), outputs=[status, summary, gallery, timer], show_progress="hidden")
    return {**w, "run": run, "interrupt": stop, "status": status, "summary": summary, "gallery": gallery, "timer": timer}
