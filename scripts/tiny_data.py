"""Training text for the bundled tiny checkpoint: where it comes from, how it is cleaned and split.

Both sources are Debian packages at pinned versions, fetched with ``apt-get download`` (no web needed), and
both allow redistribution:

- *The Devil's Dictionary* by Ambrose Bierce (1911), public domain: Debian ``dict-devil``.
- The Python 3.11 documentation sources (tutorial, FAQ, HOWTOs, language reference, glossary, setup and
  usage), PSF License Version 2: Debian ``python3.11-doc``.

Every 10th Bierce entry is held out: neither the tokenizer nor the model sees it, and it is shipped next to
the checkpoint as ``heldout.txt`` for the "loss on unseen prose" measurement.
"""

from __future__ import annotations

import gzip
import hashlib
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

PACKAGES = {"dict-devil": "1.0-13.1", "python3.11-doc": "3.11.2-6+deb12u9"}
DEVIL = "usr/share/dictd/devil"
DOCS = "usr/share/doc/python3.11/html/_sources"
DOC_PARTS = ("tutorial", "faq", "howto", "reference", "using", "installing", "glossary.rst.txt")
HOLDOUT_EVERY = 10

_B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


@dataclass
class Corpus:
    """``train``: documents the tokenizer and model learn from;  ``heldout``: unseen Bierce prose."""

    train: list[str]
    heldout: str

    def sha256(self) -> str:
        h = hashlib.sha256()
        for doc in self.train:
            h.update(doc.encode())
            h.update(b"\0")
        h.update(self.heldout.encode())
        return h.hexdigest()


def fetch(cache: Path) -> Path:
    """Download the pinned .deb files into ``cache`` and unpack them; returns the unpacked root."""
    cache = Path(cache)
    root = cache / "root"
    if (root / (DEVIL + ".index")).is_file() and (root / DOCS).is_dir():
        return root
    cache.mkdir(parents=True, exist_ok=True)
    specs = [f"{name}={version}" for name, version in PACKAGES.items()]
    done = subprocess.run(["apt-get", "download", *specs], cwd=cache, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(
            f"apt-get download {' '.join(specs)} failed:\n{done.stderr.strip()}\n"
            "Run `apt-get update` first; if Debian has moved on from these versions, edit PACKAGES in "
            "scripts/tiny_data.py (the corpus hash printed by train_tiny.py will then differ from DATA.md)."
        )
    for deb in sorted(cache.glob("*.deb")):
        subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True)
    return root


def _b64(s: str) -> int:
    n = 0
    for ch in s:
        n = n * 64 + _B64.index(ch)
    return n


def bierce_entries(root: Path) -> list[str]:
    """The dictionary's entries in book order (dictd index: headword, base64 offset, base64 length)."""
    with gzip.open(Path(root) / (DEVIL + ".dict.dz"), "rb") as f:
        data = f.read()
    spans = set()
    for line in (Path(root) / (DEVIL + ".index")).read_text().splitlines():
        word, off, size = line.split("\t")
        if not word.startswith("00database"):
            spans.add((_b64(off), _b64(size)))
    return [data[o : o + n].decode("latin-1").strip("\n") for o, n in sorted(spans)]


_ROLE = re.compile(r":[\w:+-]+:`!?~?([^`<]*?)\s*(?:<[^>]*>)?`")
_LINK = re.compile(r"`([^`<]+?)\s*<[^>]*>`_+")
_HEADING = re.compile(r"^([=\-~^\"#*+`'.:_])\1{2,}\s*$")


def _clean_paragraph(block: list[str]) -> str | None:
    """One reST paragraph -> plain prose, or None for markup, code, tables and headings."""
    first = block[0]
    if first[:1].isspace() or first.startswith(("..", ">>>", "|", "+-", "=")):
        return None
    if any(_HEADING.match(line) for line in block):
        return None
    text = "\n".join(line.rstrip() for line in block)
    text = _ROLE.sub(lambda m: m.group(1).split(".")[-1] if "~" in m.group(0) else m.group(1), text)
    text = _LINK.sub(r"\1", text).replace("``", "").replace("\\", "")
    text = re.sub(r"`([^`]+)`_*", r"\1", text)
    text = re.sub(r"::$", ":", text)
    prose = sum(ch.isalpha() or ch in " \n,.;'" for ch in text)
    return text if len(text) >= 40 and prose >= 0.85 * len(text) else None


def python_doc_pages(root: Path) -> list[str]:
    """Prose paragraphs of the selected documentation pages, one string per page (path order)."""
    base = Path(root) / DOCS
    files = []
    for part in DOC_PARTS:
        p = base / part
        files += sorted(p.rglob("*.rst.txt")) if p.is_dir() else [p]
    pages = []
    for path in files:
        blocks, block = [], []
        for line in path.read_text(encoding="utf-8").splitlines() + [""]:
            if line.strip():
                block.append(line)
            elif block:
                blocks.append(block)
                block = []
        paras = [p for p in map(_clean_paragraph, blocks) if p]
        if paras:
            pages.append("\n\n".join(paras))
    return pages


def build_corpus(root: Path) -> Corpus:
    """Train documents (Bierce minus held-out entries, then the Python docs pages) and held-out prose."""
    entries = bierce_entries(root)
    held = entries[HOLDOUT_EVERY - 1 :: HOLDOUT_EVERY]
    kept = [e for i, e in enumerate(entries) if (i + 1) % HOLDOUT_EVERY]
    return Corpus(train=["\n\n".join(kept), *python_doc_pages(root)], heldout="\n\n".join(held) + "\n")


if __name__ == "__main__":
    import sys

    corpus = build_corpus(fetch(Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/nemo_tiny_data")))
    sizes = [len(d) for d in corpus.train]
    print(f"train: {len(sizes)} documents, {sum(sizes):,} characters (Bierce {sizes[0]:,})")
    print(f"held out: {len(corpus.heldout):,} characters;  sha256 {corpus.sha256()}")
