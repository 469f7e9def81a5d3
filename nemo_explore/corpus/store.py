"""The output directory: settings, one file per finished shard, the final Parquet tables and manifest.

out/settings.json            the run's identity: settings, data, model and its weights' fingerprint
out/shards/shard-00000.npz   a finished shard's partial (written whole, then renamed into place)
out/shards/stream.json       how many shards and items the data held (written when it was read to the end)
out/<table>.parquet          the result tables, written by the merge
out/manifest.json            the merge's description of it all

A re-run with the same out resumes only the run of the same identity: any difference is refused (never
merged) unless ``overwrite`` discards the old run. A shard file that cannot be read is deleted and computed
again on resume, and refused by name on merge.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
import zipfile
from pathlib import Path

import numpy as np

MANIFEST = "manifest.json"
SETTINGS = "settings.json"
OPTIONS = (
    "pass another out directory, or overwrite=True (command line: --overwrite) to discard the old run and "
    "start afresh"
)


class DamagedShard(ValueError):
    """A shard file that is not a whole shard (truncated, overwritten, not an npz)."""


def settings_hash(settings: dict) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def write_json(path: Path, obj) -> None:
    _write_atomic(Path(path), (json.dumps(obj, indent=1, default=str) + "\n").encode())


def check_settings(out: Path, settings: dict, write: bool) -> None:
    """Raise if ``out`` holds a run of another identity; else record ``settings`` (``write``: this process's
    job)."""
    path = out / SETTINGS
    if path.exists():
        saved = json.loads(path.read_text())
        diff = differences(saved, json.loads(json.dumps(settings, default=str)))
        if diff:
            raise ValueError(
                f"{out} holds a corpus run with other settings ({'; '.join(diff)}). Its shards are never "
                f"merged with this run's: resume with the same model, weights, data and settings, or "
                f"{OPTIONS}."
            )
    elif write:
        out.mkdir(parents=True, exist_ok=True)
        write_json(path, settings)


def differences(saved: dict, now: dict, prefix: str = "") -> list[str]:
    """``'key: saved X, now Y'`` for each differing entry (nested dicts by dotted key)."""
    found = []
    for key in sorted(set(saved) | set(now)):
        a, b = saved.get(key), now.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            found += differences(a, b, f"{prefix}{key}.")
        elif a != b:
            found.append(f"{prefix}{key}: saved {a!r}, now {b!r}")
    return found


def clear(out: Path, rank: int, world: int) -> None:
    """``overwrite``: remove what a run wrote in ``out`` (rank r: its own shards; rank 0 also the rest)."""
    shards = out / "shards"
    for path in [*shards.glob("shard-*.npz"), *shards.glob(".shard-*.tmp")]:  # and write_shard's temp files
        index = path.name.lstrip(".")[len("shard-") :].split(".")[0]
        if index.isdigit() and int(index) % world == rank:
            path.unlink(missing_ok=True)
    if rank == 0:
        manifest = out / MANIFEST
        names = json.loads(manifest.read_text()).get("tables", {}) if manifest.exists() else {}
        tables = [out / f"{name}.parquet" for name in names]
        for path in [shards / "stream.json", manifest, out / SETTINGS, *tables]:
            path.unlink(missing_ok=True)


def shard_path(out: Path, index: int) -> Path:
    return out / "shards" / f"shard-{index:05d}.npz"


def write_shard(out: Path, index: int, parts: dict[str, dict[str, np.ndarray]], meta: dict) -> None:
    """One finished shard: every kind's arrays under ``kind/key``, and ``meta`` as JSON. Written to a
    temporary name and renamed into place, so the final name only ever holds a whole file."""
    arrays = {f"{kind}/{k}": v for kind, p in parts.items() for k, v in p.items()}
    arrays["meta"] = np.array(json.dumps(meta))
    path = shard_path(out, index)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def read_shard(path: Path) -> tuple[dict[str, dict[str, np.ndarray]], dict]:
    """A shard's partials and meta; ``DamagedShard`` (naming the file) if it is not a whole shard file."""
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            parts: dict[str, dict[str, np.ndarray]] = {}
            for name in z.files:  # reading every array checks every member's CRC
                if name != "meta":
                    kind, key = name.split("/", 1)
                    parts.setdefault(kind, {})[key] = z[name]
        if not isinstance(meta, dict) or "settings_hash" not in meta:
            raise ValueError("its meta has no settings_hash")
    except (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile) as e:
        raise DamagedShard(f"{path} is not a whole shard file ({type(e).__name__}: {e})") from e
    return parts, meta


def check_shard(path: Path, meta: dict, want_hash: str, settings: dict) -> None:
    """Raise if the shard at ``path`` was written by a run of another identity than ``settings``."""
    if meta["settings_hash"] != want_hash:
        weights = settings["model"].get("weights")
        raise ValueError(
            f"{path} was written by a run of another identity than {path.parent.parent / SETTINGS} (settings "
            f"hash {meta['settings_hash']}, weights {meta.get('weights')!r}; the run's: {want_hash}, weights "
            f"{weights!r}). Shards of two runs are never merged: {OPTIONS}."
        )


def shard_done(out: Path, index: int, want_hash: str, settings: dict) -> bool:
    """Whether shard ``index`` is already written by a run of this identity (another identity: an error).
    A damaged shard file is deleted, with a warning, and counts as not done."""
    path = shard_path(out, index)
    if not path.exists():
        return False
    try:
        _, meta = read_shard(path)
    except DamagedShard as e:
        warnings.warn(f"{e}: deleted, the shard is computed again", stacklevel=3)
        path.unlink(missing_ok=True)
        return False
    check_shard(path, meta, want_hash, settings)
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
