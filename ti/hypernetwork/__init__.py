"""Hypernetworks, compatible with A1111's files and math (a1111-compat.md §8).

    Hypernetwork(name, sizes, structure)                      # module.py: the per-width MLP pairs
    load_hypernetwork_file(path) / save_hypernetwork_file(hn, path) / describe_hypernetwork(path)
    create_hypernetwork(name, folder, sizes, structure, overwrite, seed) -> Path
    HypernetworkLibrary(folder)                               # **/*.pt by stem, lazy, cached by mtime
    parse_hypernet_tags(prompt) -> (prompt, [(name, strength)])
    with apply_hypernetworks(unet, [(hn, strength), ...]) as report: ...   # restores on exit
    attention_widths(unet) -> [widths a hypernetwork can fire at]

Pickled files are only ever opened through ti.formats.safe_load.
"""

from ti.hypernetwork.apply import (
    AppliedHypernetworks,
    HypernetworkAttnProcessor,
    apply_hypernetworks,
    attention_widths,
    chain_hypernetworks,
    parse_hypernet_tags,
)
from ti.hypernetwork.files import (
    HypernetworkLibrary,
    create_hypernetwork,
    describe_hypernetwork,
    hypernetwork_file_bytes,
    hypernetwork_from_dict,
    hypernetwork_to_dict,
    load_hypernetwork_file,
    save_hypernetwork_file,
)
from ti.hypernetwork.module import (
    ACTIVATIONS,
    WEIGHT_INITS,
    Hypernetwork,
    HypernetworkModule,
    HypernetworkStructure,
    create_form_activations,
    default_dropout_structure,
    parse_dropout_structure,
    parse_number_list,
    parse_sizes,
)

__all__ = [
    "ACTIVATIONS",
    "AppliedHypernetworks",
    "Hypernetwork",
    "HypernetworkAttnProcessor",
    "HypernetworkLibrary",
    "HypernetworkModule",
    "HypernetworkStructure",
    "WEIGHT_INITS",
    "apply_hypernetworks",
    "attention_widths",
    "chain_hypernetworks",
    "create_form_activations",
    "create_hypernetwork",
    "default_dropout_structure",
    "describe_hypernetwork",
    "hypernetwork_file_bytes",
    "hypernetwork_from_dict",
    "hypernetwork_to_dict",
    "load_hypernetwork_file",
    "parse_dropout_structure",
    "parse_hypernet_tags",
    "parse_number_list",
    "parse_sizes",
    "save_hypernetwork_file",
]
