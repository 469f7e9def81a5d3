"""The tokenizer side of ``HookedNemotronH``: text, texts or ids in (ids and masks on the model's device),
token strings and text out.

:class:`Inputs` is a mixin of the model (``model.py``): it reads ``tokenizer``, ``device`` and ``config``
from it. ``to_inputs`` is the one gate every run goes through (forward, hooks, cache, generation).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from .core.token_text import token_text

Input = str | Sequence[str] | torch.Tensor


def single_token(model, token: int | str) -> int:
    """A token id, or a string that the tokenizer turns into exactly one token -> its id."""
    if isinstance(token, str):
        if model.tokenizer is None:
            raise ValueError(f"this model has no tokenizer to read {token!r}: pass a token id instead")
        ids = model.tokenizer(token, add_special_tokens=False)["input_ids"]
        if len(ids) != 1:
            raise ValueError(
                f"{token!r} is {len(ids)} tokens ({ids}), not one: pass a token id or a one-token string "
                "(mind the leading space, e.g. ' Paris')"
            )
        return int(ids[0])
    token = int(token)
    if not 0 <= token < model.cfg.vocab_size:
        raise ValueError(f"token id {token} is outside the vocabulary [0, {model.cfg.vocab_size})")
    return token


class Inputs:
    """``to_tokens``, ``to_single_token``, ``to_str_tokens``, ``to_string``, ``to_inputs`` (TransformerLens'
    names and meanings); the model supplies ``tokenizer`` (or None), ``device`` and ``config``."""

    tokenizer: Any  # a transformers tokenizer, or None
    device: torch.device
    config: Any  # the HF config

    def _need_tokenizer(self):
        if self.tokenizer is None:
            raise ValueError(
                "this model has no tokenizer: pass token ids (a LongTensor), or load it with one"
            )
        return self.tokenizer

    def to_tokens(
        self, text: str | Sequence[str], prepend_bos: bool | None = None, padding_side: str = "right"
    ) -> torch.Tensor:
        """Text (or a list of texts, padded) -> token ids ``(b, p)`` on the model's device.

        ``prepend_bos``: None does what the tokenizer does (Nemotron-H's adds BOS, as TL's default);
        False leaves BOS out, True makes sure it is there."""
        return self._encode(text, padding_side, prepend_bos)[0]

    def to_single_token(self, string: str) -> int:
        """A string that is exactly one token -> its id (an error says how many tokens it is otherwise)."""
        if not isinstance(string, str):
            raise TypeError(f"to_single_token takes a string, got {type(string).__name__}")
        return single_token(self, string)

    def get_token_position(
        self,
        single_token: str | int,
        input: str | torch.Tensor,
        mode: str = "first",
        prepend_bos: bool | None = None,
    ) -> int:
        """TransformerLens' ``get_token_position``: where ``single_token`` (a one-token string or an id) first
        (``mode='first'``) or last (``'last'``) occurs in ``input`` (text, or ids of one row)."""
        if mode not in ("first", "last"):
            raise ValueError(f"mode must be 'first' or 'last', not {mode!r}")
        ids = self.to_tokens(input, prepend_bos=prepend_bos) if isinstance(input, str) else input
        ids = ids if ids.dim() == 1 else ids[0] if ids.shape[0] == 1 else None
        if ids is None:
            raise ValueError("get_token_position takes one row of ids (a batch of one), or a text")
        token = single_token if isinstance(single_token, int) else self.to_single_token(single_token)
        found = (ids == token).nonzero().flatten().tolist()
        if not found:
            raise ValueError(f"token {single_token!r} (id {token}) is not in the input")
        return found[0] if mode == "first" else found[-1]

    def _encode(
        self, text: str | Sequence[str], padding_side: str = "right", prepend_bos: bool | None = None
    ):
        tok = self._need_tokenizer()
        texts = [text] if isinstance(text, str) else list(text)
        if prepend_bos is None:
            enc = tok(texts, return_tensors="pt", padding=True, padding_side=padding_side)
            ids, mask = enc["input_ids"], enc["attention_mask"]
        else:
            ids, mask = _pad(
                [self._bos(prepend_bos) + tok(t, add_special_tokens=False)["input_ids"] for t in texts],
                tok.pad_token_id,
                padding_side,
            )
        return ids.to(self.device), (None if bool(mask.all()) else mask.to(self.device))

    def _bos(self, prepend: bool) -> list[int]:
        if not prepend:
            return []
        bos = self.tokenizer.bos_token_id
        if bos is None:
            raise ValueError("prepend_bos=True, but this tokenizer has no BOS token: pass prepend_bos=False")
        return [bos]

    def to_str_tokens(
        self, input: Input | Sequence[int] | int, prepend_bos: bool | None = None
    ) -> list[str] | list[list[str]]:
        """One string per token, as the tokenizer produced it (spaces and newlines kept; a piece of a
        multi-byte character as its bytes, ``'\\xe2'``).

        As in TransformerLens: a text, 1-D ids or ``(1, p)`` ids -> ``list[str]``; a list of texts or
        ``(b, p)`` ids -> one ``list[str]`` per row (the padding of texts dropped); one id -> ``[str]``.
        """
        tok = self._need_tokenizer()
        if isinstance(input, str):
            return [token_text(tok, i) for i in self.to_tokens(input, prepend_bos)[0].tolist()]
        if is_texts(input):
            return self._str_tokens_of(*self._encode(input, prepend_bos=prepend_bos))
        ids = torch.as_tensor(input)
        if ids.dim() == 0:
            ids = ids[None]
        if ids.dim() == 2 and ids.shape[0] == 1:
            ids = ids[0]  # one row of a batch, as to_tokens(text) gives it
        if ids.dim() > 2:
            raise ValueError(f"token ids must be (batch, pos) or (pos,), got shape {tuple(ids.shape)}")
        if ids.dim() == 2:
            return [[token_text(tok, i) for i in row] for row in ids.tolist()]
        return [token_text(tok, i) for i in ids.reshape(-1).tolist()]

    def to_string(self, tokens: torch.Tensor | Sequence[int] | int) -> str | list[str]:
        """Ids -> text: one id or ``(p,)`` -> a string, ``(b, p)`` -> one string per row."""
        tok = self._need_tokenizer()
        tokens = torch.as_tensor(tokens)
        if tokens.dim() == 0:
            return tok.decode([int(tokens)])
        if tokens.dim() == 1:
            return tok.decode(tokens.tolist())
        return [tok.decode(row.tolist()) for row in tokens]

    def to_inputs(self, input: Input, attention_mask: torch.Tensor | None = None,
                  padding_side: str = "right", prepend_bos: bool | None = None):
        """Text, texts or ids -> ``(input_ids (b p), attention_mask (b p) or None)`` on the model's device.
        Texts are padded on ``padding_side`` (``prepend_bos``: as in ``to_tokens``); ids (any integer dtype)
        are checked against the vocabulary."""
        if isinstance(input, Sequence) and not isinstance(input, str) and len(input) == 0:
            raise ValueError("the input has no tokens (an empty list): pass a text, texts or token ids")
        if isinstance(input, str) or is_texts(input):
            if attention_mask is not None:
                raise ValueError("attention_mask is built from the texts; pass it only with token ids")
            ids, mask = self._encode(input, padding_side, prepend_bos)
            if ids.shape[1] == 0:
                raise ValueError("the input has no tokens (the tokenizer gave none): pass a non-empty text")
            return ids, mask
        ids = torch.as_tensor(input)
        if ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
            raise TypeError(f"token ids must be integers, got {ids.dtype}: pass ids.long() or a text")
        ids = ids.long()
        if ids.dim() == 1:
            ids = ids[None]
        if ids.dim() != 2:
            raise ValueError(f"token ids must be (batch, pos) or (pos,), got shape {tuple(ids.shape)}")
        if ids.numel() == 0:
            raise ValueError(
                f"the input has no tokens (shape {tuple(ids.shape)}): pass at least one token id per row"
            )
        vocab = self.config.vocab_size
        if ids.numel() and (int(ids.max()) >= vocab or int(ids.min()) < 0):
            raise ValueError(f"token ids must lie in [0, {vocab}); got {int(ids.min())}..{int(ids.max())}")
        if attention_mask is not None:
            attention_mask = torch.as_tensor(attention_mask).reshape(ids.shape).to(self.device)
        return ids.to(self.device), attention_mask

    def _str_tokens_of(self, ids: torch.Tensor, mask: torch.Tensor | None) -> list[list[str]] | None:
        if self.tokenizer is None:
            return None
        keep = mask.bool().tolist() if mask is not None else [[True] * ids.shape[1]] * ids.shape[0]
        return [
            [token_text(self.tokenizer, i) for i, k in zip(row, row_keep, strict=True) if k]
            for row, row_keep in zip(ids.tolist(), keep, strict=True)
        ]


def is_texts(input) -> bool:
    """A non-empty list (or tuple) of texts."""
    if isinstance(input, str) or not isinstance(input, Sequence):
        return False
    return bool(input) and isinstance(input[0], str)


def _pad(rows: list[list[int]], pad_id: int | None, side: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Token lists -> ``(ids, mask)`` ``(b, p)``, padded with ``pad_id`` on ``side``."""
    width = max(len(r) for r in rows)
    if pad_id is None and any(len(r) < width for r in rows):
        raise ValueError("texts of different lengths need padding, and this tokenizer has no pad token")
    ids = torch.full((len(rows), width), pad_id or 0, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for k, row in enumerate(rows):
        cols = slice(0, len(row)) if side == "right" else slice(width - len(row), width)
        ids[k, cols], mask[k, cols] = torch.tensor(row, dtype=torch.long), 1
    return ids, mask
