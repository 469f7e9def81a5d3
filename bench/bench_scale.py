"""Real Nemotron-H widths: a random-weight model of a registry configuration, plain HF forward vs hooks.

On a GPU (``--device cuda``): the full configuration in bf16 at 1k and 4k tokens, peak memory included.
On a CPU: the same widths shortened to a few layers (``--layers``), so it fits the machine.

    python bench/bench_scale.py --device cuda --config nvidia/Nemotron-H-8B-Base-8K --tokens 1024 4096
    python bench/bench_scale.py                      # CPU: 8B widths, 4 layers, 512 tokens
"""

from __future__ import annotations

import argparse

import torch
from transformers import AutoModelForCausalLM, NemotronHForCausalLM

import nemo_explore as ne
from nemo_explore.checkpoints import registry
from nemo_explore.checkpoints.configs import shortened

try:
    from bench_hooks import measure
except ImportError:  # run as a module from the repo root
    from bench.bench_hooks import measure


def build(name: str, device: str, dtype: torch.dtype, layers: int | None) -> NemotronHForCausalLM:
    cfg = registry.get(name)
    if layers:
        cfg = shortened(cfg, layers)
    torch.manual_seed(0)
    with torch.device(device):  # built in place, in its dtype: a 30B model never exists in float32
        model = AutoModelForCausalLM.from_config(cfg, dtype=dtype).eval()
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
    n_params = sum(p.numel() for p in hf.parameters()) / 1e9
    print(f"{args.config}{f' shortened to {layers} layers' if layers else ''}: {model.pattern} "
          f"({n_params:.2f}B params) on {where}, {dtype}, torch {torch.__version__}, median of {args.rounds}")
    resid = [n for n in model.hook_names() if n.rsplit(".", 1)[-1] in ("hook_resid_pre", "hook_resid_post",
                                                                       "hook_mixer_in", "hook_mixer_out")]
    no_hidden = [n for n in model.hook_names() if not n.endswith("hook_hidden_attn")]

    def cached(ids, names, device=None):
        return lambda: model.run_with_cache(ids, names_filter=names, device=device)

    for p in tokens:
        ids = torch.randint(3, hf.config.vocab_size, (1, p), device=args.device)
        fns = {
            "HF forward": lambda ids=ids: hf(input_ids=ids, use_cache=False).logits,
            "no hooks": lambda ids=ids: model(ids),
            "cache residual stream": cached(ids, resid),
            "cache attention patterns": cached(ids, lambda n: n.endswith("hook_pattern")),
            "cache state norms": cached(ids, lambda n: n.endswith("state_norm")),
            "cache all but hidden attn": cached(ids, no_hidden),
        }
        if gpu:  # what a big run pays to keep its cache in host memory instead; timings wait for the GPU
            fns["all but hidden → host"] = cached(ids, no_hidden, device="cpu")
            fns = {k: _synced(f) for k, f in fns.items()}
        try:
            med = measure(fns, args.rounds)
        except torch.OutOfMemoryError as e:  # a long input of a big model may not fit: say so, go on
            print(f"\n{p} tokens: out of GPU memory ({str(e).splitlines()[0]})")
            continue
        print(f"\n{p} tokens{'' if not gpu else '  (peak GPU memory per variant below)'}")
        print(f"{'variant':<28}{'ms':>10}{'× HF':>8}")
        for k, v in med.items():
            print(f"{k:<28}{v * 1e3:>10.1f}{v / med['HF forward']:>8.3f}")
        if gpu:
            with torch.inference_mode():
                for k, f in fns.items():
                    torch.cuda.reset_peak_memory_stats()
                    out = f()
                    size = sum(t.nbytes for t in out[1].values()) / 2**30 if isinstance(out, tuple) else 0
                    print(f"  peak {k:<26}{torch.cuda.max_memory_allocated() / 2**30:>8.2f} GiB"
                          + (f"   (cache {size:.2f} GiB)" if size else ""))
                    del out


def _synced(fn):
    def run():
        out = fn()
        torch.cuda.synchronize()
        return out

    return run


if __name__ == "__main__":
    main()
