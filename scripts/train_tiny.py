"""Train the tiny Nemotron-H bundled as ``nemo_explore/checkpoints/tiny`` (what ``load("tiny")`` returns).

    python scripts/train_tiny.py                    # fetch data, train, measure, write the checkpoint
    python scripts/train_tiny.py --steps 50 --out /tmp/tiny
    python scripts/train_tiny.py --corpus-text some.txt --phase1-max 2 --steps 3 --out /tmp/tiny  # smoke run
    python scripts/train_tiny.py --measure-only     # re-measure the checkpoint, rewrite metrics.json, DATA.md
    python scripts/train_tiny.py --report-only      # re-render DATA.md from metrics.json

Seeded and deterministic for a given torch build and thread count. The data come from Debian packages
(``scripts/tiny_data.py``; ``apt-get update`` once beforehand, no web needed). About 40 minutes on the
project's 2-core CPU (the measured time is in the checkpoint's DATA.md).

Training runs HF's own PyTorch forward in train mode (without the ``mamba_ssm`` kernels HF's Mamba takes
its PyTorch path; its fused training shortcut needs the kernels), so the saved weights are HF's by
construction. Measured on this shape (2M parameters, 16 × 128 tokens, 2 threads): 0.6 s a step, about
3,300 tokens/s; a third of it is matmuls, and a hand-written quadratic scan was no faster than HF's chunked
one (an earlier ~500 tokens/s was measured under load). What did cost 3× was subnormal floats late in
training: ``torch.set_flush_denormal(True)`` keeps every step at full speed.

The model: ``MEM*M-M`` — Mamba, MoE, Mamba, attention, Mamba, MLP, Mamba (the Mamba/MoE alternation of
Nemotron-3 Nano with one attention layer in the middle). Attention has no position embedding, so it learns
"which token came before me" from the two Mamba layers (short causal conv + scan) that precede it; that is
what lets a single attention layer form an induction head (query: my token; key: the token before you).
The MoE sits early, where a token's identity still dominates the residual stream, so its experts can split
tokens by kind.

Training (see ``train``): phase 1 shows only rows of repeated random spans until an induction head has
formed (about 500 steps at vocabulary 4096); phase 2 mixes prose windows, natural-text repeats (spans of the
training text said again after a short gap: what makes copying work on text people type; random repeats
alone did not) and a few random repeats. The unembedding is tied to the embedding while training and saved
untied. The router is kept balanced without an auxiliary loss, DeepSeek-V3 style: after each step every
expert's ``e_score_correction_bias`` moves by ``BIAS_RATE`` towards equal load.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
import tiny_data  # noqa: E402
import tiny_metrics  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SPECIALS = ["<pad>", "<s>", "</s>", "<unk>"]  # ids 0, 1, 2, 3: the config's pad/bos/eos ids
VOCAB = 4096
PATTERN = "MEM*M-M"
MODEL = dict(
    hidden_size=128,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=32,
    intermediate_size=512,
    mamba_num_heads=8,
    mamba_head_dim=32,
    ssm_state_size=16,
    n_groups=2,
    conv_kernel=4,
    chunk_size=64,
    n_routed_experts=8,
    num_experts_per_tok=2,
    moe_intermediate_size=128,
    moe_shared_expert_intermediate_size=256,
    routed_scaling_factor=2.5,
    max_position_embeddings=4096,
)
SEQ, BATCH = 128, 16
NATURAL_ROWS, RANDOM_ROWS = 6, 1  # of each phase-2 batch; the rest are prose windows
LR, WARMUP, WEIGHT_DECAY, BIAS_RATE = 3e-3, 30, 0.1, 1e-3
FORMED, PHASE1_MAX = 0.6, 600


def train_tokenizer(docs: list[str]):
    """Byte-level BPE (spaces and newlines stay visible as tokens), wrapped for ``AutoTokenizer``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB,
        min_frequency=2,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(docs, trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        clean_up_tokenization_spaces=False,
        model_max_length=4096,
    )


def build_model(tokenizer):
    from transformers import NemotronHConfig, NemotronHForCausalLM

    from nemo_explore.core.layer_types import to_hf

    cfg = NemotronHConfig(
        vocab_size=len(tokenizer),
        layers_block_type=to_hf(PATTERN),
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        **MODEL,
    )
    # dt clamped at time_step_min, as transformers <= 5.24 does whatever the config says; 5.25 reads the
    # limit from the config, so it is stated here and the checkpoint computes the same on both
    cfg.time_step_limit = (cfg.time_step_min, float("inf"))
    return NemotronHForCausalLM(cfg)


