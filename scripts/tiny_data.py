"""Training text for the bundled tiny checkpoint: where it comes from, how it is cleaned and split.

Every source is a Debian package fetched with ``apt-get download`` (no web needed) whose text may be
redistributed, and so may a model trained on it:

- ``kjv``: the King James Bible, a document per chapter; public domain (Debian's packaging is GPL-2+);
  ``bible-kjv-text``, decoded by ``bible`` from ``bible-kjv``.
- ``fortunes``: fortune cookies, a document per cookie; BSD (the fortune-mod collection); ``fortunes``,
  ``fortunes-min``.
- ``jargon``: The Jargon File 4.4.7, prose paragraphs; public domain; ``jargon-text``.
- ``devil``: The Devil's Dictionary (Ambrose Bierce, 1911); public domain; ``dict-devil``.
- ``wordnet``: WordNet 3.0 glosses and example sentences; WordNet 3.0 licence (BSD-like); ``wordnet-base``.
- ``python``: the Python 3.11 documentation, prose paragraphs; PSF License Version 2; ``python3.11-doc``.

Held out: every ``HOLDOUT_EVERY``-th document of each source. Neither the tokenizer nor the model sees them;
``heldout_sample`` takes the shipped evaluation text from them (``heldout.txt`` beside the checkpoint).
The versions actually fetched are recorded with the corpus hash, so a Debian update shows up as a new hash.
"""

from __future__ import annotations

import gzip
import hashlib
import re
import subprocess
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

PACKAGES = (
    "bible-kjv-text",
    "bible-kjv",
    "fortunes",
    "fortunes-min",
    "jargon-text",
    "dict-devil",
    "wordnet-base",
    "python3.11-doc",
)
LICENCES = {
    "kjv": "public domain (the text; Debian's packaging of it is GPL-2+)",
    "fortunes": "BSD (the fortune-mod collection, per Debian's copyright file)",
    "jargon": "public domain",
    "devil": "public domain",
    "wordnet": "WordNet 3.0 licence (permissive, BSD-like)",
    "python": "PSF License Version 2",
}
HOLDOUT_EVERY = 20
WORDNET_EVERY = 4  # every 4th synset: the glosses would otherwise be a third of the text
DEVIL = "usr/share/dictd/devil"
DOCS = "usr/share/doc/python3.11/html/_sources"
DOC_PARTS = ("tutorial", "faq", "howto", "reference", "using", "installing", "glossary.rst.txt")
_B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
_TYPOGRAPHY = str.maketrans({"‘": "'", "’": "'", "“": '"', "”": '"', "—": "--", "–": "-", "…": "..."})


@dataclass
class Corpus:
    """``train`` / ``heldout``: source name -> documents; ``versions``: package -> Debian version."""

    train: dict[str, list[str]]
    heldout: dict[str, list[str]]
    versions: dict[str, str] = field(default_factory=dict)

    def sha256(self) -> str:
        h = hashlib.sha256()
        for part in (self.train, self.heldout):
            for name in sorted(part):
                for doc in part[name]:
                    h.update(doc.encode() + b"\0")
        return h.hexdigest()

    def train_docs(self) -> list[str]:
        return [doc for name in sorted(self.train) for doc in self.train[name]]


def fetch(cache: Path) -> tuple[Path, dict[str, str]]:
    """Download the packages into ``cache`` and unpack them; returns the root and the fetched versions."""
    cache = Path(cache)
    root = cache / "root"
    if not list(cache.glob("*.deb")):
        cache.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(["apt-get", "download", *PACKAGES], cwd=cache, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(
                f"apt-get download {' '.join(PACKAGES)} failed:\n{done.stderr.strip()}\n"
                "Run `apt-get update` first (the script needs Debian's package lists, not the web)."
            )
    versions = {}
    for deb in sorted(cache.glob("*.deb")):
        name, version = deb.name.split("_")[:2]
        versions[name] = version.replace("%3a", ":")
        if not (root / ".unpacked" / deb.name).exists():
            subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True)
            (root / ".unpacked").mkdir(parents=True, exist_ok=True)
            (root / ".unpacked" / deb.name).touch()
    return root, versions


