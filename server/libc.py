"""C library functions the standard library does not wrap (``madvise``,
``sync_file_range``), through ctypes, where this system has them."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
from typing import Any


@functools.cache
def _library() -> ctypes.CDLL:
    # The C library by name, else the symbols this process has loaded (on
    # Linux, libc's too: an image without ldconfig finds it that way).
    return ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)


@functools.cache
def function(name: str, *argtypes: Any) -> Any:
    """The C function ``name`` taking ``argtypes``, returning an int (a
    foreign function of its own: callers never share argument types); None
    when this system has none of that name."""
    prototype = ctypes.CFUNCTYPE(ctypes.c_int, *argtypes, use_errno=True)
    try:
        return prototype((name, _library()))
    except AttributeError:
        return None
