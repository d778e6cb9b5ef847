"""Bad parameters from the CLI or the UI are refused before any work starts, with a message that
names the field: CLI exit 2 and one line on stderr; UI a gr.Error, whose text is the toast."""

from __future__ import annotations

import gradio as gr
import pytest

import reliability_kit as kit
from ti.cli import main


@pytest.fixture
def model_loads(monkeypatch) -> list:
    """Every load_model call, refused: a bad parameter must be caught before the model loads."""
    calls = []

    def refuse_to_load(*args, **kwargs):
        calls.append(args)
        raise AssertionError("load_model called before the parameters were checked")

    monkeypatch.setattr("ti.pipeline.load_model", refuse_to_load)
    return calls


@pytest.fixture
def train_folder(tmp_path):
    kit.prepare_training_folder(tmp_path, "tok")
    return tmp_path


def train_args(folder, *extra):
    return ["train-embedding", "tok", "--model", "demo", "--embeddings-dir", str(folder / "embeddings"),
            "--data", str(folder / "data"), "--log-dir", str(folder / "logs"), "--width", "64", "--height", "64", *extra]


# (extra flags, words the one-line error must hold: the field, and the value)
TRAIN_CASES = {
    "negative steps": (["--steps", "-5"], ["max_steps", "-5"]),
    "zero batch": (["--batch-size", "0"], ["batch_size", "got 0"]),
    "zero accumulation": (["--grad-accum", "0"], ["grad_accum", "got 0"]),
    "schedule that ends before it starts": (["--lr", "0.005:100, 0.001:50"], ["learning_rate", "ends before it starts"]),
    "schedule with step 0": (["--lr", "0.005:0"], ["learning_rate", "above 0"]),
    "negative learning rate": (["--lr", "-0.1"], ["learning_rate", "above 0"]),
    "width not a multiple of 8": (["--width", "100"], ["width", "multiple of 8", "100"]),
    "missing dataset folder": (["--data", "/no/such/folder"], ["data_dir", "/no/such/folder", "does not exist"]),
    "negative save interval": (["--save-every", "-1"], ["save_every", "-1"]),
    "tag dropout above 1": (["--tag-dropout", "2"], ["tag_dropout", "between 0 and 1"]),
    "unknown template": (["--template", "nope.txt"], ["template", "nope.txt"]),
    "not a number": (["--steps", "many"], ["--steps", "invalid int value: 'many'"]),
}


@pytest.mark.parametrize("case", list(TRAIN_CASES))
def test_cli_training_refuses_bad_parameters_in_one_line(case, train_folder, capsys, model_loads):
    extra, words = TRAIN_CASES[case]
    try:
        status = main(train_args(train_folder, *extra))
    except SystemExit as exit_:  # argparse's own refusals exit from parse_args
        status = exit_.code
    err = capsys.readouterr().err
    assert status == 2
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert all(word in err for word in words), err
    assert model_loads == [], "refused only after loading the model"
    assert list((train_folder / "logs").iterdir()) == [], "work started"
    assert kit.embedding_step(train_folder / "embeddings" / "tok.pt") == 0


OTHER_CASES = {
    "generate: negative steps": (["generate", "x", "--model", "demo", "--steps", "-1"], ["steps", "-1"]),
    "generate: width not a multiple of 8": (["generate", "x", "--model", "demo", "--size", "100x64"], ["width", "100"]),
    "generate: zero batch": (["generate", "x", "--model", "demo", "--batch-size", "0"], ["batch size", "got 0"]),
    "generate: unknown sampler": (["generate", "x", "--model", "demo", "--sampler", "Nope"], ["--sampler", "Nope"]),
    "create: zero vectors": (["create", "ok", "--model", "demo", "--vectors", "0"], ["--vectors", "got 0"]),
    "preprocess: missing source": (["preprocess", "/no/such/folder", "/tmp/never-made", "--size", "64x64"], ["source", "/no/such/folder"]),
    "preprocess: width not a multiple of 8": (["preprocess", "/tmp", "/var/never-made", "--size", "100x64"], ["width", "100"]),
    "create-hypernetwork: bad layers": (["create-hypernetwork", "h", "--layers", "1,2"], ["layer structure", "start and end with 1"]),
}


@pytest.mark.parametrize("case", list(OTHER_CASES))
def test_cli_other_commands_refuse_bad_parameters_in_one_line(case, tmp_path, capsys, monkeypatch, model_loads):
    monkeypatch.chdir(tmp_path)
    argv, words = OTHER_CASES[case]
    status = main(argv)
    err = capsys.readouterr().err
    assert status == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    assert all(word in err for word in words), err
    assert model_loads == [], "refused only after loading the model"
    assert list(tmp_path.iterdir()) == [], "work started"


def test_cli_refusal_in_a_fresh_process(train_folder):
    """As users see it: `python -m ti train-embedding … --steps -5` exits 2 with one line, no traceback."""
    result = kit.cli(*train_args(train_folder, "--steps", "-5"))
    assert result.returncode == 2
    assert result.stderr.strip() == "error: max_steps: must be 1 or more, got -5"


# Train tab widget (elem_id) -> bad value, and the toast's start (the field's label).
UI_TRAIN_CASES = {
    "negative steps": ({"train_max_steps": -5}, "Max steps: must be 1 or more, got -5"),
    "zero batch": ({"train_batch_size": 0}, "Batch size: must be 1 or more, got 0"),
    "schedule that ends before it starts": ({"train_lr": "0.005:100, 0.001:50"}, "Embedding learning rate: "),
    "width not a multiple of 8": ({"train_width": 100}, "Width: must be a multiple of 8"),
    "missing dataset folder": ({"train_data_dir": "/no/such/folder"}, "Dataset directory: /no/such/folder does not exist"),
}


def test_ui_train_tab_refuses_bad_parameters_with_a_toast_naming_the_field(ui, tmp_path):
    from ti.create import create_embedding

    create_embedding(ui.services.model, "tok", "cat", 1, ui.services.paths.embeddings_dir)
    data = kit.write_dataset(tmp_path / "data")
    good = {"train_embedding": "tok", "train_data_dir": str(data), "train_width": 64, "train_height": 64,
            "train_max_steps": 2, "train_save_every": 1, "train_preview_every": 0}
    for case, (bad, toast) in UI_TRAIN_CASES.items():
        with pytest.raises(gr.Error) as refusal:
            ui.call("on_start", **{**good, **bad})
        assert refusal.value.message.startswith(toast), (case, refusal.value.message)
        assert not ui.services.jobs.snapshot().running, case
    assert not ui.services.paths.log_dir.exists(), "a refused run wrote to the log folder"


def test_ui_generate_refuses_bad_parameters_with_a_toast(ui):
    with pytest.raises(gr.Error) as refusal:
        ui.call("on_generate", txt2img_prompt="a cat", txt2img_width=100, txt2img_height=64, txt2img_steps=1)
    assert refusal.value.message.startswith("width: must be a multiple of 8")
    with pytest.raises(gr.Error) as refusal:
        ui.call("on_generate", txt2img_prompt="a cat", txt2img_width=64, txt2img_height=64, txt2img_steps=0)
    assert refusal.value.message.startswith("steps: must be between 1 and 500")
    assert not ui.services.paths.outputs_dir.exists()
