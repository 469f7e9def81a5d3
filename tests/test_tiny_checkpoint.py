"""The bundled tiny checkpoint: loads offline with plain transformers in about a second, small on disk, all
four layer types, a tokenizer that keeps common words whole and round-trips text — and it learned what its
DATA.md says: it copies a held-out sentence the second time it sees it, through its attention layer (an
induction head on text tokens too), it is a usable small language model on held-out prose, its Mamba heads
have different memory horizons and its experts specialise.

Every measurement is computed here from forward hooks on the plain HF model (independently of
``scripts/tiny_metrics.py``, which wrote ``metrics.json`` at training time), held to a threshold a little
below what training measured, and checked against the recorded number.
"""

from __future__ import annotations

import json
import math
import time

import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open
from transformers import AutoTokenizer, NemotronHForCausalLM
from transformers.models.nemotron_h import modeling_nemotron_h as hf_nh

from nemo_explore.checkpoints import tiny_path

TINY = tiny_path()
KINDS = {"linear_attention", "full_attention", "mlp", "moe"}
L_REP, ROWS = 24, 16  # induction probe: [<s>] S S with |S| = 24, 16 rows, torch seed 0
WINDOW = 256
# Thresholds a little below what training measured (DATA.md): induction 0.985 on random ids; prose 4.708 nats
# (uniform 8.318, unigram 6.853); MoE 0.329 bits, 8.7x the untrained router's, 3.0x a random router's, space
# and punctuation lifts 3.9 and 3.5; Mamba half-lives 1.27 - 249 tokens, rate ratio >= 24 within every layer.
INDUCTION_MIN, PROSE_BELOW_UNIFORM, PROSE_BELOW_UNIGRAM, MOE_MI_MIN, LIFT_MIN = 0.9, 3.4, 2.0, 0.3, 3.0
# What the checkpoint is for, on natural text it never saw: the second copy of a sentence costs at most 1.5
# nats/token and at least 2.5 less than the first; zeroing attention raises it by 1.5 or more; an induction
# head on repeats of text tokens; at most 2.5 bits per byte on held-out prose.
COPY_SECOND_MAX, COPY_GAIN_MIN, ABLATION_RISE_MIN, TEXT_INDUCTION_MIN, BITS_PER_BYTE_MAX = (
    1.5,
    2.5,
    1.5,
    0.5,
    2.5,
)


@pytest.fixture(scope="module")
def loaded():
    start = time.perf_counter()
    model = NemotronHForCausalLM.from_pretrained(TINY)
    tok = AutoTokenizer.from_pretrained(TINY)
    return model.eval(), tok, time.perf_counter() - start


@pytest.fixture(scope="module")
def model(loaded):
    return loaded[0]


@pytest.fixture(scope="module")
def tok(loaded):
    return loaded[1]


@pytest.fixture(scope="module")
def recorded():
    return json.loads((TINY / "metrics.json").read_text())["metrics"]


def _capture(mods: dict):
    seen, handles = {}, []
    for key, mod in mods.items():
        handles.append(mod.register_forward_hook(lambda m, i, o, key=key: seen.__setitem__(key, o)))
    return seen, handles


@pytest.fixture(scope="module")
def prose(model, tok):
    """One forward over the held-out prose, windows of 256 tokens each led by <s>, with the routers'
    inputs and outputs and the Mamba input projections captured."""
    ids = tok((TINY / "heldout.txt").read_text(), add_special_tokens=False)["input_ids"]
    n = len(ids) // (WINDOW - 1)
    body = torch.tensor(ids[: n * (WINDOW - 1)]).view(n, WINDOW - 1)
    windows = torch.cat([torch.full((n, 1), tok.bos_token_id), body], 1)
    layers = model.model.layers
    mods = {}
    for i, layer in enumerate(layers):
        if layer.block_type == "linear_attention":
            mods[("in_proj", i)] = layer.mixer.in_proj
        if layer.block_type == "moe":
            mods[("gate", i)] = layer.mixer.gate
            mods[("router_in", i)] = layer.norm
    seen, handles = _capture(mods)
    try:
        with torch.no_grad():
            logits = model(windows).logits
    finally:
        for h in handles:
            h.remove()
    return windows, logits, seen


# ---------------------------------------------------------------- the files


