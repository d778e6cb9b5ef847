"""Hypernetwork .pt files: A1111's keys and zip members, legacy files and defaults, info, the folder."""

import hashlib
import io
import os
import shlex
import zipfile
from collections import OrderedDict

import pytest
import torch
from torch import nn

from ti.errors import BadEmbeddingFile, ConfigError, UnsafeFile
from ti.formats.a1111_pt import A1111_ZIP_MEMBER
from ti.hypernetwork import (
    Hypernetwork,
    HypernetworkLibrary,
    HypernetworkStructure,
    create_hypernetwork,
    describe_hypernetwork,
    load_hypernetwork_file,
    save_hypernetwork_file,
)

A1111_METADATA_KEYS = ["step", "name", "layer_structure", "activation_func", "is_layer_norm", "weight_initialization",
                       "sd_checkpoint", "sd_checkpoint_name", "activate_output", "use_dropout", "dropout_structure",
                       "last_layer_dropout", "optional_info"]


def raw_dict(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def test_create_writes_a1111_keys_and_members_and_reads_back(tmp_path):
    structure = HypernetworkStructure(activation="relu", layer_norm=True, use_dropout=True, dropout_structure=(0, 0.3, 0))
    path = create_hypernetwork("my/../hn?", tmp_path, [768, 320], structure, seed=1)
    assert path == tmp_path / "my..hn.pt"
    members = zipfile.ZipFile(path).namelist()
    assert members and all(A1111_ZIP_MEMBER.match(member) for member in members)
    data = raw_dict(path)
    assert list(data) == [768, 320] + A1111_METADATA_KEYS
    key_state, value_state = data[768]
    # Linear, ReLU, LayerNorm, Dropout, Linear, LayerNorm: parameters at 0, 2, 4, 5
    assert list(key_state) == ["linear.0.weight", "linear.0.bias", "linear.2.weight", "linear.2.bias",
                               "linear.4.weight", "linear.4.bias", "linear.5.weight", "linear.5.bias"]
    assert list(value_state) == list(key_state) and tuple(key_state["linear.0.weight"].shape) == (1536, 768)
    assert {k: data[k] for k in A1111_METADATA_KEYS} == {
        "step": 0, "name": "my..hn", "layer_structure": [1.0, 2.0, 1.0], "activation_func": "relu", "is_layer_norm": True,
        "weight_initialization": "Normal", "sd_checkpoint": None, "sd_checkpoint_name": None, "activate_output": False,
        "use_dropout": True, "dropout_structure": [0.0, 0.3, 0.0], "last_layer_dropout": True, "optional_info": None}
    loaded = load_hypernetwork_file(path)
    assert loaded.sizes == [768, 320] and loaded.structure == structure and loaded.name == "my..hn"
    assert loaded.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert loaded.shorthash == loaded.sha256[:10]
    for width in (768, 320):
        for module, state in zip(loaded.pair_for_width(width), data[width]):
            assert all(torch.equal(module.state_dict()[key], state[key]) for key in state)


def test_state_dicts_load_into_a1111s_own_layer_layout(tmp_path):
    """Independent of our builder: A1111's Sequential for relu + LayerNorm + dropout [1,2,2,1] takes our state dict strictly."""
    structure = HypernetworkStructure(layer_structure=(1, 2, 2, 1), activation="relu", layer_norm=True, use_dropout=True)
    path = save_hypernetwork_file(Hypernetwork("h", [8], structure), tmp_path / "h.pt")
    a1111_layout = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.LayerNorm(16), nn.Dropout(0.3),
                                 nn.Linear(16, 16), nn.ReLU(), nn.LayerNorm(16),
                                 nn.Linear(16, 8), nn.LayerNorm(8))
    holder = nn.Module()
    holder.linear = a1111_layout
    for state in raw_dict(path)[8]:
        holder.load_state_dict(state, strict=True)


def test_novelai_legacy_keys_and_missing_keys_load_with_a1111_defaults(tmp_path):
    first, second = torch.randn(16, 8), torch.randn(8, 16)
    legacy_state = {"linear1.weight": first, "linear1.bias": torch.zeros(16), "linear2.weight": second, "linear2.bias": torch.ones(8)}
    path = tmp_path / "anime_3.pt"
    torch.save({8: (legacy_state, dict(legacy_state)), "step": 7}, path)  # a plain torch.save, as old tools wrote
    loaded = load_hypernetwork_file(path)
    assert loaded.name == "anime_3" and loaded.step == 7 and loaded.stored_name is None
    assert loaded.structure == HypernetworkStructure(layer_structure=(1, 2, 1), activation="linear", weight_init="Normal",
                                                     layer_norm=False, use_dropout=False, dropout_structure=(0, 0, 0),
                                                     activate_output=True)
    key_module, _ = loaded.pair_for_width(8)
    assert torch.equal(key_module.linear[0].weight, first) and torch.equal(key_module.linear[1].weight, second)
    assert torch.equal(key_module.linear[1].bias, torch.ones(8))


