"""An SDXL single-file checkpoint picked in the page: it loads (configs from --model-config), the
status says sdxl, and txt2img's size follows the model's native size (1024 for SDXL)."""

import sys
from pathlib import Path

from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "ti"))  # importlib mode: the converter's folder
from ldm_checkpoint import pipeline_to_ldm  # noqa: E402


def test_an_sdxl_single_file_picked_in_the_page_loads_and_txt2img_takes_its_native_size(tmp_path, app_launcher,
                                                                                         browser):
    from ti.demo import build_demo_sdxl_pipeline

    pipe = build_demo_sdxl_pipeline()
    pipe.unet.register_to_config(sample_size=128)  # SDXL's own: 128 latents, 1024 px
    pipe.save_pretrained(tmp_path / "xl-configs")
    root = tmp_path / "app"
    (root / "models").mkdir(parents=True)
    checkpoint = root / "models" / "tiny-xl.safetensors"
    save_file(pipeline_to_ldm(pipe), checkpoint)
    with app_launcher(root, "--model-config", str(tmp_path / "xl-configs")) as (url, _, _):
        context = browser.new_context(viewport={"width": 1400, "height": 1800})
        try:
            page = context.new_page()
            page.set_default_timeout(60_000)
            page.goto(url)
            width = page.locator("#txt2img_width input[type=number]")
            assert width.input_value() == "512"  # the demo's
            page.locator("#model_dropdown input").click()
            page.get_by_role("option", name=str(checkpoint)).click()
            page.wait_for_function("document.querySelector('#model_status').innerText.includes('tiny-xl')")
            assert "sdxl" in page.locator("#model_status").inner_text()
            page.wait_for_function("document.querySelector('#txt2img_width input[type=number]').value === '1024'")
            assert page.locator("#txt2img_height input[type=number]").input_value() == "1024"
        finally:
            context.close()
