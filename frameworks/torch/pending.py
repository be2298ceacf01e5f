"""Pushes held back until the next forward: the optimizers holding one, and
the hooks that send them before anything reads what they change.

``adamax_ps.torch.Adamax.step`` does not send its push at once: the next
``Embedding`` forward sends it with the read of the new batch's rows (one
round trip a server: the push, then the rows and dense weights as they are
after it). Anything else that would read a changed value first sends it on
its own: a module's forward using a dense parameter of that optimizer (a
global forward pre-hook), ``state_dict``, the table's ``weight``, and the
interpreter's exit (so the last step always reaches the servers).
"""

from __future__ import annotations

import atexit
import logging
import threading
import weakref
from typing import Any, Protocol

import torch

log = logging.getLogger("adamax_ps.torch")


class Holder(Protocol):
    """An optimizer that may hold a push back (``adamax_ps.torch.Adamax``)."""

    def flush(self) -> None: ...
    def uses_directly(self, module: torch.nn.Module) -> bool: ...


_holding: weakref.WeakSet = weakref.WeakSet()
_lock = threading.Lock()
_installed = False


def hold(optimizer: Holder) -> None:
    """``optimizer`` holds a push back from now until it flushes."""
    global _installed
    with _lock:
        _holding.add(optimizer)
        if not _installed:
            torch.nn.modules.module.register_module_forward_pre_hook(_before_forward)
            atexit.register(flush_all)
            _installed = True


def release(optimizer: Holder) -> None:
    with _lock:
        _holding.discard(optimizer)


def _before_forward(module: torch.nn.Module, args: Any) -> None:
    if not _holding:  # the common case: nothing held back
        return
    with _lock:
        holders = list(_holding)
    for optimizer in holders:
        if optimizer.uses_directly(module):
            optimizer.flush()


def flush_all() -> None:
    """Send every push held back (at exit: log, do not raise, what fails)."""
    with _lock:
        holders = list(_holding)
    for optimizer in holders:
        try:
            optimizer.flush()
        except Exception:
            log.exception("the last step's push of %r was not applied", optimizer)