def test_files_small_float32_and_complete(model):
    for name in (
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "DATA.md",
        "heldout.txt",
        "heldout_sentences.txt",
        "metrics.json",
    ):
        assert (TINY / name).is_file(), name
    size = sum(p.stat().st_size for p in TINY.iterdir())
    assert size < 25 * 2**20, f"{size} bytes"
    with safe_open(TINY / "model.safetensors", "pt") as f:  # HF writes the checkpoint-style names
        file = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (not a dict)
    assert {t.dtype for t in file.values()} == {torch.float32}
    assert sum(t.numel() for t in file.values()) == sum(t.numel() for t in model.state_dict().values())
    _, info = NemotronHForCausalLM.from_pretrained(TINY, output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    # the router's correction bias is a buffer: it must come from the file, not from a fresh zero init
    for i, layer in enumerate(model.model.layers):
        if layer.block_type == "moe":
            bias = file[f"backbone.layers.{i}.mixer.gate.e_score_correction_bias"]
            assert bias.abs().max() > 0
            torch.testing.assert_close(layer.mixer.gate.e_score_correction_bias, bias, atol=0, rtol=0)


def test_loads_in_about_a_second(loaded):
    assert loaded[2] < 3.0, f"loading took {loaded[2]:.2f} s"


def test_all_four_layer_types(model):
    cfg = model.config
    kinds = cfg.layers_block_type
    assert set(kinds) == KINDS
    assert kinds.count("linear_attention") >= 3
    first_attn = kinds.index("full_attention")
    assert "linear_attention" in kinds[:first_attn], "a Mamba layer feeds the attention layer"
    mixers = {
        "linear_attention": hf_nh.NemotronHMamba2Mixer,
        "full_attention": hf_nh.NemotronHAttention,
        "mlp": hf_nh.NemotronHMLP,
        "moe": hf_nh.NemotronHMoE,
    }
    for layer, kind in zip(model.model.layers, kinds, strict=True):
        assert isinstance(layer.mixer, mixers[kind])
    assert cfg.num_key_value_heads < cfg.num_attention_heads, "grouped-query attention"
    assert cfg.n_groups >= 2 and cfg.mamba_num_heads % cfg.n_groups == 0
    assert 4 <= cfg.n_routed_experts <= 8 and cfg.num_experts_per_tok == 2


def test_the_hf_numerics_these_numbers_assume(model):
    """Every number in this file assumes HF's Mamba forward clamps dt = softplus(raw + dt_bias) at
    ``time_step_min`` (1e-3) from below and not above: what the checkpoint was trained under. transformers
    <= 5.24 hardcodes that clamp; 5.25 reads it from ``config.time_step_limit``, which the checkpoint's
    config states as (time_step_min, inf) so that both compute the same. (5.25's default, (0, inf), would
    change HF's own logits on this checkpoint by up to 0.8.)"""
    cfg = model.config
    for layer in model.model.layers:
        if isinstance(layer.mixer, hf_nh.NemotronHMamba2Mixer):
            assert tuple(layer.mixer.time_step_limit) == (cfg.time_step_min, float("inf"))
    assert cfg.time_step_min == 1e-3


def test_tokenizer_specials_and_round_trip(model, tok):
    cfg = model.config
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id) == (
        cfg.pad_token_id,
        cfg.bos_token_id,
        cfg.eos_token_id,
    )
    assert tok.unk_token == "<unk>" and tok.unk_token_id not in (cfg.pad_token_id, cfg.bos_token_id)
    assert len(tok) == cfg.vocab_size
    for text in ("The cat sat on the mat.", "  two spaces\n\nand\ttabs, 3.14 — “quotes” ünïcode 🙂", ""):
        ids = tok(text)["input_ids"]
        assert ids[0] == tok.bos_token_id
        assert tok.decode(ids, skip_special_tokens=True) == text
        assert max(ids) < cfg.vocab_size
    assert 4000 <= len(tok) <= 8192
    words = " the little cat sat on mat and of to in is was he she it that with for you said people water"
    split = [w for w in words.split(" ")[1:] if len(tok(" " + w, add_special_tokens=False)["input_ids"]) != 1]
    assert not split, f"common words split into pieces: {split}"
    pieces = [tok.decode([i]) for i in tok("a line\nthen  more", add_special_tokens=False)["input_ids"]]
    assert "".join(pieces) == "a line\nthen  more"
    assert any("\n" in p for p in pieces) and any(p.startswith(" ") for p in pieces)


