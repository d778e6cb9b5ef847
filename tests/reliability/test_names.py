"""Names with `..`, slashes, absolute paths or reserved characters are refused or cleaned, and
nothing is written outside the configured folders."""

from __future__ import annotations

import os
from pathlib import Path

import gradio as gr
import pytest
from PIL import Image

import reliability_kit as kit
from ti.cli import main
from ti.create import clean_embedding_name
from ti.errors import ConfigError
from ti.hypernetwork import HypernetworkLibrary, create_hypernetwork

HOSTILE_NAMES = [
    "../escaped", "../../escaped", "..", ".", "/tmp/escaped-abs", "sub/../../escaped", "..\\..\\escaped",
    "C:\\Windows\\escaped", "a\x00b", "name<>:\"|?*", "NUL", "con.pt", "com1", ".hidden", "x" * 300,
    "\udcff\udcfe", "~/escaped", "$(touch escaped)", "`touch escaped`",
]


def files_under(root: Path) -> set[Path]:
    return {path for path in root.rglob("*")}


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_clean_embedding_name_refuses_or_gives_a_plain_file_name(name):
    try:
        cleaned = clean_embedding_name(name)
    except ConfigError as error:
        assert error.field == "name"
        return
    assert cleaned and cleaned == os.path.basename(cleaned) and not cleaned.startswith(".")
    assert not set(cleaned) & set('/\\:<>"|?*\x00') and len(cleaned.encode()) <= 150
    assert cleaned.split(".")[0].lower() not in {"con", "nul", "aux", "prn", "com1", "lpt1"}


def test_create_embedding_and_hypernetwork_never_write_outside(tmp_path, demo_model):
    from ti.create import create_embedding

    sandbox = tmp_path / "sandbox"
    embeddings, hypernetworks = sandbox / "embeddings", sandbox / "hypernetworks"
    before = files_under(tmp_path)
    for name in HOSTILE_NAMES:
        for make in (lambda: create_embedding(demo_model, name, "cat", 1, embeddings),
                     lambda: create_hypernetwork(name, hypernetworks, sizes=(32,), seed=1)):
            try:
                written = make()
            except ConfigError:
                continue
            assert written.parent in (embeddings, hypernetworks), written
    new_paths = files_under(tmp_path) - before
    assert new_paths and all(path == sandbox or path.is_relative_to(sandbox) for path in new_paths), new_paths
    assert not Path("/tmp/escaped-abs.pt").exists() and not Path("/tmp/escaped-abs").exists()


