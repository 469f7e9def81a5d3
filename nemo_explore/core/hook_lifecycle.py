"""The hook lifecycle over one ``HookRegistry``, whatever owns the points: add, remove, scope and record.

:class:`HookLifecycleBase` is shared by the model's mixin (``lifecycle.HookLifecycle``, which derives its
names from the layer types and attaches what the active hooks need to the HF modules) and by
TransformerLens' build-your-own root module (``tl.hooked_module.HookedRootModule``, whose points look the
registry up as they run). It keeps the active hooks by handle (``add_hook``'s permanent ones marked), and
after every change calls ``_sync``, which a subclass refines. :class:`Recorder` is what ``run_with_cache``
keeps; :class:`PointHandle` is TransformerLens' ``HookPoint`` methods on one named point.
"""

from __future__ import annotations

import contextlib
import difflib
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, Self

import torch

from .hook_names import HookNameError
from .hooks import HookFn, HookRegistry, NoGradientError, on_gradient
from .storage import Blocks, compacted

NamesFilter = str | Sequence[str] | Callable[[str], bool] | None
HookList = Iterable[tuple[str | Callable[[str], bool], HookFn]]

_BLOCK = re.compile(r"^blocks\.(\d+)\.")


def block_of(name: str | None) -> int | None:
    """The block index of a name under ``blocks.N.`` (``'blocks.3.attn.hook_z'`` -> 3); None elsewhere."""
    m = _BLOCK.match(name or "")
    return int(m.group(1)) if m else None