def test_missing_activate_output_means_true_and_dropout_defaults_follow_last_layer_dropout(tmp_path):
    source = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Dropout(0.3), nn.Linear(8, 8), nn.ReLU(),
                          nn.Dropout(0.3), nn.Linear(8, 4), nn.ReLU())
    holder = nn.Module()
    holder.linear = source
    state = holder.state_dict()  # an OrderedDict with torch's _metadata, as A1111 writes
    assert isinstance(state, OrderedDict) and hasattr(state, "_metadata")
    path = tmp_path / "old.pt"
    torch.save({4: (state, state), "layer_structure": [1, 2, 2, 1], "activation_func": "relu", "use_dropout": True,
                "last_layer_dropout": True, "name": "stored"}, path)
    loaded = load_hypernetwork_file(path)
    assert loaded.structure.activate_output and loaded.structure.dropout_structure == (0, 0.3, 0.3, 0)
    assert loaded.stored_name == "stored" and loaded.name == "old"
    assert [type(layer).__name__ for layer in loaded.pair_for_width(4)[0].linear] == [type(layer).__name__ for layer in source]


def test_non_zero_dropout_structure_turns_dropout_on(tmp_path):
    holder = nn.Module()
    holder.linear = nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.1), nn.Linear(8, 4))
    path = tmp_path / "d.pt"
    torch.save({4: (holder.state_dict(), holder.state_dict()), "use_dropout": False, "dropout_structure": [0, 0.1, 0]}, path)
    assert load_hypernetwork_file(path).structure.use_dropout


BAD_FILES = {
    "weights of another shape": ({8: ({"linear.0.weight": torch.zeros(3, 3)}, {}), "step": 0}, "width 8, key module"),
    "an embedding": ({"string_to_param": {"*": torch.zeros(1, 8)}, "name": "e"}, "is an embedding"),
    "no width keys": ({"name": "x", "step": 1}, "no integer width keys"),
    "not a pair": ({8: {"linear.0.weight": torch.zeros(16, 8)}}, "expected a (key, value) pair"),
    "layer structure not ending in 1": ({8: ({}, {}), "layer_structure": [1, 2]}, "start and end with 1"),
    "unknown activation": ({8: ({}, {}), "activation_func": "wobble"}, "'wobble'"),
    "integer weights": ({8: ({"linear.0.weight": torch.zeros(16, 8, dtype=torch.int64)}, {})}, "not a floating-point tensor"),
}


@pytest.mark.parametrize("case", BAD_FILES, ids=list(BAD_FILES))
def test_bad_files_name_the_problem(case, tmp_path):
    content, message = BAD_FILES[case]
    path = tmp_path / "bad.pt"
    torch.save(content, path)
    with pytest.raises(BadEmbeddingFile) as error:
        load_hypernetwork_file(path)
    assert message in str(error.value) and str(path) in str(error.value)


def test_describe_gives_exactly_the_info_fields(tmp_path):
    structure = HypernetworkStructure(layer_structure=(1, 1.5, 1), activation="swish", layer_norm=True,
                                      use_dropout=True, dropout_structure=(0, 0.3, 0))
    path = create_hypernetwork("desc", tmp_path, [1024, 320], structure)
    assert describe_hypernetwork(path) == {
        "type": "hypernetwork", "name": "desc", "dims": [1024, 320], "layer_structure": [1, 1.5, 1], "activation": "swish",
        "layer_norm": True, "dropout_structure": [0, 0.3, 0], "step": 0,
        "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}


def test_create_refuses_existing_file_and_bad_names(tmp_path):
    create_hypernetwork("same", tmp_path, [8])
    with pytest.raises(ConfigError, match="already exists"):
        create_hypernetwork("same", tmp_path, [8])
    create_hypernetwork("same", tmp_path, [8], overwrite=True)
    for bad_name in ("", "///", ".."):
        with pytest.raises(ConfigError):
            create_hypernetwork(bad_name, tmp_path, [8])


class ShellCommand:
    """Pickles as os.system(command)."""

    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def test_library_finds_by_stem_caches_by_mtime_and_refuses_hostile_pickles(tmp_path):
    folder = tmp_path / "hypernetworks"
    create_hypernetwork("alpha", folder, [8], seed=0)
    create_hypernetwork("beta", folder / "sub", [8], seed=1)
    create_hypernetwork("None", folder, [8])
    (folder / ".alpha.pt.123.tmp").write_bytes(b"partial")
    marker = tmp_path / "pwned"
    hostile = io.BytesIO()
    torch.save({8: ({"linear.0.weight": ShellCommand(f"touch {shlex.quote(str(marker))}")}, {})}, hostile)
    (folder / "evil.pt").write_bytes(hostile.getvalue())

    library = HypernetworkLibrary(folder)
    assert library.names() == ["alpha", "beta", "evil"]
    alpha = library.load("alpha")
    assert library.load("alpha") is alpha  # cached while the file is unchanged
    with pytest.raises(UnsafeFile, match="refused: it names posix.system"):
        library.load("evil")
    assert not marker.exists()
    assert "posix.system" in library.unreadable["evil"]
    assert list(library.check_all()) == ["evil"]
    assert not marker.exists()

    save_hypernetwork_file(Hypernetwork("alpha", [8, 16], generator=torch.Generator().manual_seed(5)), folder / "alpha.pt")
    os.utime(folder / "alpha.pt", ns=(1, 10**18))  # a new mtime even on coarse-timestamp file systems
    reloaded = library.load("alpha")
    assert reloaded is not alpha and reloaded.sizes == [8, 16]
    resolved = library.resolve([("beta", 0.5), ("alpha", 1.0)])
    assert [(hn.name, strength) for hn, strength in resolved] == [("beta", 0.5), ("alpha", 1.0)]
    with pytest.raises(ConfigError, match="no hypernetwork named 'gamma'.*alpha, beta, evil"):
        library.load("gamma")
    assert HypernetworkLibrary(tmp_path / "missing").names() == []
