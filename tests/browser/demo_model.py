"""A random-weight Nemotron-H with a character tokenizer, for the widget tests and the browser notebook.

Every character is a token, plus a few whole-word tokens (``<script>``, ``</script>``) that test escaping.
"""

from __future__ import annotations

import string
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests/: models.py

WORDS = ["<script>", "</script>", "<!--"]
PATTERN = "M*ME-M*E"


def char_tokenizer():
    """A PreTrainedTokenizerFast: one token per printable character (space, tab, newline included)."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<s>", "</s>", "<unk>"]
    chars = sorted(set(string.printable) - set("\x0b\x0c\r"))
    vocab = {t: i for i, t in enumerate(specials + chars)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("[\\s\\S]"), behavior="isolated")
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )
    fast.add_tokens(WORDS)
    return fast


def demo_model(pattern: str = PATTERN, seed: int = 0):
    """``nemo_explore.load`` of a random model (``tests/models.py``) with the character tokenizer."""
    from models import random_model

    import nemo_explore as ne

    tok = char_tokenizer()
    return ne.load(random_model(pattern, seed=seed, vocab_size=len(tok)), tokenizer=tok)
