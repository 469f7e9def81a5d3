"""Cost of ``ssd.state_norms`` next to HF's own chunked scan, on one Mamba-2 layer of realistic shape.

Batch 1, one thread, h=64 heads × head_dim 64, d_state 128, 8 groups, HF chunk size 128. Each round times
every (length, function) pair once in a shuffled order; the table shows medians over rounds, the ratio
state_norms / scan, and the growth of each from one length to the next (linear: 2× tokens → 2× time).

    python bench/bench_state_norms.py
    python bench/bench_state_norms.py --lengths 512 2048 --rounds 9 --chunk 32
    python bench/bench_state_norms.py --device cuda --lengths 1024 4096 16384
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

import torch
import transformers.models.nemotron_h.modeling_nemotron_h as hf_mod

from nemo_explore.core import ssd

HEADS, HEAD_DIM, D_STATE, GROUPS, HF_CHUNK = 64, 64, 128, 8, 128


def layer_inputs(p: int, device: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random x, dt, A, B, C, D of one layer, with dt and A in the ranges trained models use."""
    gen = torch.Generator().manual_seed(seed)
    dt_raw = torch.randn(1, p, HEADS, generator=gen) - 4.0
    tensors = dict(
        x=torch.randn(1, p, HEADS, HEAD_DIM, generator=gen),
        dt=torch.nn.functional.softplus(dt_raw).clamp_min(1e-3),
        A=-torch.linspace(1.0, 16.0, HEADS),
        B=torch.randn(1, p, GROUPS, D_STATE, generator=gen),
        C=torch.randn(1, p, GROUPS, D_STATE, generator=gen),
        D=torch.ones(HEADS),
    )
    return {k: v.to(device) for k, v in tensors.items()}


def hf_scan(t: dict[str, torch.Tensor]) -> torch.Tensor:
    return hf_mod.mamba2_chunk_scan(
        t["x"], t["dt"], t["A"], t["B"], t["C"], chunk_size=HF_CHUNK, D=t["D"], dt_limit=(0.0, float("inf"))
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lengths", type=int, nargs="+", default=[256, 512, 1024, 2048])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--chunk", type=int, default=64, help="state_norms chunk")
    ap.add_argument("--device", default="cpu", help="cpu (one thread) or cuda")
    args = ap.parse_args()
    torch.set_num_threads(1)
    gpu = args.device.startswith("cuda")

    inputs = {p: layer_inputs(p, args.device) for p in args.lengths}
    fns = {
        "state_norms": lambda t: ssd.state_norms(t["x"], t["dt"], t["A"], t["B"], chunk=args.chunk),
        "hf_scan": hf_scan,
    }
    if gpu:  # timings wait for the GPU to finish
        fns = {name: (lambda t, f=f: (f(t), torch.cuda.synchronize())) for name, f in fns.items()}
    jobs = [(p, name) for p in args.lengths for name in fns]
    times: dict[tuple[int, str], list[float]] = {job: [] for job in jobs}
    with torch.inference_mode():
        for job in jobs:  # warm-up
            fns[job[1]](inputs[job[0]])
        for _ in range(args.rounds):
            random.shuffle(jobs)
            for p, name in jobs:
                start = time.perf_counter()
                fns[name](inputs[p])
                times[p, name].append(time.perf_counter() - start)
    med = {job: statistics.median(ts) * 1e3 for job, ts in times.items()}

    where = torch.cuda.get_device_name() if gpu else "CPU, 1 thread"
    print(f"h={HEADS} head_dim={HEAD_DIM} d_state={D_STATE} groups={GROUPS}, batch 1, {where}, "
          f"state_norms chunk {args.chunk}, HF chunk {HF_CHUNK}, medians of {args.rounds} rounds (ms)")
    head = f"{'tokens':>7} {'state_norms':>12} {'hf_scan':>9} {'ratio':>6}"
    print(f"{head} {'norms growth':>13} {'scan growth':>12}")
    prev = None
    for p in args.lengths:
        sn, hf = med[p, "state_norms"], med[p, "hf_scan"]
        grow_sn = "" if prev is None else f"{sn / med[prev, 'state_norms']:.2f}×"
        grow_hf = "" if prev is None else f"{hf / med[prev, 'hf_scan']:.2f}×"
        print(f"{p:>7} {sn:>12.1f} {hf:>9.1f} {sn / hf:>6.2f} {grow_sn:>13} {grow_hf:>12}")
        prev = p
    for p in args.lengths:  # the bar: 4× tokens well under 6× time
        if 4 * p in args.lengths:
            print(f"state_norms 4× tokens ({p}→{4 * p}): "
                  f"{med[4 * p, 'state_norms'] / med[p, 'state_norms']:.2f}× time")


if __name__ == "__main__":
    main()
