"""Checkpoints bundled with the package (read-only data; ``scripts/train_tiny.py`` rebuilds them)."""

from __future__ import annotations

from pathlib import Path

_TINY = Path(__file__).resolve().parent / "tiny"


def tiny_path() -> Path:
    """Directory of the bundled tiny Nemotron-H: config.json, model.safetensors, tokenizer, DATA.md."""
    if not (_TINY / "config.json").is_file():
        raise FileNotFoundError(
            f"the bundled tiny checkpoint is missing from {_TINY}: reinstall nemo-explore, "
            "or rebuild it with `python scripts/train_tiny.py`"
        )
    return _TINY