class HookLifecycleBase:
    """``hooks()``, ``add_hook``, ``reset_hooks``, ``remove_hooks_of``, ``hook_names`` over ``_registry``.

    A subclass calls ``_init_lifecycle(names)`` (every hook name, in forward order) and may refine
    ``_sync`` (attach what the active hooks need), ``_set_options`` (keyword options of ``hooks()``),
    ``_gradient_refusal`` (points without a gradient) and ``_unknown_name`` (the error for a wrong name).
    """

    _LIST_HINT = "model.hook_names()"  # how to list the names, for error messages

    def _init_lifecycle(
        self, names: Iterable[str] = (), read_only: Callable[[str], bool] | None = None
    ) -> None:
        self._registry = HookRegistry(read_only)  # None: the package's read-only points
        self._added: dict[int, bool] = {}  # add_hook's handles -> is_permanent
        self._set_names(names)

    def _set_names(self, names: Iterable[str]) -> None:
        self._names = list(names)
        self._name_set = set(self._names)

    def hook_names(self) -> list[str]:
        """Every hook point's name, in forward order."""
        return list(self._names)

    # ------------------------------------------------------------------ what a subclass refines
    def _sync(self) -> None:
        """Attach what the active hooks need and detach what they no longer need (here: nothing)."""

    def _set_options(self, options: dict[str, Any]) -> Callable[[], None]:
        """Apply ``hooks()``' keyword options for the context; return what restores the previous ones."""
        if options:
            raise TypeError(
                f"{type(self).__name__}.hooks() takes fwd_hooks and bwd_hooks only, not {sorted(options)}"
            )
        return lambda: None

    def _gradient_refusal(self, name: str) -> str | None:
        """Why point ``name`` has no gradient (a backward hook on it is refused); None: it has one."""
        return None

    def _unknown_name(self, name: str) -> Exception:
        """The error for a name that is no hook point: it suggests the closest ones."""
        close = difflib.get_close_matches(name, self._names, n=3, cutoff=0.6)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        return HookNameError(
            f"no hook point named {name!r} in {type(self).__name__}.{hint} List them with {self._LIST_HINT}."
        )

    def _examples(self) -> list[str]:
        """A few hook names (for error messages)."""
        return self._names[:5]

    # ------------------------------------------------------------------ adding and removing
    @contextlib.contextmanager
    def hooks(self, fwd_hooks: HookList = (), bwd_hooks: HookList = (), **options) -> Iterator[Self]:
        """Context in which ``fwd_hooks`` = ``[(name or predicate, fn)]`` are active; they (and only they) are
        removed on exit, even on error. ``bwd_hooks``: ``fn(grad, hook)`` on the gradient of each point's
        value (see ``add_hook``); a forward in the context puts them on its tensors, so they run at its
        ``backward()``, even after the context closed. Contexts nest; ``options`` (the model's
        ``state_positions``...) apply inside this one."""
        restore = self._set_options(options)  # checked before anything changes
        handles: list[int] = []
        try:
            hooks = [(t, f, False) for t, f in fwd_hooks] + [(t, f, True) for t, f in bwd_hooks]
            for target, fn, backward in hooks:
                for name, hook in self._hooks_for(target, fn, backward):
                    handles.append(self._registry.add(name, hook))
            self._sync()
            yield self
        finally:
            self._registry.remove(handles)
            restore()
            self._sync()

    def add_hook(
        self,
        name: str | Callable[[str], bool],
        hook: HookFn,
        dir: str = "fwd",  # noqa: A002 (TransformerLens' keyword)
        is_permanent: bool = False,
    ) -> None:
        """Add a hook that stays until ``reset_hooks()`` (TransformerLens' persistent hooks; ``is_permanent``
        ones stay until ``reset_hooks(including_permanent=True)``). ``name``: a name or a predicate.
        ``dir="bwd"``: ``hook(grad, hook_point)`` runs on the gradient of the point's value during
        ``backward()`` (returning a tensor replaces that gradient)."""
        if dir not in ("fwd", "bwd"):
            raise ValueError(f"dir must be 'fwd' or 'bwd', not {dir!r}")
        for n, fn in self._hooks_for(name, hook, dir == "bwd"):  # all checked before any is added
            self._added[self._registry.add(n, fn)] = is_permanent
        self._sync()

    def remove_hooks_of(self, name: str, direction: str = "fwd", including_permanent: bool = False) -> None:
        """Remove the hooks of point ``name`` only (``direction``: 'fwd', 'bwd' or 'both'); ``add_hook``'s
        permanent ones stay unless ``including_permanent``."""
        self._drop_hooks(name, direction, including_permanent)
        self._sync()

    def reset_hooks(
        self, clear_contexts: bool = True, direction: str = "both", including_permanent: bool = False
    ) -> None:
        """Remove every hook — those of ``add_hook`` and of any open context — except ``add_hook``'s
        permanent ones unless ``including_permanent``; ``direction``: ``'fwd'`` or ``'bwd'`` removes only
        the forward or only the backward hooks; ``clear_contexts`` empties every ``hook.ctx``. (Backward
        hooks already put on a forward's tensors still run at its ``backward()``.)"""
        self._drop_hooks(None, direction, including_permanent)
        if clear_contexts:
            self._registry.clear_contexts()
        self._sync()

    def _drop_hooks(self, name: str | None, direction: str, including_permanent: bool) -> None:
        """Remove the hooks of ``name`` (None: of every point) in ``direction`` ('fwd', 'bwd', 'both'),
        but ``add_hook``'s permanent ones unless ``including_permanent``."""
        if direction not in ("fwd", "bwd", "both"):
            raise ValueError(f"direction must be 'fwd', 'bwd' or 'both', not {direction!r}")
        backward = None if direction == "both" else direction == "bwd"
        permanent = set() if including_permanent else {h for h, p in self._added.items() if p}
        drop = [h for h in self._registry.handles(backward, name) if h not in permanent]
        self._registry.remove(drop)
        for h in drop:
            self._added.pop(h, None)

    def _hooks_for(self, target: NamesFilter, fn: HookFn, backward: bool) -> list[tuple[str, HookFn]]:
        """The (name, hook function) pairs ``target`` puts on the registry. A backward hook on a predicate
        skips the points that have no gradient, as TransformerLens' filters do over its points; named
        explicitly, such a point is an error that says why."""
        if not callable(fn):
            raise TypeError(f"hook for {target!r} is not callable: {fn!r}")
        names = self._resolve(target)
        if not backward:
            return [(n, fn) for n in names]
        if callable(target):
            names = self._graded(names)
        for name in names:
            if (why := self._gradient_refusal(name)) is not None:
                raise NoGradientError(why)
        return [(n, on_gradient(fn)) for n in names]

    def _graded(self, names: list[str]) -> list[str]:
        """The ``names`` that have a gradient."""
        return [n for n in names if self._gradient_refusal(n) is None]

    def _resolve(self, target: NamesFilter) -> list[str]:
        """A name, list of names, predicate or None -> the list of hook names it selects."""
        if target is None:
            return list(self._names)
        if callable(target):
            return [n for n in self._names if target(n)]
        names = [target] if isinstance(target, str) else list(target)
        for name in names:
            if name not in self._name_set:
                raise self._unknown_name(name)
        return names

    # ------------------------------------------------------------------ running
    def _run_with_hooks(
        self,
        run: Callable[[], Any],
        fwd_hooks: HookList,
        bwd_hooks: HookList,
        reset_hooks_end: bool,
        clear_contexts: bool,
        **options,
    ) -> Any:
        """``run()`` once inside ``hooks(fwd_hooks, bwd_hooks, **options)``; ``clear_contexts``: empty every
        ``hook.ctx`` afterwards."""
        if not reset_hooks_end:
            raise ValueError(
                "reset_hooks_end=False: hooks that outlive the call are model.add_hook(name, fn), removed by "
                "model.reset_hooks()"
            )
        try:
            with self.hooks(fwd_hooks, bwd_hooks, **options):
                return run()
        finally:
            if clear_contexts:
                self._registry.clear_contexts()

    def _cached_names(self, names_filter: NamesFilter) -> list[str]:
        """The names ``run_with_cache``'s ``names_filter`` selects; none is an error."""
        names = self._resolve(names_filter)
        if names:
            return names
        if callable(names_filter):
            examples = ", ".join(repr(n) for n in self._examples())
            raise ValueError(
                f"names_filter matched no hook point of this model. Names look like {examples}; "
                f"list them with {self._LIST_HINT}"
            )
        raise ValueError("names_filter is empty: pass a name, names, a predicate, or None for all points")

    def _record(
        self,
        run: Callable[[], Any],
        names: list[str],
        *,
        incl_bwd: bool,
        scalar_hint: str,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        blocks: Blocks | None = None,
        **options,
    ) -> tuple[Any, Recorder]:
        """``run()`` once, keeping the values of ``names`` (and with ``incl_bwd``, back-propagating the
        output, a scalar, and keeping their gradients): ``(output, recorder)``; ``blocks``: where to copy
        the kept values (``core.storage.Blocks``)."""
        recorder = Recorder(device, dtype, blocks)
        with self.hooks(*recorder.hooks(names, self._graded(names) if incl_bwd else []), **options):
            out = run()
        if incl_bwd:
            if not isinstance(out, torch.Tensor) or out.numel() != 1:
                shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
                raise ValueError(
                    f"incl_bwd=True back-propagates the output, which must be a scalar (got {shape}): "
                    f"{scalar_hint}, or run_with_hooks(bwd_hooks=...) and backward() on your own metric"
                )
            out.backward()
        return out, recorder


