"""TransformerLens' ``utils`` for Nemotron-H: ``from nemo_explore import utils`` where a TL notebook says
``from transformer_lens import utils``.

``get_act_name('pattern', 3)`` -> ``'blocks.3.attn.hook_pattern'``: TL's short names, plus this model's own
(``state_norm``, ``hidden_attn``, ``topk_indices``...). A TL name that has no meaning in Nemotron-H is an
error that says why and what to use instead.
"""

from __future__ import annotations

import torch

from ..core.hook_names import BLOCK_POINTS, MIXER_POINTS, HookNameError
from ..core.layer_types import HOOK_PREFIX

# TL's aliases -> our short point names (without 'hook_').
_ALIASES = {
    "attn": "pattern",
    "a": "pattern",
    "attn_logits": "attn_scores",
    "query": "q",
    "key": "k",
    "value": "v",
    "mlp_pre": "pre",
    "mlp_post": "post",
    "attn_out": "mixer_out",
    "mlp_out": "mixer_out",
    "ln_final": "normalized",
    "in": "resid_pre",  # TransformerLens' bridge: blocks.L.hook_in, what enters block L
    "out": "resid_post",  # and blocks.L.hook_out
}
# short name -> the name after 'blocks.{i}.': the block points and every mixer's points.
_BLOCK_SHORT = {p.removeprefix("hook_"): p for p in BLOCK_POINTS}
_BLOCK_SHORT.update(
    {
        p.removeprefix("hook_"): f"{HOOK_PREFIX[kind]}.{p}"
        for kind, points in MIXER_POINTS.items()
        for p in points
    }
)
_MODEL_SHORT = {"embed": "hook_embed", "normalized": "ln_final.hook_normalized"}
_NO_MEANING = {
    "resid_mid": "a Nemotron-H block has one mixer and one residual add, so there is no stream between two "
    "sublayers: blocks.{i}.hook_resid_post is the stream after block i (= blocks.{i+1}.hook_resid_pre)",
    "pos_embed": "Nemotron-H has no positional embedding (its attention has no RoPE either): position "
    "information comes from the Mamba layers. The embedding is 'embed'",
    "rot_q": "there is no rotary embedding: q is 'q'",
    "rot_k": "there is no rotary embedding: k is 'k'",
    "mlp_mid": "Nemotron-H's MLP is not gated and has no middle activation: 'pre' and 'post'",
}


def get_act_name(name: str, layer: int | None = None, layer_type: str | None = None) -> str:
    """A TransformerLens short name and a block index -> this package's hook name.

    ``'pattern', 3`` -> ``'blocks.3.attn.hook_pattern'``; ``'resid_pre', 0`` -> ``'blocks.0.hook_resid_pre'``;
    ``'attn_out'`` / ``'mlp_out'`` -> the block's ``hook_mixer_out`` (each block has a single mixer);
    ``'state_norm', 2`` -> ``'blocks.2.mamba.hook_state_norm'``; ``'embed'`` -> ``'hook_embed'``;
    ``'normalized'`` (no layer) -> ``'ln_final.hook_normalized'``; ``'scale', 3, 'ln1'`` ->
    ``'blocks.3.hook_scale'`` and ``'scale'`` (no layer) -> ``'ln_final.hook_scale'``. A full hook name is
    returned as it is.
    Which kind of block a point belongs to follows from its name; whether block ``layer`` is of that kind is
    checked where the name is used (``cache[...]``, ``run_with_hooks``), with an error naming what it has.
    ``layer_type``: TL's sublayer (``'attn'``, ``'mlp'``, ``'ln1'``...), accepted and ignored where the
    name already decides, else an error.
    """
    if not isinstance(name, str):
        raise TypeError(f"get_act_name takes a name (str), got {type(name).__name__}")
    if "." in name or (name.startswith("hook_") and name.removeprefix("hook_") not in _BLOCK_SHORT):
        return name  # a full hook name already
    short = name.removeprefix("hook_")
    short = _ALIASES.get(short, short)
    if short in _NO_MEANING:
        raise HookNameError(f"{name!r} has no counterpart in Nemotron-H: {_NO_MEANING[short]}")
    if short == "scale":  # TL's ln1.hook_scale / ln_final.hook_scale: a block has one norm, before its mixer
        final = layer is None
        if layer_type not in (None, "ln1", "ln_final") or layer_type == ("ln1" if final else "ln_final"):
            raise HookNameError(
                f"get_act_name('scale', {layer}, {layer_type!r}): a Nemotron-H block has one norm, before "
                "its mixer (TL's ln1): get_act_name('scale', layer); the final norm's: get_act_name('scale')"
            )
        if layer is None:
            return "ln_final.hook_scale"
    elif layer_type not in (None, "attn", "mlp", "mamba", "moe", "a", "m"):
        raise HookNameError(
            f"layer_type={layer_type!r}: Nemotron-H's block norms have no hook point of their own; the "
            "norm's output (weight applied) is get_act_name('mixer_in', layer)"
        )
    if short == "normalized" and layer is not None:
        raise HookNameError(
            f"get_act_name({name!r}, {layer}): a block's norm output (its weight applied) is "
            f"get_act_name('mixer_in', {layer}); 'normalized' without a layer is the final norm's"
        )
    if short in _MODEL_SHORT:
        if layer is not None:
            raise HookNameError(
                f"{name!r} is a model-level point: call get_act_name({name!r}) without a layer"
            )
        return _MODEL_SHORT[short]
    if short not in _BLOCK_SHORT:
        known = sorted({*_BLOCK_SHORT, *_MODEL_SHORT, *_ALIASES})
        raise HookNameError(f"no activation named {name!r}; known short names: {', '.join(known)}")
    if layer is None:
        raise HookNameError(
            f"{name!r} is a point of every block of its kind: give the block, e.g. get_act_name({name!r}, 0)"
        )
    if not isinstance(layer, int) or isinstance(layer, bool):
        raise TypeError(f"layer must be an int, got {type(layer).__name__}")
    if layer < 0:
        raise HookNameError(
            f"layer={layer}: get_act_name does not know the model's depth; use cache[{name!r}, {layer}] "
            "or model.cfg.n_layers + layer"
        )
    return f"blocks.{layer}.{_BLOCK_SHORT[short]}"


