"""One hook mechanism: a registry of hook functions by point name, and ``fire`` to run them.

A hook function is ``fn(tensor, hook) -> tensor | None``. Returning None, or the very tensor it was
given untouched, observes; returning anything else, or editing the tensor in place, replaces the value
downstream (a write). The rule is the same with grad enabled, under ``torch.no_grad()`` and under
``torch.inference_mode()``: where an in-place edit of the value itself would go unseen, the hook is handed
a copy (``_editable``), and the value flows on untouched unless the hook wrote.

A backward hook (TransformerLens' ``dir="bwd"``) is a hook function marked by :func:`on_gradient`: when the
point fires, after the forward hooks, it is put on the gradient of the value that flows on
(``Tensor.register_hook``), and runs as ``fn(grad, hook)`` during ``backward()``; returning a tensor replaces
that gradient. It stays on that forward's tensors, so it runs even when the backward comes after the
hooks were removed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from .hook_names import READ_ONLY, parse
from .options import RunOptions

HookFn = Callable[..., "torch.Tensor | None"]


class LayerIndex(int):
    """A block index that may also be called: ``hook.layer`` and TransformerLens' ``hook.layer()``."""

    def __call__(self) -> int:
        return int(self)

    def __repr__(self) -> str:
        return int.__repr__(self)


@dataclass(frozen=True)
class HookPoint:
    """What a hook function receives as ``hook``: the point's full name, its block and the block's kind.

    ``layer`` is an int that may also be called (``hook.layer()``, as in TransformerLens); ``ctx`` is a
    dict that persists across calls for this point until ``model.reset_hooks()`` clears it.
    """

    name: str
    layer: int | None
    layer_type: str | None
    ctx: dict = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.layer is not None and not isinstance(self.layer, LayerIndex):
            object.__setattr__(self, "layer", LayerIndex(self.layer))

    @property
    def short(self) -> str:
        """The point without its block prefix, e.g. ``'hook_pattern'``."""
        return parse(self.name)[2]


class ReadOnlyHookError(RuntimeError):
    pass


class NoGradientError(RuntimeError):
    """A backward hook on a value that has no gradient (read-only, integer, or made without grad)."""


def on_gradient(fn: HookFn) -> HookFn:
    """``fn(grad, hook)`` as a backward hook: the registry puts it on the gradient of the point's value."""
    if not callable(fn):
        raise TypeError(f"backward hook is not callable: {fn!r}")

    def backward(value: torch.Tensor, hook: HookPoint) -> None:  # pragma: no cover - never called
        raise AssertionError("backward hooks are run by HookRegistry.fire")

    backward.on_gradient = fn  # type: ignore[attr-defined]
    return backward


def _is_backward(fn: HookFn) -> bool:
    return hasattr(fn, "on_gradient")


class HookRegistry:
    """Active hook functions by point name, in the order they were added.

    ``add`` returns a handle for ``remove``; the model re-derives what to instrument from ``names()``.
    ``read_only``: which points refuse a write, by name (default: the package's read-only points, by the
    name after ``blocks.{i}.``; a module of your own passes its own rule).
    """

    def __init__(self, read_only: Callable[[str], bool] | None = None) -> None:
        self._read_only = read_only or (lambda name: parse(name)[2] in READ_ONLY)
        self._fns: dict[str, list[tuple[int, HookFn]]] = {}
        self._next = 0
        self._points: dict[str, HookPoint] = {}

    def point(self, name: str, layer: int | None, layer_type: str | None) -> HookPoint:
        """The one ``HookPoint`` of ``name`` (so that its ``ctx`` persists from call to call)."""
        if name not in self._points:
            self._points[name] = HookPoint(name, layer, layer_type)
        return self._points[name]

    def clear_contexts(self) -> None:
        for point in self._points.values():
            point.ctx.clear()

    def handles(self, backward: bool | None = None, name: str | None = None) -> list[int]:
        """Every active hook's handle (``backward``: only the backward hooks' or only the forward ones';
        ``name``: only that point's)."""
        return [
            h
            for point, fns in self._fns.items()
            if name is None or point == name
            for h, fn in fns
            if backward is None or _is_backward(fn) == backward
        ]

    def add(self, name: str, fn: HookFn) -> int:
        self._next += 1
        self._fns.setdefault(name, []).append((self._next, fn))
        return self._next

    def remove(self, handles: list[int]) -> None:
        drop = set(handles)
        for name in list(self._fns):
            kept = [(h, f) for h, f in self._fns[name] if h not in drop]
            if kept:
                self._fns[name] = kept
            else:
                del self._fns[name]

    def names(self) -> set[str]:
        return set(self._fns)

    def __contains__(self, name: str) -> bool:
        return name in self._fns

    def wants_gradient(self, name: str) -> bool:
        """Whether a backward hook is on ``name``: its value must then be on the path to the output."""
        return any(_is_backward(fn) for _, fn in self._fns.get(name, ()))

    def fire(self, point: HookPoint, value: torch.Tensor) -> torch.Tensor:
        """Run every hook function of ``point`` on ``value``; return the value that flows on.

        Until one of them writes, the hooks share one tensor (``value`` or its copy, see ``_editable``);
        a value nobody wrote flows on as the very object it was, which is how the mixers tell a write
        (``new is not old`` in ``mixers/``)."""
        handed = None  # what the hooks see of ``value``
        backward = []
        for _, fn in self._fns.get(point.name, ()):
            if _is_backward(fn):
                backward.append(fn.on_gradient)
                continue
            if handed is None:
                handed = _editable(value)
            before = handed._version
            out = _call(fn, handed, point)
            if out is None or out is handed:
                if handed._version == before:
                    continue
                out = handed.clone()  # edited in place: a write, made visible as a new tensor
            if self._read_only(point.name):
                raise ReadOnlyHookError(
                    f"{point.name} is read-only: it describes the computation and is not part of it. "
                    "Return None from the hook to observe it; to intervene, write a point that flows "
                    "downstream (hook_x, hook_B, hook_C, hook_dt, hook_ssm_out or hook_state)."
                )
            if not isinstance(out, torch.Tensor):
                raise TypeError(
                    f"hook on {point.name} returned {type(out).__name__}; return a tensor or None"
                )
            if out.shape != value.shape:
                raise ValueError(
                    f"hook on {point.name} returned shape {tuple(out.shape)}, expected {tuple(value.shape)}"
                )
            if out.is_floating_point() != value.is_floating_point():
                raise TypeError(f"hook on {point.name} returned {out.dtype} for a {value.dtype} point")
            value, handed = out, None
        for fn in backward:
            _on_gradient_of(value, fn, point)
        return value


