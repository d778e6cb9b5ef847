"""The training forms without a browser: widget values -> TrainConfig, and which widgets each form has.

Focus: the "Speed and memory" options (mixed precision, gradient checkpointing, channels last,
compile) reach the config of the run, and the hypernetwork form has no compile option.
"""

from dataclasses import fields
from pathlib import Path
from types import SimpleNamespace

import gradio as gr
import pytest
from PIL import Image

from ti.errors import ConfigError
from ti.train import HypernetworkTrainConfig, TrainConfig
from ti.train.config import MIXED_PRECISION_MODES
from ui.train_form import (
    EMBEDDING_FORM,
    HYPERNETWORK_FORM,
    MIXED_PRECISION_CHOICES,
    build_train_config,
    mixed_precision_value,
)
from ui.train_widgets import build_training_options

SPEED_FIELDS = ("mixed_precision", "gradient_checkpointing", "channels_last", "compile_unet")
# Config fields a form does not show: the tab adds the name; the templates and embeddings folders
# are the app's (--templates-dir, --embeddings-dir).
NOT_IN_OPTIONS = {"name", "templates_dir", "embeddings_dir", "extra", "preview_width", "preview_height"}


@pytest.fixture
def folders(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    Image.new("RGB", (64, 64), "red").save(data / "a.png")
    templates = tmp_path / "templates"
    templates.mkdir()
    for name in ("style_filewords.txt", "hypernetwork.txt"):
        (templates / name).write_text("a picture of [name]\n", encoding="utf-8")
    logs = tmp_path / "logs"
    return SimpleNamespace(data=data, templates=templates, logs=logs,
                           paths=SimpleNamespace(templates_dir=templates, log_dir=logs))


def widget_defaults(folders, form):
    """{field: widget value} as a freshly built form would send it (plus a name and data folder)."""
    with gr.Blocks():
        widgets = build_training_options(SimpleNamespace(paths=folders.paths), form, prefix="t_")
    values = {name: widget.value for name, widget in widgets.items()}
    values.update(name="thing", data_dir=str(folders.data))
    return values


def build(folders, form, **changes):
    values = {**widget_defaults(folders, form), **changes}
    return build_train_config(values, folders.templates, form, log_root=folders.logs)


@pytest.mark.parametrize("form, config_class", [(EMBEDDING_FORM, TrainConfig),
                                                (HYPERNETWORK_FORM, HypernetworkTrainConfig)])
def test_fresh_form_gives_the_config_defaults_for_speed_options(folders, form, config_class):
    config = build(folders, form)
    assert type(config) is config_class
    assert config.mixed_precision == "auto"
    assert config.gradient_checkpointing is False and config.channels_last is False and config.compile_unet is False


@pytest.mark.parametrize("form", [EMBEDDING_FORM, HYPERNETWORK_FORM], ids=["embedding", "hypernetwork"])
def test_every_option_has_a_widget(folders, form):
    """A new TrainConfig option without a widget (or a widget without an option) fails here."""
    with gr.Blocks():
        widgets = build_training_options(SimpleNamespace(paths=folders.paths), form, prefix="t_")
    expected = {f.name for f in fields(form.config_class)} - NOT_IN_OPTIONS
    if not form.has_png_embedding:
        expected.discard("png_embedding")
    if not form.has_compile_unet:
        expected.discard("compile_unet")
    if not form.has_train_encoders:
        expected.discard("train_encoders")
    assert set(widgets) == expected


@pytest.mark.parametrize("choice", ["both", "clip_l", "clip_g"])
def test_train_encoders_choice_reaches_the_embedding_config(folders, choice):
    config = build(folders, EMBEDDING_FORM, train_encoders=choice)
    assert config.train_encoders == choice and config.to_dict()["train_encoders"] == choice
    assert "train_encoders" not in widget_defaults(folders, HYPERNETWORK_FORM)


@pytest.mark.parametrize("form", [EMBEDDING_FORM, HYPERNETWORK_FORM], ids=["embedding", "hypernetwork"])
@pytest.mark.parametrize("choice, expected", [("auto", "auto"), ("no", "no"), ("bf16", "bf16"), ("fp16", "fp16")])
def test_mixed_precision_choice_reaches_the_config(folders, form, choice, expected):
    config = build(folders, form, mixed_precision=choice)
    assert config.mixed_precision == expected
    assert config.to_dict()["mixed_precision"] == expected  # the run's settings JSON


@pytest.mark.parametrize("form", [EMBEDDING_FORM, HYPERNETWORK_FORM], ids=["embedding", "hypernetwork"])
@pytest.mark.parametrize("name", ["gradient_checkpointing", "channels_last"])
def test_speed_checkboxes_reach_the_config(folders, form, name):
    config = build(folders, form, **{name: True})
    assert getattr(config, name) is True
    assert config.to_dict()[name] is True
    others = {"gradient_checkpointing", "channels_last"} - {name}
    assert not any(getattr(config, other) for other in others)


def test_compile_unet_reaches_the_embedding_config(folders):
    config = build(folders, EMBEDDING_FORM, compile_unet=True)
    assert config.compile_unet is True and config.to_dict()["compile_unet"] is True


def test_hypernetwork_form_has_no_compile_option_and_refuses_it_by_name(folders):
    assert "compile_unet" not in widget_defaults(folders, HYPERNETWORK_FORM)
    # An API client sending it anyway is told why, under the option's label, not silently ignored.
    with pytest.raises(ConfigError, match=r"Compile the UNet \(torch.compile\): is for embeddings") as caught:
        build(folders, HYPERNETWORK_FORM, compile_unet=True)
    assert caught.value.field == HYPERNETWORK_FORM.label("compile_unet")


def test_mixed_precision_dropdown_shows_user_words_for_every_mode():
    labels = [label for label, _ in MIXED_PRECISION_CHOICES]
    assert labels == ["auto (as loaded)", "float32", "bf16", "fp16"]
    assert sorted(value for _, value in MIXED_PRECISION_CHOICES) == sorted(MIXED_PRECISION_MODES)


@pytest.mark.parametrize("sent, expected", [
    (None, "auto"), ("", "auto"), ("auto (as loaded)", "auto"), ("float32", "no"), ("no", "no"),
    ("bf16", "bf16"), ("fp16", "fp16"), ("fp8", "fp8"),
])
def test_mixed_precision_value_takes_labels_and_values(sent, expected):
    assert mixed_precision_value(sent) == expected


def test_unknown_mixed_precision_is_refused_under_its_label(folders):
    with pytest.raises(ConfigError, match=r"Mixed precision: expected one of auto, no, bf16, fp16, got 'fp8'"):
        build(folders, EMBEDDING_FORM, mixed_precision="fp8")


def test_settings_json_round_trip_keeps_speed_options(folders):
    config = build(folders, EMBEDDING_FORM, mixed_precision="bf16", gradient_checkpointing=True,
                   channels_last=True, compile_unet=True)
    again = TrainConfig.from_dict(config.to_dict())
    assert {name: getattr(again, name) for name in SPEED_FIELDS} == {
        "mixed_precision": "bf16", "gradient_checkpointing": True, "channels_last": True, "compile_unet": True}


def test_speed_widgets_sit_in_a_collapsed_accordion_with_help(folders):
    with gr.Blocks():
        widgets = build_training_options(SimpleNamespace(paths=folders.paths), EMBEDDING_FORM, prefix="t_")
    for name in SPEED_FIELDS + ("unload_vae",):
        accordion = widgets[name].parent
        while accordion is not None and not isinstance(accordion, gr.Accordion):
            accordion = accordion.parent
        assert accordion is not None and accordion.label == "Speed and memory" and accordion.open is False, name
    assert widgets["mixed_precision"].elem_id == "t_mixed_precision"
    assert "stay float32" in widgets["mixed_precision"].info
    assert widgets["gradient_checkpointing"].info == TrainConfig.help_for("gradient_checkpointing")
    assert Path(str(widgets["log_dir"].value)) == folders.logs
