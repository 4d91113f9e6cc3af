"""Peak resident memory of this process on Linux, measurable from a chosen moment on."""

from pathlib import Path


def reset_peak() -> int:
    """Reset the peak-RSS mark (so that imports do not count) and return the current RSS in bytes."""
    Path("/proc/self/clear_refs").write_text("5")
    return rss_bytes("VmRSS")


def rss_bytes(field: str = "VmHWM") -> int:
    """A memory field of /proc/self/status in bytes (VmRSS: now, VmHWM: peak since the last reset)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")
