"""One re-entrant lock per model instance, for work that patches a module in scope.

The prompt hook swaps the text encoder's token embedding, and hypernetworks set the UNet's
attention processors, for the length of a `with` block. Another thread using the same module
in that window would see the patch; holding this lock around such blocks keeps a generation in
one browser tab and a training run in another from mixing.
"""

from __future__ import annotations

import threading
import weakref

from torch import nn

_LOCKS: "weakref.WeakKeyDictionary[nn.Module, threading.RLock]" = weakref.WeakKeyDictionary()
_GUARD = threading.Lock()


def module_lock(module: nn.Module) -> threading.RLock:
    with _GUARD:
        return _LOCKS.setdefault(module, threading.RLock())


def share_lock(alias: nn.Module, original: nn.Module) -> None:
    """Give alias the lock of original: a shallow copy (a compiled UNet) shares its submodules,
    so patching one patches the other, and both must be guarded by the same lock."""
    with _GUARD:
        _LOCKS[alias] = _LOCKS.setdefault(original, threading.RLock())
