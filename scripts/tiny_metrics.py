"""What the tiny checkpoint learned, measured with plain PyTorch forward hooks on the HF model.

Each on fixed inputs so that anyone (and ``tests/test_tiny_checkpoint.py``, which recomputes them its own
way) gets the same numbers:

- **copying**: on ``[bos] S S`` for each held-out sentence S (``heldout_sentences.txt``), the mean loss (nats
  per token) of the first copy and of the second copy (``" " + S``), and of the second copy again with every
  attention block's mixer output zeroed.
- **induction**: on ``[bos] S S`` the mean attention probability from each query of the second copy to the
  token after the first occurrence of its own token, per attention head; probabilities computed from the
  ``q_proj``/``k_proj`` outputs. Two kinds of S, 24 tokens, 16 rows: uniformly random ids (``torch`` seed 0),
  and consecutive windows of held-out text (common text tokens).
- **prose loss**: mean next-token cross-entropy (nats) on the held-out text, cut into windows of 256 tokens
  each starting with ``<s>``; against uniform (ln vocab) and a unigram model of the training text; and the
  same in bits per UTF-8 byte of the predicted tokens.
- **Mamba horizons**: per Mamba head, the mean over held-out tokens of the decay rate ``dt * |A|``
  (dt = softplus(raw + dt_bias) clamped at ``time_step_min``, as HF's full-sequence path uses it);
  half-life ``ln 2 / rate`` in tokens.
- **MoE specialisation**: each held-out token's top-1 expert (argmax of sigmoid score + correction bias)
  against its token class; mutual information in bits, and each expert's share of every class.

Run ``python scripts/tiny_metrics.py [checkpoint_dir]`` to print them for a checkpoint.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.nn.functional as F

from nemo_explore.corpus.text import CLASSES, token_classes  # the one copy of the token-class rule

INDUCTION_ROWS, INDUCTION_LEN, INDUCTION_SEED = 16, 24, 0
WINDOW = 256


@contextmanager
def capture(modules: dict[str, torch.nn.Module]):
    """Record each module's forward output (the first element when it returns a tuple) under its key."""
    seen: dict[str, torch.Tensor] = {}
    handles = [
        m.register_forward_hook(
            lambda _m, _i, out, k=k: seen.__setitem__(k, out[0] if isinstance(out, tuple) else out)
        )
        for k, m in modules.items()
    ]
    try:
        yield seen
    finally:
        for h in handles:
            h.remove()


def blocks_of(model, kind: str) -> list[int]:
    return [i for i, t in enumerate(model.config.layers_block_type) if t == kind]


def induction_tokens(
    vocab_size: int, bos: int, first_id: int = 4, seed: int = INDUCTION_SEED
) -> torch.Tensor:
    """(rows, 1 + 2L): ``[bos] S S`` with S uniform over the non-special ids."""
    g = torch.Generator().manual_seed(seed)
    s = torch.randint(first_id, vocab_size, (INDUCTION_ROWS, INDUCTION_LEN), generator=g)
    return torch.cat([torch.full((INDUCTION_ROWS, 1), bos), s, s], dim=1)


@torch.no_grad()
def induction_scores(model, tokens: torch.Tensor, length: int = INDUCTION_LEN) -> dict[int, torch.Tensor]:
    """Block index -> (heads,) mean attention from second-copy queries to the token after the first one."""
    cfg = model.config
    layers = blocks_of(model, "full_attention")
    mods = {}
    for i in layers:
        attn = model.model.layers[i].mixer
        mods[f"{i}.q"], mods[f"{i}.k"] = attn.q_proj, attn.k_proj
    with capture(mods) as seen:
        model(tokens)
    b, p = tokens.shape
    d = cfg.head_dim
    out = {}
    for i in layers:
        q = seen[f"{i}.q"].view(b, p, -1, d).transpose(1, 2)  # b h p d
        k = seen[f"{i}.k"].view(b, p, -1, d).transpose(1, 2)  # b h_kv p d
        k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
        scores = (q @ k.transpose(-1, -2)) * d**-0.5
        scores = scores.masked_fill(torch.ones(p, p, dtype=torch.bool).triu(1), float("-inf"))
        pattern = scores.softmax(-1)  # b h q k
        queries = torch.arange(1 + length, 1 + 2 * length)
        out[i] = pattern[:, :, queries, queries - length + 1].mean(dim=(0, 2))
    return out


def text_induction_tokens(tokenizer, text: str) -> torch.Tensor:
    """(rows, 1 + 2L): ``[bos] S S`` with S consecutive windows of ``text``'s tokens, evenly spaced."""
    ids = torch.tensor(tokenizer(text, add_special_tokens=False)["input_ids"])
    starts = torch.linspace(0, len(ids) - INDUCTION_LEN, INDUCTION_ROWS).long()
    s = torch.stack([ids[i : i + INDUCTION_LEN] for i in starts.tolist()])
    return torch.cat([torch.full((INDUCTION_ROWS, 1), tokenizer.bos_token_id), s, s], dim=1)


