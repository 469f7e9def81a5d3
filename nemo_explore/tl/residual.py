"""The cache's residual-stream tools, with TransformerLens' signatures and meanings.

The residual stream entering block ``k`` is ``blocks.{k}.hook_resid_pre`` (= ``blocks.{k-1}.hook_resid_post``;
``hook_embed`` for k = 0; the final stream, entering ``ln_final``, for k = n_layers). It is the embedding
plus the ``hook_mixer_out`` of every block before k (one mixer per block, no positional embedding).

Every RMSNorm here has a weight that TL would have folded into the next matrix, so ``apply_ln_to_stack``
applies the norm *with its weight*, at the scale ``1/RMS`` the run used (the norm is linear once that scale
is frozen): then ``accumulated_resid(apply_ln=True)[-1] @ model.W_U`` is the logits, and ``logit_attrs``
over ``decompose_resid()`` sums to the logit.

Shapes: ``c`` components, ``b`` batch, ``p`` position, ``d`` hidden; ``pos_slice`` (an int drops the
axis, a ``(start, stop)`` tuple or slice keeps it, a list or tensor picks positions) applies to positions.
"""

from __future__ import annotations

import torch

from ..core.hook_names import HookNameError, unknown_name_error
from ..core.layer_types import ATTENTION, HOOK_PREFIX, block_index, canonical
from ..mirror import hf_layout
from .utils import get_act_name

PosSlice = int | slice | tuple | list | torch.Tensor | None


def rms_scale(x: torch.Tensor, eps: float) -> torch.Tensor:
    """The scale ``1/RMS`` an RMSNorm with epsilon ``eps`` multiplies ``x`` ``(..., d)`` by, as HF's does it:
    float32, ``(..., 1)``."""
    x = x.to(torch.float32)
    return torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)


def slice_axis(t: torch.Tensor, index: PosSlice, dim: int) -> torch.Tensor:
    """``t`` indexed by TL's Slice forms along ``dim``: int (axis dropped), (start, stop[, step]) tuple or
    slice, list/tensor of indices; None keeps everything."""
    if index is None:
        return t
    if isinstance(index, tuple):
        index = slice(*index)
    if isinstance(index, list):
        index = torch.tensor(index, dtype=torch.long)
    if isinstance(index, torch.Tensor):
        return t.index_select(dim, index.to(t.device).reshape(-1))
    return t[(slice(None),) * (dim % t.dim()) + (index,)]


