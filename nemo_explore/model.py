"""HookedNemotronH: an HF NemotronHForCausalLM with layer-type-aware hook points.

Nothing is attached while nothing is hooked: the HF model runs as it is, fast paths included. Adding a
hook installs only what that point needs — a plain torch hook for residual-stream points, an instrumented
forward (``mixers/``) for points inside a mixer — and removing it takes exactly that away again.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Sequence

import torch

from . import guard, hf_layout
from .cache import ActivationCache
from .describe import describe
from .hook_names import MODEL_POINTS, all_names, parse, unknown_name_error
from .hooks import Fire, HookFn, HookPoint, HookRegistry
from .instrument import instrument_mixer
from .layer_types import ATTENTION, HOOK_PREFIX, MAMBA, MLP, MOE, canonical, parse_pattern
from .options import RunOptions
from .sources import NotNemotronHError
from .tl_config import TLConfig
from .tl_weights import ATTENTION_WEIGHTS, MLP_WEIGHTS, Blocks, PerLayer
from .token_text import token_text
from .utils import lm_cross_entropy_loss

NamesFilter = str | Sequence[str] | Callable[[str], bool] | None
Input = str | Sequence[str] | torch.Tensor


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


class HookedNemotronH:
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
        self._names = all_names(self.layer_types)
        self._name_set = set(self._names)
        self._registry = HookRegistry()
        self._options = RunOptions()  # of the forward now running: hooks() contexts set them
        self._installed: dict[str, Callable[[], None]] = {}  # what is attached -> how to detach it
        self._added: dict[int, bool] = {}  # add_hook's handles -> is_permanent

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
    def blocks(self) -> Blocks:
        """The blocks: ``blocks[i]`` is HF's block (``.norm``, ``.mixer``), its mixer also under the kind's
        name with TransformerLens' weights (``blocks[i].attn.W_Q``, ``blocks[i].mlp.W_in``)."""
        return Blocks(self)

    # ------------------------------------------------------------------ TransformerLens-layout weights
    @property
    def W_E(self) -> torch.Tensor:
        """Token embedding ``(d_vocab, d_model)``."""
        return hf_layout.embedding(self.hf_model).weight

    @property
    def W_U(self) -> torch.Tensor:
        """Unembedding ``(d_model, d_vocab)``: ``logits = ln_final(resid) @ W_U`` (+ ``b_U``, zeros)."""
        return hf_layout.unembed(self.hf_model).weight.T

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
    def ln_final(self):
        """The final RMSNorm (HF's ``norm_f``); ``ln_final.hook_normalized`` includes its weight."""
        return hf_layout.final_norm(self.hf_model)

    @property
    def device(self) -> torch.device:
        return hf_layout.embedding(self.hf_model).weight.device

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

    def to_tokens(
        self, text: str | Sequence[str], prepend_bos: bool | None = None, padding_side: str = "right"
    ) -> torch.Tensor:
        """Text (or a list of texts, padded) -> token ids ``(b, p)`` on the model's device.

        ``prepend_bos``: None does what the tokenizer does (Nemotron-H's adds BOS, as TL's default);
        False leaves BOS out, True makes sure it is there."""
        return self._encode(text, padding_side, prepend_bos)[0]

    def to_single_token(self, string: str) -> int:
        """A string that is exactly one token -> its id (an error says how many tokens it is otherwise)."""
        from .analysis.logit_lens import single_token  # noqa: PLC0415 (analysis imports the model module)

        if not isinstance(string, str):
            raise TypeError(f"to_single_token takes a string, got {type(string).__name__}")
        return single_token(self, string)

    def _encode(
        self, text: str | Sequence[str], padding_side: str = "right", prepend_bos: bool | None = None
    ):
        tok = self._need_tokenizer()
        texts = [text] if isinstance(text, str) else list(text)
        if prepend_bos is None:
            enc = tok(texts, return_tensors="pt", padding=True, padding_side=padding_side)
            ids, mask = enc["input_ids"], enc["attention_mask"]
        else:
            ids, mask = _pad(
                [self._bos(prepend_bos) + tok(t, add_special_tokens=False)["input_ids"] for t in texts],
                tok.pad_token_id,
                padding_side,
            )
        return ids.to(self.device), (None if bool(mask.all()) else mask.to(self.device))

    def _bos(self, prepend: bool) -> list[int]:
        if not prepend:
            return []
        bos = self.tokenizer.bos_token_id
        if bos is None:
            raise ValueError("prepend_bos=True, but this tokenizer has no BOS token: pass prepend_bos=False")
        return [bos]

    def to_str_tokens(
        self, input: Input | Sequence[int] | int, prepend_bos: bool | None = None
    ) -> list[str] | list[list[str]]:
        """One string per token, as the tokenizer produced it (spaces and newlines kept; a piece of a
        multi-byte character as its bytes, ``'\\xe2'``).

        As in TransformerLens: a text, 1-D ids or ``(1, p)`` ids -> ``list[str]``; a list of texts or
        ``(b, p)`` ids -> one ``list[str]`` per row (the padding of texts dropped); one id -> ``[str]``.
        """
        tok = self._need_tokenizer()
        if isinstance(input, str):
            return [token_text(tok, i) for i in self.to_tokens(input, prepend_bos)[0].tolist()]
        if _is_texts(input):
            return self._str_tokens_of(*self._encode(input, prepend_bos=prepend_bos))
        ids = torch.as_tensor(input)
        if ids.dim() == 0:
            ids = ids[None]
        if ids.dim() == 2 and ids.shape[0] == 1:
            ids = ids[0]  # one row of a batch, as to_tokens(text) gives it
        if ids.dim() > 2:
            raise ValueError(f"token ids must be (batch, pos) or (pos,), got shape {tuple(ids.shape)}")
        if ids.dim() == 2:
            return [[token_text(tok, i) for i in row] for row in ids.tolist()]
        return [token_text(tok, i) for i in ids.reshape(-1).tolist()]

    def to_string(self, tokens: torch.Tensor | Sequence[int] | int) -> str | list[str]:
        """Ids -> text: one id or ``(p,)`` -> a string, ``(b, p)`` -> one string per row."""
        tok = self._need_tokenizer()
        tokens = torch.as_tensor(tokens)
        if tokens.dim() == 0:
            return tok.decode([int(tokens)])
        if tokens.dim() == 1:
            return tok.decode(tokens.tolist())
        return [tok.decode(row.tolist()) for row in tokens]

    def to_inputs(self, input: Input, attention_mask: torch.Tensor | None = None,
                  padding_side: str = "right", prepend_bos: bool | None = None):
        """Text, texts or ids -> ``(input_ids (b p), attention_mask (b p) or None)`` on the model's device.
        Texts are padded on ``padding_side`` (``prepend_bos``: as in ``to_tokens``); ids (any integer dtype)
        are checked against the vocabulary."""
        if isinstance(input, Sequence) and not isinstance(input, str) and len(input) == 0:
            raise ValueError("the input has no tokens (an empty list): pass a text, texts or token ids")
        if isinstance(input, str) or _is_texts(input):
            if attention_mask is not None:
                raise ValueError("attention_mask is built from the texts; pass it only with token ids")
            ids, mask = self._encode(input, padding_side, prepend_bos)
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
        vocab = self.config.vocab_size
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
        spells it, ``(b, p-1)``); ``'loss_per_token'`` (the same); None (run for the hooks, return None).
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
        logits = self.hf_model(input_ids=ids, attention_mask=mask, use_cache=False).logits
        if return_type is None:
            return None
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
        replacement. ``return_type``, ``loss_per_token``, ``stop_at_layer``: as for ``model(...)``.
        ``clear_contexts``: empty every ``hook.ctx`` afterwards. Options: as for ``run_with_cache``."""
        _check_return_type(return_type)
        _no_bwd_hooks(bwd_hooks)
        if not reset_hooks_end:
            raise ValueError(
                "reset_hooks_end=False: hooks that outlive the call are model.add_hook(name, fn), removed by "
                "model.reset_hooks()"
            )
        try:
            with self.hooks(fwd_hooks, **options):
                return self(input, attention_mask, return_type, loss_per_token=loss_per_token,
                            stop_at_layer=stop_at_layer, prepend_bos=prepend_bos)
        finally:
            if clear_contexts:
                self._registry.clear_contexts()

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
        loss_per_token: bool = False,
        stop_at_layer: int | None = None,
        prepend_bos: bool | None = None,
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
        batch axis (as ``cache.remove_batch_dim()``).
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

        ids, mask = self.to_inputs(input, attention_mask, prepend_bos=prepend_bos)
        with self.hooks([(n, keep) for n in names], **options):
            out = self(ids, mask, return_type, loss_per_token=loss_per_token, stop_at_layer=stop_at_layer)
            run_options = self._options
        if copying:
            torch.cuda.synchronize()  # the cache is read on the host: every copy has landed
        ordered = {n: store[n] for n in self._names if n in store}
        cache = ActivationCache(
            ordered,
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

    @torch.no_grad()
    def generate(
        self, input: Input, max_new_tokens: int = 20, fwd_hooks=(), return_type: str = "tokens", **kwargs
    ) -> torch.Tensor | str | list[str]:
        """HF's ``generate`` with any active hooks plus ``fwd_hooks``. Texts are left-padded. Returns the
        token ids, prompt included ``(b, p + new)``; ``return_type='str'``: the text (one string per row,
        a single string for a single text); ``'input'``: text for text input, ids for ids (TL's default).

        Greedy by default; giving a sampling argument (``temperature``, ``top_k``, ``top_p``, ``typical_p``,
        ``min_p``...) samples, as in TransformerLens (``do_sample=True`` is implied), except
        ``temperature=0``, which means greedy. ``do_sample=False`` with a sampling argument is an error.
        """
        if return_type not in ("tokens", "str", "input"):
            raise ValueError(f"return_type must be 'tokens', 'str' or 'input', not {return_type!r}")
        text_in = isinstance(input, str) or _is_texts(input)
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
        ids, mask = self.to_inputs(input, kwargs.pop("attention_mask", None), padding_side="left")
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

    # ------------------------------------------------------------------ hooks
    @contextlib.contextmanager
    def hooks(
        self, fwd_hooks: Iterable[tuple[str | Callable[[str], bool], HookFn]] = (), **options
    ) -> Iterator[HookedNemotronH]:
        """Context in which ``fwd_hooks`` are active; they (and only they) are removed on exit, even on error.
        Contexts nest; options (``state_positions``...) apply inside this context."""
        saved_options = self._options
        run_options = saved_options.updated(**options)  # checked before anything changes
        handles: list[int] = []
        try:
            for target, fn in fwd_hooks:
                if not callable(fn):
                    raise TypeError(f"hook for {target!r} is not callable: {fn!r}")
                for name in self._resolve(target):
                    handles.append(self._registry.add(name, fn))
            self._options = run_options
            self._sync()
            yield self
        finally:
            self._registry.remove(handles)
            self._options = saved_options
            self._sync()

    def add_hook(
        self,
        name: str | Callable[[str], bool],
        hook: HookFn,
        dir: str = "fwd",  # noqa: A002 (TransformerLens' keyword)
        is_permanent: bool = False,
    ) -> None:
        """Add a hook that stays until ``reset_hooks()`` (TransformerLens' persistent hooks; ``is_permanent``
        ones stay until ``reset_hooks(including_permanent=True)``). ``name``: a name or a predicate."""
        _no_bwd_hooks([(name, hook)] if dir != "fwd" else ())
        if not callable(hook):
            raise TypeError(f"hook for {name!r} is not callable: {hook!r}")
        for n in self._resolve(name):
            self._added[self._registry.add(n, hook)] = is_permanent
        self._sync()

    def reset_hooks(
        self, clear_contexts: bool = True, direction: str = "both", including_permanent: bool = False
    ) -> None:
        """Remove every hook — those of ``add_hook`` and of any open context — except ``add_hook``'s
        permanent ones unless ``including_permanent``; ``clear_contexts`` empties every ``hook.ctx``."""
        keep = set() if including_permanent else {h for h, permanent in self._added.items() if permanent}
        self._registry.remove([h for h in self._registry.handles() if h not in keep])
        self._added = {h: True for h in keep}
        if clear_contexts:
            self._registry.clear_contexts()
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


def _per_layer(name: str, kind: str) -> property:
    return property(
        lambda self: PerLayer(self, name, kind),
        doc=f"TransformerLens' ``{name}`` of the {kind} blocks: ``model.{name}[L]`` (see ``tl_weights``).",
    )


for _name in ATTENTION_WEIGHTS:
    setattr(HookedNemotronH, _name, _per_layer(_name, ATTENTION))
for _name in MLP_WEIGHTS:
    setattr(HookedNemotronH, _name, _per_layer(_name, MLP))

RETURN_TYPES = ("logits", "loss", "loss_per_token", None)
SAMPLING_ARGS = ("temperature", "top_k", "top_p", "typical_p", "min_p", "epsilon_cutoff", "eta_cutoff")


def _check_return_type(return_type: str) -> None:
    if return_type not in RETURN_TYPES:
        import difflib  # noqa: PLC0415 (only for the error message)

        close = difflib.get_close_matches(str(return_type), [t for t in RETURN_TYPES if t], n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"return_type must be one of {RETURN_TYPES}, not {return_type!r}.{hint}")


def _is_texts(input) -> bool:
    """A non-empty list (or tuple) of texts."""
    if isinstance(input, str) or not isinstance(input, Sequence):
        return False
    return bool(input) and isinstance(input[0], str)


def token_losses(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy per position: logits (b p v), ids (b p) -> (b p-1)."""
    return lm_cross_entropy_loss(logits, ids, per_token=True)


class _StopForward(Exception):
    """Raised by ``stop_at_layer``'s pre-hook to end a forward pass early, carrying the residual stream."""

    def __init__(self, resid: torch.Tensor) -> None:
        super().__init__("stop_at_layer")
        self.resid = resid


def _no_bwd_hooks(bwd_hooks) -> None:
    if list(bwd_hooks):
        raise NotImplementedError(
            "backward hooks are not supported: run the forward with grad enabled, keep the tensor in a "
            "forward hook (t.retain_grad()) and read t.grad after loss.backward()"
        )


def _pad(rows: list[list[int]], pad_id: int | None, side: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Token lists -> ``(ids, mask)`` ``(b, p)``, padded with ``pad_id`` on ``side``."""
    width = max(len(r) for r in rows)
    if pad_id is None and any(len(r) < width for r in rows):
        raise ValueError("texts of different lengths need padding, and this tokenizer has no pad token")
    ids = torch.full((len(rows), width), pad_id or 0, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for k, row in enumerate(rows):
        cols = slice(0, len(row)) if side == "right" else slice(width - len(row), width)
        ids[k, cols], mask[k, cols] = torch.tensor(row, dtype=torch.long), 1
    return ids, mask