class Recorder:
    """What ``run_with_cache`` keeps of one run: ``values`` and ``grads`` by point name, detached.

    ``device`` / ``dtype``: where and how to keep them (default: as computed). A GPU -> host copy is made
    asynchronously, overlapping the rest of the forward; ``cache()`` waits for it. ``blocks``: the values
    are copied into them where they fit (``core.storage.Blocks``)."""

    def __init__(
        self,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        blocks: Blocks | None = None,
    ) -> None:
        self.values: dict[str, torch.Tensor] = {}
        self.grads: dict[str, torch.Tensor] = {}
        self._device, self._dtype, self._blocks = device, dtype, blocks
        self._to_host = device is not None and torch.device(device).type == "cpu"
        self._copying: list[torch.Tensor] = []  # GPU -> host copies still in flight

    def hooks(self, names: list[str], graded: list[str]) -> tuple[list, list]:
        """``(fwd_hooks, bwd_hooks)`` keeping the values of ``names`` and the gradients of ``graded``."""
        return [(n, self._keep) for n in names], [(n, self._keep_grad) for n in graded]

    def _keep(self, tensor: torch.Tensor, hook) -> None:
        t, cast = tensor.detach(), None
        if self._blocks is None or t.device.type != "cpu":
            t = self._kept(tensor)  # cast and brought to the host where it was computed
        elif t.is_floating_point():
            cast = self._dtype  # cast by the copy into its block
        packed = None if self._blocks is None else self._blocks.take(hook.name, t, cast)
        if packed is None and cast is not None:  # no room left in its block
            t = self._kept(tensor)
        self.values[hook.name] = t if packed is None else packed

    def _keep_grad(self, grad: torch.Tensor, hook) -> None:
        self.grads[hook.name] = self._kept(grad)

    def _kept(self, tensor: torch.Tensor) -> torch.Tensor:
        t = tensor.detach()
        if self._dtype is not None and t.is_floating_point():
            t = t.to(self._dtype)  # where it was computed (a GPU casts faster than the host)
        if self._device is not None:
            async_copy = self._to_host and t.is_cuda
            t = t.to(self._device, non_blocking=async_copy)
            if async_copy:
                self._copying.append(t)
        return t

    def cache(self, order: Iterable[str]) -> dict[str, torch.Tensor]:
        """``{name: value, name + '_grad': gradient}`` for each name of ``order`` that was kept, in order."""
        if self._copying:
            torch.cuda.synchronize()  # the cache is read on the host: every copy has landed
        kept = compacted({**self.values, **{f"{n}_grad": g for n, g in self.grads.items()}})
        return {m: kept[m] for n in order for m in (n, f"{n}_grad") if m in kept}


class PointHandle:
    """TransformerLens' ``HookPoint`` methods on one named point of a lifecycle: ``name``, ``layer()``,
    ``add_hook(fn, dir='fwd'|'bwd', is_permanent=False)`` and ``remove_hooks(dir='fwd'|'bwd'|'both',
    including_permanent=False)``, which act on that point only."""

    name: str | None

    def _lifecycle(self) -> HookLifecycleBase:
        raise NotImplementedError

    def layer(self) -> int | None:
        """The block the point belongs to (its name starts ``blocks.N.``); None elsewhere."""
        return block_of(self.name)

    def add_hook(self, hook: HookFn, dir: str = "fwd", is_permanent: bool = False) -> None:  # noqa: A002
        self._lifecycle().add_hook(self.name, hook, dir=dir, is_permanent=is_permanent)

    def remove_hooks(self, dir: str = "fwd", including_permanent: bool = False) -> None:  # noqa: A002
        self._lifecycle().remove_hooks_of(self.name, dir, including_permanent)
