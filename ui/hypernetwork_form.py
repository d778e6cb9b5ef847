"""Pure mappings for the Hypernetworks tab's Create section (no gradio here).

Module widths come from A1111's checkboxes (768, 320, 640, 1280, 1024) plus a free-text "Other
sizes" box, for models whose attention widths are not SD's: the demo model's are 32 and 64, and
when none of the loaded model's widths is a checkbox, the form starts with them in that box.
"""

from __future__ import annotations

from pathlib import Path

from ti.errors import ConfigError
from ti.hypernetwork import HypernetworkStructure, parse_dropout_structure, parse_number_list, parse_sizes

CREATE_SIZES = ["768", "320", "640", "1280", "1024"]  # A1111's choices, in its order
DEFAULT_CREATE_SIZES = ["768", "320", "640", "1280"]


def default_sizes(model_widths: list[int]) -> tuple[list[str], str]:
    """(checked boxes, other sizes text) a new form starts with for a model with these attention widths."""
    if any(str(width) in CREATE_SIZES for width in model_widths) or not model_widths:
        return list(DEFAULT_CREATE_SIZES), ""
    return [], ", ".join(str(width) for width in model_widths)


def sizes_from_form(checked: list | None, other_text: str | None) -> list[int]:
    """Ticked widths, then the other sizes typed (each width once, in that order).

    Raises:
        ConfigError("Other sizes" or "Modules"): a bad number, or no width at all.
    """
    sizes = [int(value) for value in checked or []]
    if other_text and other_text.strip():
        try:
            sizes += parse_sizes(other_text)
        except ConfigError as error:
            raise ConfigError("Other sizes", str(error).split(": ", 1)[-1]) from None
    unique = list(dict.fromkeys(sizes))
    if not unique:
        raise ConfigError("Modules", "tick at least one width, or type widths under Other sizes")
    return unique


def structure_from_form(layers_text: str, activation: str, weight_init: str, layer_norm: bool, use_dropout: bool,
                        dropout_text: str) -> HypernetworkStructure:
    """The create form's boxes -> HypernetworkStructure; the dropout structure counts only with dropout on (A1111).

    Raises:
        ConfigError: naming the box.
    """
    layer_structure = parse_number_list(layers_text, "Layer structure")
    dropout_structure = (parse_dropout_structure(dropout_text, layer_structure, "Dropout structure")
                         if use_dropout else None)
    return HypernetworkStructure(layer_structure=tuple(layer_structure), activation=activation, weight_init=weight_init,
                                 layer_norm=bool(layer_norm), use_dropout=bool(use_dropout),
                                 dropout_structure=None if dropout_structure is None else tuple(dropout_structure))


def model_widths_hint(model_widths: list[int]) -> str:
    widths = ", ".join(map(str, model_widths)) or "none found"
    return (f"The loaded model's attention layers take widths **{widths}**. SD1: 768 is the text, 320/640/1280 "
            f"self-attention; SD2's text is 1024. Widths the model does not use change nothing.")


def created_text(path: Path, sizes: list[int], structure: HypernetworkStructure, model_widths: list[int]) -> str:
    """The result line after Create: what was written, and whether it fires on the loaded model."""
    layers = ", ".join(f"{value:g}" for value in structure.layer_structure)
    text = (f"Created `{path}` (widths {', '.join(map(str, sizes))}; layers {layers}; {structure.activation}; "
            f"{structure.weight_init}).")
    firing = [width for width in sizes if width in model_widths]
    if firing:
        return text + f" On the loaded model it fires at widths {', '.join(map(str, firing))}. Train it below."
    return (text + f" ⚠ None of these widths is used by the loaded model (its attention layers take "
                   f"{', '.join(map(str, model_widths))}), so it would change nothing there.")
