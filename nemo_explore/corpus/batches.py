"""Documents -> rows of at most ``seq_len`` tokens -> right-padded batches, with what the hooks need to know.

Each document is tokenized once with BOS and cut into consecutive rows; no row holds two documents, and
continuation rows do not repeat BOS. Every row is its own sequence: the recurrent state and attention start
fresh at its first token.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import torch


@dataclass
class Batch:
    """One forward's worth of rows. ``ids``/``valid``/``classes`` ``(b, p)``; ``doc``/``start``/``label``
    ``(b,)``: the document index in the data, the row's first position in that document, the row's label
    (index into the shard's labels, -1 for none)."""

    ids: torch.Tensor
    valid: torch.Tensor
    doc: torch.Tensor
    start: torch.Tensor
    label: torch.Tensor
    classes: torch.Tensor
    _cached: dict = field(default_factory=dict, repr=False)

    def on(self, device) -> Batch:
        """This batch on ``device`` (a model split over devices runs blocks on several); cached."""
        device = torch.device(device)
        if device == self.ids.device:
            return self
        if device not in self._cached:
            moved = {
                k: getattr(self, k).to(device) for k in ("ids", "valid", "doc", "start", "label", "classes")
            }
            self._cached[device] = Batch(**moved)
        return self._cached[device]

    @property
    def lengths(self) -> torch.Tensor:
        return self.valid.sum(1)

    @property
    def mask(self) -> torch.Tensor | None:
        """The attention mask ``(b, p)`` for the model, None when no row is padded."""
        return None if bool(self.valid.all()) else self.valid.long()

    def earlier_copy(self) -> torch.Tensor:
        """``(b, q, k)`` bool: key k is the token right after an earlier occurrence of query q's token —
        ``1 ≤ k ≤ q`` and ``ids[k-1] == ids[q]`` (both real tokens). Computed once per batch."""
        if "copy" not in self._cached:
            ids = self.ids.masked_fill(~self.valid, -1)
            p = ids.shape[1]
            same = ids[:, :, None] == ids[:, None, :-1]  # b q j: ids[j] == ids[q], j = k - 1
            before = torch.ones(p, p - 1, dtype=torch.bool, device=ids.device).tril(-1)  # j < q
            copy = torch.zeros(ids.shape[0], p, p, dtype=torch.bool, device=ids.device)
            copy[:, :, 1:] = same & before & self.valid[:, :, None]
            self._cached["copy"] = copy
        return self._cached["copy"]


def document_rows(tokens: list[int], seq_len: int) -> list[tuple[int, list[int]]]:
    """A document's tokens cut into ``(start, row)`` pieces of at most ``seq_len`` tokens."""
    return [(s, tokens[s : s + seq_len]) for s in range(0, len(tokens), seq_len)]


def batches(
    docs: list[tuple[int, list[int], int]],
    seq_len: int,
    batch_size: int,
    pad_id: int,
    classes: torch.Tensor,
    device: torch.device,
) -> Iterator[Batch]:
    """``docs`` = ``[(doc index, token ids, label index)]`` -> batches of rows, longest rows first (less
    padding; the order is a function of the shard alone, so any process computes the same batches)."""
    rows = [
        (doc, start, row, label)
        for doc, tokens, label in docs
        for start, row in document_rows(tokens, seq_len)
    ]
    rows.sort(key=lambda r: -len(r[2]))  # stable: ties keep document order
    for b0 in range(0, len(rows), batch_size):
        chunk = rows[b0 : b0 + batch_size]
        width = len(chunk[0][2])
        ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
        valid = torch.zeros((len(chunk), width), dtype=torch.bool)
        for i, (_, _, row, _) in enumerate(chunk):
            ids[i, : len(row)] = torch.tensor(row)
            valid[i, : len(row)] = True
        ids, valid = ids.to(device), valid.to(device)
        yield Batch(
            ids=ids,
            valid=valid,
            doc=torch.tensor([r[0] for r in chunk], device=device),
            start=torch.tensor([r[1] for r in chunk], device=device),
            label=torch.tensor([r[3] for r in chunk], device=device),
            classes=classes[ids],
        )
