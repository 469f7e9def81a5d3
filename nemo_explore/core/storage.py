"""What cached tensors keep alive: a view holds the whole storage of the tensor it views."""

from __future__ import annotations

from collections.abc import Callable, Iterable

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


ALIGN = 64  # bytes: each tensor in a block starts on a cache line


def size_class(nbytes: int) -> int:
    """``nbytes`` rounded up to the next of 8 steps per power of two (at most 12.5% more), so that runs of
    nearly the same length ask for blocks of the same size."""
    if nbytes <= 8 * ALIGN:
        return 8 * ALIGN
    step = 1 << (nbytes.bit_length() - 4)  # an eighth of the power of two below nbytes
    return -(-nbytes // step) * step


class Blocks:
    """One allocation per group of a run's kept tensors, made before the run begins. ``sizes``: name ->
    bytes of each tensor to come; ``group``: name -> its group (every layer's ``hook_x`` in one). Each block
    holds its group's tensors, each aligned, rounded up to its ``size_class``.

    ``take(name, t, dtype)`` copies ``t`` (cast to ``dtype`` on the way, if given) into its group's block and
    returns that dense view, in ``t``'s memory order (None when the block has no room left or ``t`` is not in
    host memory: the caller keeps ``t`` as it is). What for: after ``ne.reuse_freed_memory()``, the kept
    tensors of a run otherwise sit wherever HF allocated them, among its temporaries, and the holes they
    leave when freed are split by whatever small blocks were allocated meanwhile; a large forward then grows
    the heap (fresh, page-faulted memory) although gigabytes are free. A run's blocks, freed together, leave
    holes of their own size, and the next run's blocks of the same size classes are made in them before its
    forward begins. A view keeps its whole block alive.
    """

    def __init__(self, sizes: dict[str, int], group: Callable[[str], str]) -> None:
        need: dict[str, int] = {}
        for name, n in sizes.items():
            g = group(name)
            need[g] = need.get(g, 0) + _aligned(n)
        self._group = group
        self._free = {g: torch.empty(size_class(n), dtype=torch.uint8) for g, n in need.items() if n}

    def take(self, name: str, t: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor | None:
        group = self._group(name)
        rest = self._free.get(group)
        dtype = t.dtype if dtype is None else dtype
        n = t.numel() * dtype.itemsize
        if rest is None or n > rest.numel() or t.device.type != "cpu":
            return None
        # in t's memory order: a Mamba layer's x, B and C are position-major views of the conv output, and a
        # copy into (b, p, h, d) order would transpose each (here +1.7 s a forward at 4k tokens)
        out = rest[:n].view(dtype).as_strided(t.shape, dense_strides(t))
        out.copy_(t)
        self._free[group] = rest[_aligned(n) :]
        return out


def dense_strides(t: torch.Tensor) -> tuple[int, ...]:
    """The strides of a dense (gapless) tensor of ``t``'s shape whose dimensions lie in memory in the order
    ``t``'s do (a contiguous tensor's for a contiguous ``t``)."""
    strides = [0] * t.dim()
    step = 1
    for d in sorted(range(t.dim()), key=lambda d: (t.stride(d), t.shape[d])):
        strides[d] = step
        step *= t.shape[d]
    return tuple(strides)


def _aligned(nbytes: int) -> int:
    return -(-nbytes // ALIGN) * ALIGN
