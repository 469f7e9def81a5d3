"""Data parallelism on torchrun: two processes (gloo, CPU) write the same tables as one, bit for bit."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

import nemo_explore.corpus as corpus

ROOT = Path(__file__).parents[1]


def run(args: list[str], **env) -> subprocess.CompletedProcess:
    full = os.environ | {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"} | env
    done = subprocess.run(args, cwd=ROOT, env=full, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    return done


def torchrun() -> list[str]:
    found = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    return [found] if found else [sys.executable, "-m", "torch.distributed.run"]


def tables(out: Path) -> dict:
    return {p.stem: pq.read_table(p) for p in sorted(out.glob("*.parquet"))}


@pytest.fixture(scope="module")
def corpus_file(tmp_path_factory) -> Path:
    docs = list(corpus.read_documents(corpus.demo_corpus()))[:20]
    path = tmp_path_factory.mktemp("data") / "docs.txt"
    path.write_text("\n\n".join(docs) + "\n")
    return path


@pytest.mark.slow  # four process starts: ~50 s on two shared cores
def test_two_processes_equal_one(tmp_path, corpus_file):
    args = ["collect", "--model", "tiny", "--data", str(corpus_file), "--seq-len", "64", "--batch-size", "4",
            "--shard-docs", "3", "--top-k", "5", "--window", "3", "--no-progress"]  # fmt: skip
    one, two = tmp_path / "one", tmp_path / "two"
    run([sys.executable, "-m", "nemo_explore.corpus", *args, "--out", str(one)])
    done = run([*torchrun(), "--standalone", "--nproc_per_node", "2", "-m", "nemo_explore.corpus",
                *args, "--out", str(two)])  # fmt: skip
    assert "CorpusResult" in done.stdout  # rank 0 merged and printed the result
    a, b = tables(one), tables(two)
    assert set(a) == {"moe_experts", "moe_class_load", "moe_label_load", "moe_coselection", "mamba_heads",
                      "mamba_horizon_hist", "attention_heads", "contexts"}  # fmt: skip
    assert set(a) == set(b)
    for name in a:
        assert a[name].equals(b[name]), name
    assert corpus.load(two).manifest["shards"] == 7
    # the standalone merge folds the same shards into the same tables
    for p in two.glob("*.parquet"):
        p.unlink()
    print(corpus.merge(two))
    assert all(tables(two)[n].equals(a[n]) for n in a)
    # --overwrite: each rank removes its own old shards (here a stale one of rank 1), rank 0 the rest
    stale = two / "shards" / "shard-00009.npz"
    stale.write_bytes(b"old")
    before = (two / "shards" / "shard-00000.npz").stat().st_mtime_ns
    run([*torchrun(), "--standalone", "--nproc_per_node", "2", "-m", "nemo_explore.corpus",
         *args, "--out", str(two), "--overwrite"])  # fmt: skip
    assert not stale.exists() and (two / "shards" / "shard-00000.npz").stat().st_mtime_ns != before
    assert all(tables(two)[n].equals(a[n]) for n in a)
