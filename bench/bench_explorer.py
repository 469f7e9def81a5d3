"""The Explorer on a real shape at a real length, kernel side: Runs against the plain HF forwards just before
and after each, then every kind of click (its Python time: what the kernel spends before the browser gets the
new data). A Run is timed as a notebook kernel runs it, on an event loop: to drawn, and to its last state
norm, which is computed in the loop's idle time after the draw.

The model is random, with the layer pattern, head counts, expert count and state sizes of a registry
checkpoint (default Nemotron 3 Nano 30B-A3B: 52 layers, 128 experts top-6, 64 Mamba heads, 32/2 attention
heads) and a narrow residual stream (``--hidden``, default 256) so that it runs on a CPU; a character
tokenizer makes the token count exact.

    python bench/bench_explorer.py                          # 4,096 tokens
    python bench/bench_explorer.py --tokens 32768 --config tiny
    python bench/bench_explorer.py --reuse-freed-memory     # glibc keeps freed memory for the next tensor
"""

from __future__ import annotations

import argparse
import asyncio
import re
import resource
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests" / "browser"), str(ROOT / "tests")]

import nemo_explore as ne  # noqa: E402
from nemo_explore.checkpoints import registry  # noqa: E402
from nemo_explore.core.formatting import format_bytes  # noqa: E402

MEMORY = {False: "given back (the default)", True: "reused (ne.reuse_freed_memory())"}


def real_shape(name: str, hidden: int):
    """A random model with ``name``'s pattern and head/expert/state sizes, residual width ``hidden``."""
    from demo_model import char_tokenizer
    from transformers import NemotronHForCausalLM

    tok = char_tokenizer()
    cfg = registry.get(name)
    cfg.hidden_size, cfg.vocab_size = hidden, len(tok)
    cfg.intermediate_size = 4 * hidden
    cfg.moe_intermediate_size, cfg.moe_shared_expert_intermediate_size = hidden // 4, hidden // 2
    torch.manual_seed(0)
    return ne.load(NemotronHForCausalLM(cfg).eval(), tokenizer=tok)


def timed(do) -> float:
    t0 = time.perf_counter()
    do()
    return time.perf_counter() - t0