def clean(text: str) -> str:
    """NFKC, ASCII quotes and dashes, tabs to spaces, no trailing spaces, at most one blank line."""
    text = unicodedata.normalize("NFKC", text).translate(_TYPOGRAPHY).replace("\t", " ")
    text = "\n".join(line.rstrip() for line in text.splitlines())
    return re.sub(r"\n{3,}", "\n\n", text).strip()


def _prose_like(text: str, share: float = 0.85) -> bool:
    return sum(ch.isalpha() or ch in " \n,.;:'\"!?-()" for ch in text) >= share * len(text)


def kjv_chapters(root: Path) -> list[str]:
    """One document per chapter: its verses as running text (no numbers), decoded by Debian's ``bible``."""
    out = subprocess.run(
        [str(root / "usr/bin/bible"), "-p", str(root / "usr/lib"), "-l0", "gen1:1-rev22:21"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    chapters, verses = [], []
    for line in out.splitlines():
        m = re.match(r"\s+\d+ (.*)", line)
        if m:
            verses.append(m.group(1).strip())
        elif line.strip() and verses:
            chapters.append(" ".join(verses))
            verses = []
    if verses:
        chapters.append(" ".join(verses))
    return [clean(c) for c in chapters]


def fortunes(root: Path) -> list[str]:
    """Every cookie of the English fortune files that reads as prose (no ASCII art, no code)."""
    docs = []
    for path in sorted((root / "usr/share/games/fortunes").iterdir()):
        if path.suffix or not path.is_file():
            continue  # .dat indexes and .u8 links
        for cookie in path.read_text(encoding="utf-8", errors="replace").split("\n%\n"):
            cookie = clean(cookie.strip("%\n"))
            if len(cookie) >= 20 and _prose_like(cookie):
                docs.append(cookie)
    return docs


def jargon_entries(root: Path) -> list[str]:
    """The Jargon File's prose paragraphs (indentation undone, lines rejoined), ten to a document."""
    with gzip.open(root / "usr/share/doc/jargon-text/jargon.txt.gz", "rt", encoding="utf-8") as f:
        text = f.read()
    paras = [clean(" ".join(line.strip() for line in p.splitlines())) for p in re.split(r"\n\s*\n", text)]
    paras = [p for p in paras if len(p) >= 80 and _prose_like(p, 0.9)]
    return ["\n\n".join(paras[i : i + 10]) for i in range(0, len(paras), 10)]


def _b64(s: str) -> int:
    n = 0
    for ch in s:
        n = n * 64 + _B64.index(ch)
    return n


def devil_entries(root: Path) -> list[str]:
    """The dictionary's entries in book order (dictd index: headword, base64 offset, base64 length)."""
    with gzip.open(root / (DEVIL + ".dict.dz"), "rb") as f:
        data = f.read()
    spans = set()
    for line in (root / (DEVIL + ".index")).read_text().splitlines():
        word, off, size = line.split("\t")
        if not word.startswith("00database"):
            spans.add((_b64(off), _b64(size)))
    return [clean(data[o : o + n].decode("latin-1")) for o, n in sorted(spans)]


def wordnet_glosses(root: Path) -> list[str]:
    """``word: gloss; "example"`` for every ``WORDNET_EVERY``-th synset, fifty to a document."""
    lines = []
    for part in ("noun", "verb", "adj", "adv"):
        for k, line in enumerate((root / f"usr/share/wordnet/data.{part}").read_text().splitlines()):
            if line.startswith("  ") or "|" not in line or k % WORDNET_EVERY:
                continue
            word = line.split(" ")[4].replace("_", " ")
            lines.append(clean(f"{word}: {line.split('|', 1)[1].strip()}"))
    return ["\n".join(lines[i : i + 50]) for i in range(0, len(lines), 50)]


_ROLE = re.compile(r":[\w:+-]+:`!?~?([^`<]*?)\s*(?:<[^>]*>)?`")
_LINK = re.compile(r"`([^`<]+?)\s*<[^>]*>`_+")
_HEADING = re.compile(r"^([=\-~^\"#*+`'.:_])\1{2,}\s*$")


def _rst_paragraph(block: list[str]) -> str | None:
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
    return clean(text) if len(text) >= 40 and _prose_like(text) else None


def python_doc_pages(root: Path) -> list[str]:
    """Prose paragraphs of the selected documentation pages, one document per page (path order)."""
    base = root / DOCS
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
        paras = [p for p in map(_rst_paragraph, blocks) if p]
        if paras:
            pages.append("\n\n".join(paras))
    return pages


READERS = {
    "kjv": kjv_chapters,
    "fortunes": fortunes,
    "jargon": jargon_entries,
    "devil": devil_entries,
    "wordnet": wordnet_glosses,
    "python": python_doc_pages,
}


def build_corpus(root: Path, versions: dict[str, str] | None = None) -> Corpus:
    """Read every source and split it: every ``HOLDOUT_EVERY``-th document is held out."""
    train, held = {}, {}
    for name, read in READERS.items():
        docs = [d for d in read(Path(root)) if d]
        held[name] = docs[HOLDOUT_EVERY - 1 :: HOLDOUT_EVERY]
        train[name] = [d for i, d in enumerate(docs) if (i + 1) % HOLDOUT_EVERY]
    return Corpus(train=train, heldout=held, versions=dict(versions or {}))


def from_text(text: str) -> Corpus:
    """A corpus from one text (paragraphs as documents) for smoke runs with no Debian packages at hand."""
    docs = [clean(p) for p in text.split("\n\n") if p.strip()]
    return Corpus(
        train={"text": [d for i, d in enumerate(docs) if (i + 1) % HOLDOUT_EVERY]},
        heldout={"text": docs[HOLDOUT_EVERY - 1 :: HOLDOUT_EVERY]},
    )


def heldout_sample(corpus: Corpus, chars_per_source: int = 12_000) -> str:
    """The shipped evaluation text: whole held-out documents, about ``chars_per_source`` of each prose
    source (WordNet's glosses are not prose and are left out), sources in name order."""
    parts = []
    for name in sorted(corpus.heldout):
        if name == "wordnet":
            continue
        taken = 0
        for doc in corpus.heldout[name]:
            if taken >= chars_per_source:
                break
            doc = doc[: chars_per_source - taken + 2000]  # a long chapter: cut, not whole
            parts.append(doc)
            taken += len(doc)
    return "\n\n".join(parts) + "\n"


def sentences(text: str, min_words: int = 6, max_words: int = 20) -> list[str]:
    """Plain sentences of ``text``: one line, starting with a capital, ending in . ! or ?, letters mostly."""
    flat = re.sub(r"\s+", " ", text)
    out = []
    for s in re.split(r"(?<=[.!?])\s+(?=[A-Z])", flat):
        s = s.strip()
        n = len(s.split())
        if min_words <= n <= max_words and s[0].isupper() and s[-1] in ".!?" and _prose_like(s, 0.95):
            out.append(s)
    return out


if __name__ == "__main__":
    import sys

    root, versions = fetch(Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/nemo_tiny_data"))
    corpus = build_corpus(root, versions)
    for name in READERS:
        tr, he = corpus.train[name], corpus.heldout[name]
        print(f"{name:9s} train {len(tr):6,} docs {sum(map(len, tr)):11,} chars   held out {len(he):5,} docs")
    print(f"versions {versions}\nsha256 {corpus.sha256()}")
