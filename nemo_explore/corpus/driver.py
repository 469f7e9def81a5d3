"""The driver: documents -> shards -> batches -> one hooked forward each; shard partials -> folded result.

Shards (``shard_docs`` consecutive items of the data) are the unit of resume and of data parallelism. A
shard's statistics start from zero and come from its own batches only, so the final fold (in shard order)
is the same bit for bit whichever process computed which shard. Under ``torchrun`` / ``accelerate launch``
(``RANK`` / ``WORLD_SIZE`` set) rank r computes the shards s with s % WORLD_SIZE == r; after a
``torch.distributed`` barrier rank 0 merges.
"""

from __future__ import annotations

import datetime
import json
import os
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from ..core.layer_types import ATTENTION, MAMBA, MLP, MOE, canonical
from ..core.token_text import token_text
from ..mirror import hf_layout
from ..model import HookedNemotronH
from . import store, tables
from .batches import batches
from .fingerprint import weights_fingerprint
from .result import CorpusResult
from .stats import HORIZON_EDGES, STATS, fold
from .text import CLASSES, Corpus, open_corpus, token_classes

KINDS = (MOE, MAMBA, ATTENTION)  # the kinds with corpus statistics, in the order tables are written
ROWS = (
    "each document is tokenized once with BOS and cut into consecutive rows of at most seq_len tokens; rows "
    "never span two documents, continuation rows do not repeat BOS, and every row starts with a fresh "
    "recurrent state and attends only within itself; rows are right-padded and padding never counts"
)
DEFINITIONS = {
    "moe": "load: tokens routed to the expert (hook_topk_indices); share: load / tokens; mean_weight: mean "
    "routing weight (hook_topk_weights) over the tokens routed to it; class/label load: the same count split "
    "by token class / document label; coselection[a, b]: tokens routed to both a and b (diagonal: load)",
    "mamba": "norm_*: hook_state_norm over all tokens (std: population); mean_rate: mean of dt·exp(A_log) "
    "(hook_dt, the step size actually used); mean_rate_horizon: ln2 / mean_rate; horizon histogram: the "
    "per-token half-life ln2 / (dt·exp(A_log)) on the bins of horizon_bins",
    "attention": "over the queries q ≥ 1 of each row (hook_pattern): entropy (nats), sink (weight on the "
    "row's first token), prev_token (weight on q−1), distance Σ_k P[q,k]·(q−k); induction: Σ P[q,k] over "
    "keys "
    "1 ≤ k ≤ q with token[k−1] == token[q], averaged over the queries with at least one such key",
    "contexts": "top_k per unit by (score desc, doc asc, position asc); MoE score: the expert's routing "
    "weight; Mamba: the state-norm jump norm[p] − norm[p−1] within a row; attention: the query's distance. "
    "position: index in the document's tokens (BOS = 0); window: ±window tokens within the row",
    "weights": "model.weights: 16 hex digits of SHA-256 over every state-dict tensor's name, dtype, shape "
    "and bytes (whole up to 2^20 elements, else about 2^16 at an odd stride); part of the run's identity",
}


