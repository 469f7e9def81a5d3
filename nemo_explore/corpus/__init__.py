"""Corpus statistics: stream a corpus through a model and reduce per-block statistics inside hooks.

    result = nemo_explore.corpus.collect(model, texts_or_path_or_dataset, out="stats/")
    result.table("moe_experts").to_pandas()
    nemo_explore.corpus.load("stats/")

Also a command line: ``python -m nemo_explore.corpus collect|merge ...`` (works under ``torchrun``).
The readers and token classes (``text``) import without pyarrow; the rest needs the ``corpus`` extra.
"""

from __future__ import annotations

from .text import CLASSES, demo_corpus, read_documents, token_classes

__all__ = [
    "CLASSES",
    "Context",
    "CorpusResult",
    "collect",
    "demo_corpus",
    "load",
    "merge",
    "read_documents",
    "token_classes",
]

_LAZY = {
    "collect": "driver",
    "merge": "driver",
    "CorpusResult": "result",
    "Context": "result",
    "load": "result",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib  # noqa: PLC0415

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
