"""HookedNemotronH: an HF NemotronHForCausalLM with layer-type-aware hook points.

Nothing is attached while nothing is hooked: the HF model runs as it is, fast paths included. Adding a
hook installs only what that point needs — a plain torch hook for residual-stream points, an instrumented
forward (``mixers/``) for points inside a mixer — and removing it takes exactly that away again.

The class is composed of three mixins, each the one place for its concern: ``inputs.Inputs`` (text, ids
and masks in, token strings out), ``lifecycle.HookLifecycle`` (the active hooks and what they attach to
the HF modules) and ``tl.weights.TLWeights`` (the weights under TransformerLens' names). This module holds
what runs the model: the forward and its loss, ``run_with_hooks``, ``run_with_cache`` and ``generate``.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable, Iterable

import torch

from .cache import ActivationCache
from .checkpoints.describe import MemoryWarning, describe
from .checkpoints.sources import NotNemotronHError
from .core.formatting import format_bytes
from .core.hook_lifecycle import NamesFilter
from .core.hook_names import parse
from .core.hooks import HookFn
from .core.layer_types import ATTENTION, MAMBA, MLP, MOE, canonical, parse_pattern
from .core.options import RunOptions
from .core.points import template
from .core.storage import Blocks
from .inputs import Input, Inputs, is_texts
from .lifecycle import HookLifecycle
from .mirror import hf_layout
from .tl.config import TLConfig
from .tl.utils import lm_cross_entropy_loss
from .tl.weights import TLWeights


def check_nemotron_h(hf_model) -> None:
    """Raise a clear error unless ``hf_model`` is a native transformers Nemotron-H causal LM."""
    config = getattr(hf_model, "config", None)
    model_type = getattr(config, "model_type", None)
    if model_type != "nemotron_h" or not hf_layout.has_layout(hf_model):
        found = f"{type(hf_model).__name__} (config model_type={model_type!r})"
        raise NotNemotronHError(
            f"nemo_explore needs a Nemotron-H causal LM (transformers' NemotronHForCausalLM); got {found}. "
            "Load one with nemo_explore.load('tiny'), a hub id or a checkpoint directory."
        )


class HookedNemotronH(Inputs, HookLifecycle, TLWeights):
    """A Nemotron-H model whose every block exposes hook points named for its kind.

    ``model(tokens)`` returns logits; ``run_with_cache`` / ``run_with_hooks`` / ``hooks`` read and write
    points; ``generate`` runs HF's generation with any active hooks. ``hf_model`` is the model itself,
    nothing is copied. TransformerLens' names work too (README, "Coming from TransformerLens"):
    ``cfg.n_layers``, ``W_U``, ``blocks[L].attn.W_Q``, ``add_hook`` / ``reset_hooks``, ``to_single_token``,
    ``stop_at_layer``...
    """

    def __init__(self, hf_model, tokenizer=None) -> None:
        check_nemotron_h(hf_model)
        # eval: in training mode HF's Mamba forward may take a fused path that skips the hooks
        self.hf_model = hf_model.eval()
        self.tokenizer = tokenizer
        self.cfg = TLConfig(hf_model.config, self)  # the HF config, plus TransformerLens' names
        self.layer_types: list[str] = parse_pattern(hf_layout.block_types(hf_model.config))
        self._init_hooks()  # names, registry, what is attached, the run's options (lifecycle.py)

    # ------------------------------------------------------------------ structure
    @property
    def config(self):
        """The HF config itself (``cfg`` is the same with TransformerLens' names added)."""
        return self.hf_model.config

    @property
    def n_layers(self) -> int:
        return len(self.layer_types)

    @property
    def pattern(self) -> str:
        """The layer map as a pattern string: ``M`` Mamba, ``*`` attention, ``-`` MLP, ``E`` MoE."""
        return "".join({MAMBA: "M", ATTENTION: "*", MLP: "-", MOE: "E"}[t] for t in self.layer_types)

    @property
    def device(self) -> torch.device:
        return hf_layout.embedding(self.hf_model).weight.device

    def layers(self, layer_type: str) -> list[int]:
        """Indices of the blocks of one kind (any spelling: ``'mamba'``, ``'M'``, ``'linear_attention'``)."""
        kind = canonical(layer_type)
        return [i for i, t in enumerate(self.layer_types) if t == kind]

    def __repr__(self) -> str:
        counts = ", ".join(
            f"{len(self.layers(t))} {t}" for t in (MAMBA, ATTENTION, MLP, MOE) if self.layers(t)
        )
        return f"HookedNemotronH({self.n_layers} layers: {counts}; pattern {self.pattern})"

    def _repr_html_(self) -> str:
        """In a notebook: the model's description (layer map in colour, parameters, memory)."""
        return describe(self)._repr_html_()

    # ------------------------------------------------------------------ running
    def __call__(
        self,
        input: Input,
        attention_mask: torch.Tensor | None = None,
        return_type: str | None = "logits",
        *,
        loss_per_token: bool = False,
        stop_at_layer: int | None = None,
        prepend_bos: bool | None = None,
    ) -> torch.Tensor | None:
        """Logits ``(b, p, vocab)``, with whatever hooks are active.

        ``return_type``: ``'logits'``; ``'loss'`` (mean next-token loss; with ``loss_per_token=True``, as TL
        spells it, ``(b, p-1)``); ``'loss_per_token'`` (the same); None (run for the hooks, return None: HF
        unembeds the last position only, so no ``(b, p, vocab)`` tensor is made).
        ``stop_at_layer=L``: run the embedding and blocks ``0..L-1`` only and return the residual stream
        entering block L ``(b, p, d)`` (negative L counts from the end; ``n_layers``: the final stream)."""
        _check_return_type(return_type)
        if loss_per_token and return_type == "loss":
            return_type = "loss_per_token"
        ids, mask = self.to_inputs(input, attention_mask, prepend_bos=prepend_bos)
        if stop_at_layer is not None:
            if return_type not in ("logits", None):
                raise ValueError(
                    f"stop_at_layer returns the residual stream, not a {return_type!r}: drop one of the two"
                )
            return self._run_until(ids, mask, stop_at_layer)
        # a loss is counted where both the token and the one it is predicted from are real (not padding)
        keep = None if mask is None else (mask[:, 1:] * mask[:, :-1]).bool()
        loss = return_type in ("loss", "loss_per_token")
        if loss and (ids.shape[1] < 2 or (keep is not None and not keep.any())):
            raise ValueError(
                f"return_type={return_type!r} needs a next token to predict, and this input has a single "
                "token per row: pass a longer input, or use return_type='logits'"
            )
        if return_type is None:  # run for the hooks: HF unembeds the last position only, not (b, p, vocab)
            self.hf_model(input_ids=ids, attention_mask=mask, use_cache=False, logits_to_keep=1)
            return None
        logits = self.hf_model(input_ids=ids, attention_mask=mask, use_cache=False).logits
        if return_type == "logits":
            return logits
        return lm_cross_entropy_loss(logits, ids, mask, per_token=return_type == "loss_per_token")

    def loss_fn(
        self,
        logits: torch.Tensor,
        tokens: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        per_token: bool = False,
    ) -> torch.Tensor:
        """Next-token cross-entropy of ``logits`` (b p vocab) on ``tokens`` (b p): mean, or ``(b, p-1)``."""
        return lm_cross_entropy_loss(logits, tokens, attention_mask, per_token)

    def _run_until(self, ids: torch.Tensor, mask: torch.Tensor | None, stop_at_layer: int) -> torch.Tensor:
        """The residual stream entering block ``stop_at_layer`` (the final one at ``n_layers``),
        ``(b, p, d)``; the blocks from there on do not run."""
        n = self.n_layers
        s = stop_at_layer + n if stop_at_layer < 0 else stop_at_layer
        if not 0 <= s <= n:
            raise ValueError(f"stop_at_layer={stop_at_layer}: this model has {n} blocks; use -{n}..{n}")
        module = hf_layout.block(self.hf_model, s) if s < n else hf_layout.final_norm(self.hf_model)

        def stop(mod, args, kwargs):
            raise _StopForward(args[0] if args else kwargs["hidden_states"])

        handle = module.register_forward_pre_hook(stop, with_kwargs=True)
        try:
            self.hf_model(input_ids=ids, attention_mask=mask, use_cache=False)
        except _StopForward as stopped:
            return stopped.resid
        finally:
            handle.remove()
        raise AssertionError("the forward pass did not reach the block it should stop at")

    forward = __call__

    def run_with_hooks(
        self,
        input: Input,
        fwd_hooks: Iterable[tuple[str | Callable[[str], bool], HookFn]] = (),
        attention_mask: torch.Tensor | None = None,
        return_type: str | None = "logits",
        *,
        bwd_hooks: Iterable = (),
        reset_hooks_end: bool = True,
        clear_contexts: bool = False,
        loss_per_token: bool = False,
        stop_at_layer: int | None = None,
        prepend_bos: bool | None = None,
        **options,
    ) -> torch.Tensor | None:
        """Run once with ``fwd_hooks`` = ``[(name or predicate, fn)]``; ``fn(tensor, hook)`` may return a
        replacement. ``bwd_hooks``: ``fn(grad, hook)`` on the gradient of each point's value, run when you
        call ``backward()`` on what this returns (they stay on this forward's tensors). ``return_type``,
        ``loss_per_token``, ``stop_at_layer``: as for ``model(...)``. ``clear_contexts``: empty every
        ``hook.ctx`` afterwards. Options: as for ``run_with_cache``."""
        _check_return_type(return_type)

        def run() -> torch.Tensor | None:
            return self(input, attention_mask, return_type, loss_per_token=loss_per_token,
                        stop_at_layer=stop_at_layer, prepend_bos=prepend_bos)

        return self._run_with_hooks(run, fwd_hooks, bwd_hooks, reset_hooks_end, clear_contexts, **options)

    def run_with_cache(
        self,
        input: Input,
        names_filter: NamesFilter = None,
        attention_mask: torch.Tensor | None = None,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        return_type: str | None = "logits",
        *,
        remove_batch_dim: bool = False,
        incl_bwd: bool = False,
        loss_per_token: bool = False,
        stop_at_layer: int | None = None,
        prepend_bos: bool | None = None,
        pack: bool = False,
        **options,
    ) -> tuple[torch.Tensor | None, ActivationCache]:
        """Run once and keep the hooked values: ``(logits, cache)``.

        ``names_filter``: a name, a list of names, a predicate on names, or None for every point.
        ``device`` / ``dtype``: where and how to keep the cached tensors (default: as computed).
        Options: ``state_positions`` (which positions ``hook_state`` keeps; default all of an input of at
        most 64 tokens, else the last), ``hidden_attn_heads``, ``hidden_attn_window`` (query rows of
        ``hook_hidden_attn``), ``pattern_window`` (query rows ``(start, stop)`` of ``hook_pattern`` and
        ``hook_attn_scores``: for long inputs, b·h·q·p instead of b·h·p²).
        ``return_type``, ``loss_per_token``, ``stop_at_layer``: as for ``model(...)`` (with ``stop_at_layer``
        the cache holds the points reached). ``remove_batch_dim=True``: a batch of one is cached without its
        batch axis (as ``cache.remove_batch_dim()``). ``incl_bwd=True``: the output (a scalar, e.g.
        ``return_type="loss"``) is back-propagated too, and each point's gradient cached as
        ``cache[name + "_grad"]`` (grad must be enabled; parameter gradients accumulate as usual).
        ``pack=True``: the values kept in host memory are copied into one block per point (every layer's
        ``hook_q`` in one; ``core.storage.Blocks``), made before the forward. After
        ``nemo_explore.reuse_freed_memory()``, runs one after another of about the same length then reuse
        the same memory in place instead of growing the heap; a tensor kept from the cache keeps its block.
        """
        _check_return_type(return_type)
        names = self._cached_names(names_filter)
        ids, mask = self.to_inputs(input, attention_mask, prepend_bos=prepend_bos)
        run_options = self._options.updated(**options)  # what hooks() sets for the run
        sizes = self._point_bytes(names, ids.shape, dtype, run_options)
        self._warn_if_big(sizes, ids.shape)
        on_host = torch.device(device or self.device).type == "cpu"  # where the kept values will be
        blocks = Blocks(sizes, template) if pack and on_host else None

        def run() -> torch.Tensor | None:
            return self(ids, mask, return_type, loss_per_token=loss_per_token, stop_at_layer=stop_at_layer)

        out, recorder = self._record(
            run, names, incl_bwd=incl_bwd, scalar_hint="return_type='loss'", device=device, dtype=dtype,
            blocks=blocks, **options,
        )
        cache = ActivationCache(
            recorder.cache(self._names),
            layer_types=self.layer_types,
            tokens=ids,
            str_tokens=self._str_tokens_of(ids, mask),
            attention_mask=mask,
            config=self.config,
            model=self,
            options=run_options,
        )
        if remove_batch_dim:
            cache.remove_batch_dim()
        return out, cache

    def _point_bytes(self, names: list[str], shape: torch.Size, dtype, options: RunOptions) -> dict[str, int]:
        """Name -> the bytes ``run_with_cache`` will keep of it for inputs of ``shape`` (b, p)."""
        batch, seq_len = shape
        kept = dtype or next(self.hf_model.parameters()).dtype
        return describe(self).point_bytes(seq_len, batch, names, kept, **dataclasses.asdict(options))

    def _warn_if_big(self, sizes: dict[str, int], shape: torch.Size) -> None:
        """A ``MemoryWarning`` before a run whose cache would hold more than ``CACHE_WARN_BYTES`` (``sizes``:
        name -> bytes), with the estimate, the points that weigh most and how to keep less."""
        batch, seq_len = shape
        total = sum(sizes.values())
        if total <= CACHE_WARN_BYTES:
            return
        by_point: dict[str, int] = {}
        for name, n in sizes.items():
            short = parse(name)[2]
            by_point[short] = by_point.get(short, 0) + n
        heavy = sorted(by_point.items(), key=lambda item: -item[1])[:3]
        warnings.warn(
            f"run_with_cache is about to keep {format_bytes(total)} of activations for {batch} × {seq_len} "
            f"tokens ({', '.join(f'{p} {format_bytes(n)}' for p, n in heavy)}). To keep less: a names_filter "
            "(e.g. lambda n: 'resid' in n), pattern_window= / hidden_attn_window=(start, stop) for the p×p "
            "points, dtype=torch.bfloat16, or device='cpu' to keep them in host memory.",
            MemoryWarning,
            stacklevel=3,
        )

    @torch.no_grad()
    def generate(
        self,
        input: Input,
        max_new_tokens: int = 20,
        fwd_hooks=(),
        return_type: str = "tokens",
        prepend_bos: bool | None = None,
        **kwargs,
    ) -> torch.Tensor | str | list[str]:
        """HF's ``generate`` with any active hooks plus ``fwd_hooks``. Texts are left-padded. Returns the
        token ids, prompt included ``(b, p + new)``; ``return_type='str'``: the text (one string per row,
        a single string for a single text); ``'input'``: text for text input, ids for ids (TL's default).

        Greedy by default; giving a sampling argument (``temperature``, ``top_k``, ``top_p``, ``typical_p``,
        ``min_p``...) samples, as in TransformerLens (``do_sample=True`` is implied), except
        ``temperature=0``, which means greedy. ``do_sample=False`` with a sampling argument is an error.
        ``prepend_bos``: as for ``to_tokens`` (None: what the tokenizer does).
        """
        if return_type not in ("tokens", "str", "input"):
            raise ValueError(f"return_type must be 'tokens', 'str' or 'input', not {return_type!r}")
        text_in = isinstance(input, str) or is_texts(input)
        as_text = return_type == "str" or (return_type == "input" and text_in)
        kwargs.pop("verbose", None)  # TL's progress-bar switch
        sampling = [k for k in SAMPLING_ARGS if kwargs.get(k) is not None]
        if kwargs.get("temperature") == 0:  # TransformerLens' spelling of greedy
            kwargs.pop("temperature")
            sampling.remove("temperature")
            if kwargs.get("do_sample"):
                raise ValueError("temperature=0 means greedy: drop do_sample=True, or give a temperature > 0")
            kwargs["do_sample"] = False
        if sampling and kwargs.get("do_sample") is False:
            raise ValueError(
                f"do_sample=False decodes greedily and would ignore {', '.join(sampling)}: "
                "drop do_sample=False to sample, or drop them for greedy decoding"
            )
        kwargs.setdefault("do_sample", bool(sampling))
        ids, mask = self.to_inputs(
            input, kwargs.pop("attention_mask", None), padding_side="left", prepend_bos=prepend_bos
        )
        if self.tokenizer is not None:
            kwargs.setdefault("pad_token_id", self.tokenizer.pad_token_id)
        with self.hooks(fwd_hooks):
            out = self.hf_model.generate(
                input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens, **kwargs
            )
        if not as_text:
            return out
        texts = self._need_tokenizer().batch_decode(out, skip_special_tokens=True)
        one = isinstance(input, str) or (isinstance(input, torch.Tensor) and input.dim() == 1)
        return texts[0] if one else texts


RETURN_TYPES = ("logits", "loss", "loss_per_token", None)
CACHE_WARN_BYTES = 1 << 30  # run_with_cache warns before keeping more than this (MemoryWarning)
SAMPLING_ARGS = ("temperature", "top_k", "top_p", "typical_p", "min_p", "epsilon_cutoff", "eta_cutoff")


def _check_return_type(return_type: str) -> None:
    if return_type not in RETURN_TYPES:
        import difflib  # noqa: PLC0415 (only for the error message)

        close = difflib.get_close_matches(str(return_type), [t for t in RETURN_TYPES if t], n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"return_type must be one of {RETURN_TYPES}, not {return_type!r}.{hint}")


def token_losses(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy per position: logits (b p v), ids (b p) -> (b p-1)."""
    return lm_cross_entropy_loss(logits, ids, per_token=True)


class _StopForward(Exception):
    """Raised by ``stop_at_layer``'s pre-hook to end a forward pass early, carrying the residual stream."""

    def __init__(self, resid: torch.Tensor) -> None:
        super().__init__("stop_at_layer")
        self.resid = resid
