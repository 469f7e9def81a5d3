"""``python -m nemo_explore.corpus collect ...`` / ``merge DIR``; also under ``torchrun`` / ``accelerate``.

    python -m nemo_explore.corpus collect --model tiny --data heldout.txt --out stats/
    torchrun --nproc_per_node 2 -m nemo_explore.corpus collect --model tiny --data heldout.txt --out stats/
    python -m nemo_explore.corpus collect --model nvidia/... --dataset wikitext --config wikitext-2-raw-v1 \\
        --split test --streaming --device-map auto --dtype bfloat16 --out stats/
    python -m nemo_explore.corpus merge stats/
"""

from __future__ import annotations

import argparse
import os
import sys


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m nemo_explore.corpus",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = ap.add_subparsers(dest="command", required=True)
    c = sub.add_parser("collect", help="stream a corpus through a model and write the statistics")
    c.add_argument("--model", default="tiny", help="'tiny', a hub id or a checkpoint directory")
    src = c.add_mutually_exclusive_group(required=True)
    src.add_argument("--data", help="a text file, documents separated by blank lines")
    src.add_argument("--dataset", help="a Hugging Face dataset name or path (needs the datasets package)")
    c.add_argument("--config", help="the dataset's configuration name")
    c.add_argument("--split", default="train")
    c.add_argument("--streaming", action="store_true", help="stream the dataset instead of downloading it")
    c.add_argument("--out", required=True, help="output directory (a re-run with the same one resumes)")
    c.add_argument("--seq-len", type=int, default=256)
    c.add_argument("--batch-size", type=int, default=8)
    c.add_argument("--top-k", type=int, default=16)
    c.add_argument("--window", type=int, default=8)
    c.add_argument("--shard-docs", type=int, default=64)
    c.add_argument("--text-column", default="text")
    c.add_argument("--label-column")
    c.add_argument("--kinds", help="comma-separated: moe,mamba,attention (default: all the model has)")
    c.add_argument("--max-docs", type=int)
    c.add_argument("--device", help="e.g. cuda (each rank of a distributed run takes cuda:LOCAL_RANK)")
    c.add_argument("--device-map", help="accelerate device map for a model bigger than one device, e.g. auto")
    c.add_argument("--dtype", help="e.g. bfloat16")
    c.add_argument("--no-progress", action="store_true")
    c.add_argument(
        "--overwrite",
        action="store_true",
        help="discard what --out holds (shards, tables, manifest) and start afresh",
    )
    m = sub.add_parser("merge", help="fold the shards of DIR into its tables and manifest")
    m.add_argument("dir")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    from . import driver as run  # noqa: PLC0415 (after parsing: --help needs no torch)

    if args.command == "merge":
        print(run.merge(args.dir))
        return 0
    import nemo_explore as ne  # noqa: PLC0415

    device = args.device
    if device == "cuda" and "LOCAL_RANK" in os.environ:
        device = f"cuda:{os.environ['LOCAL_RANK']}"
    model = ne.load(args.model, device=device, device_map=args.device_map, dtype=args.dtype)
    if args.dataset:
        import datasets  # noqa: PLC0415

        data = datasets.load_dataset(args.dataset, args.config, split=args.split, streaming=args.streaming)
    else:
        data = args.data
    result = run.collect(
        model, data, seq_len=args.seq_len, batch_size=args.batch_size, top_k=args.top_k, window=args.window,
        out=args.out, shard_docs=args.shard_docs, text_column=args.text_column,
        label_column=args.label_column,
        kinds=None if args.kinds is None else args.kinds.split(","), max_docs=args.max_docs,
        progress=not args.no_progress, overwrite=args.overwrite,
    )  # fmt: skip
    if result is not None:
        print(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
