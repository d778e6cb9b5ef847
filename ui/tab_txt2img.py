"""txt2img tab: prompts with live token counters, the embeddings list, gallery and infotext."""

from __future__ import annotations

import html

import gradio as gr
from PIL import Image

from ti.composable import split_composable
from ti.conditioning import PromptEncoder
from ti.config import GenerateConfig
from ti.generate import save_generated, txt2img, with_default_hypernetwork
from ti.hypernetwork import parse_hypernet_tags
from ti.infotext import read_generation_parameters
from ti.samplers import SCHEDULE_TYPES, sampler_names
from ui.errors import user_error
from ui.jobs import SessionStops, session_of
from ui.services import AppServices


def token_counter_text(services: AppServices, prompt: str, is_positive: bool = True) -> str:
    """A1111's counter: the longest subprompt of the prompt (split on AND); the negative whole."""
    snapshot = services.library.snapshot
    with services.using_model() as model:
        encoder = PromptEncoder(model.tokenizer, model.text_encoder,
                                {n: e.vectors for n, e in snapshot.embeddings.items()})
    try:
        text = parse_hypernet_tags(prompt or "")[0]
        texts = [part.text for part in split_composable(text)] if is_positive else [text]
        parsed = max((encoder.parse(part) for part in texts), key=lambda item: item.token_count)
    except Exception as exc:
        return f"⚠ {exc}"
    limit = max(1, len(parsed.chunks)) * 75
    return f"{parsed.token_count}/{limit}"


# The txt2img widgets an infotext fills, by GenerateConfig field, in the callback's output order.
PASTED_FIELDS = ("prompt", "negative_prompt", "sampler", "schedule_type", "steps", "cfg_scale", "seed", "width",
                 "height", "clip_skip")


def infotext_of_image(path: str) -> str:
    """A PNG's `parameters` text chunk ("" when it has none)."""
    with Image.open(path) as picture:
        return str(picture.info.get("parameters") or "")


def pasted_updates(text: str | None, image_path: str | None) -> list:
    """A1111's "read generation parameters": one gr.update per PASTED_FIELDS widget (left alone
    when the infotext does not say), then a note listing the keys not applied and any problems."""
    source = (text or "").strip() or (infotext_of_image(image_path) if image_path else "")
    if not source:
        return [gr.update() for _ in PASTED_FIELDS] + ["Nothing to read: paste an infotext or drop a PNG made by A1111 "
                                                       "or ti-studio."]
    pasted = read_generation_parameters(source, sampler_names())
    updates = [gr.update(value=pasted.fields[name]) if name in pasted.fields else gr.update()
               for name in PASTED_FIELDS]
    lines = [f"⚠ {html.escape(problem)}" for problem in pasted.problems]
    if pasted.unknown:
        lines.append("Not applied (kept as written): "
                     + ", ".join(f"`{html.escape(key)}: {html.escape(value)}`" for key, value in pasted.unknown.items()))
    return updates + ["\n\n".join(lines) or "All parameters applied."]


def embeddings_table(services: AppServices) -> str:
    snapshot = services.library.snapshot
    lines = [f"**Embeddings** in `{services.paths.embeddings_dir}` ({len(snapshot.embeddings)} usable by name):"]
    if snapshot.embeddings:
        lines += ["", "| name | vectors | width | step | hash |", "|---|---|---|---|---|"]
        for name, emb in snapshot.embeddings.items():
            lines.append(f"| {html.escape(name)} | {emb.num_vectors} | {emb.dim} | {emb.step if emb.step is not None else ''} | {emb.shorthash or ''} |")
    else:
        lines.append("\n_none yet: drop .pt, .bin, .safetensors or PNG embeddings into the folder._")
    if snapshot.skipped:
        lines += ["", f"**Skipped** ({len(snapshot.skipped)}):", ""]
        lines += [f"- `{html.escape(s.path.name)}`: {html.escape(s.reason)}" for s in snapshot.skipped]
    for warning in snapshot.warnings:
        lines.append(f"\n⚠ {html.escape(warning)}")
    return "\n".join(lines)


