"""The txt2img tab in a real browser: an embedding dropped in while the app runs is used by name."""

import datetime as dt

import torch

from ti.embedding import Embedding


def set_slider(page, elem_id, value):
    box = page.locator(f"#{elem_id} input[type=number]")
    box.fill(str(value))
    box.press("Enter")


def test_generate_with_embedding_dropped_in_while_running(page, studio):
    from ti.formats import save_embedding_file

    _, folders = studio
    # Written after the app started: must be picked up without a restart.
    save_embedding_file(Embedding(name="browseremb", vectors=torch.randn(3, 32)), folders["embeddings"] / "browseremb.pt")
    (folders["embeddings"] / "wide.pt").write_bytes(b"")  # an empty file is listed as skipped

    assert "demo model" in page.locator("#model_status").inner_text()
    page.locator("#txt2img_prompt textarea").fill("a photo of browseremb, tree")
    page.get_by_text("Refresh embeddings").click()
    page.wait_for_function("document.querySelector('#embeddings_list').innerText.includes('browseremb')")
    assert "empty file" in page.locator("#embeddings_list").inner_text()
    page.locator("#txt2img_prompt textarea").fill("a photo of browseremb, tree ")
    page.wait_for_function("document.querySelector('#txt2img_token_counter').innerText.startsWith('8/75')")

    set_slider(page, "txt2img_width", 64)
    set_slider(page, "txt2img_height", 64)
    set_slider(page, "txt2img_steps", 2)
    page.locator("#txt2img_seed input").fill("1234")
    page.locator("#txt2img_generate").click()

    page.wait_for_selector("#txt2img_gallery img", timeout=90_000)
    page.wait_for_function("document.querySelector('#txt2img_infotext textarea').value.includes('TI hashes')")
    infotext = page.locator("#txt2img_infotext textarea").input_value()
    assert infotext.startswith("a photo of browseremb, tree")
    assert "Seed: 1234" in infotext and "Size: 64x64" in infotext and "Steps: 2" in infotext
    assert "browseremb: " in infotext
    assert "browseremb" in page.locator("#txt2img_used_embeddings").inner_text()
    # Other browser tests share this app and its outputs folder: look for this picture's seed.
    saved = list((folders["outputs"] / "txt2img-images").rglob("*-1234.png"))
    assert len(saved) == 1
    assert saved[0].name[:5].isdigit() and saved[0].parent.name == dt.date.today().isoformat()


def test_an_a1111_infotext_pasted_in_gives_the_same_parameters_back(page, studio):
    """Read generation parameters: the fields fill from an A1111 infotext, and the picture made
    from them says the same (prompt editing, Karras from the schedule type, Clip skip 2)."""
    url, _ = studio
    page.goto(url)
    page.locator("#txt2img_paste").click()  # open the accordion
    page.locator("#txt2img_paste_text textarea").fill(
        "a [red:blue:0.5] tree\nNegative prompt: blurry\nSteps: 3, Sampler: DPM++ 2M, Schedule type: Karras, "
        "CFG scale: 6.5, Seed: 4321, Size: 64x64, Model hash: 7f96a1a9ca, Clip skip: 2, Hires upscale: 2")
    page.locator("#txt2img_paste_read").click()
    page.wait_for_function("document.querySelector('#txt2img_paste_notes').innerText.includes('Hires upscale')")
    assert page.locator("#txt2img_prompt textarea").input_value() == "a [red:blue:0.5] tree"
    page.locator("#txt2img_generate").click()
    page.wait_for_function("document.querySelector('#txt2img_infotext textarea').value.includes('Seed: 4321')",
                           timeout=90_000)
    infotext = page.locator("#txt2img_infotext textarea").input_value()
    assert infotext.startswith("a [red:blue:0.5] tree\nNegative prompt: blurry\n")
    for part in ("Steps: 3", "Sampler: DPM++ 2M", "Schedule type: Karras", "CFG scale: 6.5", "Size: 64x64",
                 "Clip skip: 2"):
        assert part in infotext
