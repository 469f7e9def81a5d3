"""The options of a run (``run_with_cache`` / ``run_with_hooks`` / ``hooks()``): which values the derived
points carry. Checked here, read by the mixers and by ``describe`` alike."""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Iterable

OPTIONS = (
    "state_positions",
    "hidden_attn_heads",
    "hidden_attn_window",
    "pattern_window",
    "ungroup_grouped_query_attention",
)
STATES_ALL_POSITIONS_MAX = 64  # hook_state holds every position of an input this short, else the last


def check_options(options: Iterable[str]) -> None:
    """Raise a TypeError naming the closest real option for any unknown one (a typo is never ignored)."""
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        close = difflib.get_close_matches(unknown[0], OPTIONS, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise TypeError(f"unknown option {unknown[0]!r}.{hint} Options: {', '.join(OPTIONS)}")


@dataclasses.dataclass(frozen=True)
class RunOptions:
    """The options one forward runs under, set with ``run_with_cache`` / ``run_with_hooks`` / ``hooks()``
    (contexts nest: the inner one's options over the outer's) and carried by the cache it makes. None: the
    default (every position of a short input / all heads / all query rows). The model's own defaults
    outside any context: ``model.set_ungroup_grouped_query_attention(True)``."""

    state_positions: int | Iterable[int] | None = None  # which positions hook_state keeps
    hidden_attn_heads: int | Iterable[int] | None = None  # which heads hook_hidden_attn keeps
    hidden_attn_window: tuple[int, int] | None = None  # which query rows hook_hidden_attn keeps
    pattern_window: tuple[int, int] | None = None  # which query rows hook_attn_scores / hook_pattern keep
    # TransformerLens' option: hook_k / hook_v carry a copy of the KV head per query head (b p h d)
    ungroup_grouped_query_attention: bool = False

    def updated(self, **changes) -> RunOptions:
        """These options with ``changes`` (checked: a misspelt option is an error naming the right one)."""
        check_options(changes)
        return dataclasses.replace(self, **changes) if changes else self


def state_positions(asked: int | Iterable[int] | None, seq_len: int) -> list[int]:
    """Positions (sorted, distinct) whose state ``hook_state`` carries: ``asked`` (negative counts from the
    end), else all of an input of at most ``STATES_ALL_POSITIONS_MAX`` tokens, else the last token."""
    if asked is None:
        return list(range(seq_len)) if seq_len <= STATES_ALL_POSITIONS_MAX else [seq_len - 1]
    wanted = [asked] if isinstance(asked, int) else list(asked)
    if not wanted or any(not -seq_len <= p < seq_len for p in wanted):
        raise IndexError(f"state_positions {asked} out of range for a sequence of {seq_len} tokens")
    return sorted({p % seq_len for p in wanted})


def query_rows(window: tuple[int, int] | None, p: int, name: str = "query_window") -> tuple[int, int]:
    """A window of query rows ``(start, stop)`` (None: all ``p``), checked; ``name`` is the option it was
    given as, for the error message."""
    if window is None:
        return 0, p
    try:
        start, stop = (int(v) for v in window)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a pair (start, stop) of ints, got {window!r}") from None
    if not 0 <= start < stop <= p:
        raise IndexError(f"{name} {window!r} must satisfy 0 <= start < stop <= {p} (sequence length)")
    return start, stop
