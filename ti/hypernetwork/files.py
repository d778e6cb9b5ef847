"""Hypernetwork .pt files as A1111 reads and writes them (a1111-compat.md §8), and the folder of them.

A file is a pickled dict: integer keys (context widths) -> (key state dict, value state dict)
with `linear.<idx>.weight/bias`, then step, name, layer_structure, activation_func,
is_layer_norm, weight_initialization, sd_checkpoint, sd_checkpoint_name, activate_output,
use_dropout, dropout_structure, last_layer_dropout, optional_info. Files are only ever opened
through ti.formats.safe_load, and written with the zip members A1111's safe loader accepts.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from ti.errors import BadEmbeddingFile, ConfigError
from ti.formats.a1111_pt import torch_bytes_a1111_accepts
from ti.formats.safe_load import MAX_TORCH_FILE_BYTES, load_torch_bytes, read_file_bytes, sha256_hex
from ti.hypernetwork.module import DEFAULT_LAYER_STRUCTURE, Hypernetwork, HypernetworkStructure, default_dropout_structure

HYPERNETWORK_FILE_KIND = "a hypernetwork file"
# NovelAI's leaked hypernetworks name their two Linears linear1/linear2; A1111 renames them so.
LEGACY_KEY_RENAMES = {
    "linear1.weight": "linear.0.weight",
    "linear1.bias": "linear.0.bias",
    "linear2.weight": "linear.1.weight",
    "linear2.bias": "linear.1.bias",
}


def _is_width_key(key: Any) -> bool:
    return isinstance(key, int) and not isinstance(key, bool)


def hypernetwork_to_dict(hypernetwork: Hypernetwork) -> dict:
    """The dict A1111 saves, key for key and in its order: widths first, then the metadata.

    Tensors are written as float32 CPU copies, so a hypernetwork on a GPU saves the same file.
    """
    structure = hypernetwork.structure
    data: dict[Any, Any] = {}
    for width in hypernetwork.sizes:
        key_module, value_module = hypernetwork.pair_for_width(width)
        data[width] = tuple(
            OrderedDict((key, tensor.detach().to("cpu", torch.float32).clone()) for key, tensor in module.state_dict().items())
            for module in (key_module, value_module)
        )
    data["step"] = hypernetwork.step
    data["name"] = hypernetwork.name
    data["layer_structure"] = list(structure.layer_structure)
    data["activation_func"] = structure.activation
    data["is_layer_norm"] = structure.layer_norm
    data["weight_initialization"] = structure.weight_init
    data["sd_checkpoint"] = hypernetwork.checkpoint_hash
    data["sd_checkpoint_name"] = hypernetwork.checkpoint_name
    data["activate_output"] = structure.activate_output
    data["use_dropout"] = structure.use_dropout
    data["dropout_structure"] = list(structure.dropout_structure)
    data["last_layer_dropout"] = structure.last_layer_dropout
    data["optional_info"] = hypernetwork.optional_info or None
    return data


def hypernetwork_file_bytes(hypernetwork: Hypernetwork) -> bytes:
    """The bytes of the .pt file save_hypernetwork_file writes (A1111's keys, A1111-accepted zip members)."""
    return torch_bytes_a1111_accepts(hypernetwork_to_dict(hypernetwork))


def save_hypernetwork_file(hypernetwork: Hypernetwork, path: Path) -> Path:
    """Write `hypernetwork` to `path` atomically; records the new sha256 on it.

    Returns:
        the path written.
    Raises:
        OSError: the folder is not writable.
    """
    from ti.formats import write_file_atomically

    data = hypernetwork_file_bytes(hypernetwork)
    written = write_file_atomically(Path(path), data)
    hypernetwork.source_path, hypernetwork.sha256 = written, sha256_hex(data)
    return written


def _structure_from_file(data: Mapping, path: Path) -> HypernetworkStructure:
    """A1111's defaults for missing keys: [1,2,1], linear, Normal, no LayerNorm, activate_output
    True, last_layer_dropout False; dropout on when the stored structure has a non-zero entry.
    """
    layer_structure = data.get("layer_structure") or list(DEFAULT_LAYER_STRUCTURE)
    dropout_structure = data.get("dropout_structure")
    use_dropout = bool(dropout_structure is not None and any(dropout_structure)) or bool(data.get("use_dropout", False))
    if dropout_structure is None:
        dropout_structure = default_dropout_structure(layer_structure, use_dropout, bool(data.get("last_layer_dropout", False)))
    try:
        return HypernetworkStructure(
            layer_structure=tuple(layer_structure),
            activation=data.get("activation_func"),
            weight_init=data.get("weight_initialization") or "Normal",
            layer_norm=bool(data.get("is_layer_norm", False)),
            use_dropout=use_dropout,
            dropout_structure=tuple(dropout_structure),
            activate_output=bool(data.get("activate_output", True)),
        )
    except (ConfigError, TypeError, ValueError) as exc:
        raise BadEmbeddingFile(path, f"has a hypernetwork setting that cannot be used: {exc}") from None


def _state_dict_with_current_keys(state_dict: Any, path: Path, where: str) -> dict:
    """A copy of one module's state dict with legacy linear1/linear2 keys renamed (the file's dict is left alone)."""
    if not isinstance(state_dict, Mapping):
        raise BadEmbeddingFile(path, f"{where} is a {type(state_dict).__name__}, expected a state dict")
    renamed = {LEGACY_KEY_RENAMES.get(key, key): value for key, value in state_dict.items()}
    for key, value in renamed.items():
        if not isinstance(value, torch.Tensor) or not value.is_floating_point():
            raise BadEmbeddingFile(path, f"{where} {key!r} is not a floating-point tensor")
    return renamed


def _load_module_weights(module: torch.nn.Module, state_dict: Mapping, path: Path, where: str) -> None:
    try:
        module.load_state_dict(state_dict, strict=True)
    except RuntimeError as exc:  # missing/unexpected keys, size mismatches: torch lists them all
        details = " ".join(line.strip() for line in str(exc).splitlines()[1:] if line.strip())
        raise BadEmbeddingFile(path, f"{where} does not fit its layer structure/activation/layer norm settings: {details[:400]}") from None


def hypernetwork_from_dict(data: Any, path: Path, name: str | None = None) -> Hypernetwork:
    """Build a Hypernetwork from a loaded file dict (A1111 or NovelAI layout).

    Args:
        data: what the file unpickled to.
        path: the file, for messages.
        name: the prompt name; the file stem when None.
    Returns:
        the Hypernetwork in eval mode, on the CPU, float32.
    Raises:
        BadEmbeddingFile: not a hypernetwork dict, an unusable setting, or weights that do not fit.
    """
    path = Path(path)
    if not isinstance(data, Mapping):
        raise BadEmbeddingFile(path, f"holds a {type(data).__name__}, expected a hypernetwork dict")
    if "string_to_param" in data:
        raise BadEmbeddingFile(path, "is an embedding (string_to_param), not a hypernetwork; put it in the embeddings folder")
    widths = [key for key in data if _is_width_key(key)]
    if not widths:
        raise BadEmbeddingFile(path, "holds no hypernetwork modules (no integer width keys such as 768 or 320)")
    structure = _structure_from_file(data, path)
    step = data.get("step") or 0
    try:
        hypernetwork = Hypernetwork(name or path.stem, widths, structure, step=int(step), initialize=False,
                                    checkpoint_hash=data.get("sd_checkpoint"), checkpoint_name=data.get("sd_checkpoint_name"),
                                    optional_info=data.get("optional_info"))
    except (ConfigError, TypeError, ValueError) as exc:
        raise BadEmbeddingFile(path, f"cannot be built: {exc}") from None
    for width in widths:
        pair = data[width]
        if not isinstance(pair, Sequence) or isinstance(pair, (str, bytes)) or len(pair) != 2:
            raise BadEmbeddingFile(path, f"width {width} holds a {type(pair).__name__}, expected a (key, value) pair of state dicts")
        for module, state_dict, side in zip(hypernetwork.pair_for_width(width), pair, ("key", "value")):
            where = f"width {width}, {side} module"
            _load_module_weights(module, _state_dict_with_current_keys(state_dict, path, where), path, where)
    stored_name = data.get("name")
    hypernetwork.stored_name = stored_name if isinstance(stored_name, str) else None
    return hypernetwork.eval()


def load_hypernetwork_file(path: Path) -> Hypernetwork:
    """Read a hypernetwork .pt safely (see ti.formats.safe_load); name = file stem.

    Returns:
        the Hypernetwork (eval mode, CPU, float32) with source_path and sha256 set.
    Raises:
        UnsafeFile: the pickle names something outside the allow-list; nothing from it ran.
        BadEmbeddingFile: anything else that makes it unreadable, with the reason.
    """
    path = Path(path)
    data = read_file_bytes(path, MAX_TORCH_FILE_BYTES, HYPERNETWORK_FILE_KIND)
    hypernetwork = hypernetwork_from_dict(load_torch_bytes(data, path, HYPERNETWORK_FILE_KIND), path)
    hypernetwork.source_path, hypernetwork.sha256 = path, sha256_hex(data)
    return hypernetwork


def _plain_number(value: float) -> float | int:
    """1.0 -> 1 for display (JSON shows [1, 2, 1] like the create form), 0.3 stays 0.3."""
    return int(value) if float(value).is_integer() else float(value)


def describe_hypernetwork(path: Path) -> dict:
    """The `info --json` fields for a hypernetwork file (design.md §5), in that order.

    Returns:
        {type: "hypernetwork", name (file stem), dims (widths in file order), layer_structure,
        activation, layer_norm, dropout_structure, step, sha256}.
    Raises:
        UnsafeFile, BadEmbeddingFile: as load_hypernetwork_file.
    """
    hypernetwork = load_hypernetwork_file(path)
    structure = hypernetwork.structure
    return {
        "type": "hypernetwork",
        "name": hypernetwork.name,
        "dims": hypernetwork.sizes,
        "layer_structure": [_plain_number(value) for value in structure.layer_structure],
        "activation": structure.activation,
        "layer_norm": structure.layer_norm,
        "dropout_structure": [_plain_number(value) for value in structure.dropout_structure],
        "step": hypernetwork.step,
        "sha256": hypernetwork.sha256,
    }


def create_hypernetwork(name: str, folder: Path, sizes: Sequence[int] = (768, 320, 640, 1280),
                        structure: HypernetworkStructure | None = None, overwrite: bool = False,
                        seed: int | None = None) -> Path:
    """Write a fresh hypernetwork to `<folder>/<clean name>.pt` (A1111's create; step 0, no checkpoint).

    Args:
        name: cleaned like embedding names (alphanumerics and `._- `).
        folder: the hypernetworks folder (made if missing).
        sizes: context widths to make module pairs for.
        structure: how each MLP is built (A1111's create defaults when None).
        overwrite: replace an existing file of that name.
        seed: seed for the fresh weights (random when None).
    Returns:
        the path written.
    Raises:
        ConfigError: a bad name, size or setting, or the file exists and overwrite is off.
    """
    from ti.create import clean_embedding_name

    clean_name = clean_embedding_name(name)
    path = Path(folder) / f"{clean_name}.pt"
    if path.exists() and not overwrite:
        raise ConfigError("name", f"{path} already exists; use overwrite to replace it")
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    hypernetwork = Hypernetwork(clean_name, sizes, structure, generator=generator)
    return save_hypernetwork_file(hypernetwork, path)


class HypernetworkLibrary:
    """The hypernetworks folder: `**/*.pt` by file stem, loaded on first use, cached while unchanged.

    As A1111: the name is the stem, a stem "None" is never listed, and where two subfolders
    hold the same stem the later path (case-insensitive order) wins. Hidden files (our own
    atomic-write temp files start with '.') are skipped. A file is read again when its
    modification time or size changes. Files that fail to load are kept out of use and listed
    in `unreadable` with the reason; nothing in a refused pickle runs.
    """

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.unreadable: dict[str, str] = {}  # name -> why it cannot be used
        self._cache: dict[Path, tuple[tuple[int, int], Hypernetwork]] = {}
        self._unnameable: dict[str, str] = {}  # printable name -> why no prompt can name it (last scan)

    def scan(self) -> dict[str, Path]:
        """Name -> path for every hypernetwork file now in the folder (cheap: no file is opened)."""
        if not self.folder.is_dir():
            return {}
        from ti.library import is_utf8_name, printable_text

        found: dict[str, Path] = {}
        unnameable: dict[str, str] = {}
        for path in sorted(self.folder.rglob("*"), key=lambda candidate: str(candidate).lower()):
            if path.suffix.lower() != ".pt" or path.stem == "None" or path.name.startswith(".") or not path.is_file():
                continue
            if not is_utf8_name(path.stem):  # lone surrogates break the page (JSON) and prompts alike
                unnameable[printable_text(path.stem)] = "its file name is not valid UTF-8, so no prompt can name it; rename the file"
                continue
            found[path.stem] = path
        self._unnameable = unnameable
        return found

    def names(self) -> list[str]:
        """The usable names, sorted case-insensitively (unreadable ones included until tried)."""
        return sorted(self.scan(), key=str.lower)

    def load(self, name: str) -> Hypernetwork:
        """The hypernetwork called `name`, from the cache when its file has not changed.

        Raises:
            ConfigError("hypernetwork"): no file of that name (the message lists what there is).
            UnsafeFile, BadEmbeddingFile: the file cannot be used; also recorded in `unreadable`.
        """
        paths = self.scan()
        path = paths.get(name)
        if path is None:
            known = ", ".join(sorted(paths, key=str.lower)) or "none"
            raise ConfigError("hypernetwork", f"no hypernetwork named {name!r} in {self.folder} (found: {known})")
        stat = path.stat()
        file_version = (stat.st_mtime_ns, stat.st_size)
        cached = self._cache.get(path)
        if cached is not None and cached[0] == file_version:
            return cached[1]
        try:
            hypernetwork = load_hypernetwork_file(path)
        except BadEmbeddingFile as exc:
            self._cache.pop(path, None)
            self.unreadable[name] = exc.reason
            raise
        self.unreadable.pop(name, None)
        self._cache[path] = (file_version, hypernetwork)
        return hypernetwork

    def resolve(self, requested: Sequence[tuple[str, float]]) -> list[tuple[Hypernetwork, float]]:
        """(name, strength) pairs, e.g. from parse_hypernet_tags, -> (Hypernetwork, strength) in the same order.

        Raises:
            ConfigError, UnsafeFile, BadEmbeddingFile: as load(), for the first name that fails.
        """
        return [(self.load(name), float(strength)) for name, strength in requested]

    def check_all(self) -> dict[str, str]:
        """Load every file once; returns `unreadable` (name -> reason) for the files that failed."""
        for name in self.scan():
            try:
                self.load(name)
            except BadEmbeddingFile:
                continue  # recorded in self.unreadable by load()
        current = self.scan()
        self.unreadable = {name: reason for name, reason in self.unreadable.items() if name in current}
        return {**self.unreadable, **self._unnameable}
