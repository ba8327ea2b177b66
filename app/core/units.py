"""Formatting of sizes and counts for people."""

from __future__ import annotations


def format_bytes(n: int | None) -> str:
    """1536 -> '1.5 KiB'; None -> 'unknown'."""
    if n is None:
        return "unknown"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def format_params(n: int) -> str:
    """134515008 -> '135 M'; 8030261248 -> '8.0 B'."""
    if n >= 1_000_000_000:
        return f"{n / 1e9:.1f} B"
    if n >= 1_000_000:
        return f"{n / 1e6:.0f} M"
    return f"{n / 1e3:.0f} K"


def format_duration(seconds: float | None) -> str:
    """'45 s', '3 min', '1 h 20 min' (rounded for a person, not a log)."""
    if seconds is None:
        return "unknown"
    if seconds < 60:
        return f"{max(1, round(seconds))} s"
    minutes = round(seconds / 60)
    if minutes < 60:
        return f"{minutes} min"
    return f"{minutes // 60} h {minutes % 60} min" if minutes % 60 else f"{minutes // 60} h"
