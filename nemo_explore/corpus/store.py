"""The output directory: settings, one file per finished shard, the final Parquet tables and manifest.

out/settings.json            what the run computes (compared on resume)
out/shards/shard-00000.npz   a finished shard's partial (written whole, then renamed into place)
out/shards/stream.json       how many shards and items the data held (written when it was read to the end)
out/<table>.parquet          the result tables, written by the merge
out/manifest.json            the merge's description of it all
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

MANIFEST = "manifest.json"
SETTINGS = "settings.json"


def settings_hash(settings: dict) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def write_json(path: Path, obj) -> None:
    _write_atomic(Path(path), (json.dumps(obj, indent=1, default=str) + "\n").encode())


def check_settings(out: Path, settings: dict, write: bool) -> None:
    """Raise if ``out`` holds a run with other settings; else record them (``write``: this process's job)."""
    path = out / SETTINGS
    if path.exists():
        saved = json.loads(path.read_text())
        if saved != json.loads(json.dumps(settings, default=str)):
            diff = sorted(k for k in set(saved) | set(settings) if saved.get(k) != settings.get(k))
            detail = "; ".join(f"{k}: saved {saved.get(k)!r}, now {settings.get(k)!r}" for k in diff)
            raise ValueError(
                f"{out} holds a corpus run with other settings ({detail}). Resume with the same settings, "
                "or pass another out directory (or delete this one) to start afresh."
            )
    elif write:
        out.mkdir(parents=True, exist_ok=True)
        write_json(path, settings)


def shard_path(out: Path, index: int) -> Path:
    return out / "shards" / f"shard-{index:05d}.npz"


def write_shard(out: Path, index: int, parts: dict[str, dict[str, np.ndarray]], meta: dict) -> None:
    """One finished shard: every kind's arrays under ``kind/key``, and ``meta`` as JSON."""
    arrays = {f"{kind}/{k}": v for kind, p in parts.items() for k, v in p.items()}
    arrays["meta"] = np.array(json.dumps(meta))
    path = shard_path(out, index)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        np.savez(f, **arrays)
    os.replace(tmp, path)


def read_shard(path: Path) -> tuple[dict[str, dict[str, np.ndarray]], dict]:
    with np.load(path, allow_pickle=False) as z:
        meta = json.loads(str(z["meta"]))
        parts: dict[str, dict[str, np.ndarray]] = {}
        for name in z.files:
            if name != "meta":
                kind, key = name.split("/", 1)
                parts.setdefault(kind, {})[key] = z[name]
    return parts, meta


def shard_done(out: Path, index: int, want_hash: str) -> bool:
    """Whether shard ``index`` is already written, by a run with these settings (else an error)."""
    path = shard_path(out, index)
    if not path.exists():
        return False
    with np.load(path, allow_pickle=False) as z:
        got = json.loads(str(z["meta"]))["settings_hash"]
    if got != want_hash:
        raise ValueError(
            f"{path} was written with other settings; delete {out} (or use another out) to start afresh"
        )
    return True


def write_stream_end(out: Path, shards: int, items: int) -> None:
    write_json(out / "shards" / "stream.json", {"shards": shards, "items": items})


def read_stream_end(out: Path) -> dict:
    path = out / "shards" / "stream.json"
    if not path.exists():
        raise FileNotFoundError(
            f"{out} holds no finished collection (no shards/stream.json): the data was never read to its "
            "end. "
            "Run collect again with the same settings and out to resume it."
        )
    return json.loads(path.read_text())


def write_result(out: Path, tables: dict, manifest: dict) -> None:
    import pyarrow.parquet as pq  # noqa: PLC0415

    for name, table in tables.items():
        tmp = out / f".{name}.parquet.{os.getpid()}.tmp"
        pq.write_table(table, tmp)
        os.replace(tmp, out / f"{name}.parquet")
    write_json(out / MANIFEST, manifest)


def read_result(out: Path) -> tuple[dict, dict]:
    import pyarrow.parquet as pq  # noqa: PLC0415

    path = out / MANIFEST
    if not path.exists():
        raise FileNotFoundError(
            f"{out} has no {MANIFEST}: not a finished corpus result (run "
            f"`python -m nemo_explore.corpus merge "
            f"{out}` if its shards are all written)"
        )
    manifest = json.loads(path.read_text())
    tables = {name: pq.read_table(out / f"{name}.parquet") for name in manifest["tables"]}
    return tables, manifest