@contextmanager
def attention_zeroed(model):
    """Every attention block's mixer output replaced by zeros (the block adds nothing to the residual)."""
    mixers = [model.model.layers[i].mixer for i in blocks_of(model, "full_attention")]

    def zero(_m, _i, out):
        return (torch.zeros_like(out[0]), *out[1:]) if isinstance(out, tuple) else torch.zeros_like(out)

    handles = [m.register_forward_hook(zero) for m in mixers]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


@torch.no_grad()
def copy_losses(model, tokenizer, sentences: list[str]) -> dict[str, float]:
    """Mean loss (nats/token) of the first and second copy of ``[bos] S " " S``, and of the second copy with
    the attention blocks zeroed; means over all tokens of all sentences."""
    firsts, seconds, ablated = [], [], []
    for s in sentences:
        a = tokenizer(s, add_special_tokens=False)["input_ids"]
        b = tokenizer(" " + s, add_special_tokens=False)["input_ids"]
        ids = torch.tensor([[tokenizer.bos_token_id, *a, *b]])
        per_token = F.cross_entropy(model(ids).logits[0, :-1], ids[0, 1:], reduction="none")
        firsts.append(per_token[: len(a)])
        seconds.append(per_token[len(a) :])
        with attention_zeroed(model):
            ablated.append(F.cross_entropy(model(ids).logits[0, :-1], ids[0, 1:], reduction="none")[len(a) :])
    first, second, zeroed = (torch.cat(x).mean().item() for x in (firsts, seconds, ablated))
    return {
        "sentences": len(sentences),
        "first_copy": round(first, 4),
        "second_copy": round(second, 4),
        "second_copy_attention_zeroed": round(zeroed, 4),
    }


def token_bytes(tokenizer) -> torch.Tensor:
    """(vocab,) UTF-8 bytes each token stands for (a byte-level BPE piece has one character per byte)."""
    pieces = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    special = set(tokenizer.all_special_tokens)
    return torch.tensor([0 if p in special else len(p) for p in pieces])


def heldout_windows(tokenizer, text: str, window: int = WINDOW) -> torch.Tensor:
    """(n, window) token ids: the text's tokens in consecutive pieces, each led by ``<s>``."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    n = len(ids) // (window - 1)
    body = torch.tensor(ids[: n * (window - 1)]).view(n, window - 1)
    return torch.cat([torch.full((n, 1), tokenizer.bos_token_id), body], dim=1)


@torch.no_grad()
def prose_loss(model, windows: torch.Tensor) -> float:
    """Mean next-token cross-entropy in nats over every predicted token of every window."""
    logits = model(windows).logits[:, :-1]
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), windows[:, 1:].reshape(-1)).item()


def unigram_loss(counts: torch.Tensor, windows: torch.Tensor) -> float:
    """Cross-entropy of an add-one unigram model (``counts``: (vocab,) training token counts) on the same
    predicted tokens."""
    counts = counts.double() + 1
    logp = (counts / counts.sum()).log()
    return -logp[windows[:, 1:].reshape(-1)].mean().item()


@torch.no_grad()
def mamba_rates(model, windows: torch.Tensor) -> dict[int, torch.Tensor]:
    """Block index -> (heads,) mean over tokens of dt * |A| (the per-token log-decay of the state)."""
    cfg = model.config
    layers = blocks_of(model, "linear_attention")
    with capture({str(i): model.model.layers[i].mixer.in_proj for i in layers}) as seen:
        model(windows)
    out = {}
    for i in layers:
        mixer = model.model.layers[i].mixer
        raw = seen[str(i)][..., -mixer.num_heads :]  # b p h
        dt = F.softplus(raw + mixer.dt_bias).clamp(min=cfg.time_step_min)
        out[i] = (dt * mixer.A_log.exp()).mean(dim=(0, 1))
    return out


@torch.no_grad()
def top1_experts(model, windows: torch.Tensor) -> dict[int, torch.Tensor]:
    """Block index -> (n_tokens,) each token's top-1 expert: argmax of sigmoid(logit) + correction bias."""
    layers = blocks_of(model, "moe")
    with capture({str(i): model.model.layers[i].mixer.gate for i in layers}) as seen:
        model(windows)
    out = {}
    for i in layers:
        gate = model.model.layers[i].mixer.gate
        out[i] = (seen[str(i)].sigmoid() + gate.e_score_correction_bias).argmax(-1)
    return out