class ResidualStreamTools:
    """Mixed into ``ActivationCache``: needs ``self.model``, ``self.layer_types``, ``self.has_batch_dim``."""

    # ------------------------------------------------------------------ helpers
    def _need_model(self):
        if getattr(self, "model", None) is None:
            raise ValueError("this cache was built without its model: make it with model.run_with_cache(...)")
        return self.model

    def _n(self) -> int:
        return len(self.layer_types)

    def _upto(self, layer: int | None, what: str) -> int:
        """TL's ``layer`` argument -> the number of blocks whose output is included (None / -1: all)."""
        n = self._n()
        if layer is None or layer == -1:
            return n
        if not isinstance(layer, int) or not 0 <= layer <= n:
            raise ValueError(f"{what}: layer={layer!r} must lie in 0..{n} ({n}, -1 or None: the whole model)")
        return layer

    def _stream(self, k: int) -> torch.Tensor:
        """The residual stream entering block ``k`` (k = n_layers: the final one), from whichever equal point
        was cached."""
        n = self._n()
        names = [f"blocks.{k}.hook_resid_pre"] if k < n else []
        names += ["hook_embed"] if k == 0 else [f"blocks.{k - 1}.hook_resid_post"]
        for name in names:
            if name in self._data:
                return self._data[name]
        where = "the final residual stream" if k == n else f"the residual stream entering block {k}"
        raise HookNameError(
            f"{where} was not cached: cache {' or '.join(repr(x) for x in names)} — e.g. "
            "model.run_with_cache(input, names_filter=lambda n: 'resid' in n or n == 'hook_embed')"
        )

    def _batched(self, t: torch.Tensor) -> torch.Tensor:
        return t if self.has_batch_dim else t[None]

    def _norm(self, layer: int | None):
        hf = self._need_model().hf_model
        if layer is None or layer >= self._n():
            return hf_layout.final_norm(hf)
        return hf_layout.block_norm(hf, layer)

    # ------------------------------------------------------------------ TL tools
    def remove_batch_dim(self):
        """Drop the batch axis of every cached tensor (a batch of one only), in place; returns the cache.
        (The widgets and ``stack`` expect the batch axis: use them on a cache that has it.)"""
        if not self.has_batch_dim:
            return self
        sizes = {t.shape[0] for t in self._data.values()}
        if sizes - {1}:
            raise ValueError(f"remove_batch_dim needs a batch of one; this cache has batch size {sizes}")
        self._data = {k: v[0] for k, v in self._data.items()}
        self.has_batch_dim = False
        return self

    def ln_scale(self, layer: int | None = None) -> torch.Tensor:
        """The scale ``1/RMS`` (float32, ``(b, p, 1)``) the run's norm used: that of block ``layer``'s
        pre-norm (negative: counted from the end, -1 the last block), or (None, n_layers) the final norm's;
        computed from the cached stream as HF's RMSNorm does.
        """
        n = self._n()
        if layer is not None:
            layer = block_index(layer, n, "ln_scale", allow_end=True)
        k = n if layer is None else layer
        return rms_scale(self._batched(self._stream(k)), hf_layout.norm_eps(self._norm(layer)))

    def apply_ln_to_stack(
        self,
        residual_stack: torch.Tensor,
        layer: int | None = None,
        mlp_input: bool = False,
        pos_slice: PosSlice = None,
        batch_slice: PosSlice = None,
        has_batch_dim: bool = True,
    ) -> torch.Tensor:
        """Apply a norm to a stack of residual components ``(..., [b], [p], d)`` at the scale the run used,
        weight included: the final norm (``layer`` None, -1 or n_layers) or block ``layer``'s pre-norm (whose
        output is that block's ``hook_mixer_in``). ``pos_slice`` / ``batch_slice``: which positions / rows of
        the run the stack holds; ``has_batch_dim=False``: the stack has no batch axis (a batch of one)."""
        _no_mid(mlp_input)
        layer = None if layer is None or layer == -1 else self._upto(layer, "apply_ln_to_stack")
        scale = slice_axis(self.ln_scale(layer), batch_slice, 0)
        if isinstance(batch_slice, int):
            scale = scale[None]
        scale = slice_axis(scale, pos_slice, 1)
        if not has_batch_dim:
            if scale.shape[0] != 1:
                raise ValueError(
                    f"has_batch_dim=False needs one row of the run, and the scale has {scale.shape[0]}: "
                    "pick it with batch_slice"
                )
            scale = scale[0]
        weight = self._norm(layer).weight.to(torch.float32)
        normed = weight * (residual_stack.to(torch.float32) * scale.to(residual_stack.device))
        return normed.to(residual_stack.dtype)

    def accumulated_resid(
        self,
        layer: int | None = None,
        incl_mid: bool = False,
        apply_ln: bool = False,
        pos_slice: PosSlice = None,
        mlp_input: bool = False,
        return_labels: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, list[str]]:
        """The residual stream entering blocks ``0..layer`` ``(layer+1, b, p, d)`` (None / -1: every block and
        the final stream, ``(n_layers+1, b, p, d)``). Labels ``'0_pre'``...``'final_post'``. ``apply_ln``:
        through block ``layer``'s norm (the final norm for the whole model) at the run's scale, weight
        included — the last entry then is ``ln_final.hook_normalized``."""
        _no_mid(incl_mid or mlp_input)
        upto = self._upto(layer, "accumulated_resid")
        n = self._n()
        streams = [
            slice_axis(self._stream(k), pos_slice, 1 if self.has_batch_dim else 0) for k in range(upto + 1)
        ]
        stack = torch.stack(streams)
        labels = [f"{k}_pre" if k < n else "final_post" for k in range(upto + 1)]
        if apply_ln:
            stack = self.apply_ln_to_stack(stack, upto, pos_slice=pos_slice, has_batch_dim=self.has_batch_dim)
        return (stack, labels) if return_labels else stack

    def decompose_resid(
        self,
        layer: int | None = None,
        mlp_input: bool = False,
        mode: str = "all",
        apply_ln: bool = False,
        pos_slice: PosSlice = None,
        incl_embeds: bool = True,
        return_labels: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, list[str]]:
        """The residual stream entering block ``layer`` (None / -1: the final one) split into what wrote it:
        the embedding (``'embed'``) and each earlier block's ``hook_mixer_out`` (``'3_attn_out'``,
        ``'0_mamba_out'``, ``'1_moe_out'``, ``'5_mlp_out'``) -> ``(c, b, p, d)``; the components sum to the
        stream. ``mode``: ``'all'`` or one layer type (``'attn'``, ``'mlp'``, ``'mamba'``, ``'moe'``) to keep
        only those blocks. ``apply_ln``: through that layer's norm at the run's scale, weight included."""
        _no_mid(mlp_input)
        upto = self._upto(layer, "decompose_resid")
        kinds = None if mode == "all" else {canonical(mode)}
        axis = 1 if self.has_batch_dim else 0
        parts, labels = [], []
        if incl_embeds:
            parts.append(slice_axis(self._stream(0), pos_slice, axis))
            labels.append("embed")
        for i in range(upto):
            kind = self.layer_types[i]
            if kinds is None or kind in kinds:
                parts.append(slice_axis(self[f"blocks.{i}.hook_mixer_out"], pos_slice, axis))
                labels.append(f"{i}_{HOOK_PREFIX[kind]}_out")
        if not parts:
            raise ValueError(f"decompose_resid(mode={mode!r}) found no component before block {upto}")
        stack = torch.stack(parts)
        if apply_ln:
            stack = self.apply_ln_to_stack(stack, upto, pos_slice=pos_slice, has_batch_dim=self.has_batch_dim)
        return (stack, labels) if return_labels else stack

    def logit_attrs(
        self,
        residual_stack: torch.Tensor,
        tokens: int | str | torch.Tensor,
        incorrect_tokens: int | str | torch.Tensor | None = None,
        pos_slice: PosSlice = None,
        batch_slice: PosSlice = None,
        has_batch_dim: bool = True,
    ) -> torch.Tensor:
        """Each component's direct contribution to the logit of ``tokens`` (minus that of
        ``incorrect_tokens``): the stack ``(c, [b], [p], d)`` through the final norm at the run's scale,
        weight included, dotted with ``W_U[:, token]`` -> ``(c, [b], [p])``. Over ``decompose_resid()`` it
        sums to the logit (difference). ``tokens``: a token (id or one-token string) or ids per row ``(b,)``
        or per position ``(b, p)``; ``pos_slice`` / ``batch_slice`` / ``has_batch_dim``: as for
        ``apply_ln_to_stack``."""
        model = self._need_model()
        normed = self.apply_ln_to_stack(
            residual_stack, None, pos_slice=pos_slice, batch_slice=batch_slice, has_batch_dim=has_batch_dim
        )
        direction = _directions(model, tokens, normed, has_batch_dim)
        if incorrect_tokens is not None:
            direction = direction - _directions(model, incorrect_tokens, normed, has_batch_dim)
        return (normed.to(torch.float32) * direction).sum(-1)

    def stack_activation(
        self, activation_name: str, layer: int = -1, sublayer_type: str | None = None
    ) -> torch.Tensor:
        """One activation (a TL short name, e.g. ``'pattern'``, ``'resid_post'``, ``'state_norm'``) stacked
        over the blocks before ``layer`` (-1: all) that have it: ``(n, ...)``. A Nemotron-H point belongs to
        one kind of block, so ``'pattern'`` stacks the attention blocks only (``cache.layers('attention')``).
        """
        upto = self._n() if layer is None or layer < 0 else self._upto(layer, "stack_activation")
        names = [get_act_name(activation_name, i, sublayer_type) for i in range(upto)]
        have = [n for n, i in zip(names, range(upto), strict=True) if _belongs(n, self.layer_types[i])]
        if not have:
            if names:  # the wrong-kind error, naming what block 0 has instead
                raise unknown_name_error(names[0], [], layer_types=self.layer_types)
            raise ValueError(f"stack_activation: layer={layer} leaves no block to stack")
        return torch.stack([self[n] for n in have])

    def stack_head_results(
        self,
        layer: int = -1,
        return_labels: bool = False,
        incl_remainder: bool = False,
        pos_slice: PosSlice = None,
        apply_ln: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, list[str]]:
        """What each attention head writes to the residual stream, ``z[:, :, h] @ W_O[h]``, for the attention
        blocks before ``layer`` (-1: all) -> ``(n_attn_blocks · n_heads, b, p, d)``, labels ``'L3H0'``...
        A block's heads sum to its ``hook_mixer_out``. ``incl_remainder``: one more component, the rest of
        the stream entering ``layer`` (the embedding and every non-attention block's output). ``apply_ln``:
        through that layer's norm at the run's scale, weight included. (Mamba heads are not attention heads
        and are not included: their outputs mix through the gated norm before ``out_proj``.)"""
        model = self._need_model()
        upto = self._n() if layer is None or layer < 0 else self._upto(layer, "stack_head_results")
        axis = 1 if self.has_batch_dim else 0
        parts, labels = [], []
        for i in range(upto):
            if self.layer_types[i] != ATTENTION:
                continue
            z = slice_axis(self._batched(self[f"blocks.{i}.attn.hook_z"]), pos_slice, 1)  # b [p] h e
            w_o = model.blocks[i].attn.W_O  # h e d
            heads = torch.einsum("...he,hed->h...d", z, w_o.to(z.dtype))
            parts.append(heads if self.has_batch_dim else heads[:, 0])
            labels += [f"L{i}H{h}" for h in range(heads.shape[0])]
        if not parts and not incl_remainder:
            raise ValueError(
                f"no attention block before block {upto}: the attention blocks are "
                f"{[i for i, k in enumerate(self.layer_types) if k == ATTENTION]}"
            )
        d = self._stream(0).shape[-1]
        stack = torch.cat(parts) if parts else torch.empty(0, d)
        if incl_remainder:
            total = slice_axis(self._stream(upto), pos_slice, axis)
            rest = total - (stack.sum(0) if parts else 0)
            stack = torch.cat([stack.to(total.dtype), rest[None]]) if parts else rest[None]
            labels.append("remainder")
        if apply_ln:
            stack = self.apply_ln_to_stack(stack, upto, pos_slice=pos_slice, has_batch_dim=self.has_batch_dim)
        return (stack, labels) if return_labels else stack