# ---------------------------------------------------------------- what it learned


def _pattern_from_qk(model, tokens):
    """Block index -> (b, h, q, k) attention probabilities from q_proj/k_proj outputs (no RoPE here)."""
    cfg = model.config
    attn_blocks = [i for i, k in enumerate(cfg.layers_block_type) if k == "full_attention"]
    mods = {}
    for i in attn_blocks:
        mods[("q", i)] = model.model.layers[i].mixer.q_proj
        mods[("k", i)] = model.model.layers[i].mixer.k_proj
    seen, handles = _capture(mods)
    try:
        with torch.no_grad():
            model(tokens)
    finally:
        for h in handles:
            h.remove()
    b, p = tokens.shape
    out = {}
    for i in attn_blocks:
        q = seen[("q", i)].view(b, p, cfg.num_attention_heads, cfg.head_dim).transpose(1, 2)
        k = seen[("k", i)].view(b, p, cfg.num_key_value_heads, cfg.head_dim).transpose(1, 2)
        k = k.repeat_interleave(cfg.num_attention_heads // cfg.num_key_value_heads, dim=1)
        scores = q @ k.transpose(-1, -2) * cfg.head_dim**-0.5
        causal = torch.arange(p)[:, None] >= torch.arange(p)[None, :]
        out[i] = scores.masked_fill(~causal, float("-inf")).softmax(dim=-1)
    return out


@pytest.fixture(scope="module")
def induction(model):
    g = torch.Generator().manual_seed(0)
    s = torch.randint(4, model.config.vocab_size, (ROWS, L_REP), generator=g)
    tokens = torch.cat([torch.full((ROWS, 1), model.config.bos_token_id), s, s], dim=1)
    return tokens, _pattern_from_qk(model, tokens)


def test_pattern_from_qk_is_what_eager_attention_computes(model, induction):
    tokens, patterns = induction
    before = model.config._attn_implementation
    model.config._attn_implementation = "eager"
    try:
        with torch.no_grad():
            eager = model(tokens[:4], output_attentions=True).attentions
    finally:
        model.config._attn_implementation = before
    (block,) = patterns
    torch.testing.assert_close(patterns[block][:4], eager[0], atol=1e-6, rtol=1e-5)


def test_induction_head(induction, recorded):
    """From each query of the second copy to the token after its token's first occurrence."""
    _, patterns = induction
    q = torch.arange(1 + L_REP, 1 + 2 * L_REP)
    scores = {i: pat[:, :, q, q - L_REP + 1].mean(dim=(0, 2)) for i, pat in patterns.items()}
    best = max(s.max().item() for s in scores.values())
    assert best >= INDUCTION_MIN, scores
    uniform = sum(1 / (t + 1) for t in q.tolist()) / L_REP
    assert best > 10 * uniform
    for i, s in scores.items():
        torch.testing.assert_close(
            s, torch.tensor(recorded["induction"]["per_head"][str(i)]), atol=2e-4, rtol=0
        )


@pytest.fixture(scope="module")
def copying(model, tok):
    """Per held-out sentence S, the per-token losses of ``<s> S S``: first copy, second copy (" " + S), and
    the second copy again with the attention blocks' mixers returning zeros."""
    attn = [layer.mixer for layer in model.model.layers if layer.block_type == "full_attention"]
    first, second, zeroed = [], [], []
    for s in (TINY / "heldout_sentences.txt").read_text().splitlines():
        a = tok(s, add_special_tokens=False)["input_ids"]
        b = tok(" " + s, add_special_tokens=False)["input_ids"]
        assert tok.decode(a + b) == s + " " + s
        ids = torch.tensor([[tok.bos_token_id, *a, *b]])
        with torch.no_grad():
            nll = F.cross_entropy(model(ids).logits[0, :-1], ids[0, 1:], reduction="none")
            zero = lambda m, i, o: (torch.zeros_like(o[0]), *o[1:])  # noqa: E731 (HF returns (out, weights))
            handles = [m.register_forward_hook(zero) for m in attn]
            try:
                nll_zeroed = F.cross_entropy(model(ids).logits[0, :-1], ids[0, 1:], reduction="none")
            finally:
                for h in handles:
                    h.remove()
        first.append(nll[: len(a)])
        second.append(nll[len(a) :])
        zeroed.append(nll_zeroed[len(a) :])
    assert len(first) >= 48, "enough sentences to mean something"
    return tuple(torch.cat(x).mean().item() for x in (first, second, zeroed))


def test_copies_a_heldout_sentence_the_second_time(copying, recorded):
    first, second, _ = copying
    assert second <= COPY_SECOND_MAX, copying
    assert first - second >= COPY_GAIN_MIN, copying
    rec = recorded["copying"]
    assert (first, second) == pytest.approx((rec["first_copy"], rec["second_copy"]), abs=2e-3)


def test_attention_is_what_copies(copying, recorded):
    _, second, zeroed = copying
    assert zeroed - second >= ABLATION_RISE_MIN, copying
    assert zeroed == pytest.approx(recorded["copying"]["second_copy_attention_zeroed"], abs=2e-3)


def test_induction_head_on_repeated_text(model, tok, recorded):
    """The induction score on ``[<s>] S S`` with S 24 consecutive tokens of held-out text (16 windows)."""
    ids = tok((TINY / "heldout.txt").read_text(), add_special_tokens=False)["input_ids"]
    starts = torch.linspace(0, len(ids) - L_REP, ROWS).long().tolist()  # the protocol of DATA.md
    s = torch.tensor([ids[i : i + L_REP] for i in starts])
    tokens = torch.cat([torch.full((ROWS, 1), tok.bos_token_id), s, s], dim=1)
    q = torch.arange(1 + L_REP, 1 + 2 * L_REP)
    scores = {
        i: p[:, :, q, q - L_REP + 1].mean(dim=(0, 2)) for i, p in _pattern_from_qk(model, tokens).items()
    }
    best = max(x.max().item() for x in scores.values())
    assert best >= TEXT_INDUCTION_MIN, scores
    assert best == pytest.approx(recorded["text_induction"]["best"]["score"], abs=2e-4)


def test_heldout_prose_bits_per_byte(tok, prose, recorded):
    """Total nats over the predicted tokens / ln 2 / the UTF-8 bytes of the text those tokens spell."""
    windows, logits, _ = prose
    nats = F.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]), windows[:, 1:].reshape(-1), reduction="sum"
    ).item()
    n_bytes = len(tok.decode(windows[:, 1:].reshape(-1).tolist()).encode("utf-8"))
    bpb = nats / math.log(2) / n_bytes
    assert bpb <= BITS_PER_BYTE_MAX, bpb
    assert bpb == pytest.approx(recorded["prose"]["bits_per_byte"], abs=5e-3)