def mutual_information(a: torch.Tensor, b: torch.Tensor) -> float:
    """I(a; b) in bits from paired samples of two small non-negative integer variables."""
    joint = torch.zeros(int(a.max()) + 1, int(b.max()) + 1, dtype=torch.float64)
    joint.index_put_((a, b), torch.ones(len(a), dtype=torch.float64), accumulate=True)
    joint /= joint.sum()
    pa, pb = joint.sum(1, keepdim=True), joint.sum(0, keepdim=True)
    nz = joint > 0
    return (joint[nz] * (joint[nz] / (pa @ pb)[nz]).log2()).sum().item()


def entropy_bits(a: torch.Tensor) -> float:
    p = torch.bincount(a).double()
    p = p[p > 0] / p.sum()
    return -(p * p.log2()).sum().item()


def _best(scores: dict[int, torch.Tensor]) -> dict:
    layer, best = max(scores.items(), key=lambda kv: kv[1].max().item())
    return {"block": layer, "head": int(best.argmax()), "score": round(best.max().item(), 4)}


def measure(
    model, tokenizer, heldout: str, sentences: list[str], unigram_counts: torch.Tensor | None = None
) -> dict:
    """Every measurement as a JSON-ready dict. ``unigram_counts``: (vocab,) token counts of the training
    text, for the unigram baseline."""
    model.eval()
    cfg = model.config
    ind = induction_scores(model, induction_tokens(cfg.vocab_size, tokenizer.bos_token_id))
    text_ind = induction_scores(model, text_induction_tokens(tokenizer, heldout))
    windows = heldout_windows(tokenizer, heldout)
    loss = prose_loss(model, windows)
    n_bytes = token_bytes(tokenizer)[windows[:, 1:]].sum().item()
    result = {
        "copying": copy_losses(model, tokenizer, sentences),
        "text_induction": {
            "protocol": f"[bos] S S, S = {INDUCTION_LEN} consecutive held-out tokens, {INDUCTION_ROWS} rows",
            "per_head": {str(i): [round(x, 4) for x in s.tolist()] for i, s in text_ind.items()},
            "best": _best(text_ind),
        },
        "induction": {
            "protocol": f"[bos] S S, |S|={INDUCTION_LEN}, {INDUCTION_ROWS} rows, torch seed {INDUCTION_SEED}",
            "per_head": {str(i): [round(x, 4) for x in s.tolist()] for i, s in ind.items()},
            "best": _best(ind),
            "uniform_attention": round(
                sum(1 / (2 + INDUCTION_LEN + i) for i in range(INDUCTION_LEN)) / INDUCTION_LEN, 4
            ),
        },
        "prose": {
            "tokens": int(windows[:, 1:].numel()),
            "bytes": int(n_bytes),
            "loss": round(loss, 4),
            "bits_per_byte": round(loss * windows[:, 1:].numel() / math.log(2) / n_bytes, 4),
            "uniform": round(math.log(cfg.vocab_size), 4),
        },
    }
    if unigram_counts is not None:
        result["prose"]["unigram"] = round(unigram_loss(unigram_counts, windows), 4)

    rates = mamba_rates(model, windows)
    all_rates = torch.cat(list(rates.values()))
    result["mamba"] = {
        "half_life_tokens": {
            str(i): [round(math.log(2) / r, 2) for r in v.tolist()] for i, v in rates.items()
        },
        "min_half_life": round(math.log(2) / all_rates.max().item(), 3),
        "max_half_life": round(math.log(2) / all_rates.min().item(), 1),
        "rate_ratio": round((all_rates.max() / all_rates.min()).item(), 1),
        "min_rate_ratio_within_layer": round(min((v.max() / v.min()).item() for v in rates.values()), 1),
    }

    cls = token_classes(tokenizer)[windows.reshape(-1)]
    result["moe"] = {}
    for i, top1 in top1_experts(model, windows).items():
        n_exp = cfg.n_routed_experts
        share = torch.zeros(n_exp, len(CLASSES))
        share.index_put_((top1, cls), torch.ones(len(cls)), accumulate=True)
        load = share.sum(1)
        result["moe"][str(i)] = {
            "mi_bits": round(mutual_information(cls, top1), 4),
            "class_entropy_bits": round(entropy_bits(cls), 4),
            "expert_load": [round(x, 4) for x in (load / load.sum()).tolist()],
            "class_share_per_expert": [
                [round(x, 3) for x in row] for row in (share / load.clamp_min(1)[:, None]).tolist()
            ],
            "class_names": list(CLASSES),
        }
    return result


if __name__ == "__main__":
    import json
    import sys

    from transformers import AutoTokenizer, NemotronHForCausalLM

    torch.set_num_threads(1)
    where = Path(
        sys.argv[1] if len(sys.argv) > 1 else Path(__file__).parents[1] / "nemo_explore/checkpoints/tiny"
    )
    model = NemotronHForCausalLM.from_pretrained(where)
    tok = AutoTokenizer.from_pretrained(where)
    sentences = (where / "heldout_sentences.txt").read_text().splitlines()
    print(json.dumps(measure(model, tok, (where / "heldout.txt").read_text(), sentences), indent=1))
