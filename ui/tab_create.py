"""Create embedding tab: name, initialization text, vectors per token, overwrite."""

from __future__ import annotations

import gradio as gr

from ti.create import create_embedding
from ti.prompt import CHUNK_LENGTH
from ui.errors import user_error
from ui.services import AppServices


def budget_text(num_vectors: float) -> str:
    used = int(num_vectors or 1)
    return f"Uses {used} of the {CHUNK_LENGTH} tokens of a prompt chunk; {CHUNK_LENGTH - used} left for the rest of the prompt."


def build_create_tab(services: AppServices) -> dict[str, gr.components.Component]:
    with gr.Row():
        with gr.Column():
            name = gr.Textbox(label="Name", elem_id="create_name")
            init_text = gr.Textbox(label="Initialization text", value="*", elem_id="create_init_text")
            num_vectors = gr.Slider(label="Number of vectors per token", minimum=1, maximum=CHUNK_LENGTH, step=1,
                                    value=1, elem_id="create_vectors")
            budget = gr.Markdown(budget_text(1), elem_id="create_budget")
            overwrite = gr.Checkbox(label="Overwrite old embedding", value=False, elem_id="create_overwrite")
            create = gr.Button("Create embedding", variant="primary", elem_id="create_button")
        with gr.Column():
            result = gr.Markdown("", elem_id="create_result")

    def on_create(name_text, init, vectors, overwrite_flag):
        try:
            with services.using_model() as model:
                path = create_embedding(model, name_text, init, int(vectors), services.paths.embeddings_dir,
                                        overwrite=bool(overwrite_flag))
                width = model.text_width
        except Exception as exc:
            raise user_error(exc) from exc
        services.library.refresh(force=True)
        return f"Created `{path}` ({int(vectors)} vector(s), {width} wide). Train it in the Train embedding tab."

    num_vectors.change(budget_text, inputs=[num_vectors], outputs=[budget])
    create.click(on_create, inputs=[name, init_text, num_vectors, overwrite], outputs=[result])
    return {"name": name, "init_text": init_text, "vectors": num_vectors, "create": create, "result": result}
