"""A1111's "read generation parameters" in the txt2img tab: an infotext (pasted, or in a dropped
PNG) fills the fields; keys we do not apply are kept and shown."""

import pytest

from ti.generate import save_png_with_infotext
from ti.infotext import read_generation_parameters
from ui.tab_txt2img import PASTED_FIELDS, pasted_updates

A1111_INFOTEXT = """masterpiece, [cat:dog:0.5], (detailed:1.2)
Negative prompt: lowres, bad anatomy
Steps: 28, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 6.5, Seed: 3713297290, Size: 512x768, Model hash: 7f96a1a9ca, Model: anything-v5, Clip skip: 2, Hires upscale: 2, Hires steps: 10, Version: v1.10.1"""


def test_an_a1111_infotext_fills_every_field_we_have_and_keeps_the_rest():
    pasted = read_generation_parameters(A1111_INFOTEXT, ["DPM++ 2M", "Euler a"])
    assert pasted.fields == {"prompt": "masterpiece, [cat:dog:0.5], (detailed:1.2)",
                             "negative_prompt": "lowres, bad anatomy", "steps": 28, "sampler": "DPM++ 2M",
                             "schedule_type": "Karras", "cfg_scale": 6.5, "seed": 3713297290, "width": 512,
                             "height": 768, "clip_skip": 2}
    assert pasted.unknown == {"Model hash": "7f96a1a9ca", "Model": "anything-v5", "Hires upscale": "2",
                              "Hires steps": "10", "Version": "v1.10.1"}
    assert pasted.problems == []


@pytest.mark.parametrize("line, field, value", [
    ("Steps: 20, Sampler: DPM++ 2M Karras, CFG scale: 7", "schedule_type", "Karras"),  # before v1.9
    ("Steps: 20, Sampler: Euler a, CFG scale: 7", "schedule_type", "Automatic"),
    ("Steps: 20, Sampler: Euler a, CFG scale: 7", "clip_skip", 1),  # a missing key means A1111's default
])
def test_missing_and_old_style_keys_read_as_a1111_reads_them(line, field, value):
    assert read_generation_parameters(f"a cat\n{line}", ["Euler a", "DPM++ 2M"]).fields[field] == value


def test_what_we_cannot_apply_is_said_and_left_alone():
    pasted = read_generation_parameters("a cat\nSteps: many, Sampler: Restart, Schedule type: Polyexponential, "
                                        "CFG scale: 7", ["Euler a"])
    assert "steps" not in pasted.fields and "sampler" not in pasted.fields
    assert pasted.fields["schedule_type"] == "Automatic"
    assert len(pasted.problems) == 3
    assert set(pasted.unknown) == {"Steps", "Sampler", "Schedule type"}


def test_the_tab_fills_its_widgets_from_a_dropped_png(tmp_path):
    from PIL import Image

    path = save_png_with_infotext(Image.new("RGB", (8, 8)), A1111_INFOTEXT, tmp_path / "a1111.png")
    updates = pasted_updates("", str(path))
    values = dict(zip(PASTED_FIELDS, (update.get("value") for update in updates[:-1])))
    assert values["sampler"] == "DPM++ 2M" and values["clip_skip"] == 2 and values["height"] == 768
    assert "Not applied" in updates[-1] and "Hires upscale: 2" in updates[-1]
    partial = pasted_updates("a dog\nSteps: 5, Seed: 1, CFG scale: 3", None)
    values = dict(zip(PASTED_FIELDS, (update.get("value", "unchanged") for update in partial[:-1])))
    assert values["width"] == "unchanged" and values["steps"] == 5 and values["prompt"] == "a dog"
    assert "Nothing to read" in pasted_updates("", None)[-1]
