"""What the mirror guard costs a user: the first instrumented call of a fresh process, with and without it.

Each round starts two fresh Python processes that load the tiny checkpoint, run one plain forward (so the
HF model is warm in both), then time their first ``run_with_cache`` with every mixer point but hidden
attention: one with the guard (its self-check runs inside that call), one with
``NEMO_EXPLORE_ACCEPT_DRIFT=1``. Their difference is the guard's cost; the table also gives each kind's
own check time as the guard measured it (``guard.timings``).

    python bench/bench_guard.py --rounds 5
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

CHILD = r"""
import json, time, warnings
import nemo_explore as ne
from nemo_explore import guard
warnings.simplefilter("ignore")
model = ne.load("tiny")
text = "The cat sat on the mat. The cat sat on the mat."
model(text)
start = time.perf_counter()
model.run_with_cache(text, names_filter=lambda n: "." in n and not n.endswith("hook_hidden_attn"))
first = time.perf_counter() - start
start = time.perf_counter()
model.run_with_cache(text, names_filter=lambda n: "." in n and not n.endswith("hook_hidden_attn"))
print(json.dumps(dict(first=first, second=time.perf_counter() - start, timings=guard.timings)))
"""


def child(accept: bool) -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    if accept:
        env["NEMO_EXPLORE_ACCEPT_DRIFT"] = "1"
    out = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    guarded, unguarded = [], []
    for _ in range(args.rounds):
        guarded.append(child(accept=False))
        unguarded.append(child(accept=True))
    med = lambda rows, key: statistics.median(r[key] for r in rows)  # noqa: E731
    g_first, u_first = med(guarded, "first"), med(unguarded, "first")
    print(f"first instrumented call, with the guard:    {g_first * 1e3:7.1f} ms (median of {args.rounds})")
    print(f"first instrumented call, guard accepted:    {u_first * 1e3:7.1f} ms")
    print(f"the guard's cost:                           {(g_first - u_first) * 1e3:7.1f} ms")
    print(f"second call (checked once per process):     {med(guarded, 'second') * 1e3:7.1f} ms")
    kinds = sorted({k for r in guarded for k in r["timings"]})
    for kind in kinds:
        took = statistics.median(r["timings"][kind] for r in guarded)
        print(f"  guard.timings[{kind!r}]: {took * 1e3:6.1f} ms")


if __name__ == "__main__":
    main()
