"""How one token reads on its own: the single place every view, cache and figure gets its token labels."""

from __future__ import annotations

import re
import unicodedata
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
