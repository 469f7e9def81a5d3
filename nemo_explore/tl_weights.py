"""The HF weights in TransformerLens' layout — views of the same parameters, nothing copied.

Per block: ``model.blocks[L].attn.W_Q`` (h, d, d_head), ``W_K`` / ``W_V`` (h, d, d_head: each query head's
KV head, GQA expanded; ``_W_K`` / ``_W_V`` are the n_kv_heads themselves), ``W_O`` (h, d_head, d);
``model.blocks[L].mlp.W_in`` (d, d_mlp), ``W_out`` (d_mlp, d). Across blocks: ``model.W_Q[L]``,
``model.W_O[L, h]``... for the blocks of the right kind (another kind is an error naming it). Model level:
``model.W_E`` (vocab, d), ``model.W_U`` (d, vocab), ``model.b_U`` (vocab,). Nemotron-H has no biases in
attention or lm_head, so every ``b_*`` there is zeros. Circuits: ``blocks[L].attn.QK`` = W_Q W_Kᵀ and ``OV`` =
W_V W_O, (h, d, d) as a :class:`~nemo_explore.factored.FactoredMatrix`; ``model.QK[L, h]``, ``model.OV[L]``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch

from . import hf_layout
from .factored import FactoredMatrix
from .layer_types import ATTENTION, HOOK_PREFIX, MAMBA, MLP, MOE

ATTENTION_WEIGHTS = (
    *("W_Q", "W_K", "W_V", "W_O", "_W_K", "_W_V", "b_Q", "b_K", "b_V", "b_O", "_b_K", "_b_V"),
    *("QK", "OV"),
)
MLP_WEIGHTS = ("W_in", "W_out", "b_in", "b_out")


def _by_head(linear: torch.nn.Linear, d_head: int) -> torch.Tensor:
    """``x @ W.T`` projections into heads: weight ``(n·d_head, d)`` -> ``(n, d, d_head)``."""
    return linear.weight.view(-1, d_head, linear.weight.shape[1]).transpose(1, 2)


def _bias(linear: torch.nn.Linear, shape: tuple[int, ...]) -> torch.Tensor:
    """The layer's bias viewed as ``shape`` (zeros when it has none)."""
    if linear.bias is not None:
        return linear.bias.view(shape)
    w = linear.weight
    return torch.zeros(w.shape[0], dtype=w.dtype, device=w.device).view(shape)


class AttentionWeights:
    """An attention mixer's weights in TL layout; any other attribute is the HF module's (``q_proj``...)."""

    def __init__(self, attn) -> None:
        self._attn = attn

    @property
    def n_rep(self) -> int:
        return hf_layout.attn_kv_repeats(self._attn)

    @property
    def _d_head(self) -> int:
        return hf_layout.attn_head_dim(self._attn)

    @property
    def W_Q(self) -> torch.Tensor:
        return _by_head(hf_layout.query_proj(self._attn), self._d_head)

    @property
    def _W_K(self) -> torch.Tensor:
        return _by_head(hf_layout.key_proj(self._attn), self._d_head)

    @property
    def _W_V(self) -> torch.Tensor:
        return _by_head(hf_layout.value_proj(self._attn), self._d_head)

    @property
    def W_K(self) -> torch.Tensor:
        return self._W_K.repeat_interleave(self.n_rep, dim=0)

    @property
    def W_V(self) -> torch.Tensor:
        return self._W_V.repeat_interleave(self.n_rep, dim=0)

    @property
    def W_O(self) -> torch.Tensor:
        o = hf_layout.output_proj(self._attn).weight  # (d, h·d_head)
        return o.T.view(-1, self._d_head, o.shape[0])

    @property
    def QK(self) -> FactoredMatrix:
        """Each head's W_Q W_Kᵀ, (h, d, d): a query input x and a key input y score x QK yᵀ / √d_head. The
        inputs are the block's ``hook_mixer_in`` (the RMSNorm's output, its weight included)."""
        return FactoredMatrix(self.W_Q, self.W_K.mT)

    @property
    def OV(self) -> FactoredMatrix:
        """Each head's W_V W_O, (h, d, d): what the head writes for a key input y it attends to fully."""
        return FactoredMatrix(self.W_V, self.W_O)

    @property
    def b_Q(self) -> torch.Tensor:
        return _bias(hf_layout.query_proj(self._attn), (-1, self._d_head))

    @property
    def _b_K(self) -> torch.Tensor:
        return _bias(hf_layout.key_proj(self._attn), (-1, self._d_head))

    @property
    def _b_V(self) -> torch.Tensor:
        return _bias(hf_layout.value_proj(self._attn), (-1, self._d_head))

    @property
    def b_K(self) -> torch.Tensor:
        return self._b_K.repeat_interleave(self.n_rep, dim=0)

    @property
    def b_V(self) -> torch.Tensor:
        return self._b_V.repeat_interleave(self.n_rep, dim=0)

    @property
    def b_O(self) -> torch.Tensor:
        return _bias(hf_layout.output_proj(self._attn), (-1,))

    def __getattr__(self, name: str):
        return getattr(self._attn, name)