def collect(
    model: HookedNemotronH,
    data,
    *,
    seq_len: int = 256,
    batch_size: int = 8,
    top_k: int = 16,
    window: int = 8,
    out: str | os.PathLike | None = None,
    shard_docs: int = 64,
    text_column: str = "text",
    label_column: str | None = None,
    kinds: str | Sequence[str] | None = None,
    max_docs: int | None = None,
    progress: bool = True,
    overwrite: bool = False,
) -> CorpusResult | None:
    """Stream ``data`` through ``model`` and reduce per-block statistics inside hook functions.

    ``data``: texts; ``(text, label)`` pairs or dicts (``text_column`` / ``label_column``); a text file
    (documents separated by blank lines); a ``datasets`` Dataset or IterableDataset. ``kinds``: some of
    ``'moe'``, ``'mamba'``, ``'attention'`` (default: all the model has). ``out``: a directory for the
    shards, tables and manifest; None keeps it in memory. A re-run with the same ``out`` resumes if the run
    is the same (settings, data, model and its weights' fingerprint) and raises if anything differs;
    ``overwrite=True`` discards what ``out`` holds and starts afresh. A shard file that cannot be read is
    computed again (with a warning). Returns the ``CorpusResult`` (None on the non-zero ranks of a
    distributed run).
    """
    started = time.perf_counter()
    check_model(model)
    for name, value, least in (("seq_len", seq_len, 2), ("batch_size", batch_size, 1), ("top_k", top_k, 1),
                               ("window", window, 0), ("shard_docs", shard_docs, 1)):  # fmt: skip
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise ValueError(f"{name} must be an int ≥ {least}, got {value!r}")
    kinds = resolve_kinds(model, kinds)
    corpus = open_corpus(data, text_column, label_column, max_docs)
    if corpus.size == 0:
        raise ValueError("the corpus is empty: it holds no document")
    settings = {
        "seq_len": seq_len, "batch_size": batch_size, "top_k": top_k, "window": window,
        "shard_docs": shard_docs,
        "kinds": kinds, "text_column": text_column, "label_column": label_column, "max_docs": max_docs,
        "model": model_summary(model), "data": corpus.description,
        "token_classes": list(CLASSES),  # the class tables' rows: another rule is another run
    }  # fmt: skip
    settings = json.loads(json.dumps(settings, default=str))
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    if world > 1 and out is None:
        raise ValueError(f"a distributed run ({world} processes) needs out=DIR, a directory all ranks share")
    out = None if out is None else Path(out)
    if out is not None and overwrite:
        store.clear(out, rank, world)  # each rank its own shards: no rank removes another's new ones
    if out is not None and not (overwrite and rank):  # rank 0 may not have rewritten settings.json yet
        store.check_settings(out, settings, write=rank == 0)
    key = store.settings_hash(settings)
    runner = ShardRunner(model, kinds, settings)
    kept: list[tuple[dict, dict]] = []
    shards = items = 0
    with _progress(progress and rank == 0, corpus.size) as bar:
        for index, chunk in enumerate(_shards(corpus, shard_docs)):
            shards, items = index + 1, items + len(chunk)
            if index % world != rank or (out is not None and store.shard_done(out, index, key, settings)):
                bar.update(len(chunk))
                continue
            parts, meta = runner.run(index, items - len(chunk), chunk, bar)
            meta["settings_hash"], meta["weights"] = key, settings["model"]["weights"]
            if out is None:
                kept.append((parts, meta))
            else:
                store.write_shard(out, index, parts, meta)
    if items == 0:
        raise ValueError("the corpus is empty: it holds no document")
    if out is not None and rank == 0:  # rank 0 alone: with overwrite, no rank's old file outlives clear
        store.write_stream_end(out, shards, items)
    if world > 1:
        _barrier()
    if rank != 0:
        return None
    if out is not None:
        return merge(out, collect_seconds=time.perf_counter() - started)
    parts, metas = fold_shards(kept, top_k)
    return _result(settings, parts, metas, items, time.perf_counter() - started, None)


def merge(out: str | os.PathLike, *, collect_seconds: float | None = None) -> CorpusResult:
    """Fold the shards in ``out`` (in shard order) and write the Parquet tables and ``manifest.json``.
    Refuses a shard written by a run of another identity than ``settings.json``, or damaged."""
    out = Path(out)
    end = store.read_stream_end(out)
    settings = json.loads((out / store.SETTINGS).read_text())
    missing = [i for i in range(end["shards"]) if not store.shard_path(out, i).exists()]
    if missing:
        shown = ", ".join(map(str, missing[:8])) + (" ..." if len(missing) > 8 else "")
        raise FileNotFoundError(
            f"{out}: {len(missing)} of {end['shards']} shards are not written (shards {shown}); run collect "
            "again with the same settings and out to compute them"
        )
    parts, metas = fold_shards(_checked_shards(out, end["shards"], settings), settings["top_k"])
    result = _result(settings, parts, metas, end["items"], collect_seconds, out)
    store.write_result(out, {n: result.table(n) for n in result.table_names}, result.manifest)
    return result


def _checked_shards(out: Path, n: int, settings: dict) -> Iterator[tuple[dict, dict]]:
    key = store.settings_hash(settings)
    for i in range(n):
        path = store.shard_path(out, i)
        try:
            parts, meta = store.read_shard(path)
        except store.DamagedShard as e:
            raise store.DamagedShard(
                f"{e}. Run collect again with the same settings and out: it deletes the file and computes "
                "the shard again"
            ) from e
        store.check_shard(path, meta, key, settings)
        yield parts, meta


def fold_shards(shards: Iterable[tuple[dict, dict]], top_k: int) -> tuple[dict, list[dict]]:
    """Shard partials, in shard order -> (folded partials by kind, the shards' metas)."""
    folded, metas, labels = None, [], []
    for parts, meta in shards:
        if folded is None:
            folded = parts
            labels = sorted(meta["labels"])
            if MOE in folded:  # one shard alone: put its label rows in sorted order too
                folded[MOE]["label_load"] = _sorted_labels(folded[MOE]["label_load"], meta["labels"])
        else:
            folded = {k: fold(folded[k], parts[k], k, top_k, (labels, meta["labels"])) for k in folded}
            labels = sorted(set(labels) | set(meta["labels"]))
        metas.append(meta)
    if folded is None:
        raise ValueError("no shard to merge")
    return folded, metas


