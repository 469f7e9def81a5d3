"""CorpusResult: the tables and manifest of a corpus run, with the accessors a view needs."""

from __future__ import annotations

import html
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..core.layer_types import canonical
from . import store
from .tables import UNIT_TABLES


@dataclass(frozen=True)
class Context:
    """One top context of a unit: the window of tokens (±window, within the row) around ``position`` of
    document ``doc``, ``tokens[centre]`` being the token itself; ``values``: one shading value per token
    (MoE: this expert's routing weight, 0 where not chosen; Mamba: this head's state norm; attention: this
    query's pattern weight on each key, 0 after the query)."""

    kind: str
    block: int
    unit: int
    rank: int
    score: float
    doc: int
    position: int
    centre: int
    token_ids: list[int]
    tokens: list[str]
    values: list[float]


class CorpusResult:
    """Corpus statistics: ``table(name)`` (pyarrow), ``to_pandas(name)``, ``matrix(kind, column)``,
    ``contexts(kind, block, unit)``, ``blocks(kind)``, ``manifest``; ``path`` where it is saved (or None)."""

    def __init__(self, tables: dict[str, pa.Table], manifest: dict, path: Path | None = None) -> None:
        self._tables, self.manifest, self.path = tables, manifest, path

    @property
    def table_names(self) -> list[str]:
        return list(self._tables)

    def table(self, name: str) -> pa.Table:
        if name not in self._tables:
            raise KeyError(f"no table {name!r}; this result has {', '.join(self._tables)}")
        return self._tables[name]

    def to_pandas(self, name: str):
        """The table as a pandas DataFrame (pandas must be installed)."""
        return self.table(name).to_pandas()

    def kinds(self) -> list[str]:
        return [k for k, t in UNIT_TABLES.items() if t in self._tables]

    def _kind(self, kind: str) -> str:
        k = canonical(kind)
        if k not in self.kinds():
            raise KeyError(f"no {k} statistics in this result (it has: {', '.join(self.kinds()) or 'none'})")
        return k

    def blocks(self, kind: str) -> list[int]:
        """Indices of the blocks of ``kind`` with statistics."""
        return sorted(set(self.table(UNIT_TABLES[self._kind(kind)]).column("block").to_pylist()))

    def columns(self, kind: str) -> list[str]:
        """The per-unit scores of ``kind`` that ``matrix`` accepts."""
        t = self.table(UNIT_TABLES[self._kind(kind)])
        return [c for c in t.column_names if c not in ("block", "expert", "head")]

    def matrix(self, kind: str, column: str) -> tuple[list[int], list[int], np.ndarray]:
        """``(blocks, units, values)``: one per-unit score as a ``(len(blocks), len(units))`` float array
        (units: experts of MoE blocks, heads otherwise)."""
        kind = self._kind(kind)
        t = self.table(UNIT_TABLES[kind])
        if column not in self.columns(kind):
            raise KeyError(f"{kind} has no column {column!r}; choose one of {', '.join(self.columns(kind))}")
        unit = "expert" if "expert" in t.column_names else "head"
        blocks, units = self.blocks(kind), sorted(set(t.column(unit).to_pylist()))
        values = np.full((len(blocks), len(units)), np.nan)
        b = np.searchsorted(blocks, t.column("block").to_numpy())
        values[b, t.column(unit).to_numpy()] = t.column(column).to_numpy(zero_copy_only=False).astype(float)
        return blocks, units, values

    def contexts(self, kind: str, block: int, unit: int) -> list[Context]:
        """The top contexts of one expert / head, best first."""
        kind = self._kind(kind)
        t = self.table("contexts")
        keep = pc.and_(
            pc.and_(pc.equal(t["kind"], kind), pc.equal(t["block"], block)), pc.equal(t["unit"], unit)
        )
        rows = t.filter(keep).sort_by("rank").to_pylist()
        return [Context(**r) for r in rows]

    def __repr__(self) -> str:
        m = self.manifest
        where = f", saved in {self.path}" if self.path else ""
        lines = [
            f"CorpusResult({m['model']['name']}: {m['documents']} documents, {m['tokens']} tokens, "
            f"{m['shards']} shards{where})"
        ]
        lines += [
            f"  {name}: {t.num_rows} rows × {', '.join(t.column_names)}" for name, t in self._tables.items()
        ]
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        head, *rest = repr(self).splitlines()
        items = "".join(f"<li><code>{html.escape(r.strip())}</code></li>" for r in rest)
        return f"<div><b>{html.escape(head)}</b><ul>{items}</ul></div>"


def load(path: str | Path) -> CorpusResult:
    """Reopen a saved result (a directory written by ``collect(..., out=DIR)`` or ``merge(DIR)``)."""
    path = Path(path)
    tables, manifest = store.read_result(path)
    return CorpusResult(tables, manifest, path)
