"""Corpus readers (any form of ``data`` -> documents) and the token-class rule.

Kept free of pyarrow and torch-heavy imports so that scripts can import the token classes alone.
"""

from __future__ import annotations

import contextlib
import os
import weakref
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CLASSES = ("space", "word start", "word piece", "digit", "punct", "special")


def token_class(text: str, special: bool = False) -> int:
    """The class (index into ``CLASSES``) of one token, from its text decoded alone.

    - ``special``: the tokenizer's special tokens (``<s>``, ``</s>``, ``<pad>``, ...): pass ``special=True``
      (their text says nothing about the class: ``<s>`` is not punctuation);
    - ``space``: whitespace only (spaces, newlines, tabs);
    - ``word start``: a letter after leading whitespace (``' the'``, ``'\\nThe'``), or a capital letter with
      none (``'In'`` at the start of a text, ``'The'`` after a quote): a capital starts a word;
    - ``word piece``: a lower-case letter with no whitespace before it (``'ats'`` in ``' c' 'ats'``), or an
      apostrophe before a lower-case letter (``"'s"``, ``"'t"``: a clitic ends a word);
    - ``digit``: a digit after optional whitespace (``'4'``, ``' 198'``);
    - ``punct``: anything else (punctuation, symbols, control characters, bytes of a multi-byte character).
    """
    if special:
        return 5
    stripped = text.lstrip()
    if not stripped:
        return 0
    first = stripped[0]
    if first.isalpha():
        return 1 if stripped != text or first.isupper() else 2
    if first.isdigit():
        return 3
    if first in "'\u2019" and stripped[1:2].islower() and stripped == text:
        return 2
    return 4


def token_classes(tokenizer):
    """``(vocab,)`` long tensor: the class of every token id, from its text decoded alone and the tokenizer's
    special ids (remembered per tokenizer: a large vocabulary takes seconds to decode)."""
    import torch  # noqa: PLC0415 (kept light for scripts that only need CLASSES)

    with contextlib.suppress(KeyError, TypeError):
        return _CLASSES_OF[tokenizer].clone()
    special = set(getattr(tokenizer, "all_special_ids", ()))
    found = torch.tensor(
        [
            token_class(tokenizer.decode([i], clean_up_tokenization_spaces=False), i in special)
            for i in range(len(tokenizer))
        ]
    )
    with contextlib.suppress(TypeError):  # a tokenizer that cannot be weakly referenced is not remembered
        _CLASSES_OF[tokenizer] = found
    return found.clone()


_CLASSES_OF: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def demo_corpus() -> Path:
    """The held-out text of the bundled tiny checkpoint (documents separated by blank lines)."""
    return Path(__file__).resolve().parents[1] / "checkpoints" / "tiny" / "heldout.txt"


def read_documents(path: str | os.PathLike) -> Iterator[str]:
    """The documents of a text file: runs of lines separated by one or more blank lines (streamed)."""
    lines: list[str] = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                lines.append(line)
            elif lines:
                yield "".join(lines).rstrip("\n")
                lines = []
    if lines:
        yield "".join(lines).rstrip("\n")


@dataclass
class Corpus:
    """``data`` normalised: ``items`` yields ``(text, label or None)``; ``size`` is the number of items when
    known; ``description`` says what the data was (saved in the manifest, compared on resume)."""

    items: Iterable[tuple[str, str | None]]
    size: int | None
    description: dict[str, Any]


def open_corpus(
    data, text_column: str = "text", label_column: str | None = None, max_docs: int | None = None
) -> Corpus:
    """Any supported ``data`` -> a ``Corpus``: an iterable of strings, of ``(text, label)`` pairs or of
    dicts; a path to a text file; a Hugging Face ``Dataset`` / ``IterableDataset`` (duck-typed by
    ``column_names`` / ``features``)."""
    if max_docs is not None and (not isinstance(max_docs, int) or max_docs < 1):
        raise ValueError(f"max_docs must be a positive int or None, got {max_docs!r}")
    if isinstance(data, (str, os.PathLike)):
        path = Path(data)
        if not path.is_file():
            hint = " (to pass one document, wrap it in a list: [text])" if isinstance(data, str) else ""
            raise FileNotFoundError(f"corpus file {str(data)!r} does not exist{hint}")
        if label_column is not None:
            raise ValueError("a text file has no labels: drop label_column, or pass (text, label) pairs")
        desc = {
            "type": "text file",
            "path": str(path.resolve()),
            "bytes": path.stat().st_size,
            "documents": "separated by blank lines",
        }
        return _limited(Corpus(((t, None) for t in read_documents(path)), None, desc), max_docs)
    if isinstance(data, (bytes, Mapping)) or not isinstance(data, Iterable):
        raise TypeError(
            f"data must be an iterable of texts, (text, label) pairs or dicts, a path to a text file, or a "
            f"datasets Dataset / IterableDataset; got {type(data).__name__}"
        )
    size = len(data) if hasattr(data, "__len__") else None
    if _is_hf_dataset(data):
        columns = _columns(data)
        for col in (text_column, label_column):
            if col is not None and columns is not None and col not in columns:
                raise ValueError(f"the dataset has no column {col!r}; its columns: {', '.join(columns)}")
        desc = {
            "type": f"datasets.{type(data).__name__}",
            "columns": columns,
            "fingerprint": getattr(data, "_fingerprint", None),
            "rows": size,
        }
        info = getattr(data, "info", None)
        for key in ("dataset_name", "config_name"):
            if getattr(info, key, None):
                desc[key] = getattr(info, key)
    else:
        desc = {"type": type(data).__name__, "items": size}
    items = (_item(x, text_column, label_column, i) for i, x in enumerate(data))
    return _limited(Corpus(items, size, desc), max_docs)


def _limited(corpus: Corpus, max_docs: int | None) -> Corpus:
    if max_docs is None:
        return corpus
    corpus.description["max_docs"] = max_docs
    items = corpus.items

    def first() -> Iterator[tuple[str, str | None]]:
        for i, item in enumerate(items):
            if i >= max_docs:
                return
            yield item

    size = None if corpus.size is None else min(corpus.size, max_docs)
    return Corpus(first(), size, corpus.description)


def _is_hf_dataset(data) -> bool:
    return type(data).__module__.startswith("datasets.") and hasattr(data, "features")


def _columns(data) -> list[str] | None:
    names = getattr(data, "column_names", None)
    if names is None and getattr(data, "features", None) is not None:
        names = list(data.features)
    return None if names is None else list(names)


def _item(x, text_column: str, label_column: str | None, i: int) -> tuple[str, str | None]:
    """One element of the data -> ``(text, label)``; labels are strings (None: no label)."""
    if isinstance(x, str):
        if label_column is not None:
            raise ValueError(f"item {i} is a bare string, but label_column={label_column!r} was given")
        return x, None
    if isinstance(x, Mapping):
        if text_column not in x:
            raise ValueError(
                f"item {i} has no {text_column!r} field (fields: {', '.join(map(str, x))}); "
                "pass text_column=..."
            )
        text = x[text_column]
        if label_column is not None and label_column not in x:
            raise ValueError(f"item {i} has no {label_column!r} field (fields: {', '.join(map(str, x))})")
        label = None if label_column is None else x[label_column]
    elif isinstance(x, tuple | list) and len(x) == 2:
        text, label = x
    else:
        raise TypeError(
            f"item {i} is a {type(x).__name__}: items must be texts, (text, label) pairs or dicts"
        )
    if not isinstance(text, str):
        raise TypeError(f"item {i}: the text is a {type(text).__name__}, not a string")
    return text, None if label is None else str(label)
