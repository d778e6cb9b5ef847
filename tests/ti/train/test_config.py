"""TrainConfig: A1111's defaults, and every bad option refused with the field's name."""

import json

import pytest

from ti.errors import ConfigError
from ti.train import TrainConfig


def test_defaults_are_a1111s(dataset_dir, kit):
    config = TrainConfig(name="mytok", data_dir=dataset_dir, templates_dir=str(kit.templates_dir))
    assert (config.learning_rate, config.batch_size, config.grad_accum) == ("0.005", 1, 1)
    assert (config.clip_grad, config.clip_value) == ("none", "0.1")
    assert (config.log_dir, config.template) == ("textual_inversion", "style_filewords.txt")
    assert (config.width, config.height, config.no_resize, config.max_steps) == (512, 512, False, 100000)
    assert (config.save_every, config.preview_every, config.png_embedding) == (500, 500, True)
    assert (config.preview_prompt, config.preview_steps, config.preview_cfg, config.preview_seed) == ("", 20, 7.0, -1)
    assert (config.shuffle_tags, config.tag_dropout, config.latent_sampling) == (False, 0.0, "once")
    assert (config.alpha_weight, config.flip, config.filewords_regex, config.filewords_join) == (False, False, "", " ")
    assert (config.seed, config.unload_vae) == (0, False)
    assert config.preview_size() == (512, 512)
    assert config.template_path().name == "style_filewords.txt"


BAD_OPTIONS = [
    ("batch_size", {"batch_size": 0}, "1 or more"),
    ("grad_accum", {"grad_accum": 0}, "1 or more"),
    ("max_steps", {"max_steps": -5}, "1 or more"),
    ("save_every", {"save_every": -1}, "0 (off)"),
    ("preview_every", {"preview_every": -1}, "0 (off)"),
    ("width", {"width": 100}, "multiple of 8"),
    ("width", {"width": 32}, "between 64"),
    ("height", {"height": 4096}, "between 64"),
    ("preview_width", {"preview_width": 70}, "multiple of 8"),
    ("preview_steps", {"preview_steps": 0}, "1 or more"),
    ("tag_dropout", {"tag_dropout": 1.5}, "between 0 and 1"),
    ("tag_dropout", {"tag_dropout": -0.1}, "between 0 and 1"),
    ("latent_sampling", {"latent_sampling": "sometimes"}, "once, deterministic, random"),
    ("clip_grad", {"clip_grad": "max"}, "none, value, norm"),
    ("learning_rate", {"learning_rate": "fast"}, '"fast" is not a number'),
    ("learning_rate", {"learning_rate": "0.01:200, 0.001:100"}, "steps must increase"),
    ("learning_rate", {"learning_rate": ""}, "no rate given"),
    ("clip_value", {"clip_grad": "norm", "clip_value": "big"}, '"big" is not a number'),
    ("preview_sampler", {"preview_sampler": "Euler b"}, "unknown sampler"),
    ("filewords_regex", {"filewords_regex": "("}, "not a valid regular expression"),
    ("seed", {"seed": -1}, "between 0"),
    ("preview_seed", {"preview_seed": -2}, "-1 (random)"),
    ("name", {"name": "../evil"}, "path-like"),
    ("name", {"name": "my/tok"}, "did you mean 'mytok'"),
    ("name", {"name": "///"}, "no usable characters"),
    ("template", {"template": "no_such_template.txt"}, "choose one of"),
    ("batch_size", {"batch_size": 2.5}, "whole number"),
    ("log_dir", {"log_dir": " "}, "is empty"),
]


@pytest.mark.parametrize("field, overrides, expected_text", BAD_OPTIONS,
                         ids=[f"{f}={list(o.values())[-1]!r}" for f, o, _ in BAD_OPTIONS])
def test_bad_option_refused_naming_its_field(dataset_dir, kit, field, overrides, expected_text):
    values = dict(name="mytok", data_dir=dataset_dir, templates_dir=str(kit.templates_dir))
    values.update(overrides)
    with pytest.raises(ConfigError) as caught:
        TrainConfig(**values)
    assert caught.value.field == field
    assert expected_text in str(caught.value)
    assert str(caught.value).startswith(f"{field}: ")


def test_missing_and_empty_dataset_folders_refused(tmp_path, kit):
    with pytest.raises(ConfigError, match="does not exist") as caught:
        TrainConfig(name="mytok", data_dir=tmp_path / "nowhere", templates_dir=str(kit.templates_dir))
    assert caught.value.field == "data_dir"
    empty = tmp_path / "empty"
    kit.write_images(empty / "sub", 2)  # images in subfolders do not count
    (empty / "notes.txt").write_text("not an image")
    with pytest.raises(ConfigError, match="holds no image files") as caught:
        TrainConfig(name="mytok", data_dir=empty, templates_dir=str(kit.templates_dir))
    assert caught.value.field == "data_dir"


def test_unused_clip_value_is_not_checked_and_whole_floats_become_ints(dataset_dir, kit):
    config = TrainConfig(name="mytok", data_dir=dataset_dir, templates_dir=str(kit.templates_dir),
                         clip_value="junk", batch_size=2.0, max_steps=10.0)
    assert config.batch_size == 2 and isinstance(config.batch_size, int)
    assert config.max_steps == 10


def test_template_given_as_a_path(dataset_dir, kit, tmp_path):
    template = tmp_path / "mine.txt"
    template.write_text("a photo of [name]\n\n", encoding="utf-8")
    config = TrainConfig(name="mytok", data_dir=dataset_dir, template=str(template), templates_dir=str(tmp_path / "x"))
    assert config.template_path() == template
    blank = tmp_path / "blank.txt"
    blank.write_text("\n  \n", encoding="utf-8")
    with pytest.raises(ConfigError, match="no prompt lines") as caught:
        TrainConfig(name="mytok", data_dir=dataset_dir, template=str(blank))
    assert caught.value.field == "template"


def test_json_round_trip_and_unknown_keys(dataset_dir, kit):
    config = TrainConfig(name="mytok", data_dir=dataset_dir, templates_dir=str(kit.templates_dir),
                         learning_rate="0.01:10, 0.001", flip=True, extra={"note": "x"})
    values = json.loads(config.to_json())
    assert values["data_dir"] == str(dataset_dir) and values["learning_rate"] == "0.01:10, 0.001"
    assert TrainConfig.from_dict(values) == config
    with pytest.raises(ConfigError) as caught:
        TrainConfig.from_dict({**values, "learning_rat": "0.1"})
    assert caught.value.field == "learning_rat"


def test_every_option_has_help_text():
    from dataclasses import fields

    for spec in fields(TrainConfig):
        assert len(TrainConfig.help_for(spec.name)) > 10, spec.name
