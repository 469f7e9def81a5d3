"""ActivationCache: what ``run_with_cache`` returns — hook name -> tensor, with layer-type-aware accessors."""

from __future__ import annotations

import html
from collections.abc import Iterable, Iterator, Mapping

import torch

from .core.formatting import format_bytes
from .core.hook_names import BLOCK_POINTS
from .core.layer_types import HOOK_PREFIX, LAYER_COLORS, block_index, canonical, to_pattern
from .core.options import RunOptions, state_positions
from .core.storage import compacted, held_bytes
from .tl.residual import ResidualStreamTools
from .tl.utils import get_act_name

REPR_OPEN_ROWS = 12  # a notebook shows a cache of more blocks than this folded


class ActivationCache(ResidualStreamTools, Mapping):
    """Hook name -> tensor (batch-first, shapes as in the README's hook table).

    Besides the mapping it carries what a view needs to label its axes:
    ``tokens`` (b p), ``str_tokens`` (one list of strings per row, as the tokenizer produced them),
    ``layer_types`` (one of ``mamba``/``attention``/``mlp``/``moe`` per block) and ``config``; and the
    options it was run with that shape the derived points: ``state_positions`` (the positions ``hook_state``
    holds), ``hidden_attn_heads`` / ``hidden_attn_window`` and ``pattern_window`` (None: all).

    TransformerLens' keys and tools work too: ``cache['pattern', 3]``, ``cache['resid_post', -1]``,
    ``accumulated_resid``, ``decompose_resid``, ``apply_ln_to_stack``, ``logit_attrs``, ``stack_activation``,
    ``stack_head_results``, ``remove_batch_dim`` (the residual-stream tools need ``model``, which
    ``run_with_cache`` sets).
    """

    def __init__(
        self,
        data: dict[str, torch.Tensor],
        model=None,
        *,
        layer_types: list[str] | None = None,
        tokens: torch.Tensor | None = None,
        str_tokens: list[list[str]] | None = None,
        attention_mask: torch.Tensor | None = None,
        config=None,
        options: RunOptions | None = None,
    ) -> None:
        """``ActivationCache(data, model)`` as in TransformerLens, or ``layer_types`` (and the rest) given
        without a model."""
        if layer_types is None:
            if model is None:
                raise TypeError("ActivationCache needs the model it was run with, or layer_types=[...]")
            layer_types = model.layer_types
        if config is None and model is not None:
            config = getattr(model, "config", None)
        self._data = dict(data)
        self.layer_types = [canonical(t) for t in layer_types]
        self.tokens = tokens
        self._str_tokens = str_tokens
        self.attention_mask = attention_mask
        self.config = config
        self.model = model
        self.has_batch_dim = True
        self.options = options or RunOptions()

    @property
    def nbytes(self) -> int:
        """The memory the cached tensors hold: each storage once, and whole (a view keeps all of the
        tensor it views alive; ``run_with_cache`` copies out a view that uses less than half of it)."""
        return held_bytes(self._data.values())

    @property
    def cache_dict(self) -> dict[str, torch.Tensor]:
        """TransformerLens' ``cache.cache_dict``: the name -> tensor dict itself."""
        return self._data

    # the options the run was made with, as they shaped the derived points
    @property
    def state_positions(self) -> list[int] | None:
        """The positions ``hook_state`` holds (None when it was not cached)."""
        if self.tokens is None or not any(n.endswith("hook_state") for n in self._data):
            return None
        return state_positions(self.options.state_positions, self.tokens.shape[-1])

    @property
    def hidden_attn_heads(self):
        return self.options.hidden_attn_heads

    @property
    def hidden_attn_window(self) -> tuple[int, int] | None:
        return self.options.hidden_attn_window

    @property
    def pattern_window(self) -> tuple[int, int] | None:
        return self.options.pattern_window

    # Mapping protocol
    def __getitem__(self, name: str | tuple) -> torch.Tensor:
        """``cache['blocks.3.attn.hook_pattern']``, or TransformerLens' ``cache['pattern', 3]`` (negative
        blocks count from the end; see ``utils.get_act_name`` for the short names)."""
        if isinstance(name, tuple):
            name = self._tl_name(*name)
        elif isinstance(name, str) and name not in self._data and "." not in name:
            name = _model_point(name)  # TL's cache['embed'], cache['normalized']
        if name in self._data:
            return self._data[name]
        from .core.hook_names import HookNameError, all_names, unknown_name_error

        known = all_names(self.layer_types)
        if name in known:
            raise HookNameError(
                f"{name!r} is a hook point of this model but was not cached: cache it with "
                f"model.run_with_cache(input, names_filter=[{name!r}, ...]) (names_filter=None caches all)"
            )
        raise unknown_name_error(name, known, layer_types=self.layer_types)

    def _tl_name(self, name: str, layer: int | None = None, layer_type: str | None = None) -> str:
        if layer is not None:
            layer = block_index(layer, len(self.layer_types), f"cache[{name!r}, {layer!r}]")
        return get_act_name(name, layer, layer_type)

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __repr__(self) -> str:
        return f"ActivationCache({len(self)} tensors, layers {to_pattern(self.layer_types)})"

    def _repr_html_(self) -> str:
        """In a notebook: what is cached, block by block, coloured by layer type, with shapes and sizes."""
        rows: dict[str, list[str]] = {}
        for name, t in self._data.items():
            block, short = _block_and_point(name)
            rows.setdefault(block, []).append(
                f"<code>{html.escape(short)}</code> {html.escape(' × '.join(map(str, t.shape)))}"
            )
        cells = []
        for block, points in rows.items():
            label = html.escape(block)
            if block.startswith("blocks."):
                kind = self.layer_types[int(block.split(".")[1])]
                label = f'<span style="color:{LAYER_COLORS[kind]}">{label} · {kind}</span>'
            cells.append(
                f'<tr><th style="text-align:left;vertical-align:top;white-space:nowrap">{label}</th>'
                f'<td style="text-align:left">{" · ".join(points)}</td></tr>'
            )
        size = format_bytes(self.nbytes)
        tokens = "" if self.tokens is None else f", {' × '.join(map(str, self.tokens.shape))} tokens"
        layers = to_pattern(self.layer_types)
        head = f"ActivationCache: {len(self)} tensors, {size}{tokens}, layers {layers}"
        table = f"<table>{''.join(cells)}</table>"
        if len(cells) <= REPR_OPEN_ROWS:
            return f"<div><b>{html.escape(head)}</b>{table}</div>"
        # a big model's cache: one line, its table a click away (unfolded it is thousands of pixels tall)
        return (
            f"<details><summary><b>{html.escape(head)}</b> (click for the {len(cells)} blocks and their "
            f"tensors)</summary>{table}</details>"
        )

    @property
    def str_tokens(self) -> list[str]:
        """The first row's tokens as strings (what a single-prompt user wants); ``str_tokens_all`` for all."""
        return self._str_tokens[0] if self._str_tokens else []

    @property
    def str_tokens_all(self) -> list[list[str]]:
        return self._str_tokens or []

    def layers(self, layer_type: str) -> list[int]:
        """Indices of the blocks of one kind (any spelling: ``'mamba'``, ``'M'``, ``'linear_attention'``)."""
        kind = canonical(layer_type)
        return [i for i, t in enumerate(self.layer_types) if t == kind]

    def block(self, i: int) -> dict[str, torch.Tensor]:
        """Every cached tensor of block ``i`` by short name (``'hook_resid_pre'``, ``'attn.hook_q'``)."""
        prefix = f"blocks.{i}."
        return {k[len(prefix) :]: v for k, v in self._data.items() if k.startswith(prefix)}

    def stack(self, point: str, layer_type: str | None = None) -> torch.Tensor:
        """Stack one point over the blocks that have it, on a new leading axis.

        ``point`` is a block-level name without the ``blocks.{i}.`` prefix, e.g. ``'hook_resid_post'``
        or ``'mamba.hook_state_norm'``; ``layer_type`` restricts the blocks. Returns ``(n_blocks, ...)``.
        """
        idx = self.layers(layer_type) if layer_type else range(len(self.layer_types))
        names = [f"blocks.{i}.{point}" for i in idx]
        have = [n for n in names if n in self._data]
        if not have:
            raise self._stack_error(point, list(idx), layer_type)
        return torch.stack([self._data[n] for n in have])

    def _stack_error(self, point: str, idx: list[int], layer_type: str | None) -> KeyError:
        """``stack(point)`` found nothing: a real point that was not cached, or a name to correct."""
        from .core.hook_names import HookNameError, block_point_names, unknown_name_error

        have = {n.split(".", 2)[2] for i in idx for n in block_point_names(i, self.layer_types[i])}
        if point in have:
            return HookNameError(
                f"{point!r} was not cached: cache it with model.run_with_cache(input, "
                f"names_filter=lambda n: n.endswith({'.' + point!r})), then stack it"
            )
        blocks = f"the {canonical(layer_type)} blocks" if layer_type else "the blocks"
        where = f"{blocks} of this model (stack takes names without 'blocks.{{i}}.')"
        return unknown_name_error(point, sorted(have), where=where)

    def point(self, i: int, name: str) -> torch.Tensor:
        """``cache.point(3, 'hook_pattern')`` -> ``cache['blocks.3.attn.hook_pattern']``: the kind prefix is
        filled in from block ``i``'s layer type."""
        if name.startswith("hook_") and name not in BLOCK_POINTS:
            name = f"{HOOK_PREFIX[self.layer_types[i]]}.{name}"
        return self[f"blocks.{i}.{name}"]

    def pairwise(self, i: int, batch: int = 0):
        """Block ``i``'s p × p maps (attention pattern / Mamba hidden attention) for row ``batch``, as a
        ``nemo_explore.pairwise.PairwiseMaps``: ``.window(start, stop, key_start, key_stop, heads)`` gives
        any rows × keys, ``.pooled(...)`` a block-mean overview. Sliced from ``hook_pattern`` /
        ``hook_hidden_attn`` when cached, else computed exactly from the per-token points they are made of
        (``hook_q`` + ``hook_k``; ``hook_dt`` + ``hook_B`` + ``hook_C``), which cost O(p) per layer."""
        from .pairwise import pairwise_maps

        return pairwise_maps(self, i, batch)

    def _put(self, name: str, tensor: torch.Tensor) -> None:
        """Add a point computed after the run (``state_norms.StateNormJob``): exactly what the run would
        have cached under ``name``."""
        self._data[name] = tensor

    def _discard(self, names: Iterable[str]) -> None:
        """Forget ``names``; the views left using less than half of what they keep alive are copied out
        (dropping Mamba's ``hook_x`` frees the conv output its ``hook_B`` and ``hook_C`` view)."""
        for name in names:
            self._data.pop(name, None)
        self._data = compacted(self._data)

    def to(self, device: str | torch.device) -> ActivationCache:
        self._data = {k: v.to(device) for k, v in self._data.items()}
        return self


def _model_point(name: str) -> str:
    """A model-level short name (``'embed'``, ``'normalized'``) -> its hook name; anything else unchanged."""
    try:
        return get_act_name(name)
    except (KeyError, TypeError):
        return name


def _block_and_point(name: str) -> tuple[str, str]:
    """``'blocks.3.attn.hook_z'`` -> ``('blocks.3', 'attn.hook_z')``; model-level points under ``'model'``."""
    if name.startswith("blocks."):
        _, i, rest = name.split(".", 2)
        return f"blocks.{i}", rest
    return "model", name
