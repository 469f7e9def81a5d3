"""HookedNemotronH: an HF NemotronHForCausalLM with layer-type-aware hook points.

Nothing is attached while nothing is hooked: the HF model runs as it is, fast paths included. Adding a
hook installs only what that point needs — a plain torch hook for residual-stream points, an instrumented
forward (``mixers/``) for points inside a mixer — and removing it takes exactly that away again.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Sequence

import torch

from . import guard
from .cache import ActivationCache
from .describe import describe
from .hook_names import MODEL_POINTS, all_names, parse, unknown_name_error
from .hooks import Fire, HookFn, HookPoint, HookRegistry
from .instrument import instrument_mixer
from .layer_types import ATTENTION, HOOK_PREFIX, MAMBA, MLP, MOE, canonical, parse_pattern
from .options import check_options, state_positions
from .sources import NotNemotronHError
from .token_text import token_text

NamesFilter = str | Sequence[str] | Callable[[str], bool] | None
Input = str | Sequence[str] | torch.Tensor


def check_nemotron_h(hf_model) -> None:
    """Raise a clear error unless ``hf_model`` is a native transformers Nemotron-H causal LM."""
    config = getattr(hf_model, "config", None)
    model_type = getattr(config, "model_type", None)
    layers = getattr(getattr(hf_model, "model", None), "layers", None)
    if model_type != "nemotron_h" or layers is None or not hasattr(hf_model, "lm_head"):
        found = f"{type(hf_model).__name__} (config model_type={model_type!r})"
        raise NotNemotronHError(
            f"nemo_explore needs a Nemotron-H causal LM (transformers' NemotronHForCausalLM); got {found}. "
            "Load one with nemo_explore.load('tiny'), a hub id or a checkpoint directory."
        )


class HookedNemotronH:
    """A Nemotron-H model whose every block exposes hook points named for its kind.

    ``model(tokens)`` returns logits; ``run_with_cache`` / ``run_with_hooks`` / ``hooks`` read and write
    points; ``generate`` runs HF's generation with any active hooks. ``hf_model`` is the model itself,
    nothing is copied.
    """

    def __init__(self, hf_model, tokenizer=None) -> None:
        check_nemotron_h(hf_model)
        self.hf_model = hf_model.eval()  # PITFALLS 9: training mode bypasses the instrumented path
        self.tokenizer = tokenizer
        self.cfg = hf_model.config
        self.layer_types: list[str] = parse_pattern(self.cfg.layers_block_type)
        self._names = all_names(self.layer_types)
        self._name_set = set(self._names)
        self._registry = HookRegistry()
        self._options: dict = {}
        self._installed: dict[str, Callable[[], None]] = {}  # what is attached -> how to detach it

    # ------------------------------------------------------------------ structure
    @property
    def config(self):
        return self.cfg

    @property
    def n_layers(self) -> int:
        return len(self.layer_types)

    @property
    def pattern(self) -> str:
        """The layer map as a pattern string: ``M`` Mamba, ``*`` attention, ``-`` MLP, ``E`` MoE."""
        return "".join({MAMBA: "M", ATTENTION: "*", MLP: "-", MOE: "E"}[t] for t in self.layer_types)

    @property
    def blocks(self):
        """The HF blocks (``model.layers``): ``blocks[i].norm`` and ``blocks[i].mixer``."""
        return self.hf_model.model.layers

    @property
    def device(self) -> torch.device:
        return self.hf_model.model.embeddings.weight.device

    def layers(self, layer_type: str) -> list[int]:
        """Indices of the blocks of one kind (any spelling: ``'mamba'``, ``'M'``, ``'linear_attention'``)."""
        kind = canonical(layer_type)
        return [i for i, t in enumerate(self.layer_types) if t == kind]

    def hook_names(self, layer_type: str | None = None) -> list[str]:
        """Every hook point in forward order; with ``layer_type``, only the blocks of that kind."""
        if layer_type is None:
            return list(self._names)
        wanted = set(self.layers(layer_type))
        return [n for n in self._names if parse(n)[0] in wanted]

    def __repr__(self) -> str:
        counts = ", ".join(
            f"{len(self.layers(t))} {t}" for t in (MAMBA, ATTENTION, MLP, MOE) if self.layers(t)
        )
        return f"HookedNemotronH({self.n_layers} layers: {counts}; pattern {self.pattern})"

    def _repr_html_(self) -> str:
        """In a notebook: the model's description (layer map in colour, parameters, memory)."""
        return describe(self)._repr_html_()

    # ------------------------------------------------------------------ tokens
    def _need_tokenizer(self):
        if self.tokenizer is None:
            raise ValueError(
                "this model has no tokenizer: pass token ids (a LongTensor), or load it with one"
            )
        return self.tokenizer

    def to_tokens(self, text: str | Sequence[str], padding_side: str = "right") -> torch.Tensor:
        """Text (or a list of texts, padded) -> token ids ``(b, p)`` on the model's device."""
        return self._encode(text, padding_side)[0]

    def _encode(self, text: str | Sequence[str], padding_side: str = "right"):
        tok = self._need_tokenizer()
        texts = [text] if isinstance(text, str) else list(text)
        enc = tok(texts, return_tensors="pt", padding=True, padding_side=padding_side)
        mask = enc["attention_mask"]
        return enc["input_ids"].to(self.device), (None if bool(mask.all()) else mask.to(self.device))

    def to_str_tokens(self, input: Input | Sequence[int]) -> list[str] | list[list[str]]:
        """One string per token, as the tokenizer produced it (spaces and newlines kept; a piece of a
        multi-byte character as its bytes, ``'\\xe2'``).

        As in TransformerLens: a text, 1-D ids or ``(1, p)`` ids -> ``list[str]``; a list of texts or
        ``(b, p)`` ids -> one ``list[str]`` per row (the padding of texts dropped).
        """
        tok = self._need_tokenizer()
        if isinstance(input, str):
            return [token_text(tok, i) for i in self.to_tokens(input)[0].tolist()]
        if _is_texts(input):
            return self._str_tokens_of(*self._encode(input))
        ids = torch.as_tensor(input)
        if ids.dim() == 2 and ids.shape[0] == 1:
            ids = ids[0]  # one row of a batch, as to_tokens(text) gives it
        if ids.dim() > 2:
            raise ValueError(f"token ids must be (batch, pos) or (pos,), got shape {tuple(ids.shape)}")
        if ids.dim() == 2:
            return [[token_text(tok, i) for i in row] for row in ids.tolist()]
        return [token_text(tok, i) for i in ids.reshape(-1).tolist()]

    def to_string(self, tokens: torch.Tensor) -> str | list[str]:
        tok = self._need_tokenizer()
        tokens = torch.as_tensor(tokens)
        if tokens.dim() == 1:
            return tok.decode(tokens.tolist())
        return [tok.decode(row.tolist()) for row in tokens]

    def to_inputs(self, input: Input, attention_mask: torch.Tensor | None = None,
                  padding_side: str = "right"):
        """Text, texts or ids -> ``(input_ids (b p), attention_mask (b p) or None)`` on the model's device.
        Texts are padded on ``padding_side``; ids (any integer dtype) are checked against the vocabulary."""
        if isinstance(input, Sequence) and not isinstance(input, str) and len(input) == 0:
            raise ValueError("the input has no tokens (an empty list): pass a text, texts or token ids")
        if isinstance(input, str) or _is_texts(input):
            if attention_mask is not None:
                raise ValueError("attention_mask is built from the texts; pass it only with token ids")
            ids, mask = self._encode(input, padding_side)
            if ids.shape[1] == 0:
                raise ValueError("the input has no tokens (the tokenizer gave none): pass a non-empty text")
            return ids, mask
        ids = torch.as_tensor(input)
        if ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
            raise TypeError(f"token ids must be integers, got {ids.dtype}: pass ids.long() or a text")
        ids = ids.long()
        if ids.dim() == 1:
            ids = ids[None]
        if ids.dim() != 2:
            raise ValueError(f"token ids must be (batch, pos) or (pos,), got shape {tuple(ids.shape)}")
        if ids.numel() == 0:
            raise ValueError(
                f"the input has no tokens (shape {tuple(ids.shape)}): pass at least one token id per row"
            )
        vocab = self.cfg.vocab_size
        if ids.numel() and (int(ids.max()) >= vocab or int(ids.min()) < 0):
            raise ValueError(f"token ids must lie in [0, {vocab}); got {int(ids.min())}..{int(ids.max())}")
        if attention_mask is not None:
            attention_mask = torch.as_tensor(attention_mask).reshape(ids.shape).to(self.device)
        return ids.to(self.device), attention_mask

    def _str_tokens_of(self, ids: torch.Tensor, mask: torch.Tensor | None) -> list[list[str]] | None:
        if self.tokenizer is None:
            return None
        keep = mask.bool().tolist() if mask is not None else [[True] * ids.shape[1]] * ids.shape[0]
        return [
            [token_text(self.tokenizer, i) for i, k in zip(row, row_keep, strict=True) if k]
            for row, row_keep in zip(ids.tolist(), keep, strict=True)
        ]

    # ------------------------------------------------------------------ running
    def __call__(
        self, input: Input, attention_mask: torch.Tensor | None = None, return_type: str = "logits"
    ) -> torch.Tensor:
        """Logits ``(b, p, vocab)`` (``return_type='loss'``: mean next-token loss; ``'loss_per_token'``:
        ``(b, p-1)``), with whatever hooks are active."""
        _check_return_type(return_type)
        ids, mask = self.to_inputs(input, attention_mask)
        # a loss is counted where both the token and the one it is predicted from are real (not padding)
        keep = None if mask is None else (mask[:, 1:] * mask[:, :-1]).bool()
        if return_type != "logits" and (ids.shape[1] < 2 or (keep is not None and not keep.any())):
            raise ValueError(
                f"return_type={return_type!r} needs a next token to predict, and this input has a single "
                "token per row: pass a longer input, or use return_type='logits'"
            )
        logits = self.hf_model(input_ids=ids, attention_mask=mask, use_cache=False).logits
        if return_type == "logits":
            return logits
        per_token = token_losses(logits, ids)
        if return_type == "loss_per_token":
            return per_token
        return per_token.mean() if keep is None else per_token[keep].mean()

    forward = __call__

    def run_with_hooks(
        self,
        input: Input,
        fwd_hooks: Iterable[tuple[str | Callable[[str], bool], HookFn]] = (),
        attention_mask: torch.Tensor | None = None,
        return_type: str = "logits",
        **options,
    ) -> torch.Tensor:
        """Run once with ``fwd_hooks`` = ``[(name or predicate, fn)]``; ``fn(tensor, hook)`` may return a
        replacement. Options: as for ``run_with_cache``."""
        _check_return_type(return_type)
        with self.hooks(fwd_hooks, **options):
            return self(input, attention_mask=attention_mask, return_type=return_type)

    def run_with_cache(
        self,
        input: Input,
        names_filter: NamesFilter = None,
        attention_mask: torch.Tensor | None = None,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        return_type: str = "logits",
        **options,
    ) -> tuple[torch.Tensor, ActivationCache]:
        """Run once and keep the hooked values: ``(logits, cache)``.

        ``names_filter``: a name, a list of names, a predicate on names, or None for every point.
        ``device`` / ``dtype``: where and how to keep the cached tensors (default: as computed).
        Options: ``state_positions`` (which positions ``hook_state`` keeps; default all of an input of at
        most 64 tokens, else the last), ``hidden_attn_heads``, ``hidden_attn_window`` (query rows of
        ``hook_hidden_attn``), ``pattern_window`` (query rows ``(start, stop)`` of ``hook_pattern`` and
        ``hook_attn_scores``: for long inputs, b·h·q·p instead of b·h·p²).
        """
        _check_return_type(return_type)
        names = self._resolve(names_filter)
        if not names:
            if callable(names_filter):
                examples = ", ".join(repr(n) for n in self._examples())
                raise ValueError(
                    f"names_filter matched no hook point of this model. Names look like {examples}; "
                    "list them with model.hook_names() (or hook_names(layer_type='mamba'))"
                )
            raise ValueError("names_filter is empty: pass a name, names, a predicate, or None for all points")
        store: dict[str, torch.Tensor] = {}
        to_host = device is not None and torch.device(device).type == "cpu"
        copying = []  # GPU -> host copies still in flight

        def keep(tensor: torch.Tensor, hook: HookPoint) -> None:
            t = tensor.detach()
            if dtype is not None and t.is_floating_point():
                t = t.to(dtype)  # where it was computed (a GPU casts faster than the host)
            if device is not None:
                # GPU -> host: into pinned memory, asynchronously, overlapping the rest of the forward
                async_copy = to_host and t.is_cuda
                t = t.to(device, non_blocking=async_copy)
                if async_copy:
                    copying.append(t)
            store[hook.name] = t

        ids, mask = self.to_inputs(input, attention_mask)
        with self.hooks([(n, keep) for n in names], **options):
            out = self(ids, attention_mask=mask, return_type=return_type)
        if copying:
            torch.cuda.synchronize()  # the cache is read on the host: every copy has landed
        ordered = {n: store[n] for n in self._names if n in store}
        cache = ActivationCache(
            ordered,
            layer_types=self.layer_types,
            tokens=ids,
            str_tokens=self._str_tokens_of(ids, mask),
            attention_mask=mask,
            config=self.cfg,
        )
        cache.hidden_attn_heads = options.get("hidden_attn_heads")
        cache.hidden_attn_window = options.get("hidden_attn_window")
        cache.pattern_window = options.get("pattern_window")
        if any(n.endswith("hook_state") for n in ordered):
            cache.state_positions = state_positions(options.get("state_positions"), ids.shape[1])
        return out, cache

    @torch.no_grad()
    def generate(self, input: Input, max_new_tokens: int = 20, fwd_hooks=(), **kwargs) -> torch.Tensor:
        """HF's ``generate`` with any active hooks plus ``fwd_hooks``. Texts are left-padded. Returns the
        token ids, prompt included ``(b, p + new)``.

        Greedy by default; giving a sampling argument (``temperature``, ``top_k``, ``top_p``, ``typical_p``,
        ``min_p``...) samples, as in TransformerLens (``do_sample=True`` is implied), except
        ``temperature=0``, which means greedy. ``do_sample=False`` with a sampling argument is an error.
        """
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
        ids, mask = self.to_inputs(input, kwargs.pop("attention_mask", None), padding_side="left")
        if self.tokenizer is not None:
            kwargs.setdefault("pad_token_id", self.tokenizer.pad_token_id)
        with self.hooks(fwd_hooks):
            return self.hf_model.generate(
                input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens, **kwargs
            )

    # ------------------------------------------------------------------ hooks
    @contextlib.contextmanager
    def hooks(
        self, fwd_hooks: Iterable[tuple[str | Callable[[str], bool], HookFn]] = (), **options
    ) -> Iterator[HookedNemotronH]:
        """Context in which ``fwd_hooks`` are active; they (and only they) are removed on exit, even on error.
        Contexts nest; options (``state_positions``...) apply inside this context."""
        check_options(options)
        handles: list[int] = []
        saved_options = dict(self._options)
        try:
            for target, fn in fwd_hooks:
                if not callable(fn):
                    raise TypeError(f"hook for {target!r} is not callable: {fn!r}")
                for name in self._resolve(target):
                    handles.append(self._registry.add(name, fn))
            self._options.update(options)
            self._sync()
            yield self
        finally:
            self._registry.remove(handles)
            self._options.clear()
            self._options.update(saved_options)
            self._sync()

    def reset_hooks(self) -> None:
        """Remove every hook (a safety net; contexts already clean up after themselves)."""
        self._registry = HookRegistry()
        self._sync()

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
        for key, attach in wanted.items():
            if key not in self._installed:
                self._installed[key] = attach()

    def _attach_model_point(self, name: str) -> Callable[[], None]:
        assert name in MODEL_POINTS
        module = self.hf_model.model.embeddings if name == "hook_embed" else self.hf_model.model.norm_f
        point = HookPoint(name, None, None)
        return module.register_forward_hook(lambda m, a, out: self._registry.fire(point, out)).remove

    def _attach_block_point(self, name: str, i: int, short: str) -> Callable[[], None]:
        block, point = self.blocks[i], HookPoint(name, i, self.layer_types[i])
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
            return block.norm.register_forward_hook(lambda m, a, out: fire(point, out)).remove
        if short == "hook_mixer_out":

            def post(module, args, out):
                if isinstance(out, tuple):  # attention returns (output, weights)
                    return (fire(point, out[0]), *out[1:])
                return fire(point, out)

            return block.mixer.register_forward_hook(post).remove
        if short == "hook_resid_post":
            return block.register_forward_hook(lambda m, a, out: fire(point, out)).remove
        raise AssertionError(name)

    def _attach_mixer(self, i: int) -> Callable[[], None]:
        """Swap block i's mixer forward for the instrumented one, once the mirror check of its kind passed."""
        kind = self.layer_types[i]
        guard.ensure(kind)
        fire = Fire(self._registry, i, kind, f"blocks.{i}.{HOOK_PREFIX[kind]}.", self._options)
        return instrument_mixer(self.blocks[i].mixer, kind, fire)


RETURN_TYPES = ("logits", "loss", "loss_per_token")
SAMPLING_ARGS = ("temperature", "top_k", "top_p", "typical_p", "min_p", "epsilon_cutoff", "eta_cutoff")


def _check_return_type(return_type: str) -> None:
    if return_type not in RETURN_TYPES:
        import difflib  # noqa: PLC0415 (only for the error message)

        close = difflib.get_close_matches(str(return_type), RETURN_TYPES, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"return_type must be one of {RETURN_TYPES}, not {return_type!r}.{hint}")


def _is_texts(input) -> bool:
    """A non-empty list (or tuple) of texts."""
    if isinstance(input, str) or not isinstance(input, Sequence):
        return False
    return bool(input) and isinstance(input[0], str)


def token_losses(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy per position: logits (b p v), ids (b p) -> (b p-1)."""
    logprobs = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    return -logprobs.gather(-1, ids[:, 1:, None]).squeeze(-1)
