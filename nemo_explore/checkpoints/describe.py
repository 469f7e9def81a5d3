"""``describe``: what a Nemotron-H model is and what it costs, before loading it.

    >>> d = describe("nvidia/Nemotron-H-8B-Base-8K")      # registry name, directory, config or HF model
    >>> d.n_params, d.load_bytes("bfloat16")                 # exactly what NemotronHForCausalLM holds
    >>> d.activation_memory(4096, hooks="residual")          # bytes run_with_cache keeps at 4k tokens

Counting conventions (each test-checked against transformers' own model):
- ``n_params`` is ``sum(p.numel())`` of ``NemotronHForCausalLM(config)``: embeddings and ``lm_head``
  count separately (transformers 5 builds Nemotron-H's ``lm_head`` untied even when the config says
  ``tie_word_embeddings``), and multi-token-prediction layers (``mtp.*``), which transformers skips
  when loading, are not counted.
- ``n_active_params`` is what one token's forward pass uses: everything except the routed experts the
  router did not pick (MoE: router + shared expert + latent projections + top-k routed experts).
  Embedding and ``lm_head`` count in full.
- ``load_bytes(dtype)``: every parameter and buffer in ``dtype``, except those transformers keeps in
  float32 when it loads in float16 or bfloat16. Those follow the installed transformers: the patterns
  of ``NemotronHForCausalLM._keep_in_fp32_modules_strict`` (float16 and bfloat16) and
  ``_keep_in_fp32_modules`` (float16 only), matched as transformers matches them — each a regular
  expression, ``*`` read as ``.*``, searched anywhere in the full tensor name
  (``model.layers.3.mixer.gate.weight``). transformers 5.21–5.23 keep the router's
  ``e_score_correction_bias`` buffers in float32, 5.24 also the router weight ``gate.weight``. The
  tensor names are generated from the config (nothing is built, so 120B configs stay instant). The
  forward pass's own working memory comes on top.
"""

from __future__ import annotations

import html
import math
import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..core.dtypes import as_dtype
from ..core.formatting import format_bytes, format_count
from ..core.hook_names import STREAM_POINTS, all_names, unknown_name_error
from ..core.layer_types import (
    ATTENTION,
    LAYER_COLORS,
    LAYER_TYPES,
    MAMBA,
    MLP,
    MOE,
    PATTERN_CHAR,
    parse_pattern,
)
from ..core.points import row, sizes
from ..mirror import state_dict
from .sources import TINY, CheckpointError, cached_config, is_hub_id, read_config, tiny_dir

__all__ = ["MemoryWarning", "ModelDescription", "describe", "format_bytes"]


class MemoryWarning(UserWarning):
    """The weights, or a cache, may not fit where they are going (a UserWarning, so it is shown: Python
    hides ResourceWarnings by default)."""

LOAD_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
_INT_POINTS = frozenset({"hook_topk_indices"})  # int64 whatever the cache dtype


def describe(source: Any, *, cache_dir: str | os.PathLike | None = None) -> ModelDescription:
    """Describe a Nemotron-H model without loading its weights.

    ``source``: a registry name (``"nvidia/Nemotron-H-8B-Base-8K"``, see ``ne.registry.names()``),
    a local checkpoint directory (or its ``config.json``), a hub id found in the local Hugging Face cache
    (``cache_dir`` overrides where to look; nothing is downloaded), a ``NemotronHConfig``, or an HF model
    (``NemotronHForCausalLM`` or ``HookedNemotronH``). Configs are read as data with the native class,
    legacy ``hybrid_override_pattern`` / ``auto_map`` configs included; remote code never runs.
    """
    from transformers import NemotronHConfig

    if isinstance(source, ModelDescription):
        return source
    if isinstance(source, NemotronHConfig):
        return ModelDescription(source.name_or_path or "NemotronHConfig", source, origin="a config")
    model_config = getattr(getattr(source, "hf_model", source), "config", None)
    if isinstance(model_config, NemotronHConfig):
        return ModelDescription(
            model_config.name_or_path or type(source).__name__, model_config, origin="a model"
        )
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(
            "describe() takes a registry name, a checkpoint directory, a hub id, a NemotronHConfig or an "
            f"HF Nemotron-H model, not {type(source).__name__}"
        )
    return _describe_name(str(source), cache_dir)


