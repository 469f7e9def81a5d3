"""Cost of hooks, as ratios to the plain HF forward of the same model in the same process.

Interleaved runs (each round times every variant once, in a shuffled order), medians over rounds.
Default model: a 16-layer hybrid of realistic widths for a CPU (hidden 768, Mamba 24×64 heads with state
128 and 8 groups, GQA 12/4 heads, relu² MLP 2048, 8-expert top-2 MoE), batch 1 × 512 tokens.

    python bench/bench_hooks.py                 # the README table
    python bench/bench_hooks.py --tokens 1024 --rounds 5
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

import torch
from transformers import NemotronHConfig, NemotronHForCausalLM

import nemo_explore as ne
from nemo_explore.core.layer_types import to_hf

try:
    from peers import nnsight_residual_cache, transformerlens_bridge
except ImportError:  # run as a module from the repo root
    from bench.peers import nnsight_residual_cache, transformerlens_bridge

PATTERN = "M-M*M-MEM-M*MEM-"


def bench_model(pattern: str = PATTERN, hidden: int = 768, vocab: int = 32000) -> NemotronHForCausalLM:
    cfg = NemotronHConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        layers_block_type=to_hf(pattern),
        num_attention_heads=12,
        num_key_value_heads=4,
        head_dim=64,
        intermediate_size=2048,
        mamba_num_heads=24,
        mamba_head_dim=64,
        ssm_state_size=128,
        n_groups=8,
        chunk_size=128,
        n_routed_experts=8,
        num_experts_per_tok=2,
        moe_intermediate_size=512,
        moe_shared_expert_intermediate_size=1024,
    )
    torch.manual_seed(0)
    return NemotronHForCausalLM(cfg).eval()


def variants(hf, model: ne.HookedNemotronH, ids: torch.Tensor) -> dict:
    resid = [
        n
        for n in model.hook_names()
        if n.split(".")[-1] in ("hook_resid_pre", "hook_resid_post", "hook_mixer_in", "hook_mixer_out")
    ]
    no_hidden = [n for n in model.hook_names() if not n.endswith("hook_hidden_attn")]
    # computed on the side (the norms' divisors too), not by HF's forward
    derived = ("hook_attn_scores", "hook_pattern", "hook_result", "hook_state_norm", "hook_hidden_attn",
               "hook_state", "hook_scale")  # fmt: skip
    computed = [n for n in model.hook_names() if not n.endswith(derived)]
    found = {
        "HF forward": lambda: hf(input_ids=ids, use_cache=False).logits,
        "no hooks": lambda: model(ids),
        "cache residual stream": lambda: model.run_with_cache(ids, names_filter=resid),
        "cache attention pattern": lambda: model.run_with_cache(
            ids, names_filter=lambda n: n.endswith("pattern")
        ),
        "cache state norms": lambda: model.run_with_cache(
            ids, names_filter=lambda n: n.endswith("state_norm")
        ),
        f"cache every HF value ({len(computed)} pts)": lambda: model.run_with_cache(
            ids, names_filter=computed
        ),
        "cache all but hidden attn": lambda: model.run_with_cache(ids, names_filter=no_hidden),
        "cache everything": lambda: model.run_with_cache(ids),
    }
    return found | nnsight_residual_cache(hf, ids) | transformerlens_bridge(hf, ids)


def distance_to_hf(fn, ref: torch.Tensor) -> float | None:
    """Largest |logit − HF's logit| of one variant (None if it returns no logits)."""
    with torch.inference_mode():
        out = fn()
    logits = out[0] if isinstance(out, tuple) else out
    if not isinstance(logits, torch.Tensor) or logits.shape != ref.shape:
        return None
    return float((logits.detach().float() - ref.float()).abs().max())


def measure(fns: dict, rounds: int, warmup: int = 1) -> dict[str, float]:
    times: dict[str, list[float]] = {k: [] for k in fns}
    with torch.inference_mode():
        for _ in range(warmup):
            for fn in fns.values():
                fn()
        for _ in range(rounds):
            order = list(fns)
            random.shuffle(order)
            for k in order:
                t = time.perf_counter()
                fns[k]()
                times[k].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=512)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    random.seed(0)
    hf = bench_model()
    model = ne.load(hf)
    ids = torch.randint(3, hf.config.vocab_size, (1, args.tokens), generator=torch.Generator().manual_seed(0))
    n_params = sum(p.numel() for p in hf.parameters()) / 1e6
    print(
        f"model: {model.pattern} ({n_params:.0f}M params), {args.tokens} tokens, "
        f"{args.threads} threads, median of {args.rounds} interleaved rounds"
    )
    fns = variants(hf, model, ids)
    with torch.inference_mode():
        ref = fns["HF forward"]()
    off = {k: distance_to_hf(f, ref) for k, f in fns.items()}
    med = measure(fns, args.rounds)
    base = med["HF forward"]
    print(f"{'variant':<34}{'ms':>9}{'× HF':>8}  max |logits − HF|")
    for k, v in med.items():
        dist = "" if off[k] is None else ("0 (bit-identical)" if off[k] == 0 else f"{off[k]:.1e}")
        print(f"{k:<34}{v * 1e3:>9.1f}{v / base:>8.3f}  {dist}")


if __name__ == "__main__":
    main()