def test_greedy_continuations_are_english_words(model, tok):
    """Every word of a greedy continuation of simple prompts is a word of the training vocabulary."""
    for prompt in ("The man went to the", "And God said", "A computer is"):
        ids = tok(prompt, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            out = model.generate(ids, max_new_tokens=12, do_sample=False, pad_token_id=tok.pad_token_id)
        text = tok.decode(out[0, ids.shape[1] :], skip_special_tokens=True)
        words = [w.strip(".,;:!?'\"()-").lower() for w in text.split()]
        words = [w for w in words if w]
        assert len(words) >= 4, text
        whole = [w for w in words if len(tok(" " + w, add_special_tokens=False)["input_ids"]) <= 2]
        assert len(whole) >= 0.75 * len(words), f"{prompt!r} -> {text!r}"


def test_heldout_prose_loss_far_below_uniform(model, prose, recorded):
    windows, logits, _ = prose
    loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), windows[:, 1:].reshape(-1)).item()
    uniform = math.log(model.config.vocab_size)
    assert loss < uniform - PROSE_BELOW_UNIFORM, (loss, uniform)
    assert loss < recorded["prose"]["unigram"] - PROSE_BELOW_UNIGRAM, "well below a unigram model of the text"
    assert loss == pytest.approx(recorded["prose"]["loss"], abs=2e-3)


