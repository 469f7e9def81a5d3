"""Human-readable sizes and counts for descriptions, cache summaries and messages (no package imports)."""

from __future__ import annotations

__all__ = ["format_bytes", "format_count"]


def format_bytes(n: float) -> str:
    """1.5 GiB, 12.0 MiB, 512 B."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def format_count(n: int) -> str:
    """8.10 B = 8,100,852,736"""
    for scale, unit in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n >= scale:
            return f"{n / scale:.2f} {unit} = {n:,}"
    return str(n)
