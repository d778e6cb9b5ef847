"""Hypernetworks tab in a real browser: create one for the demo's widths, train it 2 steps, then
generate with `<hypernet:NAME:1>` in txt2img and see the infotext keep the tag."""

from PIL import Image

from ti.hypernetwork import load_hypernetwork_file


def set_number(page, selector, value):
    box = page.locator(selector)
    box.fill(str(value))
    box.press("Tab")


def text_box(page, elem_id):
    return page.locator(f"#{elem_id} textarea, #{elem_id} input").first


def test_create_train_and_use_a_hypernetwork(page, studio):
    _, folders = studio
    data = folders["data"] / "hn-set"
    data.mkdir()
    for index, colour in enumerate([(200, 30, 30), (30, 30, 200)]):
        Image.new("RGB", (64, 64), colour).save(data / f"{index:02d}-a flat colour.png")

    page.get_by_role("tab", name="Hypernetworks").click()
    assert "32, 64" in page.locator("#hn_create_model_widths").inner_text()
    text_box(page, "hn_create_name").fill("browser-hn")
    for width in ("768", "320", "640", "1280"):  # the demo starts with these off; make sure
        box = page.locator("#hn_create_sizes").get_by_label(width, exact=True)
        if box.is_checked():
            box.uncheck()
    text_box(page, "hn_create_other_sizes").fill("32, 64")
    page.locator("#hn_create_button").click()
    page.wait_for_function("document.querySelector('#hn_create_result').innerText.includes('fires at widths 32, 64')")
    assert load_hypernetwork_file(folders["hypernetworks"] / "browser-hn.pt").sizes == [32, 64]

    assert text_box(page, "hn_lr").input_value() == "0.00001"
    assert text_box(page, "hn_name").input_value() == "browser-hn"  # Create selected it for training
    text_box(page, "hn_data_dir").fill(str(data))
    for elem_id in ("hn_width", "hn_height"):
        set_number(page, f"#{elem_id} input[type=number]", 64)
    set_number(page, "#hn_max_steps input", 2)
    set_number(page, "#hn_preview_every input", 2)
    set_number(page, "#hn_save_every input", 2)
    page.locator("#hn_train").click()
    page.wait_for_function("document.querySelector('#hn_status').innerText.includes('finished at step 2')",
                           timeout=120_000)
    page.wait_for_selector("#hn_preview img", timeout=30_000)
    assert load_hypernetwork_file(folders["hypernetworks"] / "browser-hn.pt").step == 2
    assert (folders["hypernetworks"] / "browser-hn-2.pt").is_file()
    assert len(list(folders["logs"].glob("*/browser-hn/images/browser-hn-2.png"))) == 1

    page.get_by_role("tab", name="txt2img").click()
    page.locator("#txt2img_prompt textarea").fill("a flat colour <hypernet:browser-hn:1>")
    for elem_id, value in (("txt2img_width", 64), ("txt2img_height", 64), ("txt2img_steps", 2)):
        box = page.locator(f"#{elem_id} input[type=number]")
        box.fill(str(value))
        box.press("Enter")
    page.locator("#txt2img_seed input").fill("7")
    page.locator("#txt2img_generate").click()
    page.wait_for_function("document.querySelector('#txt2img_infotext textarea').value.includes('Seed: 7')",
                           timeout=90_000)
    infotext = page.locator("#txt2img_infotext textarea").input_value()
    assert infotext.startswith("a flat colour <hypernet:browser-hn:1>")
    assert "browser-hn ×1" in page.locator("#txt2img_used_embeddings").inner_text()
