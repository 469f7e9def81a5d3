"""The tiny checkpoint's training pipeline runs end to end on a CPU: data cleaning and splitting, tokenizer,
both training phases, export in HF's format, measurement and DATA.md — a few steps on a small text instead
of the Debian corpus (which needs ``apt-get download``; see scripts/tiny_data.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer, NemotronHForCausalLM

from nemo_explore.checkpoints import tiny_path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import tiny_data  # noqa: E402


def test_clean_makes_plain_ascii_punctuation():
    text = "“Quoted” — it’s\tdone…  \n\n\n\nNext"
    assert tiny_data.clean(text) == '"Quoted" -- it\'s done...\n\nNext'


def test_sentences_keeps_plain_sentences_only():
    text = "Short one. The cat sat on the warm mat by the door.\nIt was\nvery happy sitting there! X = [1]."
    assert tiny_data.sentences(text) == [
        "The cat sat on the warm mat by the door.",
        "It was very happy sitting there!",
    ]


def test_every_twentieth_document_is_held_out():
    corpus = tiny_data.from_text("\n\n".join(f"Paragraph number {i}." for i in range(1, 61)))
    held = corpus.heldout["text"]
    assert held == ["Paragraph number 20.", "Paragraph number 40.", "Paragraph number 60."]
    assert not set(held) & set(corpus.train["text"]) and len(corpus.train["text"]) == 57


@pytest.mark.slow
def test_training_script_end_to_end(tmp_path):
    out = tmp_path / "tiny"
    text = (tiny_path() / "heldout.txt").read_text()
    (tmp_path / "corpus.txt").write_text(text)
    cmd = [sys.executable, str(ROOT / "scripts/train_tiny.py"), "--corpus-text", str(tmp_path / "corpus.txt")]
    cmd += ["--steps", "3", "--phase1-max", "2", "--log-every", "1", "--threads", "1", "--out", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    for name in ("model.safetensors", "tokenizer.json", "heldout.txt", "heldout_sentences.txt", "DATA.md"):
        assert (out / name).is_file(), name
    info = json.loads((out / "metrics.json").read_text())
    assert info["phase1_steps"] == 2 and [e["step"] for e in info["loss_log"]] == [1, 2, 3, 4, 5]
    assert {"copying", "text_induction", "induction", "prose", "mamba", "moe"} <= set(info["metrics"])
    assert info["metrics"]["prose"]["loss"] != info["metrics_at_init"]["prose"]["loss"]
    # what it wrote is an ordinary HF checkpoint, with the tokenizer it trained
    model = NemotronHForCausalLM.from_pretrained(out).eval()
    tok = AutoTokenizer.from_pretrained(out)
    assert set(model.config.layers_block_type) == {"linear_attention", "full_attention", "mlp", "moe"}
    ids = tok("The cat sat.", return_tensors="pt")["input_ids"]
    assert ids[0, 0] == tok.bos_token_id and torch.isfinite(model(ids).logits).all()
    assert "## What it learned" in (out / "DATA.md").read_text()
