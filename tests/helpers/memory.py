"""A server process's resident memory, read from the kernel (Linux /proc)."""

from __future__ import annotations

from pathlib import Path


def resident(pid: int, field: str = "VmRSS") -> int:
    """Bytes of ``field`` (VmRSS now, VmHWM the peak) in /proc/<pid>/status."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"/proc/{pid}/status has no {field}")


def reset_peak(pid: int) -> int:
    """Start measuring the peak afresh (``clear_refs`` 5); memory held now."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")
    return resident(pid)


def peak(pid: int) -> int:
    """Peak resident bytes since the last ``reset_peak``."""
    return resident(pid, "VmHWM")