def test_mamba_heads_have_different_memory_horizons(model, prose, recorded):
    _, _, seen = prose
    rates = {}
    for (kind, i), out in seen.items():
        if kind != "in_proj":
            continue
        mixer = model.model.layers[i].mixer
        dt = F.softplus(out[..., -mixer.num_heads :] + mixer.dt_bias).clamp(min=model.config.time_step_min)
        rates[i] = (dt * mixer.A_log.exp()).mean(dim=(0, 1))
    everything = torch.cat(list(rates.values()))
    half_lives = math.log(2) / everything
    assert half_lives.min() < 1.5 and half_lives.max() > 200, half_lives
    for i, r in rates.items():
        assert r.max() / r.min() > 15, f"block {i}: rates {r.tolist()}"
        expected = torch.tensor(recorded["mamba"]["half_life_tokens"][str(i)])
        torch.testing.assert_close(math.log(2) / r, expected, rtol=2e-3, atol=1e-2)


def _token_classes(tok) -> torch.Tensor:
    """0 whitespace, 1 letters after a space, 2 letters with no space before, 3 digits, 4 punctuation."""
    out = []
    for i in range(len(tok)):
        s = tok.decode([i])
        t = s.lstrip(" ")
        out.append(
            0 if not s.strip() else (1 if t != s else 2) if t[0].isalpha() else 3 if t[0].isdigit() else 4
        )
    return torch.tensor(out)


def _mi_bits(a: torch.Tensor, b: torch.Tensor) -> float:
    n_b = int(b.max()) + 1
    joint = torch.bincount(a * n_b + b, minlength=5 * n_b).view(5, n_b).double()
    joint /= joint.sum()
    indep = joint.sum(1, keepdim=True) * joint.sum(0, keepdim=True)
    nz = joint > 0
    return float((joint[nz] * torch.log2(joint[nz] / indep[nz])).sum())


def _top1(model, windows, block: int) -> torch.Tensor:
    """(n_tokens,) top-1 expert of block ``block``'s router: argmax of sigmoid score + correction bias."""
    gate = model.model.layers[block].mixer.gate
    seen, handles = _capture({"gate": gate})
    try:
        with torch.no_grad():
            model(windows)
    finally:
        for h in handles:
            h.remove()
    return (seen["gate"][0].sigmoid() + gate.e_score_correction_bias).argmax(-1)


def test_moe_experts_specialise_by_token_class(model, tok, prose, recorded):
    windows, _, seen = prose
    classes = _token_classes(tok)[windows.reshape(-1)]
    base = torch.bincount(classes, minlength=5).double() / len(classes)
    # the same architecture untrained (HF's init, seeded as the training script seeds it)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        untrained = NemotronHForCausalLM(model.config).eval()
    for (kind, i), out in seen.items():
        if kind != "gate":
            continue
        gate = model.model.layers[i].mixer.gate
        logits, _, chosen = out
        top1 = (logits.sigmoid() + gate.e_score_correction_bias).argmax(-1)
        assert (chosen == top1[:, None]).any(-1).all(), "the top-1 expert is one HF routes to"
        mi = _mi_bits(classes, top1)
        assert mi == pytest.approx(recorded["moe"][str(i)]["mi_bits"], abs=1e-3)
        assert mi > MOE_MI_MIN, mi
        untrained_mi = _mi_bits(classes, _top1(untrained, windows, i))
        assert mi > 5 * untrained_mi, f"training made the routing class-aware: {mi} vs {untrained_mi}"
        # more than a random router of the same scale finds in the same (trained) router inputs
        x = seen[("router_in", i)].reshape(-1, gate.weight.shape[1])
        g = torch.Generator().manual_seed(0)
        random_router = torch.randn(gate.weight.shape, generator=g) * gate.weight.std()
        assert mi > 2 * _mi_bits(classes, (x @ random_router.T).argmax(-1))
        # whitespace and punctuation concentrate on experts of their own
        counts = torch.zeros(gate.num_experts, 5, dtype=torch.float64)
        counts.index_put_((top1, classes), torch.ones(len(top1), dtype=torch.float64), accumulate=True)
        lift = counts / counts.sum(1, keepdim=True).clamp_min(1) / base
        assert lift[:, 0].max() > LIFT_MIN and lift[:, 4].max() > LIFT_MIN, lift
        load = counts.sum(1) / len(top1)
        assert load.max() < 0.3, f"routing stays balanced: {load.tolist()}"
