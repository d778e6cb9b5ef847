"""One re-entrant lock per model instance, for work that patches a module in scope.

The prompt hook swaps the text encoder's token embedding, and hypernetworks set the UNet's
attention processors, for the length of a `with` block. Another thread using the same module
in that window would see the patch; holding this lock around such blocks keeps a generation in
one browser tab and a training run in another from mixing. The same lock guards where a
module lives (on_device, move_module): "unload VAE" must not move it while another uses it.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager

import torch
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


def _device_of(module: nn.Module):
    for tensor in module.parameters():
        return tensor.device
    return None


@contextmanager
def on_device(module: nn.Module, device) -> Iterator[None]:
    """Hold module's lock, and have it on device within the block (where it was, after).

    Training with "unload VAE" parks the shared VAE (and for hypernetworks the text encoder) on
    the CPU, under the same lock. A generation in another tab brings the module over for its own
    use and puts it back, so neither moves a module under the other's feet.
    """
    with module_lock(module):
        before = _device_of(module)
        wanted = torch.device(device)
        moved = before is not None and (before.type != wanted.type
                                        or (wanted.index is not None and before.index != wanted.index))
        if moved:
            module.to(device)
        try:
            yield
        finally:
            if moved:
                module.to(before)


def move_module(module: nn.Module, device) -> None:
    """Move module to device once no one in an on_device block is using it."""
    with module_lock(module):
        module.to(device)
