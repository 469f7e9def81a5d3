"""The known Nemotron-H checkpoints: their public configurations, kept in the package, usable offline.

One JSON file per checkpoint in ``nemo_explore/checkpoints/registry/``, shaped like the hub's
``config.json`` (the ``config`` object holds native ``NemotronHConfig`` fields, the layer pattern as the
published ``hybrid_override_pattern`` string), next to where each value comes from (``source``) and which
values are inferred rather than stated by a source (``inferred``: field -> reason). JSON rather than a
Python table so that an entry can be diffed against the hub's own config.json field by field.

    >>> cfg = get("nvidia/Nemotron-H-8B-Base-8K")     # a fresh transformers NemotronHConfig
    >>> entry("Nemotron-H-8B-Base-8K").source          # case and the 'nvidia/' prefix are optional
"""

from __future__ import annotations

import difflib
import functools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from transformers import NemotronHConfig

__all__ = ["Entry", "UnknownCheckpointError", "entry", "get", "lookup", "names"]

DATA_DIR = Path(__file__).with_name("registry")


class UnknownCheckpointError(KeyError):
    """A name the registry does not know; the message lists the closest known names."""

    def __str__(self) -> str:  # KeyError would print the message with quotes
        return str(self.args[0])


@dataclass(frozen=True)
class Entry:
    """One checkpoint: its hub name, other names it goes by, its configuration and the provenance."""

    name: str
    config: dict[str, Any]
    source: str
    inferred: dict[str, str] = field(default_factory=dict)
    aliases: tuple[str, ...] = ()
    notes: str = ""

    def to_config(self) -> NemotronHConfig:
        """A fresh ``transformers.NemotronHConfig`` (``layers_block_type`` set from the pattern)."""
        from transformers import NemotronHConfig

        cfg = NemotronHConfig(**self.config)
        cfg._name_or_path = self.name
        return cfg


@functools.cache
def _entries() -> dict[str, Entry]:
    found = {}
    for path in sorted(DATA_DIR.glob("*.json")):
        raw = json.loads(path.read_text())
        e = Entry(
            name=raw["name"],
            config=raw["config"],
            source=raw["source"],
            inferred=raw.get("inferred", {}),
            aliases=tuple(raw.get("aliases", ())),
            notes=raw.get("notes", ""),
        )
        found[e.name] = e
    return found


@functools.cache
def _index() -> dict[str, str]:
    """Every accepted spelling, lower-cased (full id, alias, or the part after 'nvidia/') -> name."""
    index = {}
    for e in _entries().values():
        for n in (e.name, *e.aliases):
            index[n.lower()] = e.name
            index[n.split("/")[-1].lower()] = e.name
    return index


def names() -> list[str]:
    """The hub names of every known checkpoint."""
    return list(_entries())


def lookup(name: str) -> Entry | None:
    """The entry for ``name`` (hub id or alias, any case, 'nvidia/' optional), or None."""
    key = _index().get(str(name).strip().lower())
    return _entries()[key] if key else None


def entry(name: str) -> Entry:
    """The entry for ``name``; an unknown name raises ``UnknownCheckpointError`` naming close ones."""
    found = lookup(name)
    if found is None:
        raise unknown_error(name)
    return found


def get(name: str) -> NemotronHConfig:
    """The ``transformers.NemotronHConfig`` of a known checkpoint, offline and without remote code."""
    return entry(name).to_config()


def close_names(name: str, n: int = 3) -> list[str]:
    """Known names that look like ``name`` (for error messages)."""
    spellings = _index()
    key = str(name).strip().lower()
    close = difflib.get_close_matches(key, spellings, n=2 * n, cutoff=0.5)
    close += difflib.get_close_matches(key.split("/")[-1], spellings, n=2 * n, cutoff=0.5)
    out: list[str] = []
    for c in close:
        if spellings[c] not in out:
            out.append(spellings[c])
    return out[:n]


def unknown_error(name: str, *, why: str = "") -> UnknownCheckpointError:
    close = close_names(name)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    return UnknownCheckpointError(
        f"{name!r} is not a known Nemotron-H checkpoint{why}.{hint} "
        f"Known: {', '.join(names())} (nemo_explore.checkpoints.registry.names())."
    )
