"""TransformerLens' build-your-own hooked model: ``HookPoint`` modules in a ``HookedRootModule``.

Put ``self.hook_x = HookPoint()`` in any ``nn.Module`` below a :class:`HookedRootModule`, call
``x = self.hook_x(x)`` in its forward, and end the root's ``__init__`` with ``self.setup()``: each point is
named by its module path (``layer1.hook_square``, ``blocks.0.hook_x``), and the root has
``run_with_cache``, ``run_with_hooks``, ``hooks()``, ``add_hook`` and ``reset_hooks`` over those names.

There is one hook mechanism here as everywhere in the package: the root's lifecycle
(``core.hook_lifecycle.HookLifecycleBase``, shared with ``HookedNemotronH``) adds the hook functions to its
``core.hooks.HookRegistry``, and a named point runs ``registry.fire`` when a hook is on its name. So a hook
function gets the registry's record (``hook.name``, ``hook.layer()``, ``hook.ctx``), the write rule holds
(returning a new tensor, or editing the one handed in place, replaces the value), and backward hooks go on
the value's gradient. Every point of your own may be written, whatever its name (``hook_scale`` too).

``run_with_cache`` returns a plain ``dict``, name -> tensor, in the order the points ran (then
``name + '_grad'`` after each with ``incl_bwd``). The package's ``ActivationCache`` is built on a
Nemotron-H model's layer types and residual stream, which an arbitrary module does not have; a dict gives
TransformerLens' ``for name in cache``, ``cache[name]``, ``cache.items()`` and nothing that would not hold.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..core.hook_lifecycle import HookLifecycleBase, HookList, NamesFilter, PointHandle, block_of
from ..core.hooks import Fire

_NOT_SET_UP = (
    "{} has no named hook points: assign HookPoint modules in its __init__ and end it with self.setup(), "
    "which names them by their module path"
)


class HookPoint(PointHandle, nn.Module):
    """An identity module that is a hook point: ``x = self.hook_x(x)``, any shape.

    Named by its root's ``setup()`` (``name``; ``layer()``: N under ``blocks.N.``, else None); until then
    it only passes its input on. ``add_hook(fn, dir='fwd'|'bwd', is_permanent=False)`` and
    ``remove_hooks(dir='fwd'|'bwd'|'both', including_permanent=False)`` act on this point only."""

    def __init__(self) -> None:
        super().__init__()
        self.name: str | None = None
        self._fire: Fire | None = None  # the root's registry, bound to this point's block

    def _bind(self, root: HookedRootModule, fire: Fire, name: str) -> None:
        # the root is held outside nn.Module's bookkeeping: as a submodule of its own points it would recurse
        object.__setattr__(self, "_root", root)
        self.name, self._fire = name, fire

    def _lifecycle(self) -> HookedRootModule:
        if self._fire is None:
            raise RuntimeError(
                "this HookPoint has no name yet: call setup() at the end of its HookedRootModule's __init__"
            )
        return self._root

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` as it is, or as the hooks on this point's name leave it."""
        return x if self._fire is None else self._fire(self.name, x)

    def extra_repr(self) -> str:
        return repr(self.name) if self.name else ""


class HookedRootModule(HookLifecycleBase, nn.Module):
    """The root of a hooked model: subclass it, build the modules (with ``HookPoint``s) in ``__init__``,
    end ``__init__`` with ``self.setup()``, and write ``forward``.

    ``hook_dict``: name -> ``HookPoint``; ``mod_dict``: name -> every submodule. Hooks are added with
    ``add_hook`` / ``hooks()`` / ``run_with_hooks`` by name, list of names or predicate on names; an
    unknown name is an error that suggests the closest."""

    _LIST_HINT = "model.hook_names() (or model.hook_dict)"

    def __init__(self) -> None:
        super().__init__()
        self._init_lifecycle(read_only=lambda name: False)  # every point of your own may be written
        self.hook_dict: dict[str, HookPoint] = {}
        self.mod_dict: dict[str, nn.Module] = {}

    def setup(self) -> None:
        """Name every ``HookPoint`` below this module by its module path; fill ``hook_dict`` and ``mod_dict``.
        Call it at the end of ``__init__`` (again after adding points later)."""
        self.mod_dict = {name: module for name, module in self.named_modules() if name}
        self.hook_dict = {name: m for name, m in self.mod_dict.items() if isinstance(m, HookPoint)}
        for name, point in self.hook_dict.items():
            point._bind(self, Fire(self._registry, block_of(name), None, ""), name)
        self._set_names(self.hook_dict)

    def hook_points(self) -> list[HookPoint]:
        """Every ``HookPoint``, in module order."""
        return list(self.hook_dict.values())

    def _resolve(self, target: NamesFilter) -> list[str]:
        if not self.hook_dict:
            raise RuntimeError(_NOT_SET_UP.format(type(self).__name__))
        return super()._resolve(target)

    def run_with_hooks(
        self,
        *model_args: Any,
        fwd_hooks: HookList = (),
        bwd_hooks: HookList = (),
        reset_hooks_end: bool = True,
        clear_contexts: bool = False,
        **model_kwargs: Any,
    ) -> Any:
        """``self(*model_args, **model_kwargs)`` once with ``fwd_hooks`` = ``[(name or predicate, fn)]``;
        ``fn(tensor, hook)`` may return a replacement. ``bwd_hooks``: ``fn(grad, hook)`` on the gradient of
        each point's value, run at the ``backward()`` of what this returns. ``clear_contexts``: empty every
        ``hook.ctx`` afterwards. Hooks that outlive the call are ``add_hook``'s."""

        def run() -> Any:
            return self(*model_args, **model_kwargs)

        return self._run_with_hooks(run, fwd_hooks, bwd_hooks, reset_hooks_end, clear_contexts)

    def run_with_cache(
        self,
        *model_args: Any,
        names_filter: NamesFilter = None,
        device: str | torch.device | None = None,
        remove_batch_dim: bool = False,
        incl_bwd: bool = False,
        **model_kwargs: Any,
    ) -> tuple[Any, dict[str, torch.Tensor]]:
        """Run ``self(*model_args, **model_kwargs)`` once and keep the points' values: ``(output, cache)``.

        ``cache``: a dict name -> tensor (detached), in the order the points ran. ``names_filter``: a name,
        a list of names, a predicate on names, or None for every point. ``device``: where to keep them.
        ``remove_batch_dim=True``: each value's leading axis, of size 1, is dropped. ``incl_bwd=True``: the
        output (a scalar) is back-propagated too, and each point's gradient kept as ``name + '_grad'``;
        every point cached must then have a gradient (an input that does not require grad has none)."""

        def run() -> Any:
            return self(*model_args, **model_kwargs)

        names = self._cached_names(names_filter)
        out, recorder = self._record(
            run, names, incl_bwd=incl_bwd, scalar_hint="make forward return a scalar", device=device
        )
        cache = recorder.cache(recorder.values)  # the order the points ran in
        return out, _without_batch_dim(cache) if remove_batch_dim else cache


def _without_batch_dim(cache: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``(1, ...)`` -> ``(...)`` for every value; another leading size is an error."""
    sizes = {tuple(t.shape[:1]) for t in cache.values()}
    if sizes - {(1,)}:
        raise ValueError(
            f"remove_batch_dim needs a leading batch axis of size 1 on every value; found {sorted(sizes)}"
        )
    return {name: t[0] for name, t in cache.items()}
