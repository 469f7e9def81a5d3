"""Token text on the widgets' axes and chips, and the position window that keeps long inputs fast.

Every view and static page shows tokens by the package's one rule (``visible``, ``escape``,
``position_labels`` in :mod:`nemo_explore.core.token_text`), which the analysis figures follow too. Axis
ticks show at most ``TICK_CHARS`` characters of a token (``␣×40`` for a run of spaces); the full text is
the category, which hover shows.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Sequence

from ..core.token_text import escape, position_labels, visible

TICK_CHARS = 12
_RUN = re.compile(r"(.)\1{3,}")


def short(text: str, limit: int = TICK_CHARS) -> str:
    """Plain text cut for an axis tick: runs of one character counted (``␣×40``), then at most ``limit``
    characters, ``…`` marking a cut."""
    text = _RUN.sub(lambda m: f"{m.group(1)}×{len(m.group(0))}", text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def ticks(tokens: Sequence[str], start: int = 0, pixels: int = 500, spacing: int = 11) -> dict:
    """Tick settings for a categorical token axis of ``pixels``: at most one tick per ``spacing`` pixels,
    each token shortened (:func:`short`); the categories themselves (what hover shows) stay whole."""
    step = max(1, math.ceil(len(tokens) * spacing / max(1, pixels)))
    keep = range(0, len(tokens), step)
    categories = position_labels(tokens, start)
    return dict(
        type="category",
        ticklabeloverflow="allow",  # (the default for a category axis) plotly measures no label for it
        tickmode="array",
        tickvals=[categories[j] for j in keep],
        ticktext=[escape(f"{start + j} {short(visible(tokens[j]))}") for j in keep],
    )


def tick_room(tokens: Sequence[str], start: int = 0, size: int = 9, angle: float = 60.0) -> int:
    """Pixels beside a plot that its token tick labels (:func:`ticks`, font ``size``) need: ``angle`` is
    between the labels and the axis (60: the turned labels under a plot; 90: level labels left of it). A
    view that sets this as its margin lets plotly draw once per update: with automargin, plotly draws a
    second time whenever the labels' extent changes. Glyph widths are estimated (0.62 em, 1 em for wide
    East Asian characters), generously."""
    longest = 0.0
    for j, tok in enumerate(tokens):
        text = f"{start + j} {short(visible(tok))}"
        longest = max(longest, sum(1.0 if unicodedata.east_asian_width(c) in "WF" else 0.62 for c in text))
    a = math.radians(angle)
    return math.ceil(longest * size * math.sin(a) + size * math.cos(a)) + 8


def token_chips(
    tokens: Sequence[str],
    start: int = 0,
    weights=None,
    titles=None,
    color="142, 95, 194",
    marked: tuple[int, str] | None = None,
) -> str:
    """The text as a row of token chips (``<span>`` with a hover title), escaped.

    ``weights`` (one per token, in [0, 1]) sets each chip's background opacity in ``color`` (an ``r, g, b``
    string); ``titles`` (one per token) is the hover text, by default the position and the token;
    ``marked`` = ``(j, css_class)`` gives chip j that extra class.
    """
    chips = []
    for j, tok in enumerate(tokens):
        title = titles[j] if titles is not None else f"position {start + j}: {visible(tok)!s}"
        style = ""
        if weights is not None and weights[j] > 0:
            style = f' style="background: rgba({color}, {0.15 + 0.85 * float(weights[j]):.3f})"'
        cls = f"ne-tok {marked[1]}" if marked is not None and marked[0] == j else "ne-tok"
        chips.append(f'<span class="{cls}" title="{escape(title)}"{style}>{escape(visible(tok))}</span>')
    return '<div class="ne-toks">' + "".join(chips) + "</div>"


class Window:
    """A window of at most ``size`` positions inside ``[lo, hi)``, which a slider moves.

    ``start``/``stop`` bound the shown positions; ``active`` says whether anything is cut off.
    """

    def __init__(self, size: int, lo: int, hi: int, start: int | None = None) -> None:
        self.size, self.lo, self.hi = size, lo, hi
        self.start = lo
        self.move(lo if start is None else start)

    @property
    def active(self) -> bool:
        return self.hi - self.lo > self.size

    @property
    def stop(self) -> int:
        return min(self.start + self.size, self.hi)

    @property
    def max_start(self) -> int:
        return max(self.lo, self.hi - self.size)

    def move(self, start: int) -> None:
        self.start = min(max(int(start), self.lo), self.max_start)

    def note(self, what: str) -> str:
        """An HTML sentence saying what is shown, or '' when the whole input fits."""
        if not self.active:
            return ""
        return (
            f"<b>Long input:</b> showing positions {self.start}–{self.stop - 1} of {self.lo}–{self.hi - 1} "
            f"({what} show at most {self.size} positions at a time); move the window with the slider."
        )
