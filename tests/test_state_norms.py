"""State norms computed after the run (``nemo_explore.state_norms``), the kernel's idle time they are computed
in (``widgets._idle``), what a cache holds (``core.storage``), and the SSM view and Explorer built on them.

The reference is always the model's own ``hook_state_norm``, computed during the forward: the norms computed
later from ``hook_x``, ``hook_dt`` and ``hook_B`` must equal it bit for bit.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent / "browser"))
from demo_model import demo_model  # noqa: E402
from models import hooked_pair  # noqa: E402

from nemo_explore.core.formatting import format_bytes  # noqa: E402
from nemo_explore.core.storage import compacted, held_bytes  # noqa: E402
from nemo_explore.state_norms import FROM_POINTS, POINT, StateNormJob, computable  # noqa: E402
from nemo_explore.widgets import Explorer, SSMStateNorms, _idle  # noqa: E402

TEXTS = ["The cat sat on the mat by the door, and the dog sat too.", "A short one."]


@pytest.fixture(scope="module")
def model():
    return demo_model()


@pytest.fixture(scope="module")
def runs(model):
    """A padded batch of two, cached twice: with the norms computed in the forward, and with what they
    are made of."""
    _, stored = model.run_with_cache(TEXTS, names_filter=lambda n: n.endswith(POINT))
    _, points = model.run_with_cache(TEXTS, names_filter=lambda n: n.endswith(FROM_POINTS))
    return stored, points


def fresh_points(model, text=TEXTS):
    return model.run_with_cache(text, names_filter=lambda n: n.endswith(FROM_POINTS))[1]


# ------------------------------------------------------------------ the job
def test_norms_computed_later_equal_the_forwards_bit_for_bit(model, runs):
    stored, _ = runs
    cache = fresh_points(model)
    mamba = model.layers("mamba")
    assert len(mamba) >= 2 and all(computable(cache, i) for i in mamba)
    job = StateNormJob(cache)
    assert job.pending == mamba and job.total == len(mamba) and not job.done
    job.finish()
    assert job.done and job.seconds > 0
    for i in mamba:
        name = f"blocks.{i}.{POINT}"
        assert torch.equal(cache[name], stored[name]), name  # padded row included


def test_steps_and_compute_interleave(model, runs):
    stored, _ = runs
    cache = fresh_points(model, "x" * 300)  # several blocks of chunks per layer
    _, want = model.run_with_cache("x" * 300, names_filter=lambda n: n.endswith(POINT))
    first, last = model.layers("mamba")[0], model.layers("mamba")[-1]
    job = StateNormJob(cache)
    steps = job.steps()
    assert next(steps) == first and job.pending[0] == first  # one block of tokens done, not the layer
    job.compute(last)  # a click on another block: finished at once, out of turn
    assert f"blocks.{last}.{POINT}" in cache and last not in job.pending
    job.compute(first)  # the block in progress: finished from where the steps left it
    assert job.pending == [i for i in model.layers("mamba") if i not in (first, last)]
    assert list(steps)  # the rest
    for i in model.layers("mamba"):
        name = f"blocks.{i}.{POINT}"
        assert torch.equal(cache[name], want[name]), name


def test_job_says_what_it_needs(model):
    _, cache = model.run_with_cache(TEXTS[0], names_filter=lambda n: n.endswith(("mamba.hook_dt",)))
    assert not computable(cache, model.layers("mamba")[0])
    with pytest.raises(ValueError, match=r"need blocks\.0\.mamba\.hook_x, blocks\.0\.mamba\.hook_dt"):
        StateNormJob(cache)


# ------------------------------------------------------------------ what a cache holds
def test_a_cache_holds_its_storages_once_and_copies_out_small_views(model):
    _, whole = model.run_with_cache(TEXTS[0], names_filter=lambda n: n.endswith(FROM_POINTS + ("hook_C",)))
    i = model.layers("mamba")[0]
    x, B, C = (whole[f"blocks.{i}.mamba.{p}"] for p in ("hook_x", "hook_B", "hook_C"))
    conv = x.untyped_storage()
    # x, B and C use all of the conv output they view: kept as views of it, counted once
    assert B.untyped_storage().data_ptr() == conv.data_ptr() == C.untyped_storage().data_ptr()
    assert held_bytes([x, B, C]) == conv.nbytes() < 2 * sum(t.numel() * 4 for t in (x, B, C))
    assert whole.nbytes == held_bytes(whole.values())
    _, alone = model.run_with_cache(TEXTS[0], names_filter=f"blocks.{i}.mamba.hook_B")
    b = alone[f"blocks.{i}.mamba.hook_B"]  # an eighth of what it views: copied out, equal
    assert b.is_contiguous() and alone.nbytes == b.numel() * b.element_size() and torch.equal(b, B)
    # demo: x is as large as B and C together, so B and C stay views; with wider heads they are copied out
    whole._discard([f"blocks.{j}.mamba.hook_x" for j in model.layers("mamba")])
    assert (
        f"blocks.{i}.mamba.hook_x" not in whole
        and whole[f"blocks.{i}.mamba.hook_B"].data_ptr() == B.data_ptr()
    )
    _, wide = hooked_pair("M*", seed=0, mamba_head_dim=16)
    _, cache = wide.run_with_cache(torch.arange(1, 20)[None], names_filter=lambda n: n.endswith(FROM_POINTS))
    B = cache["blocks.0.mamba.hook_B"]
    cache._discard(["blocks.0.mamba.hook_x"])
    kept = cache["blocks.0.mamba.hook_B"]
    assert kept.is_contiguous() and kept.data_ptr() != B.data_ptr() and torch.equal(kept, B)
    assert cache.nbytes == sum(t.numel() * t.element_size() for t in cache.values())


def test_compacted_keeps_views_that_use_most_of_their_storage():
    base = torch.arange(12.0)
    most, small = base[:10], base[:2]
    out = compacted({"most": most, "small": small})  # together 12 of 12 elements: stay views
    assert out["most"].data_ptr() == base.data_ptr() and out["small"].data_ptr() == base.data_ptr()
    out = compacted({"small": small})
    assert out["small"].data_ptr() != base.data_ptr() and torch.equal(out["small"], small)


# ------------------------------------------------------------------ idle time
def test_idle_task_yields_the_loop_between_slices():
    order = []

    def steps():
        for k in range(4):
            order.append(f"step {k}")
            yield k

    async def main():
        done = asyncio.Event()
        task = _idle.IdleTask(steps(), on_step=lambda: order.append("slice"), on_done=done.set, slice_s=0.0)
        assert task.start() and task.running
        asyncio.get_running_loop().call_soon(lambda: order.append("a click"))
        await done.wait()
        assert not task.running

    asyncio.run(main())
    # a slice of 0 s does one step: the click that came after the start runs between the first two
    assert order[:3] == ["step 0", "slice", "a click"] and order.count("slice") == 4
    assert [o for o in order if o.startswith("step")] == [f"step {k}" for k in range(4)]


def test_idle_task_without_a_loop_cancel_and_errors():
    assert not _idle.IdleTask(iter([1])).start()  # no running loop: the caller does the work itself
    seen = []

    def failing():
        yield 1
        raise RuntimeError("broken")

    async def main():
        stopped = _idle.IdleTask(iter(range(100)), on_done=lambda: seen.append("done"), slice_s=0.0)
        stopped.start()
        stopped.cancel()
        bad = _idle.IdleTask(failing(), on_error=lambda e: seen.append(str(e)), slice_s=0.0)
        bad.start()
        for _ in range(5):
            await asyncio.sleep(0)
        assert not bad.running

    asyncio.run(main())
    assert seen == ["broken"]


def test_idle_work_and_a_views_drawing_leave_a_core_to_the_browser(monkeypatch, runs):
    """torch computes with at most one thread fewer than the cores (at least one) while a view draws and in
    idle time, then gets its threads back."""
    from nemo_explore.widgets import _cores

    threads = torch.get_num_threads()
    seen = []
    try:
        torch.set_num_threads(3)
        for cores, inside in ((2, 1), (4, 3), (1, 1), (8, 3)):
            monkeypatch.setattr(_cores, "cores", lambda cores=cores: cores)
            with _cores.leave_a_core():
                assert torch.get_num_threads() == inside, cores
            assert torch.get_num_threads() == 3
        monkeypatch.setattr(_cores, "cores", lambda: 2)

        def steps():
            yield seen.append(("idle", torch.get_num_threads()))

        async def main():
            done = asyncio.Event()
            _idle.IdleTask(steps(), on_done=done.set).start()
            await done.wait()

        asyncio.run(main())
        view = SSMStateNorms(runs[0])
        draw = view._draw
        monkeypatch.setattr(view, "_draw", lambda: (seen.append(("draw", torch.get_num_threads())), draw()))
        view.select(layer=view.layer)
        assert seen == [("idle", 1), ("draw", 1)] and torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(threads)


# ------------------------------------------------------------------ the SSM view and the Explorer
def test_view_computes_missing_norms_in_idle_time(model, runs):
    stored, _ = runs
    reference = SSMStateNorms(stored).shown()
    cache = fresh_points(model)
    mamba = model.layers("mamba")
    counts = []

    async def main():
        view = SSMStateNorms(cache, layer=mamba[-1])
        view.observe(lambda change: counts.append(change["new"]), names="norms_pending")
        assert view.norms_pending == len(mamba) - 1  # the shown block first, the rest to come
        early = view.shown()["overview"]
        assert torch.isnan(early[0]).all() and not torch.isnan(early[-1]).any()
        assert f"1 of {len(mamba)} so far" in view.overview.layout.title.text
        while view.norms_pending:
            await asyncio.sleep(0)
        return view

    view = asyncio.run(main())
    assert counts[-1] == 0 and "so far" not in view.overview.layout.title.text
    view.select(layer=mamba[0])
    got = view.shown()
    assert torch.equal(got["overview"], reference["overview"])
    assert all(torch.equal(cache[f"blocks.{i}.{POINT}"], stored[f"blocks.{i}.{POINT}"]) for i in mamba)
    outside = SSMStateNorms(fresh_points(model))  # no loop: all at once, before the first draw
    assert outside.norms_pending == 0 and not torch.isnan(outside.shown()["overview"]).any()
    with pytest.raises(ValueError, match="or what they are computed from"):
        SSMStateNorms(model.run_with_cache(TEXTS[0], names_filter="hook_embed")[1])


def test_explorer_draws_after_the_forward_and_the_norms_follow(model):
    text = TEXTS[0]
    _, want = model.run_with_cache(text, names_filter=lambda n: n.endswith(POINT))
    mamba = model.layers("mamba")
    statuses = []

    async def main():
        ex = Explorer(model, text)
        ex.status.observe(lambda change: statuses.append(change["new"]), names="value")
        ssm = ex.views["ssm"]
        # its tab is hidden: it has not drawn, so every block's norms come in idle time, the shown one's too
        assert ssm.norms_pending == len(mamba)
        assert f"State norms: 0 of {len(mamba)} Mamba layers so far" in ex.status.value
        assert any(n.endswith("mamba.hook_x") for n in ex._cache)  # x is held until the norms are in
        while ssm.norms_pending:
            await asyncio.sleep(0)
        return ex

    ex = asyncio.run(main())
    assert f"State norms of {len(mamba)} Mamba layers computed in" in statuses[-1]
    assert not any(n.endswith("mamba.hook_x") for n in ex.cache)  # let go once the norms are in
    assert f"{format_bytes(ex.cache.nbytes)} of per-token points held" in statuses[-1]  # what it holds now
    for i in mamba:
        assert torch.equal(ex.cache[f"blocks.{i}.{POINT}"], want[f"blocks.{i}.{POINT}"])

    async def reading_the_cache_finishes_them():
        ex.run("Another prompt, long enough.")
        assert ex.views["ssm"].norms_pending
        cache = ex.cache  # the property: every norm now
        assert ex.views["ssm"].norms_pending == 0 and all(f"blocks.{i}.{POINT}" in cache for i in mamba)
        assert "State norms of" in ex.status.value

    asyncio.run(reading_the_cache_finishes_them())