class MLPWeights:
    """A dense MLP mixer's weights in TL layout (``W_in`` d×d_mlp, ``W_out`` d_mlp×d), else HF's module."""

    def __init__(self, mlp) -> None:
        self._mlp = mlp

    @property
    def W_in(self) -> torch.Tensor:
        return hf_layout.mlp_up(self._mlp).weight.T

    @property
    def W_out(self) -> torch.Tensor:
        return hf_layout.mlp_down(self._mlp).weight.T

    @property
    def b_in(self) -> torch.Tensor:
        return _bias(hf_layout.mlp_up(self._mlp), (-1,))

    @property
    def b_out(self) -> torch.Tensor:
        return _bias(hf_layout.mlp_down(self._mlp), (-1,))

    def __getattr__(self, name: str):
        return getattr(self._mlp, name)


_VIEW = {ATTENTION: AttentionWeights, MLP: MLPWeights, MAMBA: lambda m: m, MOE: lambda m: m}


class Block:
    """``model.blocks[i]``: the HF block (``.norm``, ``.mixer`` and everything else are its own), with the
    mixer also under its kind's name as in the hook names — ``.attn`` / ``.mlp`` in TL layout, ``.mamba``,
    ``.moe`` — and TL's ``.ln1`` for the pre-norm."""

    def __init__(self, hf_model, index: int, kind: str) -> None:
        self._hf, self._index, self._kind = hf_model, index, kind
        self._block = hf_layout.block(hf_model, index)

    def __getattr__(self, name: str):
        if name in HOOK_PREFIX.values():
            if name != HOOK_PREFIX[self._kind]:
                raise AttributeError(
                    f"block {self._index} is {'an' if self._kind[0] in 'aeiou' else 'a'} {self._kind} layer: "
                    f"its mixer is blocks[{self._index}].{HOOK_PREFIX[self._kind]} "
                    f"(hook points blocks.{self._index}.{HOOK_PREFIX[self._kind]}.*)"
                )
            return _VIEW[self._kind](hf_layout.mixer(self._hf, self._index))
        if name == "ln1":
            return hf_layout.block_norm(self._hf, self._index)
        if name == "ln2":
            raise AttributeError("a Nemotron-H block has one norm (ln1 = .norm) before its single mixer")
        return getattr(self._block, name)

    def __call__(self, *args, **kwargs):
        return self._block(*args, **kwargs)

    def __repr__(self) -> str:
        return f"blocks[{self._index}] ({self._kind}): {self._block!r}"


class Blocks(Sequence):
    """``model.blocks``: one ``Block`` per layer, all kinds, in order (negative indices from the end)."""

    def __init__(self, model) -> None:
        self._model = model

    def __len__(self) -> int:
        return self._model.n_layers

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(len(self))[i]]
        n = len(self)
        j = i + n if i < 0 else i
        if not 0 <= j < n:
            raise IndexError(f"block {i}: this model has {n} blocks (0..{n - 1})")
        return Block(self._model.hf_model, j, self._model.layer_types[j])

    def __iter__(self) -> Iterator[Block]:
        return (self[j] for j in range(len(self)))


class PerLayer:
    """``model.W_Q[L]`` / ``model.W_Q[L, h]``: a TL weight of block ``L`` (which must be of its kind)."""

    def __init__(self, model, name: str, kind: str) -> None:
        self._model, self._name, self._kind = model, name, kind

    def __getitem__(self, key):
        layer, rest = (key[0], key[1:]) if isinstance(key, tuple) else (key, ())
        n = self._model.n_layers
        if not isinstance(layer, int):
            raise TypeError(
                f"model.{self._name}[layer, ...] takes the block index first; the {self._kind} blocks are "
                f"{self._model.layers(self._kind)}"
            )
        i = layer + n if layer < 0 else layer
        if not 0 <= i < n:
            raise IndexError(f"block {layer}: this model has {n} blocks (0..{n - 1})")
        kind = self._model.layer_types[i]
        if kind != self._kind:
            raise KeyError(
                f"model.{self._name}[{layer}]: block {i} is {'an' if kind[0] in 'aeiou' else 'a'} {kind} "
                f"layer, which has no {self._name}; "
                f"the {self._kind} blocks are {self._model.layers(self._kind)}"
            )
        weight = getattr(getattr(self._model.blocks[i], HOOK_PREFIX[kind]), self._name)
        return weight[rest] if rest else weight

    def __repr__(self) -> str:
        return (
            f"model.{self._name}: index it by block, model.{self._name}[L] for L in "
            f"{self._model.layers(self._kind)} (the {self._kind} blocks)"
        )
