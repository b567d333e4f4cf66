"""The quality colour scale of the heatmaps: viridis' ends and quartiles, dark (low) to yellow (high), which stays
readable on a dark terminal and for the common kinds of colour blindness."""

from __future__ import annotations

from rich.color import Color

STOPS = ((0x44, 0x01, 0x54), (0x3B, 0x52, 0x8B), (0x21, 0x91, 0x8C), (0x5E, 0xC9, 0x62), (0xFD, 0xE7, 0x25))
EMPTY = Color.from_rgb(0x3A, 0x3A, 0x3A)
CURSOR = Color.from_rgb(0xFF, 0x33, 0x99)  # a hue viridis never takes


def quality_color(value: float, high: float) -> Color:
    """`value` on the scale 0 … `high` (the archive's best), clamped."""
    t = 0.0 if high <= 0 else min(max(value / high, 0.0), 1.0)
    position = t * (len(STOPS) - 1)
    i = min(int(position), len(STOPS) - 2)
    f = position - i
    r, g, b = (round(a + (z - a) * f) for a, z in zip(STOPS[i], STOPS[i + 1], strict=True))
    return Color.from_rgb(r, g, b)


def ink_on(background: Color) -> str:
    """Black or white text, whichever reads on `background`."""
    r, g, b = background.get_truecolor()
    return "black" if 0.299 * r + 0.587 * g + 0.114 * b > 140 else "white"