def _on_gradient_of(value: torch.Tensor, fn: HookFn, point: HookPoint) -> None:
    """Run ``fn(grad, point)`` when backward reaches ``value``; its return, a tensor, replaces the grad."""
    if not value.is_floating_point():
        raise NoGradientError(f"backward hook on {point.name}: its value is {value.dtype}: no gradient")
    if not value.requires_grad:
        why = (
            "the forward ran without grad (torch.no_grad(), torch.inference_mode() or "
            "torch.set_grad_enabled(False)): run it with grad enabled"
            if not torch.is_grad_enabled()
            else "nothing it is computed from requires grad (the parameters have requires_grad=False and "
            "no input does): model.requires_grad_(True), or a hook making an upstream point require grad"
        )
        raise NoGradientError(f"backward hook on {point.name}: its value has no gradient, because {why}")

    def run(grad: torch.Tensor) -> torch.Tensor | None:
        out = fn(grad, point)
        if out is not None and (not isinstance(out, torch.Tensor) or out.shape != grad.shape):
            got = type(out).__name__ if not isinstance(out, torch.Tensor) else tuple(out.shape)
            raise ValueError(
                f"backward hook on {point.name} returned {got}: return None or a {tuple(grad.shape)} tensor"
            )
        return out

    value.register_hook(run)


def _editable(value: torch.Tensor) -> torch.Tensor:
    """The tensor to hand a hook for ``value``: an inference tensor (made under ``torch.inference_mode()``)
    keeps no version counter, so the hook gets a normal-tensor copy of it, outside any graph; any other
    tensor is handed as itself (a hook that keeps it for its gradient, ``retain_grad``, must hold the
    tensor that flows on)."""
    if value.is_inference():
        with torch.inference_mode(False), torch.no_grad():
            return value.clone()
    return value


# Grouped-query attention: these points have n_key_value_heads heads, not n_heads.
_KV_POINTS = frozenset({"hook_k", "hook_v"})


def _call(fn: HookFn, tensor: torch.Tensor, point: HookPoint) -> torch.Tensor | None:
    """``fn(tensor, point)``; an IndexError on ``hook_k`` / ``hook_v`` says how their heads are counted."""
    try:
        return fn(tensor, point)
    except IndexError as err:
        if point.short not in _KV_POINTS:
            raise
        kv = tensor.shape[2]
        raise IndexError(
            f"{err}. In a hook on {point.name}: this point has n_key_value_heads = {kv} heads, "
            f"shape (batch, pos, {kv}, d_head), not n_heads (grouped-query attention); query head h reads "
            "KV head h // (n_heads // n_key_value_heads). For a copy per query head, as TransformerLens' "
            "option gives: model.set_ungroup_grouped_query_attention(True) (or the run option "
            "ungroup_grouped_query_attention=True)."
        ) from err


class Fire:
    """The hooks of one block, bound to its name prefix: ``fire('hook_q', q)`` inside a mixer forward.
    ``fire.options``: the ``RunOptions`` of the forward now running (``options``: a function that gives
    them; none: the defaults)."""

    def __init__(
        self,
        registry: HookRegistry,
        layer: int,
        layer_type: str,
        prefix: str,
        options: Callable[[], RunOptions] | None = None,
    ) -> None:
        self.registry, self.layer, self.layer_type, self.prefix = registry, layer, layer_type, prefix
        self._options = options or RunOptions

    @property
    def options(self) -> RunOptions:
        return self._options()

    def wants(self, point: str) -> bool:
        return f"{self.prefix}{point}" in self.registry

    def wants_gradient(self, point: str) -> bool:
        """Whether a backward hook is on ``point``: the mixer then computes the output from its value."""
        return self.registry.wants_gradient(f"{self.prefix}{point}")

    def __call__(self, point: str, value: torch.Tensor) -> torch.Tensor:
        name = f"{self.prefix}{point}"
        if name not in self.registry:
            return value
        return self.registry.fire(self.registry.point(name, self.layer, self.layer_type), value)