def lm_cross_entropy_loss(
    logits: torch.Tensor,
    tokens: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    per_token: bool = False,
) -> torch.Tensor:
    """Next-token cross-entropy: logits ``(b, p, vocab)``, tokens ``(b, p)`` -> the mean over the scored
    positions, or ``(b, p-1)`` with ``per_token=True``. With ``attention_mask`` (b p), the mean counts only
    positions where the token and the one it is predicted from are both real."""
    wide = torch.promote_types(logits.dtype, torch.float32)  # half types up to float32; float64 stays
    logprobs = torch.log_softmax(logits[:, :-1].to(wide), dim=-1)
    losses = -logprobs.gather(-1, tokens[:, 1:, None].to(logits.device)).squeeze(-1)
    if per_token:
        return losses
    if attention_mask is None:
        return losses.mean()
    keep = (attention_mask[:, 1:] * attention_mask[:, :-1]).bool().to(losses.device)
    return losses[keep].mean()


def to_numpy(tensor):
    """A tensor (any device, with or without grad), list or number -> a numpy array."""
    import numpy as np

    if isinstance(tensor, torch.Tensor):
        return tensor.detach().cpu().numpy()
    return np.asarray(tensor)


def remove_batch_dim(tensor: torch.Tensor) -> torch.Tensor:
    """``(1, ...)`` -> ``(...)``; any other batch size is returned unchanged."""
    return tensor[0] if tensor.shape[0] == 1 else tensor


def test_prompt(
    prompt: str,
    answer: str,
    model,
    prepend_bos: bool | None = None,
    top_k: int = 10,
    print_details: bool = True,
) -> list[tuple[str, float]]:
    """Print how ``model`` ranks ``answer`` after ``prompt`` (its rank, logit and probability at each answer
    token) and its ``top_k`` predictions there. Returns the top predictions after the prompt as
    ``[(token, probability)]``."""
    prompt_ids = model.to_tokens(prompt, prepend_bos=prepend_bos)
    answer_ids = model.to_tokens(answer, prepend_bos=False)
    ids = torch.cat([prompt_ids, answer_ids], dim=1)
    with torch.no_grad():
        probs = torch.softmax(model(ids)[0].float(), dim=-1)
    n = prompt_ids.shape[1]
    if print_details:
        print("Tokenized prompt:", model.to_str_tokens(prompt_ids))
        print("Tokenized answer:", model.to_str_tokens(answer_ids))
    top = []
    for k, token in enumerate(answer_ids[0].tolist()):
        row = probs[n - 1 + k]
        rank = int((row > row[token]).sum())
        best = torch.topk(row, top_k)
        ranked = [(model.to_string(int(i)), float(p)) for p, i in zip(best.values, best.indices, strict=True)]
        if k == 0:
            top = ranked
        if print_details:
            print(
                f"Answer token {model.to_string(token)!r}: rank {rank}, probability {float(row[token]):.4f}"
            )
            for r, (text, p) in enumerate(ranked):
                print(f"  top {r}: {text!r} {p:.4f}")
    return top


test_prompt.__test__ = False  # a helper named like a test: pytest must not collect it


def get_device() -> torch.device:
    """TransformerLens' ``utils.get_device()``: the first CUDA device if there is one, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def get_corner(tensor, n: int = 3):
    """TransformerLens' ``utils.get_corner``: the top-left ``n`` entries of every axis of a tensor (or of
    a FactoredMatrix's two matrix axes, computed from its factors)."""
    if hasattr(tensor, "get_corner"):
        return tensor.get_corner(n)
    return tensor[tuple(slice(n) for _ in range(tensor.ndim))]


def heads_by_layer(per_head: torch.Tensor, model) -> torch.Tensor:
    """A per-head result over the attention blocks' heads (``cache.stack_head_results`` order: block by
    block, head by head, ``(n_attention_blocks · n_heads, ...)``) -> ``(n_layers, n_heads, ...)`` as
    TransformerLens code reshapes it, with a row of NaN for every block without attention heads (a gap in
    a plot, never a number). TL's ``einops.rearrange(x, "(layer head) -> layer head", ...)`` ports as
    ``utils.heads_by_layer(x, model)``."""
    layers = model.layers("attention")
    n_heads = model.cfg.n_heads
    if per_head.shape[0] != len(layers) * n_heads:
        raise ValueError(
            f"expected {len(layers)} attention blocks × {n_heads} heads = {len(layers) * n_heads} rows "
            f"(cache.stack_head_results order), got {per_head.shape[0]}"
        )
    wide = per_head if per_head.is_floating_point() else per_head.float()
    out = wide.new_full((model.cfg.n_layers, n_heads, *per_head.shape[1:]), float("nan"))
    out[layers] = wide.reshape(len(layers), n_heads, *per_head.shape[1:])
    return out