def _sorted_labels(arr: np.ndarray, names: list[str]) -> np.ndarray:
    return arr[:, np.argsort(np.array(names, dtype=object), kind="stable")] if names else arr


def _result(
    settings: dict, parts: dict, metas: list[dict], items: int, seconds: float | None, out: Path | None
) -> CorpusResult:
    tokens = sum(m["tokens"] for m in metas)
    if tokens == 0:
        raise ValueError(f"the corpus has no text: its {items} items are all empty")
    labels = sorted({label for m in metas for label in m["labels"]})
    texts = {int(i): t for m in metas for i, t in m["token_text"].items()}
    built = tables.build(parts, tokens, labels, texts)
    manifest = {
        "format": "nemo-explore corpus statistics, version 1",
        "model": settings["model"],
        "data": settings["data"],
        "settings": {k: v for k, v in settings.items() if k not in ("model", "data")},
        "rows": ROWS,
        "definitions": DEFINITIONS,
        "token_classes": list(CLASSES),
        "labels": labels,
        "horizon_bins": {"edges": HORIZON_EDGES.tolist(),
                         "meaning": "bin 0: [0, edges[0]); bin i: [edges[i-1], edges[i]); "
                                    "last: [edges[-1], inf]"},
        "versions": versions(),
        "tokens": tokens,
        "documents": sum(m["documents"] for m in metas),
        "items": items,
        "rows_run": sum(m["rows"] for m in metas),
        "shards": len(metas),
        "timings": {"collect_s": seconds, "shard_compute_s": sum(m["seconds"] for m in metas),
                    "shard_s": [m["seconds"] for m in metas]},
        "tables": {name: t.column_names for name, t in built.items()},
    }  # fmt: skip
    return CorpusResult(built, manifest, out)


