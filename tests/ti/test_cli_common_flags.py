"""design.md §5's common flags: every command takes --model, --model-config, --embeddings-dir,
--hypernetwork-dir, --device, --precision, --no-half and --seed. Where a command uses one it does
what it says; where it has no use for one, a note says so (and why) instead of silence."""

from __future__ import annotations

import pytest
import torch

from ti.cli import COMMON_FLAG_DESTS, build_parser, main
from ti.embedding import Embedding
from ti.formats import load_embedding_file, save_embedding_file

COMMANDS = ["info", "create", "convert", "preprocess", "train-embedding", "create-hypernetwork", "train-hypernetwork",
            "generate"]
FLAG_OF = {"model": "--model", "model_config": "--model-config", "embeddings_dir": "--embeddings-dir",
           "hypernetwork_dir": "--hypernetwork-dir", "device": "--device", "precision": "--precision",
           "no_half": "--no-half", "seed": "--seed"}


def _subparsers():
    parser = build_parser()
    [action] = [a for a in parser._actions if a.dest == "command"]
    return action.choices


def test_the_commands_are_the_ones_listed_here():
    assert sorted(_subparsers()) == sorted(COMMANDS)


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("dest", COMMON_FLAG_DESTS)
def test_every_command_takes_every_common_flag(command, dest):
    subparser = _subparsers()[command]
    action = subparser._option_string_actions.get(FLAG_OF[dest])
    assert action is not None, f"{command} lacks {FLAG_OF[dest]}"
    assert action.dest == dest


@pytest.mark.parametrize("argv, note", [
    (["info", "{file}", "--seed", "3"], "note: info: --seed has no effect (info only reads files"),
    (["convert", "{file}", "{out}", "--seed", "3", "--hypernetwork-dir", "x"],
     "note: convert: --hypernetwork-dir has no effect (convert reads and writes embeddings"),
    (["convert", "{file}", "{out}", "--seed", "3"], "note: convert: --seed has no effect"),
])
def test_a_common_flag_a_command_does_not_use_gets_a_note_and_the_command_still_runs(tmp_path, capsys, argv, note):
    file = tmp_path / "tok.safetensors"
    save_embedding_file(Embedding("tok", torch.ones(1, 32)), file)
    argv = [a.format(file=file, out=tmp_path / "out.pt") for a in argv]
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert note in err
    assert main(argv[:3] if argv[0] == "convert" else argv[:2]) in (0, 2)  # (convert: OUT exists now)
    assert "note:" not in capsys.readouterr().err  # nothing given, nothing said


def test_preprocess_notes_the_model_flags_it_has_no_use_for(tmp_path, capsys):
    from PIL import Image

    source = tmp_path / "raw"
    source.mkdir()
    Image.new("RGB", (64, 64), "red").save(source / "a.png")
    assert main(["preprocess", str(source), str(tmp_path / "out"), "--size", "64x64", "--model", "demo",
                 "--embeddings-dir", "e", "--seed", "1"]) == 0
    err = capsys.readouterr().err
    assert "note: preprocess: --model has no effect (captions come from BLIP" in err
    assert "--embeddings-dir has no effect" in err and "--seed has no effect" in err


def test_convert_looks_a_bare_name_up_in_embeddings_dir_and_checks_the_fit_with_model(tmp_path, capsys):
    embeddings = tmp_path / "embeddings"
    save_embedding_file(Embedding("small", torch.ones(2, 32)), embeddings / "small.safetensors")
    save_embedding_file(Embedding("wide", torch.ones(1, 768)), embeddings / "wide.pt")
    out = tmp_path / "small.pt"
    assert main(["convert", "small", str(out), "--embeddings-dir", str(embeddings), "--model", "demo",
                 "--device", "cpu"]) == 0
    assert "fits demo" in capsys.readouterr().out
    assert torch.equal(load_embedding_file(out).vectors, torch.ones(2, 32))
    # The demo takes 32-wide embeddings: a 768-wide one is refused before anything is written.
    assert main(["convert", "wide", str(tmp_path / "wide.safetensors"), "--embeddings-dir", str(embeddings),
                 "--model", "demo", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "768 wide (sd1); demo takes 32-wide embeddings" in err
    assert not (tmp_path / "wide.safetensors").exists()


@pytest.mark.parametrize("flags, dtype", [([], torch.float32), (["--precision", "bf16"], torch.bfloat16),
                                          (["--precision", "bf16", "--no-half"], torch.float32)])
def test_preprocess_precision_is_blips(tmp_path, monkeypatch, flags, dtype):
    from PIL import Image

    from ti.captioning import BlipCaptioner, save_tiny_blip

    loaded = []
    original = BlipCaptioner.from_pretrained.__func__

    def spying_from_pretrained(cls, *args, **kwargs):
        captioner = original(cls, *args, **kwargs)
        loaded.append(captioner.model.dtype)
        return captioner

    monkeypatch.setattr(BlipCaptioner, "from_pretrained", classmethod(spying_from_pretrained))
    source = tmp_path / "raw"
    source.mkdir()
    Image.new("RGB", (64, 64), "red").save(source / "a.png")
    blip = save_tiny_blip(tmp_path / "blip")
    assert main(["preprocess", str(source), str(tmp_path / "out"), "--size", "64x64", "--caption", "--caption-model",
                 str(blip), "--device", "cpu", *flags]) == 0
    assert loaded == [dtype]
    assert (tmp_path / "out" / "00000-0-a.txt").read_text(encoding="utf-8")


def test_create_hypernetwork_no_half_loads_the_model_in_full_precision(tmp_path, monkeypatch):
    import ti.pipeline

    seen = []
    original = ti.pipeline.load_model

    def spying_load_model(config, *args, **kwargs):
        seen.append(config.precision)
        return original(config, *args, **kwargs)

    monkeypatch.setattr(ti.pipeline, "load_model", spying_load_model)
    assert main(["create-hypernetwork", "hn", "--model", "demo", "--device", "cpu", "--no-half",
                 "--hypernetwork-dir", str(tmp_path)]) == 0
    assert seen == ["full"] and (tmp_path / "hn.pt").is_file()


def test_create_notes_the_hypernetwork_dir_and_seed_it_has_no_use_for(tmp_path, capsys):
    assert main(["create", "newtok", "--model", "demo", "--device", "cpu", "--embeddings-dir", str(tmp_path),
                 "--hypernetwork-dir", "h", "--seed", "4"]) == 0
    err = capsys.readouterr().err
    assert "note: create: --hypernetwork-dir has no effect" in err and "note: create: --seed has no effect" in err
    assert (tmp_path / "newtok.pt").is_file()
