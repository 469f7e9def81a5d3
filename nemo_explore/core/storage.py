"""What cached tensors keep alive: a view holds the whole storage of the tensor it views."""

from __future__ import annotations

from collections.abc import Iterable

import torch


def held_bytes(tensors: Iterable[torch.Tensor]) -> int:
    """The memory ``tensors`` keep alive: the bytes of each distinct storage, counted once."""
    storages = {}
    for t in tensors:
        storage = t.untyped_storage()
        storages[(storage.device, storage.data_ptr())] = storage.nbytes()
    return sum(storages.values())


def compacted(kept: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``kept`` with the views that use less than half of the storage they keep alive copied out (Mamba's
    ``hook_B`` alone is an eighth of the conv output it views), so that a cache holds about what its
    tensors' sizes say; views that together use most of their storage (x, B and C) stay views."""
    by_storage: dict[tuple, list[str]] = {}
    for name, t in kept.items():
        by_storage.setdefault((t.device, t.untyped_storage().data_ptr()), []).append(name)
    out = dict(kept)
    for names in by_storage.values():
        used = sum(kept[n].numel() * kept[n].element_size() for n in names)
        if 2 * used < kept[names[0]].untyped_storage().nbytes():
            for n in names:
                out[n] = kept[n].clone(memory_format=torch.contiguous_format)
    return out
