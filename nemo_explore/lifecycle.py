"""The hook lifecycle of ``HookedNemotronH``: its hook names, and what the active hooks put on the HF modules.

:class:`HookLifecycle` is a mixin of the model (``model.py``) on the generic lifecycle
(``core.hook_lifecycle.HookLifecycleBase``: the registry of hook functions, ``hooks()``, ``add_hook``,
``reset_hooks``). Here is what is the model's own: the names from the layer types, the points without a
gradient, the ``RunOptions`` of the forward now running, and what is attached to the HF modules. After every
change of the active hooks ``_sync`` attaches what they need and detaches what they no longer need: a plain
torch hook for a model or block point, the instrumented forward (``mirror/instrument.py``,
``mirror/mixers/``) for a point inside a mixer, after the mirror check of its kind (``guard.ensure``).
Nothing hooked, nothing attached.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from .core.hook_lifecycle import HookLifecycleBase
from .core.hook_names import MODEL_POINTS, NO_GRADIENT, READ_ONLY, all_names, parse, unknown_name_error
from .core.hooks import Fire
from .core.layer_types import HOOK_PREFIX
from .core.options import RunOptions
from .mirror import guard, hf_layout
from .mirror.instrument import instrument_mixer
from .tl.weights import HookPointRef


class HookLifecycle(HookLifecycleBase):
    """The model's hook names, run options and attachments; the model supplies ``hf_model``,
    ``layer_types`` and ``layers()``, and calls ``_init_hooks()`` once ``layer_types`` is set."""

    hf_model: Any  # the HF NemotronHForCausalLM
    layer_types: list[str]
    layers: Callable[[str], list[int]]  # the indices of the blocks of one kind

    _LIST_HINT = "model.hook_names() (or hook_names(layer_type='mamba'))"

    def _init_hooks(self) -> None:
        self._init_lifecycle(all_names(self.layer_types))
        self._options = RunOptions()  # of the forward now running: hooks() contexts set them
        self._contexts = 0  # hooks() contexts open (their options are restored on exit)
        self._installed: dict[str, Callable[[], None]] = {}  # what is attached -> how to detach it

    def hook_names(self, layer_type: str | None = None) -> list[str]:
        """Every hook point in forward order; with ``layer_type``, only the blocks of that kind."""
        if layer_type is None:
            return list(self._names)
        wanted = set(self.layers(layer_type))
        return [n for n in self._names if parse(n)[0] in wanted]

    def _set_options(self, options: dict[str, Any]) -> Callable[[], None]:
        """``hooks()``' options (``state_positions``...) apply inside its context."""
        saved = self._options
        self._options = saved.updated(**options)
        self._contexts += 1

        def restore() -> None:
            self._options = saved
            self._contexts -= 1

        return restore

    def set_use_attn_result(self, use_attn_result: bool = True) -> None:
        """TransformerLens' switch for per-head outputs: accepted and not needed, since
        ``blocks.{i}.attn.hook_result`` (TL's ``'result'``) is computed whenever it is hooked or cached."""

    def set_ungroup_grouped_query_attention(self, ungroup: bool = True) -> None:
        """TransformerLens' switch for grouped-query attention, model-wide: ``hook_k`` / ``hook_v`` carry a
        copy of the KV head per query head, ``(b, p, n_heads, d_head)``, so that per-head code indexes them
        as it indexes ``hook_q`` / ``hook_z``. Observing them changes nothing; writing one head's copy makes
        that query head alone read it. (Per run: the ``ungroup_grouped_query_attention=`` option.)"""
        if self._contexts:
            raise RuntimeError("set_ungroup_grouped_query_attention in a hooks() context: call it outside")
        self._options = self._options.updated(ungroup_grouped_query_attention=bool(ungroup))

    def set_use_split_qkv_input(self, use: bool = True) -> None:
        """TransformerLens' switch for per-head q/k/v inputs: there are none here (q, k and v come from one
        norm output, ``hook_mixer_in``), so only ``False`` is accepted."""
        if use:
            raise NotImplementedError(
                "Nemotron-H's q, k and v read one input, the block's hook_mixer_in: patch that, or hook_q / "
                "hook_k / hook_v per head"
            )

    def _gradient_refusal(self, name: str) -> str | None:
        """Why ``name`` has no gradient: read-only (computed on the side) or integer; None: it has one."""
        short = parse(name)[2]
        if short in READ_ONLY:
            return (
                f"{name} has no gradient: it is read-only, computed on the side without grad to describe the "
                "computation. Its inputs have one: hook_x, hook_B, hook_C, hook_dt or hook_state on a Mamba "
                "block"
            )
        if short in NO_GRADIENT:
            return f"{name} has no gradient: its values are integers (expert indices)"
        return None

    @property
    def hook_dict(self) -> dict[str, HookPointRef]:
        """TransformerLens' ``model.hook_dict``: every point's name -> its hook point object."""
        return {name: HookPointRef(self, name) for name in self._names}

    def hook_point(self, name: str):
        """TransformerLens' hook point object for ``name`` (``model.blocks[3].attn.hook_z`` gives the same):
        ``.add_hook(fn, dir=...)``, ``.remove_hooks(...)``, ``.name``, ``.layer()``."""
        self._resolve(name)  # an unknown name: the error suggests the closest
        return HookPointRef(self, name)

    def _unknown_name(self, name: str) -> Exception:
        return unknown_name_error(name, self._names, layer_types=self.layer_types)

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
        point = self._registry.point(name, None, None)
        if name == "ln_final.hook_scale":
            return _attach_scale(hf_layout.final_norm(hf), point, self._registry.fire)
        module = hf_layout.embedding(hf) if name == "hook_embed" else hf_layout.final_norm(hf)
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
        if short == "hook_scale":
            return _attach_scale(hf_layout.block_norm(self.hf_model, i), point, fire)
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


def _attach_scale(norm, point, fire) -> Callable[[], None]:
    """Fire ``point`` (read-only) with the divisor RMSNorm ``norm`` applies to the input it is called with."""

    def pre(module, args, kwargs):
        x = args[0] if args else kwargs["hidden_states"]
        with torch.no_grad():
            fire(point, hf_layout.norm_rms(module, x))

    return norm.register_forward_pre_hook(pre, with_kwargs=True).remove