class ShardRunner:
    """Runs one shard's batches through the model with the statistics' hooks and returns its partial."""

    def __init__(self, model: HookedNemotronH, kinds: list[str], settings: dict) -> None:
        self.model, self.settings = model, settings
        self.batch = None
        self.stats = {
            k: STATS[k](model, model.layers(k), lambda: self.batch, settings["top_k"], settings["window"])
            for k in kinds
        }
        self.stop = max(b for s in self.stats.values() for b in s.blocks) + 1  # no block after it runs
        tok = model.tokenizer
        self.classes = token_classes(tok).to(model.device)
        self.bos = [] if tok.bos_token_id is None else [tok.bos_token_id]
        self.pad = tok.pad_token_id if tok.pad_token_id is not None else 0

    def run(self, index: int, first: int, items: list[tuple[str, str | None]], bar) -> tuple[dict, dict]:
        started = time.perf_counter()
        for s in self.stats.values():
            s.reset()
        labels: list[str] = []
        keep = [i for i, (text, _) in enumerate(items) if text.strip()]
        tok = self.model.tokenizer
        encoded = (
            tok([items[i][0] for i in keep], add_special_tokens=False, verbose=False)["input_ids"]
            if keep
            else []
        )
        docs = []
        for i, ids in zip(keep, encoded, strict=True):
            label = items[i][1]
            if label is not None and label not in labels:
                labels.append(label)
            docs.append((first + i, self.bos + list(ids), -1 if label is None else labels.index(label)))
        if MOE in self.stats:
            self.stats[MOE].n_labels = len(labels)
        n_rows = sum(-(-len(ids) // self.settings["seq_len"]) for _, ids, _ in docs)
        tokens = rows = 0
        hooks = [h for s in self.stats.values() for h in s.hooks()]
        s = self.settings
        with torch.inference_mode(), self.model.hooks(hooks):
            for batch in batches(
                docs, s["seq_len"], s["batch_size"], self.pad, self.classes, self.model.device
            ):
                self.batch = batch
                self.model(batch.ids, batch.mask, return_type=None, stop_at_layer=self.stop)
                n = int(batch.valid.sum())
                tokens, rows = tokens + n, rows + batch.ids.shape[0]
                bar.update(len(items) * batch.ids.shape[0] / n_rows)
                bar.count_tokens(n)
        self.batch = None
        bar.settle()
        parts = {k: st.partial() for k, st in self.stats.items()}
        shown = {int(i) for p in parts.values() for i in np.unique(p["ctx.ids"]) if i >= 0}
        meta = {
            "shard": index, "first_item": first, "items": len(items), "documents": len(docs),
            "tokens": tokens,
            "rows": rows, "labels": labels, "seconds": time.perf_counter() - started,
            "token_text": {str(i): token_text(self.model.tokenizer, i) for i in sorted(shown)},
        }  # fmt: skip
        return parts, meta


def check_model(model) -> None:
    if not isinstance(model, HookedNemotronH):
        hint = (
            " — wrap it with nemo_explore.load(model)" if type(model).__name__.startswith("NemotronH") else ""
        )
        raise TypeError(
            f"collect needs a HookedNemotronH (nemo_explore.load(...)), got {type(model).__name__}{hint}"
        )
    if model.tokenizer is None:
        raise ValueError(
            "collect tokenizes text: load the model with its tokenizer (nemo_explore.load(..., tokenizer=))"
        )


def resolve_kinds(model: HookedNemotronH, kinds: str | Sequence[str] | None) -> list[str]:
    """Which kinds to collect, in ``KINDS`` order: those asked (any spelling), or every one the model has."""
    present = [k for k in KINDS if model.layers(k)]
    if kinds is None:
        if not present:
            raise ValueError(f"this model ({model.pattern}) has no MoE, Mamba or attention block to measure")
        return present
    asked = {canonical(k) for k in ([kinds] if isinstance(kinds, str) else kinds)}
    if not asked:
        raise ValueError("kinds is empty: name some of 'moe', 'mamba', 'attention', or pass None for all")
    if MLP in asked:
        raise ValueError(
            "there are no corpus statistics for mlp blocks: choose among 'moe', 'mamba', 'attention'"
        )
    absent = sorted(asked - set(present))
    if absent:
        raise ValueError(f"this model ({model.pattern}) has no {', '.join(absent)} block")
    return [k for k in KINDS if k in asked]


def model_summary(model: HookedNemotronH) -> dict:
    cfg = model.config
    return {
        "name": getattr(model.hf_model, "name_or_path", "") or type(model.hf_model).__name__,
        "pattern": model.pattern, "hidden_size": cfg.hidden_size, "vocab_size": cfg.vocab_size,
        "n_routed_experts": hf_layout.n_experts(cfg), "num_experts_per_tok": hf_layout.experts_per_token(cfg),
        "num_attention_heads": cfg.num_attention_heads, "mamba_num_heads": hf_layout.n_mamba_heads(cfg),
        "dtype": str(next(model.hf_model.parameters()).dtype),
        "parameters": sum(p.numel() for p in model.hf_model.parameters()),
        "weights": weights_fingerprint(model.hf_model),
    }  # fmt: skip


def versions() -> dict[str, str]:
    from importlib.metadata import version  # noqa: PLC0415

    import pyarrow  # noqa: PLC0415
    import transformers  # noqa: PLC0415

    return {
        "nemo_explore": version("nemo-explore"),  # the installed package's (nemo_explore.__version__)
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "pyarrow": pyarrow.__version__,
        "numpy": np.__version__,
    }


def _shards(corpus: Corpus, size: int) -> Iterator[list[tuple[str, str | None]]]:
    chunk: list = []
    for item in corpus.items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _barrier() -> None:
    """Wait for every rank (a gloo group is made for it unless one is already initialised)."""
    import torch.distributed as dist  # noqa: PLC0415

    made = not dist.is_initialized()
    if made:
        dist.init_process_group("gloo", timeout=datetime.timedelta(hours=24))
    try:
        dist.barrier()
    finally:
        if made:
            dist.destroy_process_group()


class _progress:
    """tqdm over items (documents) with tokens/s; a no-op when disabled or tqdm is missing."""

    def __init__(self, show: bool, total: int | None) -> None:
        self.bar, self.tokens, self.t0 = None, 0, time.perf_counter()
        if show:
            try:
                from tqdm.auto import tqdm  # noqa: PLC0415
            except ImportError:
                return
            self.bar = tqdm(total=total, unit="doc", desc="corpus", dynamic_ncols=True)
        self.done = 0

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.close()

    def update(self, n: float) -> None:
        """``n`` more items done (a fraction while a shard runs; the bar shows whole items)."""
        self.done += n
        if self.bar is not None and int(self.done) > self.bar.n:
            self.bar.update(int(self.done) - self.bar.n)

    def count_tokens(self, n: int) -> None:
        self.tokens += n
        if self.bar is not None:
            rate = self.tokens / max(time.perf_counter() - self.t0, 1e-9)
            self.bar.set_postfix_str(f"{self.tokens:,} tok, {rate:,.0f} tok/s", refresh=False)

    def settle(self) -> None:
        """After a shard: snap the fractional count to the whole number of items."""
        self.done = round(self.done)
        if self.bar is not None:
            self.bar.n = self.done
            self.bar.refresh()
