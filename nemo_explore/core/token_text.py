"""How a token reads: the single place every view, cache, figure and static page gets its token text.

:func:`token_text` decodes a token alone; :func:`join_pieces` shows a character split over several tokens
on each of them; :func:`visible` makes the invisible visible (a space is ``␣``, a newline ``↵``, a tab
``⇥``, other control characters ``\\xNN``) and :func:`escape` makes text safe for HTML and plotly's label
markup alike, so a token ``<script>`` is shown, never run, and a quote reads as a quote (plotly shows
``&quot;`` literally). :func:`shown` and :func:`position_labels` put them together for a label.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from functools import cache

_BYTE_PIECE = re.compile(r"<0x([0-9A-Fa-f]{2})>")  # SentencePiece byte fallback


def token_text(tokenizer, token_id: int) -> str:
    """Token ``token_id`` decoded alone, spaces and newlines kept.

    A token holding part of a multi-byte character decodes alone to U+FFFD, and many such tokens would look
    the same; those are shown by their bytes instead (``'\\xe2\\x80'``), valid UTF-8 kept as text. Control
    characters other than newline and tab are escaped the same way (``'\\x14'``).
    """
    text = tokenizer.decode([token_id], clean_up_tokenization_spaces=False)
    if "\ufffd" in text:
        raw = _piece_bytes(tokenizer.convert_ids_to_tokens(token_id))
        text = text if raw is None else raw.decode("utf-8", errors="backslashreplace")
    return "".join(_visible(ch) for ch in text)


def _visible(ch: str) -> str:
    """Control and format characters (which draw as nothing or a box) as escapes; newline and tab stay,
    for the views to show as they choose."""
    if ch in "\n\t" or not unicodedata.category(ch).startswith("C"):
        return ch
    return f"\\x{ord(ch):02x}" if ord(ch) < 0x100 else f"\\u{ord(ch):04x}"


def _piece_bytes(piece: str | None) -> bytes | None:
    """The bytes a vocabulary piece stands for (byte-level BPE or byte fallback), None if neither."""
    if piece is None:
        return None
    if match := _BYTE_PIECE.fullmatch(piece):
        return bytes([int(match.group(1), 16)])
    table = _byte_level_table()
    if all(ch in table for ch in piece):
        return bytes(table[ch] for ch in piece)
    return None


@cache
def _byte_level_table() -> dict[str, int]:
    """Byte-level BPE's printable stand-ins -> bytes: printable Latin-1 bytes stand for themselves, the
    other 68 bytes (controls, space, soft hyphen...) for the characters from U+0100 on, in byte order."""
    printable = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    others = [b for b in range(256) if b not in printable]
    table = {chr(b): b for b in printable}
    table.update({chr(0x100 + k): b for k, b in enumerate(others)})
    return table


_BYTE_ESCAPE = re.compile(r"\\x([89a-fA-F][0-9a-fA-F])")  # what token_text writes for a byte >= 0x80
_PIECE_MARKS = str.maketrans("0123456789", "₀₁₂₃₄₅₆₇₈₉")


def join_pieces(tokens: Sequence[str]) -> list[str]:
    """A run of tokens as a reader sees it: a character whose UTF-8 bytes are split over several tokens
    (each shown alone as ``'\\xe2'``, ``'\\x80'``, ``'\\x94'`` by :func:`token_text`) is shown on each of
    those tokens, with the piece's number: ``'—₁'``, ``'—₂'``, ``'—₃'``. Bytes that form no character
    with their neighbours (a real fragment, e.g. the input cut mid-character) stay ``'\\xNN'``.
    """
    stream: list[int] = []  # every byte of the run, and the token it came from
    owner: list[int] = []
    for t, tok in enumerate(tokens):
        for k, part in enumerate(_BYTE_ESCAPE.split(tok)):
            data = bytes([int(part, 16)]) if k % 2 else part.encode("utf-8", "surrogatepass")
            stream.extend(data)
            owner.extend([t] * len(data))
    if not any(b >= 0x80 for b in stream):
        return list(tokens)
    out = [""] * len(tokens)
    i = 0
    while i < len(stream):
        size = _utf8_length(stream, i)
        owners = list(dict.fromkeys(owner[i : i + size]))
        if size == 0:  # not part of any character
            out[owner[i]] += f"\\x{stream[i]:02x}"
            size = 1
        elif len(owners) == 1:
            out[owners[0]] += bytes(stream[i : i + size]).decode("utf-8", "surrogatepass")
        else:
            ch = bytes(stream[i : i + size]).decode("utf-8")
            for n, t in enumerate(owners, 1):
                out[t] += ch + str(n).translate(_PIECE_MARKS)
        i += size
    return out


def _utf8_length(data: list[int], i: int) -> int:
    """Length of the UTF-8 character starting at ``data[i]``, or 0 if no valid one starts there."""
    lead = data[i]
    size = (
        1
        if lead < 0x80
        else 2
        if 0xC2 <= lead < 0xE0
        else 3
        if 0xE0 <= lead < 0xF0
        else 4
        if 0xF0 <= lead < 0xF5
        else 0
    )
    if size == 0 or i + size > len(data):
        return 0
    try:
        bytes(data[i : i + size]).decode("utf-8")
    except UnicodeDecodeError:
        return 0
    return size


_SHOWN = {" ": "␣", "\n": "↵", "\t": "⇥", "\r": "␍"}
_ESCAPES = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&#34;", "'": "&#39;"})


def visible(token: str) -> str:
    """``' cat\\n'`` -> ``'␣cat↵'``; an empty token becomes ``'∅'``. Plain text (not escaped)."""
    if token == "":
        return "∅"
    out = []
    for ch in token:
        if ch in _SHOWN:
            out.append(_SHOWN[ch])
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\x{ord(ch):02x}")
        else:
            out.append(ch)
    return "".join(out)


def escape(text: str) -> str:
    """Plain text -> HTML text that plotly's label markup reads the same way: ``&``, ``<``, ``>`` as
    entities, quotes as numeric references (plotly decodes ``&#34;`` but shows ``&quot;`` as is)."""
    return text.translate(_ESCAPES)


def shown(token: str) -> str:
    """A token as every figure and page shows it: :func:`visible`, then :func:`escape`."""
    return escape(visible(token))


def position_labels(tokens: Sequence[str], start: int = 0) -> list[str]:
    """Axis categories for positions ``start..``: ``'12 ␣cat'``, escaped; unique even when tokens repeat."""
    return [escape(f"{start + j} {visible(t)}") for j, t in enumerate(tokens)]
