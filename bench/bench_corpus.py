"""Cost of corpus statistics, as ratios to the plain HF forward over the same batches in the same process.

Interleaved runs (each round times every variant once, in a shuffled order), medians over rounds. The model
is the bundled tiny checkpoint, the corpus its held-out text (documents separated by blank lines). "HF
forward" runs ``hf_model(input_ids, attention_mask, use_cache=False)`` over exactly the batches ``collect``
builds (rows of ``--seq-len``, ``--batch-size`` rows, right-padded); each ``collect`` variant is the whole
call: tokenizing, the hooked forwards, the reductions and the tables; "same points, no-op hooks" is the
instrumentation alone (the points collect reads, observed by hooks that do nothing), so the gap between it
and "collect all" is the reductions' own cost. Peak memory: ``collect`` over the
corpus once and repeated 4×, each in a fresh process (ru_maxrss), to show it does not grow with the corpus.

    python bench/bench_corpus.py
    python bench/bench_corpus.py --rounds 5 --threads 2
"""

from __future__ import annotations

import argparse
import random
import resource
import subprocess
import sys

import torch
from bench_hooks import measure  # noqa: E402  (bench/ is on sys.path when run as a script)

import nemo_explore as ne
import nemo_explore.corpus as corpus
from nemo_explore.corpus.batches import batches


def model_batches(model, docs: list[str], seq_len: int, batch_size: int) -> list[tuple]:
    """The ``(input_ids, attention_mask)`` of every batch ``collect`` runs over ``docs`` (one shard)."""
    tok = model.tokenizer
    encoded = [[tok.bos_token_id, *tok(d, add_special_tokens=False)["input_ids"]] for d in docs]
    classes = torch.zeros(len(tok), dtype=torch.long)
    rows = [(i, ids, -1) for i, ids in enumerate(encoded)]
    made = batches(rows, seq_len, batch_size, tok.pad_token_id, classes, model.device)
    return [(b.ids, b.mask) for b in made]


def variants(model, docs: list[str], args) -> dict:
    hf = model.hf_model
    run = model_batches(model, docs, args.seq_len, args.batch_size)
    kw = dict(seq_len=args.seq_len, batch_size=args.batch_size, shard_docs=len(docs), progress=False)

    def forward(fn):
        return lambda: [fn(input_ids=ids, attention_mask=mask, use_cache=False) for ids, mask in run]

    points = ("hook_topk_indices", "hook_topk_weights", "hook_dt", "hook_state_norm", "hook_pattern")
    observe = [(lambda name: name.endswith(points), lambda t, hook: None)]

    def hooked():  # the points collect reads, observed by a no-op: the cost of the instrumentation alone
        with model.hooks(observe):
            for ids, mask in run:
                model(ids, mask, return_type=None, stop_at_layer=model.n_layers)

    return {
        "HF forward": forward(hf),
        "HF backbone (no lm_head)": forward(hf.model),
        "same points, no-op hooks": hooked,
        "collect moe": lambda: corpus.collect(model, docs, kinds="moe", **kw),
        "collect mamba": lambda: corpus.collect(model, docs, kinds="mamba", **kw),
        "collect attention": lambda: corpus.collect(model, docs, kinds="attention", **kw),
        "collect all": lambda: corpus.collect(model, docs, **kw),
    }


def peak_rss_mib(repeat: int, args) -> float:
    """Peak resident memory (MiB) of a fresh process that collects over the corpus repeated ``repeat``×."""
    cmd = [sys.executable, __file__, "--memory-child", str(repeat), "--threads", str(args.threads),
           "--seq-len", str(args.seq_len), "--batch-size", str(args.batch_size)]  # fmt: skip
    return float(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.split()[-1])


def memory_child(repeat: int, args) -> None:
    model = ne.load("tiny")
    docs = list(corpus.read_documents(corpus.demo_corpus())) * repeat
    corpus.collect(model, docs, seq_len=args.seq_len, batch_size=args.batch_size, progress=False)
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)  # Linux: KiB


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--docs", type=int, default=None, help="the first N held-out documents (default all)")
    ap.add_argument("--memory-child", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.memory_child:
        return memory_child(args.memory_child, args)
    random.seed(0)
    model = ne.load("tiny")
    docs = list(corpus.read_documents(corpus.demo_corpus()))[: args.docs]
    tokens = sum(len(model.tokenizer(d)["input_ids"]) for d in docs)
    print(
        f"model: tiny {model.pattern}, {len(docs)} documents, {tokens} tokens, seq_len {args.seq_len}, "
        f"batch {args.batch_size}, {args.threads} threads, median of {args.rounds} interleaved rounds"
    )
    med = measure(variants(model, docs, args), args.rounds)
    base = med["HF forward"]
    print(f"{'variant':<28}{'s':>8}{'× HF':>8}{'tok/s':>10}")
    for k, v in med.items():
        print(f"{k:<28}{v:>8.2f}{v / base:>8.3f}{tokens / v:>10,.0f}")
    one, four = peak_rss_mib(1, args), peak_rss_mib(4, args)
    print(f"peak RSS, fresh process: corpus ×1 {one:.0f} MiB, ×4 {four:.0f} MiB ({four / one:.3f}×)")


if __name__ == "__main__":
    main()