def _describe_name(source: str, cache_dir) -> ModelDescription:
    from . import registry

    path = Path(source).expanduser()
    if path.is_file() and path.name == "config.json":
        path = path.parent
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise CheckpointError(f"{path} is a directory but has no config.json: is it a checkpoint?")
        return ModelDescription(str(path), read_config(path), origin=str(path / "config.json"))
    found = registry.lookup(source)
    if found is not None:
        return ModelDescription(
            found.name,
            found.to_config(),
            origin=found.source,
            inferred=dict(found.inferred),
            notes=[found.notes] if found.notes else [],
        )
    if source == TINY:
        where = tiny_dir()
        return ModelDescription(TINY, read_config(where), origin=str(where))
    if is_hub_id(source):
        cached = cached_config(source, cache_dir)
        if cached is not None:
            return ModelDescription(source, read_config(cached.parent), origin=str(cached))
        raise registry.unknown_error(
            source,
            why=" and has no config.json in the local Hugging Face cache (nothing is downloaded; "
            "download it where there is network, or pass a directory or a config)",
        )
    raise registry.unknown_error(source, why=", a checkpoint directory, or a hub id of the form 'org/name'")


# ------------------------------------------------------------------------------------------ description


@dataclass(repr=False)
class ModelDescription:
    """A Nemotron-H model's layer map, parameter counts and memory needs (see ``describe``).

    ``layer_types``: one of mamba/attention/mlp/moe per layer; ``pattern``: the same as ``M*-E``
    characters; ``counts``: layers per type; ``params``: parameters per component (embeddings, lm_head,
    norms, mamba, attention, mlp, moe); ``n_params`` / ``n_active_params``: total and per token;
    ``mtp_layers``: multi-token-prediction layers the checkpoint carries but transformers does not load.
    """

    name: str
    config: Any  # transformers.NemotronHConfig
    origin: str = ""  # where the configuration came from
    inferred: dict[str, str] = field(default_factory=dict)  # registry: field -> why it is inferred
    notes: list[str] = field(default_factory=list)
    # derived from the config
    layer_types: list[str] = field(init=False)
    pattern: str = field(init=False)
    counts: dict[str, int] = field(init=False)
    params: dict[str, int] = field(init=False)
    n_params: int = field(init=False)
    n_active_params: int = field(init=False)
    n_buffers: int = field(init=False)
    mtp_layers: int = field(init=False)

    def __post_init__(self) -> None:
        c = self.config
        self.layer_types = parse_pattern(c.layers_block_type)
        self.pattern = "".join(PATTERN_CHAR[t] for t in self.layer_types)
        self.counts = {t: self.layer_types.count(t) for t in LAYER_TYPES}
        self.mtp_layers = int(getattr(c, "num_nextn_predict_layers", 0) or 0)
        self.params = state_dict.param_counts(c, self.counts)
        self.n_params = sum(self.params.values())
        unused = c.n_routed_experts - c.num_experts_per_tok
        self.n_active_params = self.n_params - self.counts[MOE] * unused * state_dict.expert_params(c)
        self.n_buffers = self.counts[MOE] * c.n_routed_experts  # the routers' e_score_correction_bias
        if self.mtp_layers:
            kinds = "".join(PATTERN_CHAR[t] for t in parse_pattern(c.mtp_layers_block_type))
            self.notes.append(
                f"the checkpoint's {self.mtp_layers} multi-token-prediction layer(s) (pattern {kinds}) are "
                "skipped by transformers when loading: not counted, not hooked"
            )
        if c.tie_word_embeddings and not state_dict.hf_ties_embeddings():
            self.notes.append(
                "the config asks for tied embeddings, but transformers builds lm_head as its own matrix "
                "(counted); a checkpoint without lm_head.weight would load it randomly initialised"
            )

    # -------------------------------------------------------------------------------------------- memory
    def load_bytes(self, dtype: torch.dtype | str = torch.bfloat16) -> int:
        """Bytes the weights take once loaded in ``dtype``, counting in float32 the tensors the installed
        transformers keeps in float32 (the MoE routers' bias buffers, and from 5.24 their weights)."""
        return sum(self.tensor_bytes(dtype).values())

    def tensor_bytes(self, dtype: torch.dtype | str = torch.bfloat16) -> dict[str, int]:
        """Full name -> bytes of every parameter and buffer once loaded in ``dtype`` (see ``load_bytes``)."""
        dtype = as_dtype(dtype)
        kept = state_dict.kept_in_float32(dtype)
        return {
            name: n * (4 if kept is not None and kept.search(name) else dtype.itemsize)
            for name, n in self.tensor_sizes().items()
        }

    def tensor_sizes(self) -> dict[str, int]:
        """Full name -> number of elements of every parameter and buffer of ``NemotronHForCausalLM(config)``
        (``state_dict`` names, ``model.layers.3.mixer.gate.weight``), generated from the config."""
        return dict(state_dict.named_sizes(self.config, self.layer_types))

    def hook_names(self, hooks: Any = "all") -> list[str]:
        """The hook names a selection means: ``"all"``, ``"residual"`` (each block's resid_pre, mixer_in,
        mixer_out and resid_post), a name, a list of names, or a predicate on names."""
        names = all_names(self.layer_types)
        if hooks is None or (isinstance(hooks, str) and hooks == "all"):
            return names
        if isinstance(hooks, str) and hooks == "residual":
            return [n for n in names if n.startswith("blocks.") and n.split(".")[-1] in STREAM_POINTS]
        if callable(hooks):
            return [n for n in names if hooks(n)]
        wanted = [hooks] if isinstance(hooks, str) else list(hooks)
        known = set(names)
        for n in wanted:
            if n not in known:
                raise unknown_name_error(n, names, where=self.name, layer_types=self.layer_types)
        return list(dict.fromkeys(wanted))

    def hook_shapes(
        self,
        seq_len: int,
        batch: int = 1,
        hooks: str | Iterable[str] | Callable[[str], bool] | None = "all",
        *,
        state_positions: int | Iterable[int] | None = None,
        hidden_attn_heads: int | Iterable[int] | None = None,
        hidden_attn_window: tuple[int, int] | None = None,
        pattern_window: tuple[int, int] | None = None,
        ungroup_grouped_query_attention: bool = False,
    ) -> dict[str, tuple[int, ...]]:
        """Name -> shape of each selected hook value for ``batch`` sequences of ``seq_len`` tokens.

        The options mean what they mean for ``run_with_cache``: which positions ``hook_state`` keeps
        (default: all of an input of at most 64 tokens, else the last), which heads / query rows
        ``hook_hidden_attn`` keeps, which query rows ``hook_pattern`` / ``hook_attn_scores`` keep, whether
        ``hook_k`` / ``hook_v`` carry a copy of the KV head per query head.
        """
        _check_positive(seq_len=seq_len, batch=batch)
        s = sizes(
            self.config,
            batch,
            seq_len,
            state_positions=state_positions,
            hidden_attn_heads=hidden_attn_heads,
            hidden_attn_window=hidden_attn_window,
            pattern_window=pattern_window,
            ungroup_grouped_query_attention=ungroup_grouped_query_attention,
        )
        return {name: row(name).size(s) for name in self.hook_names(hooks)}

    def activation_memory(
        self,
        seq_len: int,
        batch: int = 1,
        hooks: str | Iterable[str] | Callable[[str], bool] | None = "residual",
        dtype: torch.dtype | str = torch.bfloat16,
        **options: Any,
    ) -> int:
        """Bytes ``run_with_cache(..., names_filter=hooks, dtype=dtype)`` keeps for ``batch`` × ``seq_len``.

        Floating values are counted in ``dtype`` (the cache dtype), ``hook_topk_indices`` as int64. For
        scale, per block: the residual points are 4 × b·p·d, ``hook_pattern`` b·h·p² (b·h·q·p for a
        ``pattern_window`` of q rows), ``hook_hidden_attn`` b·h_mamba·p², ``hook_state_norm`` b·p·h_mamba.
        ``options``: as for ``hook_shapes``.
        """
        return sum(self.point_bytes(seq_len, batch, hooks, dtype, **options).values())

    def point_bytes(
        self,
        seq_len: int,
        batch: int = 1,
        hooks: str | Iterable[str] | Callable[[str], bool] | None = "all",
        dtype: torch.dtype | str = torch.bfloat16,
        **options: Any,
    ) -> dict[str, int]:
        """Name -> bytes of each selected hook value (``activation_memory`` is their sum)."""
        size = _itemsize(dtype)
        return {
            name: math.prod(shape) * (8 if name.rsplit(".", 1)[-1] in _INT_POINTS else size)
            for name, shape in self.hook_shapes(seq_len, batch, hooks, **options).items()
        }

    def fits(
        self,
        device_memory_bytes: int,
        dtype: torch.dtype | str = torch.bfloat16,
        *,
        seq_len: int | None = None,
        batch: int = 1,
        hooks: Any = "residual",
        headroom: float = 0.1,
    ) -> str | None:
        """None if the weights (and, with ``seq_len``, the cached activations) fit in the device memory
        with ``headroom`` (a fraction) left for the forward pass; else a message saying what to do."""
        if not isinstance(device_memory_bytes, int) or device_memory_bytes <= 0:
            raise ValueError(f"device_memory_bytes must be a positive int, not {device_memory_bytes!r}")
        dtype = as_dtype(dtype)
        weights = self.load_bytes(dtype)
        acts = self.activation_memory(seq_len, batch, hooks, dtype) if seq_len else 0
        need = weights + acts
        if need <= (1 - headroom) * device_memory_bytes:
            return None
        what = f"{self.name} needs {format_bytes(need)}"
        if acts:
            what += (
                f" ({format_bytes(weights)} of {_dtype_name(dtype)} weights + {format_bytes(acts)} of cached "
                f"activations for {batch} × {seq_len} tokens)"
            )
        else:
            what += f" for its {_dtype_name(dtype)} weights"
        have = format_bytes(device_memory_bytes)
        if need <= device_memory_bytes:
            left = format_bytes(device_memory_bytes - need)
            return f"{what}: most of the device's {have}, leaving {left} to run the model; it may run out."
        tips = []
        if _itemsize(dtype) > 2:
            tips.append(f"load in bfloat16 ({format_bytes(self.load_bytes(torch.bfloat16))} of weights)")
        tips.append(
            "split the model over devices with device_map='auto' (accelerate offloads the rest to CPU)"
        )
        if acts:
            tips.append(
                "cache fewer hooks or a shorter sequence, or keep the cache on the CPU (device='cpu')"
            )
        return f"{what}, more than the device's {have}. To fit: {'; '.join(tips)}."

    # ------------------------------------------------------------------------------------------ display
    def _rows(self) -> list[tuple[str, str]]:
        c = self.config
        layers = ", ".join(f"{n} {t}" for t, n in self.counts.items() if n)
        widths = [f"hidden {c.hidden_size}"]
        if self.counts[ATTENTION]:
            widths.append(
                f"attention {c.num_attention_heads} heads ({c.num_key_value_heads} kv) × {c.head_dim}"
            )
        if self.counts[MAMBA]:
            widths.append(
                f"mamba {c.mamba_num_heads} heads × {c.mamba_head_dim}, state {c.ssm_state_size}, "
                f"{c.n_groups} groups, conv {c.conv_kernel}, chunk {c.chunk_size}"
            )
        if self.counts[MLP]:
            widths.append(f"mlp {c.intermediate_size}")
        if self.counts[MOE]:
            moe = (
                f"moe {c.n_routed_experts} experts × {c.moe_intermediate_size}, top-{c.num_experts_per_tok}, "
                f"shared {c.moe_shared_expert_intermediate_size}"
            )
            if c.n_group > 1:
                moe += f", {c.topk_group} of {c.n_group} groups"
            if c.moe_latent_size is not None:
                moe += f", latent {c.moe_latent_size}"
            widths.append(moe)
        widths.append(f"vocab {c.vocab_size}")
        params = format_count(self.n_params)
        if self.counts[MOE]:
            params += f" · active per token {format_count(self.n_active_params)}"
        rows = [
            ("layers", f"{len(self.layer_types)}: {layers}"),
            ("pattern", self.pattern),
            ("widths", " · ".join(widths)),
            ("parameters", params),
            (
                "weights",
                " · ".join(f"{_dtype_name(d)} {format_bytes(self.load_bytes(d))}" for d in LOAD_DTYPES),
            ),
        ]
        if self.origin:
            rows.append(("source", self.origin))
        rows += [("inferred", f"{k}: {why}") for k, why in self.inferred.items()]
        rows += [("note", n) for n in self.notes]
        return rows

    def __repr__(self) -> str:
        lines = [f"ModelDescription({self.name!r})"]
        lines += [f"  {k:<10} {v}" for k, v in self._rows()]
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        colours = LAYER_COLORS
        cells = []
        for k, v in self._rows():
            if k == "pattern":
                spans = "".join(
                    f'<span style="color:{colours[t]}" title="{i}: {t}">{html.escape(PATTERN_CHAR[t])}</span>'
                    for i, t in enumerate(self.layer_types)
                )
                value = f'<code style="word-break:break-all">{spans}</code>'
            else:  # a number stays with its unit, and a size or count with its label: "bfloat16 15.1 GiB"
                value = " · ".join(
                    f'<span style="white-space:nowrap">{html.escape(part)}</span>'
                    if k in ("parameters", "weights")
                    else _UNIT_SPACE.sub("\\1&nbsp;", html.escape(part))
                    for part in v.split(" · ")
                )
            cells.append(
                f'<tr><th style="text-align:left;vertical-align:top">{html.escape(k)}</th>'
                f'<td style="text-align:left">{value}</td></tr>'
            )
        return f"<div><b>{html.escape(self.name)}</b><table>{''.join(cells)}</table></div>"


# a number and the unit after it ("30.2 GiB", "8.10 B", "32 heads"), kept on one line in the HTML table
_UNIT_SPACE = re.compile(r"(\d) (?=(?:[KMGT]i)?B\b|[KMB]\b|heads\b|experts\b|groups\b)")


# ------------------------------------------------------------------------------------------- helpers


def _itemsize(dtype: torch.dtype | str) -> int:
    return as_dtype(dtype).itemsize


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _check_positive(**values: int) -> None:
    for key, v in values.items():
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ValueError(f"{key} must be a positive int, not {v!r}")