def build_txt2img_tab(services: AppServices) -> dict[str, gr.components.Component]:
    stops = SessionStops()  # Interrupt stops this browser session's generation only
    with gr.Row():
        with gr.Column(scale=3):
            prompt = gr.Textbox(label="Prompt", lines=3, elem_id="txt2img_prompt",
                                placeholder="a photo of my-embedding, (detailed:1.2)")
            prompt_tokens = gr.Markdown("0/75", elem_id="txt2img_token_counter")
            negative = gr.Textbox(label="Negative prompt", lines=2, elem_id="txt2img_neg_prompt")
            negative_tokens = gr.Markdown("0/75", elem_id="txt2img_neg_token_counter")
        with gr.Column(scale=1):
            generate = gr.Button("Generate", variant="primary", elem_id="txt2img_generate")
            interrupt = gr.Button("Interrupt", elem_id="txt2img_interrupt")
    with gr.Accordion("Read generation parameters (paste an infotext or drop a PNG)", open=False,
                      elem_id="txt2img_paste"):
        with gr.Row():
            pasted_text = gr.Textbox(label="Infotext", lines=3, elem_id="txt2img_paste_text",
                                     placeholder="a photo of …\nNegative prompt: …\nSteps: 20, Sampler: Euler a, …")
            pasted_image = gr.Image(label="PNG with parameters", type="filepath", elem_id="txt2img_paste_image",
                                    height=160)
        read_parameters = gr.Button("Read into the fields", elem_id="txt2img_paste_read")
        pasted_notes = gr.Markdown("", elem_id="txt2img_paste_notes")
    with gr.Row():
        with gr.Column():
            with gr.Row():
                sampler = gr.Dropdown(label="Sampling method", choices=sampler_names(), value="Euler a",
                                      elem_id="txt2img_sampler")
                schedule_type = gr.Dropdown(label="Schedule type", choices=list(SCHEDULE_TYPES), value="Automatic",
                                            elem_id="txt2img_scheduler",
                                            info="Automatic: A1111's choice (Karras for DPM++ 2M, DPM++ SDE, DPM2)")
            steps = gr.Slider(label="Sampling steps", minimum=1, maximum=150, step=1, value=20, elem_id="txt2img_steps")
            with gr.Row():
                side = services.model.native_size if services.model is not None else 512  # SDXL: 1024
                width = gr.Slider(label="Width", minimum=64, maximum=2048, step=8, value=side, elem_id="txt2img_width")
                height = gr.Slider(label="Height", minimum=64, maximum=2048, step=8, value=side, elem_id="txt2img_height")
            with gr.Row():
                batch_count = gr.Slider(label="Batch count", minimum=1, maximum=100, step=1, value=1)
                batch_size = gr.Slider(label="Batch size", minimum=1, maximum=8, step=1, value=1)
            cfg = gr.Slider(label="CFG scale", minimum=1, maximum=30, step=0.5, value=7, elem_id="txt2img_cfg")
            with gr.Row():
                seed = gr.Number(label="Seed (-1: random)", value=-1, precision=0, elem_id="txt2img_seed")
                clip_skip = gr.Slider(label="Clip skip", minimum=1, maximum=12, step=1, value=1, elem_id="txt2img_clip_skip",
                                      info="2 for models trained on the penultimate CLIP layer (anime); ignored on SD 2.x")
            with gr.Row():
                default_hn = gr.Dropdown(label="Hypernetwork added to every prompt", value="None",
                                         choices=["None"] + services.hypernetwork_names(), elem_id="txt2img_hypernetwork",
                                         info="or write <hypernet:name:strength> in the prompt", scale=4)
                hn_refresh = gr.Button("Refresh", scale=0, min_width=80, elem_id="txt2img_hypernetwork_refresh")
            embeddings_md = gr.Markdown(embeddings_table(services), elem_id="embeddings_list")
            refresh = gr.Button("Refresh embeddings", elem_id="embeddings_refresh")
        with gr.Column():
            gallery = gr.Gallery(label="Output", elem_id="txt2img_gallery", columns=2, height="auto")
            infotext = gr.Textbox(label="Generation parameters", lines=4, interactive=False, elem_id="txt2img_infotext")
            used = gr.Markdown("", elem_id="txt2img_used_embeddings")

    def on_refresh():
        services.library.refresh(force=True)
        return embeddings_table(services)

    def on_generate(prompt_text, negative_text, sampler_name, steps_value, cfg_value, seed_value, width_value,
                    height_value, count_value, size_value, hypernetwork_name, clip_skip_value=1, schedule_value="Automatic",
                    progress=gr.Progress(),
                    request: gr.Request = None):
        session = session_of(request)
        stop = stops.start(session)
        try:
            default = None if hypernetwork_name in (None, "", "None") else hypernetwork_name
            config = GenerateConfig(
                prompt=with_default_hypernetwork(prompt_text or "", default), negative_prompt=negative_text or "", steps=int(steps_value),
                sampler=sampler_name, cfg_scale=float(cfg_value), seed=int(seed_value if seed_value is not None else -1),
                width=int(width_value), height=int(height_value), batch_count=int(count_value), batch_size=int(size_value),
                clip_skip=int(clip_skip_value if clip_skip_value is not None else 1),
                schedule_type=schedule_value or "Automatic",
            )
            snapshot = services.library.refresh()
            with services.generation_lock, services.using_model() as model:  # a model switch waits for it
                result = txt2img(model, snapshot.embeddings, config,
                                 on_progress=lambda done, total: progress(done / total, desc="Generating"),
                                 should_stop=stop, hypernetworks=services.hypernetworks)
            save_generated(result, services.paths.outputs_dir)
        except Exception as exc:
            raise user_error(exc) from exc
        finally:
            stops.finish(session, stop)
        items = [(str(g.path), f"seed {g.seed}") for g in result.images]
        used_text = ""
        if result.used_embeddings:
            parts = [f"{n} [{snapshot.embeddings[n].shorthash}]" for n in result.used_embeddings]
            used_text = "Used embeddings: " + ", ".join(parts)
        if result.hypernetworks:
            used_text += "\n\nHypernetworks: " + ", ".join(f"{n} ×{s:g}" for n, s in result.hypernetworks)
        for note in result.notes:
            used_text += f"\n\n⚠ {note}"
        first = result.images[0].infotext if result.images else ""
        return items, first, used_text, embeddings_table(services)

    read_parameters.click(pasted_updates, inputs=[pasted_text, pasted_image],
                          outputs=[prompt, negative, sampler, schedule_type, steps, cfg, seed, width, height, clip_skip,
                                   pasted_notes])
    prompt.change(lambda text: token_counter_text(services, text), inputs=[prompt], outputs=[prompt_tokens])
    negative.change(lambda text: token_counter_text(services, text, is_positive=False), inputs=[negative],
                    outputs=[negative_tokens])
    refresh.click(on_refresh, outputs=[embeddings_md])
    hn_refresh.click(lambda: gr.update(choices=["None"] + services.hypernetwork_names()), outputs=[default_hn])
    generate.click(
        on_generate,
        inputs=[prompt, negative, sampler, steps, cfg, seed, width, height, batch_count, batch_size, default_hn, clip_skip,
                schedule_type],
        outputs=[gallery, infotext, used, embeddings_md],
    )
    def on_interrupt_generation(request: gr.Request = None):
        stops.stop(session_of(request))

    interrupt.click(on_interrupt_generation)
    return {"prompt": prompt, "negative": negative, "generate": generate, "gallery": gallery, "infotext": infotext,
            "clip_skip": clip_skip, "schedule_type": schedule_type, "sampler": sampler, "steps": steps, "cfg": cfg,
            "seed": seed, "width": width, "height": height}