def test_cli_create_refuses_path_names_before_loading_a_model(tmp_path, capsys):
    for name in ("../escaped", "..", ".hidden", "NUL", "x" * 300):
        assert main(["create", name, "--model", "demo", "--embeddings-dir", str(tmp_path / "e")]) == 2
        assert main(["create-hypernetwork", name, "--hypernetwork-dir", str(tmp_path / "h")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 10 and all(line.startswith("error: name: ") for line in err.splitlines())
    assert not (tmp_path / "e").exists() and not (tmp_path / "h").exists()


def test_training_names_are_refused_by_the_config(tmp_path):
    from ti.train import TrainConfig

    kit.write_dataset(tmp_path / "data")
    for name in ("../escaped", "/abs/escaped", "sub/escaped", "..", "a\\b"):
        with pytest.raises(ConfigError) as refusal:
            TrainConfig(name=name, data_dir=tmp_path / "data")
        assert refusal.value.field == "name"


def test_ui_create_tab_cleans_or_refuses(ui):
    embeddings = ui.services.paths.embeddings_dir
    with pytest.raises(gr.Error) as refusal:
        ui.call("on_create", create_name="../../escaped")
    assert refusal.value.message == "name: '../../escaped' would make a hidden or path-like file name"
    message = ui.call("on_create", create_name="/tmp/escaped-abs")
    assert f"{embeddings / 'tmpescaped-abs.pt'}" in message
    assert sorted(p.name for p in embeddings.iterdir()) == ["tmpescaped-abs.pt"]
    assert not Path("/tmp/escaped-abs.pt").exists()


def test_ui_train_tab_refuses_a_path_as_the_embedding_name(ui):
    kit.write_dataset(ui.services.paths.embeddings_dir.parent / "data")
    with pytest.raises(gr.Error) as refusal:
        ui.call("on_start", train_embedding="../../escaped", train_data_dir=str(ui.services.paths.embeddings_dir.parent / "data"))
    assert refusal.value.message.startswith("Embedding: '../../escaped' ")
    assert not ui.services.jobs.snapshot().running


def test_ui_train_tab_keeps_the_log_folder_inside_the_configured_one(ui, tmp_path):
    from ti.create import create_embedding

    create_embedding(ui.services.model, "tok", "cat", 1, ui.services.paths.embeddings_dir)
    data = kit.write_dataset(tmp_path / "data")
    outside = tmp_path / "outside-logs"
    try:
        ui.call("on_start", train_embedding="tok", train_data_dir=str(data), train_log_dir=str(outside),
                train_width=64, train_height=64, train_max_steps=1, train_save_every=1, train_preview_every=0)
    except gr.Error:
        return  # refused: fine
    ui.services.jobs.wait(120)
    assert not outside.exists(), "training wrote outside the configured log folder"


def test_hypernetwork_tags_cannot_reach_outside_the_folder(tmp_path):
    folder = tmp_path / "hypernetworks"
    create_hypernetwork("inside", folder, sizes=(32,), seed=1)
    create_hypernetwork("outside", tmp_path, sizes=(32,), seed=1)
    library = HypernetworkLibrary(folder)
    for name in ("../outside", str(tmp_path / "outside"), "..", "inside/../../outside"):
        with pytest.raises(ConfigError, match="no hypernetwork named"):
            library.load(name)


def test_stored_names_in_image_embeddings_are_not_trusted(tmp_path):
    """An image's stored name becomes the embedding name (A1111); a path-like one falls back to the stem."""
    import torch

    from ti.embedding import Embedding
    from ti.formats import load_embedding_file, save_embedding_file

    for stored in ("../../escaped", "/abs/escaped", "..", "a\\b", "\udcffbad"):
        path = save_embedding_file(Embedding(stored, torch.ones(1, 32)), tmp_path / "picture.png")
        assert load_embedding_file(path).name == "picture", stored


def test_preprocess_outputs_stay_in_the_destination(tmp_path):
    from ti.preprocess import PreprocessConfig, preprocess_folder

    source, destination = tmp_path / "raw", tmp_path / "out"
    source.mkdir()
    Image.new("RGB", (80, 64), (200, 10, 10)).save(source / "evil.png")
    (source / "evil.txt").write_text("../../../escaped/x, /etc/passwd, C:\\Windows\\sys, a:b*c?d|e<f>g\"h")
    Image.new("RGB", (80, 64), (10, 200, 10)).save(source / os.fsdecode(b"caf\xe9.png"))
    before = files_under(tmp_path)
    result = preprocess_folder(PreprocessConfig(source=source, destination=destination, width=64, height=64,
                                                existing_caption="copy", caption_in_filename=True))
    assert result.images
    written = files_under(tmp_path) - before
    assert written and all(path.parent == destination for path in written - {destination}), written
    assert not list(tmp_path.rglob("escaped"))


def test_convert_names_the_output_by_its_own_stem_and_writes_only_there(tmp_path, capsys):
    """A downloaded image embedding whose stored name is a path cannot steer where convert
    writes or what the result is called."""
    import torch

    from ti.embedding import Embedding
    from ti.formats import load_embedding_file, save_embedding_file

    source = save_embedding_file(Embedding("../../escaped", torch.ones(2, 32)), tmp_path / "downloaded.png")
    out = tmp_path / "out"
    out.mkdir()
    before = files_under(tmp_path)
    for target in ("converted.safetensors", "converted.pt", "converted.webp"):
        assert main(["convert", str(source), str(out / target)]) == 0
        assert load_embedding_file(out / target).name == "converted"
    assert main(["convert", str(source), str(out / "no-extension")]) == 2
    assert "unknown extension" in capsys.readouterr().err
    assert files_under(tmp_path) - before == {out / "converted.safetensors", out / "converted.pt", out / "converted.webp"}


def test_an_open_listen_server_keeps_folder_fields_inside_the_data_root(ui, tmp_path):
    """--listen without a login: preprocess source/destination and the dataset folder of both
    training tabs must lie inside the data root; outside paths are refused by field, nothing runs."""
    from ti.create import create_embedding

    root = tmp_path / "data-root"
    kit.write_dataset(root / "raw")
    outside = kit.write_dataset(tmp_path / "outside")
    ui.services.paths.data_root = root
    create_embedding(ui.services.model, "tok", "cat", 1, ui.services.paths.embeddings_dir)
    refusals = [
        ("Source directory", "on_run", dict(preprocess_source=str(outside), preprocess_destination="done")),
        ("Destination directory", "on_run", dict(preprocess_source="raw", preprocess_destination="../escaped")),
        ("Dataset directory", "on_start", dict(train_embedding="tok", train_data_dir=str(outside))),
        ("Dataset directory", "on_train_hypernetwork", dict(hn_data_dir="../outside")),
    ]
    for label, callback, values in refusals:
        with pytest.raises(gr.Error) as refusal:
            ui.call(callback, **values)
        assert refusal.value.message.startswith(f"{label}: ") and "outside the data folder" in refusal.value.message
        assert not ui.services.jobs.snapshot().running
    assert not (tmp_path / "escaped").exists()

    # Inside the root, relative to it: preprocessing runs and writes there.
    ui.call("on_run", preprocess_source="raw", preprocess_destination="done", preprocess_width=64, preprocess_height=64)
    ui.services.jobs.wait(120)
    assert sorted(p.suffix for p in (root / "done").iterdir()) == [".png", ".png"]
    ui.services.paths.data_root = None  # a loopback or logged-in server: any folder
    ui.call("on_start", train_embedding="tok", train_data_dir=str(outside), train_width=64, train_height=64,
            train_max_steps=1, train_save_every=0, train_preview_every=0)
    assert ui.services.jobs.wait(120).error == ""


def test_only_an_open_listen_server_confines_folders(tmp_path):
    from test_app_server import load_app_module

    app = load_app_module()
    assert app.data_root_for(app.parse_args([])) is None
    assert app.data_root_for(app.parse_args(["--listen", "--gradio-auth", "a:b"])) is None
    assert app.data_root_for(app.parse_args(["--listen"])) == Path.cwd().resolve()
    assert app.data_root_for(app.parse_args(["--listen", "--data-root", str(tmp_path)])) == tmp_path.resolve()
