"""Training with Clip skip: the prompts and the previews go through the same layers as generation."""

import torch

from ti.formats import load_embedding_file
from ti.infotext import parse_infotext
from ti.train import train_embedding


def _train(demo_model, kit, dataset_dir, folder, **options):
    folder.mkdir()
    kit.make_embedding(folder)
    result = train_embedding(demo_model, kit.config(dataset_dir, max_steps=2, **options), folder)
    return load_embedding_file(folder / f"{kit.name}.pt").vectors, result


def test_an_embedding_trained_with_clip_skip_2_learns_through_the_penultimate_layer(demo_model, dataset_dir, kit,
                                                                                   tmp_path):
    last, _ = _train(demo_model, kit, dataset_dir, tmp_path / "last")
    penultimate, result = _train(demo_model, kit, dataset_dir, tmp_path / "penultimate", clip_skip=2,
                                 preview_every=2, png_embedding=False)
    assert not torch.allclose(last, penultimate)  # another objective, other vectors
    [preview] = result.log_dir.glob("images/*.png")
    from PIL import Image

    with Image.open(preview) as picture:
        assert parse_infotext(picture.info["parameters"])[2]["Clip skip"] == "2"
    settings = [path.read_text() for path in result.log_dir.glob("settings-*.json")]  # both runs' folder
    assert any('"clip_skip": 2' in text for text in settings)


def test_a_hypernetwork_trains_with_clip_skip(demo_model, dataset_dir, tmp_path, kit):
    from ti.cli import main

    folder = tmp_path / "hypernetworks"
    assert main(["create-hypernetwork", "hn", "--sizes", "32", "--hypernetwork-dir", str(folder)]) == 0
    assert main(["train-hypernetwork", "hn", "--data", str(dataset_dir), "--model", "demo", "--hypernetwork-dir",
                 str(folder), "--steps", "1", "--width", "64", "--height", "64", "--preview-every", "1",
                 "--preview-steps", "1", "--log-dir", str(tmp_path / "logs"), "--templates-dir",
                 str(kit.templates_dir), "--clip-skip", "2"]) == 0
    [preview] = (tmp_path / "logs").glob("*/hn/images/*.png")
    from PIL import Image

    with Image.open(preview) as picture:
        assert parse_infotext(picture.info["parameters"])[2]["Clip skip"] == "2"
