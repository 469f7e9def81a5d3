"""The hook lifecycle of ``HookedNemotronH``: which hooks are active, and what that puts on the HF modules.

:class:`HookLifecycle` is a mixin of the model (``model.py``). It owns the model's hook names, the
registry of hook functions (``hooks.HookRegistry``), what is attached to the HF modules for them, and the
``RunOptions`` of the forward now running. After every change of the active hooks ``_sync`` attaches what
they need and detaches what they no longer need: a plain torch hook for a model or block point, the
instrumented forward (``mirror/instrument.py``, ``mirror/mixers/``) for a point inside a mixer, after the
mirror check of its kind (``guard.ensure``). Nothing hooked, nothing attached.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, Self

from .core.hook_names import MODEL_POINTS, NO_GRADIENT, READ_ONLY, all_names, parse, unknown_name_error
from .core.hooks import Fire, HookFn, HookRegistry, NoGradientError, on_gradient
from .core.layer_types import HOOK_PREFIX
from .core.options import RunOptions
from .mirror import guard, hf_layout
from .mirror.instrument import instrument_mixer
from .tl.weights import HookPointRef

NamesFilter = str | Sequence[str] | Callable[[str], bool] | None


class HookLifecycle:
    """``hooks()``, ``add_hook``, ``reset_hooks``, ``hook_names``; the model supplies ``hf_model``,
    ``layer_types`` and ``layers()``, and calls ``_init_hooks()`` once ``layer_types`` is set."""

    hf_model: Any  # the HF NemotronHForCausalLM
    layer_types: list[str]
    layers: Callable[[str], list[int]]  # the indices of the blocks of one kind

    def _init_hooks(self) -> None:
        self._names = all_names(self.layer_types)
        self._name_set = set(self._names)
        self._registry = HookRegistry()
        self._options = RunOptions()  # of the forward now running: hooks() contexts set them
        self._installed: dict[str, Callable[[], None]] = {}  # what is attached -> how to detach it
        self._added: dict[int, bool] = {}  # add_hook's handles -> is_permanent

    def hook_names(self, layer_type: str | None = None) -> list[str]:
        """Every hook point in forward order; with ``layer_type``, only the blocks of that kind."""
        if layer_type is None:
            return list(self._names)
        wanted = set(self.layers(layer_type))
        return [n for n in self._names if parse(n)[0] in wanted]

    @contextlib.contextmanager
    def hooks(
        self,
        fwd_hooks: Iterable[tuple[str | Callable[[str], bool], HookFn]] = (),
        bwd_hooks: Iterable[tuple[str | Callable[[str], bool], HookFn]] = (),
        **options,
    ) -> Iterator[Self]:
        """Context in which ``fwd_hooks`` are active; they (and only they) are removed on exit, even on error.
        ``bwd_hooks``: ``fn(grad, hook)`` on the gradient of each point's value (see ``add_hook``); a
        forward in the context puts them on its tensors, so they run at its ``backward()``, even after the
        context closed. Contexts nest; options (``state_positions``...) apply inside this context."""
        saved_options = self._options
        run_options = saved_options.updated(**options)  # checked before anything changes
        handles: list[int] = []
        try:
            for target, fn, backward in [(t, f, False) for t, f in fwd_hooks] + [
                (t, f, True) for t, f in bwd_hooks
            ]:
                for name, hook in self._hooks_for(target, fn, backward):
                    handles.append(self._registry.add(name, hook))
            self._options = run_options
            self._sync()
            yield self
        finally:
            self._registry.remove(handles)
            self._options = saved_options
            self._sync()

    def set_use_attn_result(self, use_attn_result: bool = True) -> None:
        """TransformerLens' switch for per-head outputs: accepted and not needed, since
        ``blocks.{i}.attn.hook_result`` (TL's ``'result'``) is computed whenever it is hooked or cached."""

    def set_use_split_qkv_input(self, use: bool = True) -> None:
        """TransformerLens' switch for per-head q/k/v inputs: there are none here (q, k and v come from one
        norm output, ``hook_mixer_in``), so only ``False`` is accepted."""
        if use:
            raise NotImplementedError(
                "Nemotron-H's q, k and v read one input, the block's hook_mixer_in: patch that, or hook_q / "
                "hook_k / hook_v per head"
            )

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

    def _hooks_for(self, target: NamesFilter, fn: HookFn, backward: bool) -> list[tuple[str, HookFn]]:
        """The (name, hook function) pairs ``target`` puts on the registry. A backward hook on a predicate
        skips the points that have no gradient (read-only, integer), as TransformerLens' filters do over
        its points; named explicitly, such a point is an error that says why."""
        if not callable(fn):
            raise TypeError(f"hook for {target!r} is not callable: {fn!r}")
        names = self._resolve(target)
        if not backward:
            return [(n, fn) for n in names]
        if callable(target):
            names = [n for n in names if parse(n)[2] not in NO_GRADIENT]
        return [(n, self._backward(n, fn)) for n in names]

    def _backward(self, name: str, fn: HookFn) -> HookFn:
        """``fn`` as a backward hook on ``name``, refused where the point has no gradient."""
        short = parse(name)[2]
        if short in NO_GRADIENT and short not in READ_ONLY:
            raise NoGradientError(f"{name} has no gradient: its values are integers (expert indices)")
        if short in READ_ONLY:
            raise NoGradientError(
                f"{name} has no gradient: it is read-only, computed on the side without grad to describe the "
                "computation. Its inputs have one: hook_x, hook_B, hook_C, hook_dt or hook_state on a Mamba "
                "block"
            )
        return on_gradient(fn)

    @property
    def hook_dict(self) -> dict[str, HookPointRef]:
        """TransformerLens' ``model.hook_dict``: every point's name -> its hook point object."""
        return {name: HookPointRef(self, name) for name in self._names}

    def hook_point(self, name: str):
        """TransformerLens' hook point object for ``name`` (``model.blocks[3].attn.hook_z`` gives the same):
        ``.add_hook(fn, dir=...)``, ``.remove_hooks(...)``, ``.name``, ``.layer()``."""
        self._resolve(name)  # an unknown name: the error suggests the closest
        return HookPointRef(self, name)

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

    def _resolve(self, target: NamesFilter) -> list[str]:
        """A name, list of names, predicate or None -> the list of hook names it selects."""
        if target is None:
            return list(self._names)
        if callable(target):
            return [n for n in self._names if target(n)]
        names = [target] if isinstance(target, str) else list(target)
        for name in names:
            if name not in self._name_set:
                raise unknown_name_error(name, self._names, layer_types=self.layer_types)
        return names

    def _examples(self) -> list[str]:
        """A few hook names, the first of each kind of point (for error messages)."""
        first: dict[str, str] = {}
        for name in self._names:
            i, sub, _ = parse(name)
            first.setdefault("model" if i is None else sub or "block", name)
        return list(first.values())

    def _sync(self) -> None:
        """Attach what the active hooks need and detach what they no longer need."""
        wanted: dict[str, Callable[[], Callable[[], None]]] = {}
        for name in self._registry.names():
            i, sub, point = parse(name)
            if i is None:
                wanted[name] = lambda name=name: self._attach_model_point(name)
            elif sub is None:
                wanted[name] = lambda name=name, i=i, point=point: self._attach_block_point(name, i, point)
            else:
                wanted[f"mixer.{i}"] = lambda i=i: self._attach_mixer(i)
        for key in [k for k in self._installed if k not in wanted]:
            self._installed.pop(key)()
        new = [key for key in wanted if key.startswith("mixer.") and key not in self._installed]
        kinds = sorted({self.layer_types[int(key.removeprefix("mixer."))] for key in new})
        guard.ensure(*kinds)  # the mirror check of every kind about to be instrumented, in one run
        for key, attach in wanted.items():
            if key not in self._installed:
                self._installed[key] = attach()

    def _attach_model_point(self, name: str) -> Callable[[], None]:
        assert name in MODEL_POINTS
        hf = self.hf_model
        module = hf_layout.embedding(hf) if name == "hook_embed" else hf_layout.final_norm(hf)
        point = self._registry.point(name, None, None)
        return module.register_forward_hook(lambda m, a, out: self._registry.fire(point, out)).remove

    def _attach_block_point(self, name: str, i: int, short: str) -> Callable[[], None]:
        block, point = hf_layout.block(self.hf_model, i), self._registry.point(name, i, self.layer_types[i])
        fire = self._registry.fire
        if short == "hook_resid_pre":

            def pre(module, args, kwargs):
                if args:
                    new = fire(point, args[0])
                    return (new, *args[1:]), kwargs
                kwargs["hidden_states"] = fire(point, kwargs["hidden_states"])
                return args, kwargs

            return block.register_forward_pre_hook(pre, with_kwargs=True).remove
        if short == "hook_mixer_in":
            norm = hf_layout.block_norm(self.hf_model, i)
            return norm.register_forward_hook(lambda m, a, out: fire(point, out)).remove
        if short == "hook_mixer_out":

            def post(module, args, out):
                if isinstance(out, tuple):  # attention returns (output, weights)
                    return (fire(point, out[0]), *out[1:])
                return fire(point, out)

            return hf_layout.mixer(self.hf_model, i).register_forward_hook(post).remove
        if short == "hook_resid_post":
            return block.register_forward_hook(lambda m, a, out: fire(point, out)).remove
        raise AssertionError(name)

    def _attach_mixer(self, i: int) -> Callable[[], None]:
        """Swap block i's mixer forward for the instrumented one, once the mirror check of its kind passed."""
        kind = self.layer_types[i]
        guard.ensure(kind)
        fire = Fire(self._registry, i, kind, f"blocks.{i}.{HOOK_PREFIX[kind]}.", lambda: self._options)
        return instrument_mixer(hf_layout.mixer(self.hf_model, i), kind, fire)
