"""The HF weights in TransformerLens' layout — views of the same parameters, nothing copied.

Per block: ``model.blocks[L].attn.W_Q`` (h, d, d_head), ``W_K`` / ``W_V`` (h, d, d_head: each query head's
KV head, GQA expanded; ``_W_K`` / ``_W_V`` are the n_kv_heads themselves), ``W_O`` (h, d_head, d);
``model.blocks[L].mlp.W_in`` (d, d_mlp), ``W_out`` (d_mlp, d). Across blocks: ``model.W_Q[L]``,
``model.W_O[L, h]``... for the blocks of the right kind (another kind is an error naming it). Model level:
``model.W_E`` (vocab, d), ``model.W_U`` (d, vocab), ``model.b_U`` (vocab,). Nemotron-H has no biases in
attention or lm_head, so every ``b_*`` there is zeros. Circuits: ``blocks[L].attn.QK`` = W_Q W_Kᵀ and ``OV`` =
W_V W_O, (h, d, d) as a :class:`~nemo_explore.FactoredMatrix`; ``model.QK[L, h]``, ``model.OV[L]``.
:class:`TLWeights` declares the model-level and across-block ones: ``HookedNemotronH`` inherits it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from types import SimpleNamespace
from typing import Any

import torch

from ..core.hook_lifecycle import PointHandle
from ..core.layer_types import ATTENTION, HOOK_PREFIX, MAMBA, MLP, MOE, block_index
from ..mirror import hf_layout
from .factored import FactoredMatrix

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


class HookPointRef(PointHandle):
    """TransformerLens' ``HookPoint`` as this model has it: ``model.blocks[3].attn.hook_z``,
    ``model.blocks[0].hook_resid_pre``, ``model.hook_embed``, ``model.ln_final.hook_normalized`` name a
    point of the model's one hook registry. ``add_hook(fn, dir='fwd'|'bwd', is_permanent=False)`` and
    ``remove_hooks(dir='fwd'|'bwd'|'both', including_permanent=False)`` act on that point only;
    ``layer()`` is None at ``hook_embed`` and ``ln_final.*``."""

    def __init__(self, model, name: str) -> None:
        self._model, self.name = model, name

    def _lifecycle(self):
        return self._model

    def __call__(self, x):
        raise TypeError(
            f"{self.name} fires inside the model's forward; to run code there, add a hook: "
            f"model.add_hook({self.name!r}, fn) or this point's .add_hook(fn)"
        )

    def __repr__(self) -> str:
        return f"HookPoint({self.name!r})"


def _point(model, name: str) -> HookPointRef:
    """``model.hook_point(name)`` for an attribute lookup: an unknown point is an AttributeError (so that
    ``hasattr`` works), whose message suggests the closest names."""
    try:
        return model.hook_point(name)
    except KeyError as err:
        raise AttributeError(err.args[0] if err.args else str(err)) from None


class Mixer:
    """``model.blocks[i].attn`` (``.mamba``, ``.moe``, ``.mlp``): the mixer's TL weights where it has them,
    its hook points as objects (``.hook_z``), and every attribute of the HF mixer."""

    def __init__(self, model, index: int, kind: str) -> None:
        self._inner = _VIEW[kind](hf_layout.mixer(model.hf_model, index))
        self._model, self._prefix = model, f"blocks.{index}.{HOOK_PREFIX[kind]}."

    def __getattr__(self, name: str):
        if name.startswith("hook_"):
            return _point(self._model, self._prefix + name)
        return getattr(self._inner, name)


class Norm:
    """An RMSNorm as TL has it: ``model.ln_final`` (HF's ``norm_f``) or ``model.blocks[L].ln1`` (the block's
    ``.norm``), with its points as objects — ``hook_scale`` (the divisor) and ``hook_normalized`` (the output,
    weight included: a block's is its ``hook_mixer_in``) — and every attribute of the HF module."""

    def __init__(self, model, norm, prefix: str, aliases: dict[str, str] | None = None) -> None:
        self._model, self._norm, self._prefix, self._aliases = model, norm, prefix, aliases or {}

    def __getattr__(self, name: str):
        if name.startswith("hook_"):  # an unknown one: the error names the closest of the model's points
            return _point(self._model, self._prefix + self._aliases.get(name, name))
        return getattr(self._norm, name)

    def __call__(self, *args, **kwargs):
        return self._norm(*args, **kwargs)


class Block:
    """``model.blocks[i]``: the HF block (``.norm``, ``.mixer`` and everything else are its own), with the
    mixer also under its kind's name as in the hook names — ``.attn`` / ``.mlp`` in TL layout, ``.mamba``,
    ``.moe`` — and TL's ``.ln1`` for the pre-norm."""

    def __init__(self, model, index: int, kind: str) -> None:
        self._model, self._hf, self._index, self._kind = model, model.hf_model, index, kind
        self._block = hf_layout.block(model.hf_model, index)

    def __getattr__(self, name: str):
        if name in HOOK_PREFIX.values():
            if name != HOOK_PREFIX[self._kind]:
                raise AttributeError(
                    f"block {self._index} is {'an' if self._kind[0] in 'aeiou' else 'a'} {self._kind} layer: "
                    f"its mixer is blocks[{self._index}].{HOOK_PREFIX[self._kind]} "
                    f"(hook points blocks.{self._index}.{HOOK_PREFIX[self._kind]}.*)"
                )
            return Mixer(self._model, self._index, self._kind)
        if name.startswith("hook_"):  # the block's own points (hook_resid_pre...), as objects
            return _point(self._model, f"blocks.{self._index}.{name}")
        if name == "ln1":
            i = self._index  # the block's norm output is its hook_mixer_in
            aliases = {"hook_normalized": "hook_mixer_in"}
            return Norm(self._model, hf_layout.block_norm(self._hf, i), f"blocks.{i}.", aliases)
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
        return Block(self._model, j, self._model.layer_types[j])

    def __iter__(self) -> Iterator[Block]:
        return (self[j] for j in range(len(self)))


class PerLayer:
    """``model.W_Q[L]`` / ``model.W_Q[L, h]``: a TL weight of block ``L`` (which must be of its kind)."""

    def __init__(self, model, name: str, kind: str) -> None:
        self._model, self._name, self._kind = model, name, kind

    def __getitem__(self, key):
        layer, rest = (key[0], key[1:]) if isinstance(key, tuple) else (key, ())
        n = self._model.n_layers
        try:
            i = block_index(layer, n, f"model.{self._name}[{layer!r}]")
        except TypeError:
            raise TypeError(
                f"model.{self._name}[layer, ...] takes the block index first; the {self._kind} blocks are "
                f"{self._model.layers(self._kind)}"
            ) from None
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


class Circuits(PerLayer):
    """``model.QK`` / ``model.OV``: ``[L]`` / ``[L, h]`` index block L, as for every TL weight; unindexed, the
    FactoredMatrix of every block, (n_layers, n_heads, d, d), as TransformerLens has it (``.eigenvalues``,
    ``W_E @ model.OV @ W_U``). A block without attention heads has NaN factors there: its row of every
    result is NaN (a gap in a plot), never a number."""

    def stacked(self) -> FactoredMatrix:
        model = self._model
        heads = [getattr(model.blocks[i].attn, self._name) for i in model.layers(ATTENTION)]
        if not heads:
            raise AttributeError(f"model.{self._name}: this model has no attention block")
        like = heads[0]
        A = like.A.new_full((model.n_layers, *like.A.shape), float("nan"))
        B = like.B.new_full((model.n_layers, *like.B.shape), float("nan"))
        for i, circuit in zip(model.layers(ATTENTION), heads, strict=True):
            A[i], B[i] = circuit.A.detach(), circuit.B.detach()
        return FactoredMatrix(A, B)

    def __getattr__(self, name: str):
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self.stacked(), name)

    def __matmul__(self, other) -> FactoredMatrix:
        return self.stacked() @ other

    def __rmatmul__(self, other) -> FactoredMatrix:
        return other @ self.stacked()

    def __repr__(self) -> str:
        return (
            f"{self.stacked()!r}: model.{self._name} of every block (NaN factors for the blocks without "
            f"heads); model.{self._name}[L] for block L of {self._model.layers(self._kind)}"
        )


