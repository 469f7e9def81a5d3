"""``run_with_cache(pack=True)``: the kept values copied into one block per point (``core.storage.Blocks``),
equal to the values kept where HF made them, each block sized from ``describe``'s shapes; and the Explorer
packing its points once ``reuse_freed_memory()`` took effect, so that the next run's blocks are made in the
holes the last run's left (checked in a subprocess: the setting is process-wide)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent / "browser"))
from demo_model import demo_model  # noqa: E402
from test_allocator import run  # noqa: E402

from nemo_explore.core import allocator  # noqa: E402
from nemo_explore.core.points import template  # noqa: E402
from nemo_explore.core.storage import ALIGN, Blocks, dense_strides, held_bytes, size_class  # noqa: E402

TEXT = "The cat sat on the mat by the door, and the dog sat too. The cat sat on the mat."


@pytest.fixture(scope="module")
def model():
    return demo_model()


def storages(cache) -> dict[int, set[str]]:
    """Each distinct storage of the cache's tensors -> the templates of the names that use it."""
    out: dict[int, set[str]] = {}
    for name in cache:
        out.setdefault(cache[name].untyped_storage().data_ptr(), set()).add(template(name))
    return out


def test_size_classes_round_up_by_at_most_an_eighth():
    for n in [1, 511, 512, 513, 1000, 4095 * 4096, 4096 * 4096, 3 << 30, (3 << 30) + 1]:
        c = size_class(n)
        assert n <= c <= max(8 * ALIGN, n * 9 // 8 + 1), (n, c)
        assert size_class(c) == c  # a class is its own class
    # the points of 4,095 and 4,096 tokens ask for one size: the next run's block fits the last one's hole
    assert size_class(4095 * 4096 * 4) == size_class(4096 * 4096 * 4)


def test_a_block_hands_out_aligned_dense_copies_until_full():
    blocks = Blocks({"a.0": 40 * 4, "a.1": 3 * 8, "b": 4}, group=lambda name: name.split(".")[0])
    t = torch.arange(40.0).reshape(5, 8).t()  # transposed: its copy keeps that memory order
    first = blocks.take("a.0", t)
    second = blocks.take("a.1", torch.tensor([1, 2, 3]))
    assert first.stride() == t.stride() == (1, 8) and torch.equal(first, t) and first.dtype == t.dtype
    cast = Blocks({"h": 40 * 2}, group=lambda name: name).take("h", t, torch.float16)  # cast by the copy
    assert cast.dtype == torch.float16 and cast.stride() == (1, 8) and torch.equal(cast, t.half())
    assert torch.equal(second, torch.tensor([1, 2, 3])) and second.dtype == torch.int64
    assert first.untyped_storage().data_ptr() == second.untyped_storage().data_ptr()  # one block for "a"
    assert (second.data_ptr() - first.data_ptr()) % ALIGN == 0
    assert blocks.take("b", torch.zeros(100, dtype=torch.float64)) is None  # 800 B: no room, kept
    assert blocks.take("b", torch.ones(1, dtype=torch.float64), torch.float32) is not None  # cast: 4 B fit
    assert blocks.take("c", torch.zeros(1)) is None  # no block for that group
    assert blocks.take("b", torch.zeros(1, device="meta")) is None  # not in host memory


def test_dense_strides_keep_the_memory_order_and_drop_the_gaps():
    conv = torch.zeros(2, 12, 72)  # (b, channels, p), seen position-major and split like a Mamba conv output
    x = conv.transpose(1, 2)[:, :, :8].unflatten(2, (4, 2))  # (b, p, h, d): strides (864, 1, 144, 72)
    assert dense_strides(x) == (576, 1, 144, 72)  # channels 8 of 12: no gap, p still innermost
    assert dense_strides(torch.zeros(2, 3, 4)) == (12, 4, 1)
    assert dense_strides(torch.zeros(2, 3, 4).permute(2, 0, 1)) == (1, 12, 4)


def test_packed_values_equal_the_unpacked_ones_one_block_per_point(model):
    _, plain = model.run_with_cache(TEXT)
    _, packed = model.run_with_cache(TEXT, pack=True)
    assert list(packed) == list(plain) and len(plain) > 100
    assert [n for n in plain if not torch.equal(packed[n], plain[n])] == []
    assert all(packed[n].dtype == plain[n].dtype and packed[n].shape == plain[n].shape for n in plain)
    # every value landed in its point's block (describe's sizes are exact): one storage per template
    by_storage = storages(packed)
    assert all(len(templates) == 1 for templates in by_storage.values())
    assert len(by_storage) == len({template(n) for n in packed})
    # the blocks hold what the values weigh, up to alignment and the size class
    weigh = sum(t.numel() * t.element_size() for t in packed.values())
    slack = weigh // 8 + len(by_storage) * 8 * ALIGN
    assert weigh <= packed.nbytes == held_bytes(packed.values()) <= weigh + slack


def test_pack_with_a_batch_a_dtype_and_a_filter(model):
    texts = [TEXT, "A short one."]
    wanted = lambda n: n.endswith(("hook_q", "hook_x", "hook_topk_indices", "hook_resid_post"))  # noqa: E731
    _, plain = model.run_with_cache(texts, names_filter=wanted, dtype=torch.float64)
    _, packed = model.run_with_cache(texts, names_filter=wanted, dtype=torch.float64, pack=True)
    assert list(packed) == list(plain) and [n for n in plain if not torch.equal(packed[n], plain[n])] == []
    assert len(storages(packed)) == len({template(n) for n in packed})


def test_the_explorer_packs_its_points_once_freed_memory_is_reused(model, monkeypatch):
    from nemo_explore.widgets import Explorer

    ex = Explorer(model, TEXT)
    assert len(storages(ex.cache)) > len({template(n) for n in ex.cache})  # glibc as it comes: HF's tensors
    monkeypatch.setattr(allocator, "_set", True)
    assert allocator.reusing_freed_memory()
    ex.run(TEXT + " again")
    cache = ex.cache  # every state norm in: x let go
    assert not any(n.endswith(".mamba.hook_x") for n in cache)
    assert all(len(t) == 1 for t in storages(cache).values())
    _, plain = model.run_with_cache(TEXT + " again", names_filter=list(cache))
    assert [n for n in plain if not torch.equal(cache[n], plain[n])] == []


# Runs of nearly the same length, each let go before the next, with reuse_freed_memory: once the first two
# runs have laid the heap out, the next runs' blocks are made in the holes the last run's left and its
# temporaries in theirs: the heap (glibc's mallinfo2 arena) does not grow again.
NO_GROWTH = """
import ctypes
import nemo_explore as ne
from nemo_explore.widgets.explorer import POINTS
libc = ctypes.CDLL("libc.so.6")
class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in "arena ord smb hbl hblkhd usm fsm uord ford keep".split()]
libc.mallinfo2.restype = Info
ne.reuse_freed_memory()
model = ne.load("tiny")
text = "The little cat sat on the mat by the door. " * 50
heap = []
for k in range(6):
    _, cache = model.run_with_cache(text + " " * (k % 2), names_filter=lambda n: n.endswith(POINTS),
                                    pack=True, return_type=None)
    assert len({t.untyped_storage().data_ptr() for t in cache.values()}) == len(POINTS), "not packed"
    del cache
    heap.append(libc.mallinfo2().arena)
print(*heap)
"""


def test_runs_one_after_another_do_not_grow_the_heap():
    heap = [int(n) for n in run(NO_GROWTH)]
    assert heap[2:] == [heap[1]] * 4, f"the heap grew from run to run: {heap}"
