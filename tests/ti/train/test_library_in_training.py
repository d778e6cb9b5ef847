"""Every embedding of the library works in training prompts and previews, as in generation; the
trained vectors stand for the trained name (not its file's old ones)."""

import torch
from PIL import Image

from ti.embedding import Embedding
from ti.formats import load_embedding_file, save_embedding_file
from ti.infotext import parse_infotext, parse_ti_hashes
from ti.train import HypernetworkTrainConfig, train_embedding, train_hypernetwork


def _template(tmp_path, line):
    path = tmp_path / "template.txt"
    path.write_text(line + "\n", encoding="utf-8")
    return str(path)


def _helper(folder):
    vectors = torch.randn(3, 32, generator=torch.Generator().manual_seed(9)) * 0.5
    save_embedding_file(Embedding("helperstyle", vectors, step=7), folder / "helperstyle.pt")


def test_an_embedding_run_sees_the_other_embeddings_of_its_folder(demo_model, dataset_dir, kit, tmp_path):
    trained = {}
    for label, with_helper in (("alone", False), ("with", True)):
        folder = tmp_path / label
        folder.mkdir()
        kit.make_embedding(folder)
        if with_helper:
            _helper(folder)
        config = kit.config(dataset_dir, max_steps=2, template=_template(tmp_path, "a photo of [name] in helperstyle"),
                            preview_every=2, png_embedding=False, log_dir=str(tmp_path / f"logs-{label}"),
                            preview_prompt="[name] in helperstyle")
        result = train_embedding(demo_model, config, folder)
        trained[label] = load_embedding_file(folder / f"{kit.name}.pt").vectors
        [preview] = result.log_dir.glob("images/*.png")
        with Image.open(preview) as picture:
            params = parse_infotext(picture.info["parameters"])[2]
        names = set(parse_ti_hashes(params["TI hashes"])) if "TI hashes" in params else set()
        assert ("helperstyle" in names) == with_helper
    # "helperstyle" as vectors, not as the word's tokens: the prompts differ, and so does the result.
    assert not torch.allclose(trained["alone"], trained["with"])


def test_a_hypernetwork_run_uses_the_embeddings_folder_it_is_given(demo_model, dataset_dir, kit, tmp_path):
    from ti.cli import main

    library = tmp_path / "embeddings"
    library.mkdir()
    _helper(library)
    hypernetworks = tmp_path / "hypernetworks"
    assert main(["create-hypernetwork", "hn", "--sizes", "32", "--hypernetwork-dir", str(hypernetworks),
                 "--seed", "1"]) == 0
    config = HypernetworkTrainConfig(name="hn", data_dir=dataset_dir, width=64, height=64, max_steps=1,
                                     save_every=0, preview_every=1, preview_steps=1, log_dir=str(tmp_path / "logs"),
                                     templates_dir=str(kit.templates_dir), preview_prompt="a tree, helperstyle",
                                     embeddings_dir=str(library))
    result = train_hypernetwork(demo_model, config, hypernetworks)
    [preview] = result.log_dir.glob("images/*.png")
    with Image.open(preview) as picture:
        assert "helperstyle" in parse_ti_hashes(parse_infotext(picture.info["parameters"])[2]["TI hashes"])
