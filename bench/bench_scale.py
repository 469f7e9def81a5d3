"""Real Nemotron-H widths: a random-weight model of a registry configuration, plain HF forward vs hooks.

On a GPU (``--device cuda``): the full configuration in bf16 at 1k and 4k tokens, peak memory included.
On a CPU: the same widths shortened to a few layers (``--layers``), so it fits the machine.

    python bench/bench_scale.py --device cuda --config nvidia/Nemotron-H-8B-Base-8K --tokens 1024 4096
    python bench/bench_scale.py                      # CPU: 8B widths, 4 layers, 512 tokens
"""

from __future__ import annotations

import argparse

import torch
from transformers import NemotronHForCausalLM

import nemo_explore as ne
from nemo_explore import registry
from nemo_explore.configs import shortened

try:
    from bench_hooks import measure
except ImportError:  # run as a module from the repo root
    from bench.bench_hooks import measure


def build(name: str, device: str, dtype: torch.dtype, layers: int | None) -> NemotronHForCausalLM:
    cfg = registry.get(name)
    if layers:
        cfg = shortened(cfg, layers)
    torch.manual_seed(0)
    with torch.device(device):
        model = NemotronHForCausalLM(cfg).to(dtype).eval()
    return model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="nvidia/Nemotron-H-8B-Base-8K")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--layers", type=int, default=None, help="shorten to this many layers (CPU default 4)")
    ap.add_argument("--tokens", type=int, nargs="+", default=None)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    gpu = args.device.startswith("cuda")
    layers = args.layers if args.layers is not None else (None if gpu else 4)
    tokens = args.tokens or ([1024, 4096] if gpu else [512])
    dtype = torch.bfloat16 if gpu else torch.float32
    hf = build(args.config, args.device, dtype, layers)
    model = ne.load(hf)
    where = torch.cuda.get_device_name() if gpu else "CPU"
    print(f"{args.config}{f' shortened to {layers} layers' if layers else ''}: {model.pattern} "
          f"on {where}, {dtype}")
    resid = [n for n in model.hook_names() if n.rsplit(".", 1)[-1] in ("hook_resid_pre", "hook_resid_post",
                                                                       "hook_mixer_in", "hook_mixer_out")]
    no_hidden = [n for n in model.hook_names() if not n.endswith("hook_hidden_attn")]
    cache_to = "cpu" if gpu else None  # big runs keep their cache in host memory

    def cached(ids, names):
        return lambda: model.run_with_cache(ids, names_filter=names, device=cache_to)

    for p in tokens:
        ids = torch.randint(3, hf.config.vocab_size, (1, p), device=args.device)
        fns = {
            "HF forward": lambda ids=ids: hf(input_ids=ids, use_cache=False).logits,
            "no hooks": lambda ids=ids: model(ids),
            "cache residual stream": cached(ids, resid),
            "cache state norms": cached(ids, lambda n: n.endswith("state_norm")),
            "cache all but hidden attn": cached(ids, no_hidden),
        }
        if gpu:
            fns = {k: _synced(f) for k, f in fns.items()}
        med = measure(fns, args.rounds)
        print(f"\n{p} tokens{'' if not gpu else '  (peak GPU memory per variant below)'}")
        print(f"{'variant':<28}{'ms':>10}{'× HF':>8}")
        for k, v in med.items():
            print(f"{k:<28}{v * 1e3:>10.1f}{v / med['HF forward']:>8.3f}")
        if gpu:
            for k, f in fns.items():
                torch.cuda.reset_peak_memory_stats()
                f()
                print(f"  peak {k:<26}{torch.cuda.max_memory_allocated() / 2**30:>8.2f} GiB")


def _synced(fn):
    def run():
        out = fn()
        torch.cuda.synchronize()
        return out

    return run


if __name__ == "__main__":
    main()