class Batches:
    """Rows of ``SEQ`` tokens led by ``<s>``, with labels (-100 where a token cannot be predicted).

    Four kinds of row:
    - *prose*: a window of the training text;
    - *natural repeats*: prose pieces and episodes ``S gap S`` where S is 4-40 tokens of the training text
      starting at a word and the gap 0-16 tokens of other text (sometimes none, sometimes a third copy),
      every token in the loss: real sentences repeated are what make copying work on text people type;
    - *tiled*: one span S of 8-39 uniformly random tokens repeated to the end of the row;
    - *random episodes*: like natural repeats, with S uniformly random tokens.
    A random span's first copy, and the first token of each later copy, are unpredictable and left out of
    the loss (they would teach a uniform prior).
    """

    def __init__(self, stream: np.ndarray, word_start: np.ndarray, vocab: int, bos: int, seed: int) -> None:
        self.stream, self.vocab, self.bos = stream, vocab, bos
        self.starts = np.flatnonzero(word_start[stream[:-64]])  # stream positions where a word begins
        self.rng = np.random.default_rng(seed)

    def _prose(self, n: int) -> np.ndarray:
        start = self.rng.integers(0, len(self.stream) - n)
        return self.stream[start : start + n]

    def _text_span(self, lo: int, hi: int) -> np.ndarray:
        start = self.starts[self.rng.integers(len(self.starts))]
        return self.stream[start : start + int(self.rng.integers(lo, hi))]

    def _random_span(self, lo: int, hi: int) -> np.ndarray:
        return self.rng.integers(len(SPECIALS), self.vocab, int(self.rng.integers(lo, hi)))

    def _prose_row(self) -> tuple[np.ndarray, np.ndarray]:
        return np.r_[self.bos, self._prose(SEQ - 1)], np.r_[False, np.ones(SEQ - 1, bool)]

    def _tiled_row(self) -> tuple[np.ndarray, np.ndarray]:
        s = self._random_span(8, 40)
        learn = np.ones(SEQ, bool)
        learn[: len(s) + 2] = False  # <s>, the first copy, and the second copy's first token
        return np.r_[self.bos, np.tile(s, SEQ // len(s) + 1)][:SEQ], learn

    def _episode_row(self, natural: bool) -> tuple[np.ndarray, np.ndarray]:
        ids, learn = [np.array([self.bos])], [np.array([False])]
        while sum(len(x) for x in ids) < SEQ:
            if self.rng.random() < 0.25:
                piece = self._prose(int(self.rng.integers(8, 48)))
                ids.append(piece)
                learn.append(np.ones(len(piece), bool))
                continue
            s = self._text_span(4, 41) if natural else self._random_span(4, 41)
            ids.append(s)
            learn.append(np.full(len(s), natural))
            for _ in range(2 if self.rng.random() < 0.2 else 1):
                gap = self._prose(int(self.rng.integers(0, 17))) if self.rng.random() < 0.6 else s[:0]
                ids += [gap, s]
                learn += [np.ones(len(gap), bool), np.r_[natural, np.ones(len(s) - 1, bool)]]
        return np.concatenate(ids)[:SEQ], np.concatenate(learn)[:SEQ]

    def __call__(self, synthetic_only: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """(ids, labels), each (BATCH, SEQ). Phase 2: prose rows, natural repeats, random repeats."""
        rows = []
        for r in range(BATCH):
            if synthetic_only:
                rows.append(self._tiled_row())
            elif r < BATCH - NATURAL_ROWS - RANDOM_ROWS:
                rows.append(self._prose_row())
            elif r < BATCH - RANDOM_ROWS:
                rows.append(self._episode_row(natural=True))
            else:
                rows.append(self._tiled_row() if self.rng.random() < 0.5 else self._episode_row(False))
        ids = torch.from_numpy(np.stack([r[0] for r in rows])).long()
        learn = torch.from_numpy(np.stack([r[1] for r in rows]))
        return ids, ids.masked_fill(~learn, -100)


def param_groups(model) -> list[dict]:
    decay, keep = [], []
    for name, p in model.named_parameters():
        no_decay = p.ndim < 2 or name.endswith(("A_log", "D", "dt_bias", "gate.weight"))  # router: no decay
        (keep if no_decay else decay).append(p)
    return [dict(params=decay, weight_decay=WEIGHT_DECAY), dict(params=keep, weight_decay=0.0)]


def train(
    model, batches: Batches, steps: int, probe, log_every: int, phase1_max: int = PHASE1_MAX
) -> tuple[list[dict], int]:
    """Two phases, AdamW, gradient clipping at 1. Returns the log and the length of phase 1.

    1. Repeated random spans only, at the full learning rate (after a linear warm-up), until the best
       attention head's induction score reaches ``FORMED`` (checked every 25 steps; at most
       ``phase1_max`` steps). Among prose the circuit forms far more slowly, if at all.
    2. ``steps`` steps of the mixed batches, the learning rate decaying along a cosine to 10%.
    """
    # Train with the unembedding tied to the embedding (one Parameter); saved untied, as Nemotron-H stores
    # them. Tying lets the copying half of the induction circuit form several times sooner at vocab 2048.
    model.lm_head.weight = model.model.embeddings.weight
    opt = torch.optim.AdamW(param_groups(model), lr=LR, betas=(0.9, 0.95))
    gates = [layer.mixer.gate for layer in model.model.layers if layer.block_type == "moe"]
    chosen: dict[int, torch.Tensor] = {}
    hooks = [
        gate.register_forward_hook(lambda _m, _i, out, k=k: chosen.__setitem__(k, out[2].detach()))
        for k, gate in enumerate(gates)
    ]
    log, start, phase1 = [], time.time(), None
    step, score = 0, 0.0
    while phase1 is None or step < phase1 + steps:
        if phase1 is None and (score >= FORMED or step == phase1_max):
            phase1 = step
            print(f"phase 2 from step {step}", flush=True)
        lr_scale = min(1.0, (step + 1) / WARMUP)
        if phase1 is not None:
            lr_scale *= 0.1 + 0.45 * (1 + math.cos(math.pi * (step - phase1) / steps))
        for group in opt.param_groups:
            group["lr"] = LR * lr_scale
        model.train()
        ids, labels = batches(synthetic_only=phase1 is None)
        loss = model(input_ids=ids, labels=labels).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        with torch.no_grad():  # auxiliary-loss-free balancing: push each expert's load towards the mean
            for k, gate in enumerate(gates):
                load = torch.bincount(chosen[k].reshape(-1), minlength=gate.num_experts).float()
                gate.e_score_correction_bias += BIAS_RATE * torch.sign(load.mean() - load)
        step += 1
        if phase1 is None and step % 25 == 0:
            model.eval()
            score = probe()
        if step % log_every == 0 or (phase1 is not None and step == phase1 + steps):
            model.eval()
            entry = dict(
                step=step,
                loss=round(loss.item(), 4),
                induction=round(probe(), 3),
                seconds=round(time.time() - start, 1),
            )
            log.append(entry)
            print("  ".join(f"{k} {v}" for k, v in entry.items()), flush=True)
    for h in hooks:
        h.remove()
    model.lm_head.weight = torch.nn.Parameter(model.model.embeddings.weight.detach().clone())
    model.eval()
    return log, phase1


def _moe_lines(info: dict) -> list[str]:
    """One paragraph per MoE block: mutual information, loads, and each expert's favourite class."""
    lines = []
    for block, r in info["metrics"]["moe"].items():
        names = r["class_names"]
        share, load = np.array(r["class_share_per_expert"]), np.array(r["expert_load"])
        base = load @ share  # each class's share of all tokens
        lift = np.where(base > 0.01, share / np.maximum(base, 1e-9), 0)  # classes under 1% ignored
        favourite = ", ".join(
            f"e{e} {names[c]} {share[e, c]:.0%} ({lift[e, c]:.1f}×)" for e, c in enumerate(lift.argmax(1))
        )
        lines += [
            f"- block {block}: I(class; top-1 expert) = **{r['mi_bits']:.3f} bits** of H(class) = "
            f"{r['class_entropy_bits']:.3f} bits. A random router of the same scale on the same trained "
            f"hidden states gets {info['moe_random_router_mi'][block]:.3f} bits (the class structure any "
            "router would find in the residual stream).",
            f"  Expert loads {', '.join(f'{x:.0%}' for x in load)}; classes of all tokens "
            f"{', '.join(f'{n} {x:.0%}' for n, x in zip(names, base, strict=True))}.",
            "  Each expert's most over-represented class, its share of the expert's tokens, and its lift "
            f"over the base rate: {favourite}.",
        ]
    return lines


def _model_lines(info: dict) -> list[str]:
    c = info["config"]
    return [
        f"`{PATTERN}` = {', '.join(c['layers_block_type'])}.",
        f"- Hidden size {c['hidden_size']}, vocabulary {c['vocab_size']}.",
        f"- Attention: {c['num_attention_heads']} query heads, {c['num_key_value_heads']} KV heads, head_dim "
        f"{c['head_dim']}, no position embedding.",
        f"- Mamba-2: {c['mamba_num_heads']} heads × {c['mamba_head_dim']}, {c['n_groups']} groups, state "
        f"{c['ssm_state_size']}, conv {c['conv_kernel']}, chunk {c['chunk_size']}.",
        f"- MoE: {c['n_routed_experts']} experts of width {c['moe_intermediate_size']}, "
        f"top-{c['num_experts_per_tok']}, sigmoid router, scaling {c['routed_scaling_factor']}, "
        f"a shared expert of width {c['moe_shared_expert_intermediate_size']}.",
        f"- MLP: width {c['intermediate_size']}, relu².",
        f"- {info['params']:,} parameters in float32: {info['bytes']:,} bytes of safetensors.",
        f"- Tokenizer: byte-level BPE of {c['vocab_size']} tokens trained with `tokenizers` on the training "
        "text (spaces and newlines are visible tokens); "
        "`<pad>` = 0, `<s>` = 1 (prepended to every text), `</s>` = 2, `<unk>` = 3.",
    ]


def _source_lines(info: dict) -> list[str]:
    versions = info.get("package_versions", {})
    packages = {
        "kjv": ("bible-kjv-text", "bible-kjv"),
        "fortunes": ("fortunes", "fortunes-min"),
        "jargon": ("jargon-text",),
        "devil": ("dict-devil",),
        "wordnet": ("wordnet-base",),
        "python": ("python3.11-doc",),
    }
    lines = [
        "| source | licence | Debian package | training characters | held-out documents |",
        "|---|---|---|---|---|",
    ]
    for name, chars in info["train_chars"].items():
        debs = ", ".join(f"`{p}` {versions.get(p, '?')}" for p in packages.get(name, ()))
        licence = tiny_data.LICENCES.get(name, "")
        lines.append(f"| {name} | {licence} | {debs} | {chars:,} | {info['heldout_docs'][name]:,} |")
    return lines


def write_data_md(out: Path, info: dict) -> None:
    """The checkpoint's README: model, data and licences, training, and the measured numbers."""
    m, init, c = info["metrics"], info["metrics_at_init"], info["config"]
    cp, cp0 = m["copying"], init["copying"]
    prose, mamba = m["prose"], m["mamba"]
    moe_block = next(iter(m["moe"]))

    def head(r: dict) -> str:
        return f"{r['best']['score']:.3f} (block {r['best']['block']}, head {r['best']['head']})"

    table = [
        ("measurement", "trained", "same seed, untrained"),
        ("---", "---", "---"),
        (
            f"copying, {cp['sentences']} held-out sentences S as `<s> S S`: first copy, nats/token",
            f"**{cp['first_copy']:.2f}**",
            f"{cp0['first_copy']:.2f}",
        ),
        ("second copy, nats/token", f"**{cp['second_copy']:.2f}**", f"{cp0['second_copy']:.2f}"),
        (
            "second copy with the attention block's output zeroed",
            f"**{cp['second_copy_attention_zeroed']:.2f}** "
            f"(+{cp['second_copy_attention_zeroed'] - cp['second_copy']:.2f})",
            f"{cp0['second_copy_attention_zeroed']:.2f}",
        ),
        (
            "induction, best head, repeats of held-out text",
            f"**{head(m['text_induction'])}**",
            head(init["text_induction"]),
        ),
        (
            "induction, best head, repeats of random ids",
            f"**{head(m['induction'])}**",
            head(init["induction"]),
        ),
        (
            f"held-out prose, {prose['tokens']:,} tokens = {prose['bytes']:,} bytes: nats/token",
            f"**{prose['loss']:.3f}**",
            f"{init['prose']['loss']:.3f} (uniform: ln {c['vocab_size']} = {prose['uniform']:.3f}; "
            f"unigram of the training text: {prose['unigram']:.3f})",
        ),
        ("bits per byte", f"**{prose['bits_per_byte']:.3f}**", f"{init['prose']['bits_per_byte']:.3f}"),
        (
            "Mamba half-lives ln2 / mean(dt·\\|A\\|), tokens",
            f"**{mamba['min_half_life']:.2f} – {mamba['max_half_life']:.0f}**",
            f"{init['mamba']['min_half_life']:.2f} – {init['mamba']['max_half_life']:.0f}",
        ),
        (
            f"MoE block {moe_block}: I(token class; top-1 expert)",
            f"**{m['moe'][moe_block]['mi_bits']:.3f} bits**",
            f"{init['moe'][moe_block]['mi_bits']:.3f} bits",
        ),
    ]
    half = "; ".join(f"block {b}: {min(v):.2f}–{max(v):.1f}" for b, v in mamba["half_life_tokens"].items())
    weights_sha = hashlib.sha256((out / "model.safetensors").read_bytes()).hexdigest()
    text = f"""# The bundled tiny Nemotron-H

Trained by `scripts/train_tiny.py` (seed {info["seed"]}, {info["threads"]} torch threads) in
**{info["train_seconds"] / 60:.1f} min** on {info["cpu"]}, through HF's own PyTorch forward in train mode,
after {info["prepare_seconds"]:.0f} s of data and tokenizer. Measured by `scripts/tiny_metrics.py`;
`tests/test_tiny_checkpoint.py` recomputes the numbers below its own way and holds the weights to them.

## Model
{chr(10).join(_model_lines(info))}

Why this shape: attention has no position embedding, so "which token came before me" has to come from
the Mamba layers before it (short causal conv + scan); with that, one attention layer can hold an
induction head. The MoE sits early, where a token's own identity still dominates the residual stream.

## Data
Every source is a Debian package (`apt-get download`, no web needed) whose text may be redistributed;
`scripts/tiny_data.py` cleans and splits them. Every {tiny_data.HOLDOUT_EVERY}th document of each source is
held out: neither the tokenizer nor the model saw it. `heldout.txt` (shipped here) is about 12,000
characters of held-out documents from each prose source (WordNet's glosses are not prose), and
`heldout_sentences.txt` the held-out sentences of the copying test.

{chr(10).join(_source_lines(info))}

Training text: {sum(info["train_chars"].values()):,} characters = {info["train_tokens"]:,} tokens; corpus
sha256 `{info["corpus_sha256"]}` (a newer Debian package changes it). Also synthetic rows of uniformly
random token spans repeated. `model.safetensors` sha256 `{weights_sha}`.

## Training
Batches of {BATCH} rows × {SEQ} tokens; AdamW (lr {LR}, betas 0.9/0.95, weight decay {WEIGHT_DECAY});
gradient clipping at 1; the unembedding tied to the embedding while training (saved untied).
1. Repeated random spans only, until the best head's induction score on probe sequences of its own
   reached {FORMED}: **{info["phase1_steps"]} steps**.
2. **{info["steps"]} steps** of {BATCH - NATURAL_ROWS - RANDOM_ROWS} prose rows, {NATURAL_ROWS} rows of
   natural-text repeats (spans of the training text repeated after a gap of 0–16 tokens) and {RANDOM_ROWS}
   row of random repeats, the learning rate on a cosine down to 10%.

The router is balanced without an auxiliary loss: after each step every expert's
`e_score_correction_bias` moves by {BIAS_RATE} towards equal load.

## What it learned
{chr(10).join("| " + " | ".join(row) + " |" for row in table)}

Half-lives per Mamba block: {half}.
HF initialises dt log-uniformly in [0.001, 0.1] and A = 1…{c["mamba_num_heads"]}, so the horizons differ
from the start; training moves them.

MoE specialisation on held-out prose; token classes: {", ".join(m["moe"][moe_block]["class_names"])}.
{chr(10).join(_moe_lines(info))}

Protocols (`scripts/tiny_metrics.py`): copying on `<s> S S` for each sentence of `heldout_sentences.txt`
(the second copy is `" " + S`), mean over every token of every copy; attention zeroed = every attention
block's mixer output replaced by zeros. Induction on `[<s>] S S`, |S| = 24, 16 rows: S uniformly random
non-special ids (torch seed 0), or 16 evenly spaced windows of `heldout.txt`'s tokens; probabilities from the
`q_proj`/`k_proj` outputs (scaled by head_dim^-½, causal mask, KV heads repeat-interleaved), averaged over
every query of the second copy. Prose, Mamba and MoE numbers on `heldout.txt` in windows of 256 tokens,
each led by `<s>`; bits per byte = total nats / ln 2 / the UTF-8 bytes of the predicted tokens; dt =
softplus(raw + dt_bias) clamped at time_step_min; top-1 expert = argmax of sigmoid score + correction
bias; token classes from each token's text (whitespace only; letters after a space; letters with no space
before; digits; anything else).
"""
    (out / "DATA.md").write_text(text)


def random_router_mi(model, windows: torch.Tensor, tokenizer, seed: int = 0) -> dict[str, float]:
    """Control for the MoE number: class/expert MI when the trained router is swapped for a random one."""
    out = {}
    classes = tiny_metrics.token_classes(tokenizer)[windows.reshape(-1)]
    for i in tiny_metrics.blocks_of(model, "moe"):
        block = model.model.layers[i]
        with tiny_metrics.capture({"x": block.norm}) as seen, torch.no_grad():  # the router's input
            model(windows)
        g = torch.Generator().manual_seed(seed)
        w = block.mixer.gate.weight
        w = torch.randn(w.shape, generator=g) * w.detach().std()
        top1 = (seen["x"].reshape(-1, w.shape[1]) @ w.T).argmax(-1)
        out[str(i)] = round(tiny_metrics.mutual_information(classes, top1), 4)
    return out


def word_starts(tokenizer) -> np.ndarray:
    """(vocab,) bool: the token begins with a space or a newline (byte-level BPE's Ġ / Ċ)."""
    pieces = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    return np.array([p[:1] in ("Ġ", "Ċ") for p in pieces])


def copy_sentences(corpus: tiny_data.Corpus, n: int = 64) -> list[str]:
    """``n`` held-out sentences for the copying test, taken in turn from each prose source."""
    per_source = [
        tiny_data.sentences("\n\n".join(docs))
        for name, docs in sorted(corpus.heldout.items())
        if name != "wordnet"
    ]
    out = []
    for k in range(max(map(len, per_source), default=0)):
        out += [s[k] for s in per_source if k < len(s)]
    return out[:n]


def prepare(args) -> tuple[tiny_data.Corpus, object, np.ndarray]:
    """The corpus, the tokenizer trained on it and the training text as one token stream."""
    if args.corpus_text:
        corpus = tiny_data.from_text(args.corpus_text.read_text())
    else:
        corpus = tiny_data.build_corpus(*tiny_data.fetch(args.data))
    print(f"corpus sha256 {corpus.sha256()}", flush=True)
    docs = corpus.train_docs()
    tokenizer = train_tokenizer(docs)
    stream = np.concatenate(
        [np.r_[ids, tokenizer.eos_token_id] for ids in tokenizer(docs, add_special_tokens=False)["input_ids"]]
    )
    print(f"{len(stream):,} training tokens, vocab {len(tokenizer)}", flush=True)
    return corpus, tokenizer, stream


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=ROOT / "nemo_explore/checkpoints/tiny")
    ap.add_argument("--data", type=Path, default=Path("/tmp/nemo_tiny_data"), help="download/unpack cache")
    ap.add_argument("--corpus-text", type=Path, help="train on this text instead (smoke runs, no Debian)")
    ap.add_argument("--steps", type=int, default=2500, help="steps of phase 2 (mixed prose and repeats)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2, help="torch threads")
    ap.add_argument("--log-every", type=int, default=50)
    ap.add_argument("--phase1-max", type=int, default=PHASE1_MAX, help="cap on phase 1 (repeats only)")
    ap.add_argument("--report-only", action="store_true", help="rewrite DATA.md from --out's metrics.json")
    ap.add_argument(
        "--measure-only", action="store_true", help="re-measure --out's checkpoint, rewrite DATA.md"
    )
    args = ap.parse_args()
    if args.report_only:
        write_data_md(args.out, json.loads((args.out / "metrics.json").read_text()))
        return
    t0 = time.time()
    torch.set_num_threads(args.threads)
    # Subnormal floats (from the Mamba decays exp(dt·A) and the scan's masked segment sums) made steps 3×
    # slower as training went on (0.55 -> 1.7 s); flushing them to zero keeps every step at full speed.
    torch.set_flush_denormal(True)
    os.environ.setdefault("RAYON_NUM_THREADS", str(args.threads))  # tokenizers' trainer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # the reference-PyTorch-path notices and long-text tokenizer warnings
    sys.path.insert(0, str(ROOT))
    if args.measure_only:
        measure_checkpoint(args.out)
        return

    corpus, tokenizer, stream = prepare(args)
    torch.manual_seed(args.seed)
    model = build_model(tokenizer)
    init_state = {k: v.clone() for k, v in model.state_dict().items()}
    batches = Batches(stream, word_starts(tokenizer), len(tokenizer), tokenizer.bos_token_id, args.seed)
    t_train = time.time()
    # sequences of their own (seed 1), so that the reported score is on sequences training never looked at
    probe_tokens = tiny_metrics.induction_tokens(len(tokenizer), tokenizer.bos_token_id, seed=1)

    def probe() -> float:  # best head's induction score, logged while training
        return max(s.max().item() for s in tiny_metrics.induction_scores(model, probe_tokens).values())

    log, phase1 = train(model, batches, args.steps, probe, args.log_every, args.phase1_max)
    train_seconds = time.time() - t_train

    args.out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(args.out)
    tokenizer.save_pretrained(args.out)
    torch.save(init_state, args.out / "untrained.pt")  # for the "untrained" column; removed once measured
    (args.out / "heldout.txt").write_text(tiny_data.heldout_sample(corpus))
    (args.out / "heldout_sentences.txt").write_text("\n".join(copy_sentences(corpus)) + "\n")
    info = dict(
        seed=args.seed,
        steps=args.steps,
        phase1_steps=phase1,
        threads=args.threads,
        train_seconds=round(train_seconds, 1),
        prepare_seconds=round(t_train - t0, 1),
        cpu=f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}",
        params=sum(p.numel() for p in model.parameters()),
        bytes=(args.out / "model.safetensors").stat().st_size,
        train_chars={name: sum(map(len, docs)) for name, docs in corpus.train.items()},
        heldout_docs={name: len(docs) for name, docs in corpus.heldout.items()},
        train_tokens=len(stream),
        corpus_sha256=corpus.sha256(),
        package_versions=corpus.versions,
        unigram_counts=np.bincount(stream, minlength=len(tokenizer)).tolist(),
        config={
            k: v
            for k, v in model.config.to_dict().items()
            if k in {*MODEL, "vocab_size", "layers_block_type"}
        },
        loss_log=log,
    )
    (args.out / "train_info.json").write_text(json.dumps(info) + "\n")
    print(f"trained in {train_seconds / 60:.1f} min; measuring", flush=True)
    measure_checkpoint(args.out)


def measure_checkpoint(out: Path) -> None:
    """Measure the saved checkpoint (and, while ``untrained.pt`` is there, its untrained twin): metrics.json
    and DATA.md."""
    from transformers import AutoTokenizer, NemotronHForCausalLM

    info = json.loads((out / "train_info.json").read_text())
    counts = torch.tensor(info.pop("unigram_counts"))
    tokenizer = AutoTokenizer.from_pretrained(out)
    model = NemotronHForCausalLM.from_pretrained(out).eval()
    heldout = (out / "heldout.txt").read_text()
    sentences = (out / "heldout_sentences.txt").read_text().splitlines()
    info["metrics"] = tiny_metrics.measure(model, tokenizer, heldout, sentences, counts)
    windows = tiny_metrics.heldout_windows(tokenizer, heldout)
    info["moe_random_router_mi"] = random_router_mi(model, windows, tokenizer)
    untrained = out / "untrained.pt"
    if untrained.exists():
        model.load_state_dict(torch.load(untrained))
        info["metrics_at_init"] = tiny_metrics.measure(model, tokenizer, heldout, sentences, counts)
        untrained.unlink()  # 8 MB the package need not ship: its numbers are in metrics.json now
    else:
        info["metrics_at_init"] = json.loads((out / "metrics.json").read_text())["metrics_at_init"]
    (out / "metrics.json").write_text(json.dumps(info, indent=1) + "\n")
    write_data_md(out, info)
    print(json.dumps(info["metrics"], indent=1))


if __name__ == "__main__":
    main()
