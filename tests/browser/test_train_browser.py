"""Create an embedding, train it 3 steps in the browser, and see the preview and the loss plot."""

import json

from PIL import Image


def set_number(page, selector, value):
    box = page.locator(selector)
    box.fill(str(value))
    box.press("Tab")


def test_create_then_train_three_steps(page, studio):
    _, folders = studio
    data = folders["data"] / "train-set"
    data.mkdir()
    for index, colour in enumerate([(200, 30, 30), (30, 200, 30)]):
        Image.new("RGB", (64, 64), colour).save(data / f"{index:02d}-a red square.png")

    page.get_by_role("tab", name="Create embedding").click()
    page.locator("#create_name input, #create_name textarea").first.fill("browser-style")
    page.locator("#create_init_text input, #create_init_text textarea").first.fill("tree")
    page.locator("#create_button").click()
    page.wait_for_function("document.querySelector('#create_result').innerText.includes('browser-style.pt')")

    page.get_by_role("tab", name="Train embedding").click()
    page.locator("#train_refresh").click()
    page.locator("#train_embedding input").click()
    page.get_by_role("option", name="browser-style").click()
    page.locator("#train_data_dir textarea, #train_data_dir input").first.fill(str(data))
    for elem_id, value in [("train_width", 64), ("train_height", 64)]:
        set_number(page, f"#{elem_id} input[type=number]", value)
    set_number(page, "#train_max_steps input", 3)
    set_number(page, "#train_preview_every input", 3)
    set_number(page, "#train_save_every input", 1)
    page.get_by_text("Speed and memory").click()  # collapsed at first
    assert page.locator("#train_mixed_precision input").input_value() == "auto (as loaded)"
    page.locator("#train_mixed_precision input").click()
    page.get_by_role("option", name="float32").click()  # the demo model's own precision: no copy
    page.locator("#train_gradient_checkpointing input").check()
    page.locator("#train_channels_last input").check()
    page.locator("#train_start").click()

    page.wait_for_function("document.querySelector('#train_status').innerText.includes('finished at step 3')",
                           timeout=120_000)
    page.wait_for_selector("#train_preview img", timeout=30_000)
    page.wait_for_selector("#train_loss_plot canvas, #train_loss_plot svg", timeout=30_000)
    run_dirs = list(folders["logs"].glob("*/browser-style"))
    assert len(run_dirs) == 1
    assert sorted(p.name for p in (run_dirs[0] / "embeddings").glob("*.pt")) == [
        "browser-style-1.pt", "browser-style-2.pt", "browser-style-3.pt"]
    assert (run_dirs[0] / "images" / "browser-style-3.png").is_file()
    settings = json.loads(next(run_dirs[0].glob("settings-*.json")).read_text(encoding="utf-8"))
    assert (settings["mixed_precision"], settings["gradient_checkpointing"], settings["channels_last"],
            settings["compile_unet"]) == ("no", True, True, False)