def kernel_mode() -> tuple[float, int]:
    """This process's CPU seconds in the kernel (sys) and its minor page faults so far."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_stime, r.ru_minflt


def since(before: tuple[float, int]) -> str:
    """The sys seconds and page faults since ``before`` (a ``kernel_mode()``), and the resident peak."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    sys_s, faults, peak = r.ru_stime - before[0], (r.ru_minflt - before[1]) / 1e6, r.ru_maxrss * 1024
    return f"sys {sys_s:.1f} s, {faults:.2f} M faults, peak {format_bytes(peak)}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="nvidia/NVIDIA-Nemotron-3-Nano-30B-A3B", help="registry name or tiny")
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--tokens", type=int, default=4096)
    ap.add_argument("--rounds", type=int, default=3, help="Runs, each between two plain forwards")
    ap.add_argument("--reuse-freed-memory", action="store_true", help="call ne.reuse_freed_memory() first")
    args = ap.parse_args()
    if args.reuse_freed_memory:
        ne.reuse_freed_memory()
    from nemo_explore.widgets import Explorer

    model = ne.load("tiny") if args.config == "tiny" else real_shape(args.config, args.hidden)
    base = "The little cat sat on the mat by the door. "
    if args.config == "tiny":
        ids = torch.randint(3, model.cfg.d_vocab, (1, args.tokens))
        text = model.tokenizer.decode(ids[0])
        while len(model.to_str_tokens(text)) > args.tokens:
            text = text[: int(len(text) * 0.98)]
    else:
        text = (base * (args.tokens // len(base) + 1))[: args.tokens - 1]  # + <s>
    n = len(model.to_str_tokens(text))
    width = "" if args.config == "tiny" else f" (hidden {args.hidden})"
    print(f"{args.config}{width}: {model.pattern}, {n} tokens, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, freed memory {MEMORY[args.reuse_freed_memory]}")  # fmt: skip
    ids, _ = model.to_inputs(text)

    spent = []  # what each plain forward cost in the kernel (page faults: fresh memory)

    @torch.no_grad()
    def plain(ids=ids):
        before = kernel_mode()
        model.hf_model(ids)
        spent.append(since(before))

    plain()  # warm-up, full length: a first forward also pays for the first touch of memory
    explorer = None

    async def run_in_kernel(do, click=None) -> tuple[float, float]:
        """``do()`` (a Run) as a notebook kernel runs it, on an event loop: seconds to drawn, and to the
        last state norm (computed in the loop's idle time after the draw). ``click``: done (and timed) a
        moment after the draw, while the norms are being computed."""
        t0, before = time.perf_counter(), kernel_mode()
        do()
        drawn = time.perf_counter() - t0
        print(f"  to drawn: {since(before)}")
        await asyncio.sleep(0.2)
        if click is not None:
            print(f"  a click while {explorer.views['ssm'].norms_pending} Mamba layers' norms are pending: "
                  f"{timed(click):.3f} s")  # fmt: skip
        while explorer.views["ssm"].norms_pending:
            await asyncio.sleep(0)
        return drawn, time.perf_counter() - t0

    def build():
        nonlocal explorer
        explorer = Explorer(model, text)

    # a Run against plain forwards of its own prompt just before and after it (this machine's speed drifts;
    # the prompt gains or loses a space from one Run to the next)
    forwards, runs = [], []
    last_mamba = model.layers("mamba")[-1:]
    for k in range(args.rounds):
        prompt = text + " " * (k % 2)
        do = build if k == 0 else (lambda prompt=prompt: explorer.run(prompt))
        last = k == args.rounds - 1 and last_mamba
        click = (lambda: explorer.select_layer(last_mamba[0])) if last else None
        now, _ = model.to_inputs(prompt)
        forwards.append(timed(lambda now=now: plain(now)))
        print(f"a plain forward of {now.shape[1]} tokens: {forwards[-1]:.2f} s, {spent[-1]}")
        runs.append(asyncio.run(run_in_kernel(do, click)))
        forwards.append(timed(lambda now=now: plain(now)))
        what = "Explorer(model, text)" if k == 0 else "Run (a new prompt)"
        forward = (forwards[-2] + forwards[-1]) / 2
        drawn, norms = runs[-1]
        print(f"{what}: drawn {drawn:.2f} s = forward {forward:.2f} s + {drawn - forward:.2f} s "
              f"(forwards before/after {forwards[-2]:.2f} / {forwards[-1]:.2f}); every state norm in "
              f"{norms:.2f} s")  # fmt: skip
        print(f"  the plain forward after it: {spent[-1]}")
        print("  its status line:", re.sub("<[^>]+>", "", explorer.status.value))
    over = [drawn - (a + b) / 2 for (drawn, _), a, b in zip(runs, forwards[::2], forwards[1::2], strict=True)]
    print(f"drawn minus forward, median of {len(over)}: {statistics.median(over):.2f} s; "
          f"{format_bytes(explorer.cache.nbytes)} of per-token points held")  # fmt: skip
    kinds = model.layer_types
    attn = [i for i, t in enumerate(kinds) if t == "attention"]
    mamba = [i for i, t in enumerate(kinds) if t == "mamba"]
    moe = [i for i, t in enumerate(kinds) if t == "moe"]
    view = explorer.views["attention"]
    clicks = {}
    if attn:
        clicks["click an attention block"] = lambda: explorer.select_layer(attn[-1])
        clicks["head 0 -> 1"] = lambda: view.select(head=1)
        clicks["attention: query rows at the middle"] = lambda: view.select(window=n // 2)
    if mamba:
        clicks["click a Mamba block"] = lambda: explorer.select_layer(mamba[len(mamba) // 2])
        clicks["Mamba: query rows at the end"] = lambda: view.select(window=n)
        clicks["Mamba: |M| shares"] = lambda: setattr(view.mode_select, "value", "share")
        clicks["another Mamba block"] = lambda: explorer.select_layer(mamba[-1])
    if moe:
        clicks["click an MoE block"] = lambda: explorer.select_layer(moe[-1])
    worst = 0.0
    for name, do in clicks.items():
        s = timed(do)
        worst = max(worst, s)
        print(f"  {name}: {s:.3f} s")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(f"slowest click {worst:.3f} s; peak resident memory {format_bytes(peak)}")


if __name__ == "__main__":
    main()