def _directions(model, tokens, normed: torch.Tensor, has_batch_dim: bool) -> torch.Tensor:
    """Unembedding columns ``W_U[:, t]`` (float32, ``(..., d)``) aligned with ``normed`` ``(c, [b], [p], d)``:
    ids per row ``(b,)`` broadcast over the positions."""
    if isinstance(tokens, str):
        tokens = model.to_single_token(tokens)
    ids = torch.as_tensor(tokens, dtype=torch.long)
    inner = normed.dim() - 2  # the axes between components and d
    if ids.dim() > inner:
        raise ValueError(
            f"tokens of shape {tuple(ids.shape)} do not fit a stack of shape {tuple(normed.shape)}"
        )
    if has_batch_dim and ids.dim() >= 1:
        ids = ids.reshape(*ids.shape, *([1] * (inner - ids.dim())))
    return model.tokens_to_residual_directions(ids).to(normed.device, torch.float32)


def _belongs(name: str, kind: str) -> bool:
    """Whether hook ``name`` (``blocks.i.<sub>.hook_x`` or a block point) exists in a block of ``kind``."""
    parts = name.split(".")
    return len(parts) == 3 or parts[2] == HOOK_PREFIX[kind]


def _no_mid(asked: bool) -> None:
    if asked:
        raise ValueError(
            "a Nemotron-H block has one mixer and one residual add: there is no resid_mid / mlp input. "
            "Drop incl_mid / mlp_input; blocks.{i}.hook_resid_post is the stream after block i"
        )