class TLWeights:
    """The model's weights under TransformerLens' names, a mixin of ``HookedNemotronH`` (``model.py``):
    ``W_E``, ``W_U``, ``b_U``, ``ln_final``, ``blocks``, and each per-block weight across blocks
    (``model.W_Q[L]``: a :class:`PerLayer`). The model supplies ``hf_model``, ``n_layers``, ``layer_types``,
    ``layers()`` and ``to_single_token()``."""

    hf_model: Any  # the HF NemotronHForCausalLM
    to_single_token: Callable[[str], int]

    @property
    def blocks(self) -> Blocks:
        """The blocks: ``blocks[i]`` is HF's block (``.norm``, ``.mixer``), its mixer also under the kind's
        name with TransformerLens' weights (``blocks[i].attn.W_Q``, ``blocks[i].mlp.W_in``)."""
        return Blocks(self)

    @property
    def W_E(self) -> torch.Tensor:
        """Token embedding ``(d_vocab, d_model)``."""
        return hf_layout.embedding(self.hf_model).weight

    @property
    def W_U(self) -> torch.Tensor:
        """Unembedding ``(d_model, d_vocab)``: ``logits = ln_final(resid) @ W_U`` (+ ``b_U``, zeros)."""
        return hf_layout.unembed(self.hf_model).weight.T

    def tl_named_parameters(self) -> Iterator[tuple[str, torch.Tensor]]:
        """TransformerLens' ``tl_named_parameters``: ``(name, weight)`` of every weight, under TL's name where
        TL has one (``embed.W_E``, ``blocks.L.attn.W_Q``..., ``blocks.L.mlp.W_in``..., ``unembed.W_U``), and
        as ``blocks.L.<kind>.<HF's name>`` for the Mamba and MoE blocks' own (``A_log``...)."""
        yield "embed.W_E", self.W_E
        for i, kind in enumerate(self.layer_types):
            prefix = f"blocks.{i}.{HOOK_PREFIX[kind]}."
            yield f"blocks.{i}.ln1.w", hf_layout.block_norm(self.hf_model, i).weight
            # grouped-query attention: the KV heads' own _W_K / _W_V, as TL names a GQA model's parameters
            names = {ATTENTION: ("W_Q", "_W_K", "_W_V", "W_O"), MLP: MLP_WEIGHTS[:2]}.get(kind)
            if names is not None:
                view = getattr(self.blocks[i], HOOK_PREFIX[kind])
                for name in names:
                    yield prefix + name, getattr(view, name)
            else:
                for name, param in hf_layout.mixer(self.hf_model, i).named_parameters():
                    yield prefix + name, param
        yield "ln_final.w", hf_layout.final_norm(self.hf_model).weight
        yield "unembed.W_U", self.W_U

    @property
    def embed(self) -> SimpleNamespace:
        """TransformerLens' ``model.embed``: ``.W_E``."""
        return SimpleNamespace(W_E=self.W_E)

    @property
    def unembed(self) -> SimpleNamespace:
        """TransformerLens' ``model.unembed``: ``.W_U``, ``.b_U``."""
        return SimpleNamespace(W_U=self.W_U, b_U=self.b_U)

    @property
    def b_U(self) -> torch.Tensor:
        """Unembedding bias ``(d_vocab,)``: zeros (Nemotron-H's lm_head has none)."""
        head = hf_layout.unembed(self.hf_model)
        if head.bias is not None:
            return head.bias
        return torch.zeros(head.weight.shape[0], dtype=head.weight.dtype, device=head.weight.device)

    def tokens_to_residual_directions(self, tokens: int | str | torch.Tensor) -> torch.Tensor:
        """The unembedding direction ``W_U[:, t]`` of each token: one token (id or one-token string) ->
        ``(d,)``, ids of any shape ``(...)`` -> ``(..., d)``. A residual vector's dot product with it, after
        the final norm, is that token's logit."""
        if isinstance(tokens, str):
            tokens = self.to_single_token(tokens)
        return self.W_U.T[torch.as_tensor(tokens, dtype=torch.long, device=self.W_U.device)]

    @property
    def W_pos(self):
        raise AttributeError(
            "Nemotron-H has no positional embedding (and its attention no RoPE): position information comes "
            "from the Mamba layers"
        )

    @property
    def ln_final(self) -> Norm:
        """The final RMSNorm (HF's ``norm_f``); ``ln_final.hook_normalized`` includes its weight."""
        return Norm(self, hf_layout.final_norm(self.hf_model), "ln_final.")

    @property
    def hook_embed(self) -> HookPointRef:
        """TransformerLens' ``model.hook_embed`` as an object (``.add_hook(fn)``)."""
        return self.hook_point("hook_embed")

    # the ATTENTION_WEIGHTS and MLP_WEIGHTS across blocks (tests/test_model_composition.py checks the lists)
    @property
    def W_Q(self) -> PerLayer:
        """TransformerLens' ``W_Q`` of the attention blocks: ``model.W_Q[L]`` (see ``tl.weights``)."""
        return PerLayer(self, "W_Q", ATTENTION)

    @property
    def W_K(self) -> PerLayer:
        """TransformerLens' ``W_K`` of the attention blocks: ``model.W_K[L]`` (see ``tl.weights``)."""
        return PerLayer(self, "W_K", ATTENTION)

    @property
    def W_V(self) -> PerLayer:
        """TransformerLens' ``W_V`` of the attention blocks: ``model.W_V[L]`` (see ``tl.weights``)."""
        return PerLayer(self, "W_V", ATTENTION)

    @property
    def W_O(self) -> PerLayer:
        """TransformerLens' ``W_O`` of the attention blocks: ``model.W_O[L]`` (see ``tl.weights``)."""
        return PerLayer(self, "W_O", ATTENTION)

    @property
    def _W_K(self) -> PerLayer:
        """TransformerLens' ``_W_K`` of the attention blocks: ``model._W_K[L]`` (see ``tl.weights``)."""
        return PerLayer(self, "_W_K", ATTENTION)

    @property
    def _W_V(self) -> PerLayer:
        """TransformerLens' ``_W_V`` of the attention blocks: ``model._W_V[L]`` (see ``tl.weights``)."""
        return PerLayer(self, "_W_V", ATTENTION)

    @property
    def b_Q(self) -> PerLayer:
        """TransformerLens' ``b_Q`` of the attention blocks: ``model.b_Q[L]`` (see ``tl.weights``)."""
        return PerLayer(self, "b_Q", ATTENTION)

    @property
    def b_K(self) -> PerLayer:
        """TransformerLens' ``b_K`` of the attention blocks: ``model.b_K[L]`` (see ``tl.weights``)."""
        return PerLayer(self, "b_K", ATTENTION)

    @property
    def b_V(self) -> PerLayer:
        """TransformerLens' ``b_V`` of the attention blocks: ``model.b_V[L]`` (see ``tl.weights``)."""
        return PerLayer(self, "b_V", ATTENTION)

    @property
    def b_O(self) -> PerLayer:
        """TransformerLens' ``b_O`` of the attention blocks: ``model.b_O[L]`` (see ``tl.weights``)."""
        return PerLayer(self, "b_O", ATTENTION)

    @property
    def _b_K(self) -> PerLayer:
        """TransformerLens' ``_b_K`` of the attention blocks: ``model._b_K[L]`` (see ``tl.weights``)."""
        return PerLayer(self, "_b_K", ATTENTION)

    @property
    def _b_V(self) -> PerLayer:
        """TransformerLens' ``_b_V`` of the attention blocks: ``model._b_V[L]`` (see ``tl.weights``)."""
        return PerLayer(self, "_b_V", ATTENTION)

    @property
    def QK(self) -> Circuits:
        """TransformerLens' ``QK`` of the attention blocks: ``model.QK[L]`` (see ``tl.weights``)."""
        return Circuits(self, "QK", ATTENTION)

    @property
    def OV(self) -> Circuits:
        """TransformerLens' ``OV`` of the attention blocks: ``model.OV[L]`` (see ``tl.weights``)."""
        return Circuits(self, "OV", ATTENTION)

    @property
    def W_in(self) -> PerLayer:
        """TransformerLens' ``W_in`` of the mlp blocks: ``model.W_in[L]`` (see ``tl.weights``)."""
        return PerLayer(self, "W_in", MLP)

    @property
    def W_out(self) -> PerLayer:
        """TransformerLens' ``W_out`` of the mlp blocks: ``model.W_out[L]`` (see ``tl.weights``)."""
        return PerLayer(self, "W_out", MLP)

    @property
    def b_in(self) -> PerLayer:
        """TransformerLens' ``b_in`` of the mlp blocks: ``model.b_in[L]`` (see ``tl.weights``)."""
        return PerLayer(self, "b_in", MLP)

    @property
    def b_out(self) -> PerLayer:
        """TransformerLens' ``b_out`` of the mlp blocks: ``model.b_out[L]`` (see ``tl.weights``)."""
        return PerLayer(self, "b_out", MLP)
