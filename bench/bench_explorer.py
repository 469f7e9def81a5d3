"""The Explorer on a real shape at a real length, kernel side: a Run against one plain HF forward, then every
kind of click (its Python time: what the kernel spends before the browser gets the new data).

The model is random, with the layer pattern, head counts, expert count and state sizes of a registry
checkpoint (default Nemotron 3 Nano 30B-A3B: 52 layers, 128 experts top-6, 64 Mamba heads, 32/2 attention
heads) and a narrow residual stream (``--hidden``, default 256) so that it runs on a CPU; a character
tokenizer makes the token count exact.

    python bench/bench_explorer.py                          # 4,096 tokens
    python bench/bench_explorer.py --tokens 32768 --config tiny
"""

from __future__ import annotations

import argparse
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="nvidia/NVIDIA-Nemotron-3-Nano-30B-A3B", help="registry name or tiny")
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--tokens", type=int, default=4096)
    args = ap.parse_args()
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
          f"{torch.get_num_threads()} threads")  # fmt: skip
    ids, _ = model.to_inputs(text)
    with torch.no_grad():
        model.hf_model(ids[:, :64])  # warm-up
        forward = statistics.median(timed(lambda: model.hf_model(ids)) for _ in range(2))
    print(f"plain HF forward: {forward:.2f} s")
    explorer = None

    def build():
        nonlocal explorer
        explorer = Explorer(model, text)

    first = timed(build)
    held = explorer.cache.nbytes
    print(f"Explorer(model, text): {first:.2f} s = {first / forward:.2f}× the forward; {format_bytes(held)} "
          f"of per-token points held")  # fmt: skip
    print("  its status line:", re.sub("<[^>]+>", "", explorer.status.value))
    rerun = timed(lambda: explorer.run(text + " "))
    print(f"Run (a new prompt): {rerun:.2f} s = forward + {rerun - forward:.2f} s")
    print("  its status line:", re.sub("<[^>]+>", "", explorer.status.value))
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
