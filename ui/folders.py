"""Folder fields of a page anyone on the network can reach, kept inside a data root.

With `--listen` and no login, whoever reaches the page types the preprocess source and
destination and the training data folder. Confined, those fields name folders inside the data
root (`--data-root`, default the working directory) and nothing else: a relative path counts from
the root, and an absolute one, `..` or a symlink that leads outside is refused.
"""

from __future__ import annotations

from pathlib import Path

from ti.errors import ConfigError


def folder_inside(text: str, root: Path | None, field: str) -> Path:
    """The folder `text` names; with a root, inside it (resolved, symlinks followed).

    root None: no confinement (loopback, or a login); the text is returned as a Path.

    Raises:
        ConfigError(field): with a root, a path outside it.
    """
    typed = Path((text or "").strip() or ".")
    if root is None:
        return typed
    resolved_root = Path(root).resolve()
    candidate = (typed if typed.is_absolute() else resolved_root / typed).resolve()
    if candidate != resolved_root and resolved_root not in candidate.parents:
        raise ConfigError(field, f"{text!r} is outside the data folder {resolved_root}: this server is open to the "
                                 "network without a login, so folders must lie inside it (see --data-root)")
    return candidate
