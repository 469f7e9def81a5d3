"""Activation patching and induction scores against naive references: patched HF runs with plain torch
hooks, hidden attention written out from its definition, hand-set attention patterns, and the copier."""

import json

import pytest
import torch
from models import random_model
from test_analysis import build_copier, ids

import nemo_explore as ne
from nemo_explore.analysis import _style
from nemo_explore.analysis.induction import induction_scores, repeated_tokens
from nemo_explore.analysis.patching import logit_diff, patch

ANSWER, WRONG = 7, 8


@pytest.fixture(scope="module")
def rand():
    return ne.HookedNemotronH(random_model("M*-EM", seed=3))


@pytest.fixture(scope="module")
def pair():
    clean = ids(b=2, p=10, seed=1)
    corrupted = clean.clone()
    corrupted[:, 4] = torch.tensor([50, 60])
    return clean, corrupted


def metric(logits: torch.Tensor) -> float:
    return float((logits[:, -1, ANSWER] - logits[:, -1, WRONG]).detach().double().mean())


def hf_run(hf, x, module, pre_hook=None, hook=None) -> torch.Tensor:
    h = module.register_forward_pre_hook(pre_hook) if pre_hook else module.register_forward_hook(hook)
    try:
        return hf(x).logits
    finally:
        h.remove()


def naive_head_scores(hf, clean, corrupted, module, n_heads, position=None) -> torch.Tensor:
    """Patch one head's slice of ``module``'s input (b p h·d) from the clean run, by hand: at every
    position, or only at ``position``."""
    at = slice(None) if position is None else position
    seen = {}
    hf_run(hf, clean, module, pre_hook=lambda m, a: seen.update(x=a[0].clone()))
    m_clean, m_corr = metric(hf(clean).logits), metric(hf(corrupted).logits)
    d = seen["x"].shape[-1] // n_heads
    out = []
    for h in range(n_heads):

        def put(m, a, h=h):
            x = a[0].clone()
            x[:, at, h * d : (h + 1) * d] = seen["x"][:, at, h * d : (h + 1) * d]
            return (x, *a[1:])

        out.append((metric(hf_run(hf, corrupted, module, pre_hook=put)) - m_corr) / (m_clean - m_corr))
    return torch.tensor(out)


def naive_routing_scores(hf, clean, corrupted, router) -> torch.Tensor:
    """Force each position's experts to the clean run's choice, weights from the corrupted router's
    scores as the router would weigh them."""
    b, p = clean.shape
    seen = {}
    hf_run(hf, clean, router, hook=lambda m, a, out: seen.update(idx=out[2].view(b, p, -1).clone()))
    m_clean, m_corr = metric(hf(clean).logits), metric(hf(corrupted).logits)
    out = []
    for j in range(p):

        def force(m, a, out, j=j):
            logits, _, idx = out
            idx = idx.view(b, p, -1).clone()
            idx[:, j] = seen["idx"][:, j]
            idx = idx.view(b * p, -1)
            w = logits.sigmoid().gather(1, idx)
            if m.norm_topk_prob:
                w = w / (w.sum(-1, keepdim=True) + 1e-20)
            return logits, w * m.routed_scaling_factor, idx

        out.append((metric(hf_run(hf, corrupted, router, hook=force)) - m_corr) / (m_clean - m_corr))
    return torch.tensor(out)


# ---------------------------------------------------------------------------------------- patching


def test_residual_patching_known_cells(rand, pair):
    clean, corrupted = pair
    exact = patch(rand, clean, corrupted, "resid_pre", answer=ANSWER, wrong=WRONG, max_batch=2)
    assert exact.scores.shape == (5, 10) and exact.axis == "position"
    assert exact.rows == [f"blocks.{i}.hook_resid_pre" for i in range(5)]
    # before the corrupted token nothing differs; the embedding row restores the whole input at it
    assert torch.equal(exact.scores[:, :4], torch.zeros(5, 4))
    assert torch.equal(exact.scores[0], torch.eye(10)[4])
    assert exact.clean_metric == pytest.approx(metric(rand.hf_model(clean).logits), abs=1e-5)
    assert exact.corrupted_metric == pytest.approx(metric(rand.hf_model(corrupted).logits), abs=1e-5)
    post = patch(rand, clean, corrupted, "resid_post", answer=ANSWER, wrong=WRONG, max_batch=2)
    assert torch.equal(post.scores[-1], torch.eye(10)[-1])  # the last block's output at the metric's position
    # batching several patches per forward agrees to float rounding
    batched = patch(rand, clean, corrupted, "resid_pre", answer=ANSWER, wrong=WRONG)
    torch.testing.assert_close(batched.scores, exact.scores, rtol=0, atol=1e-5)
    torch.testing.assert_close(batched.metric, exact.metric, rtol=0, atol=1e-5)


def test_head_patching_equals_patching_hf_by_hand(rand, pair):
    clean, corrupted = pair
    hf = rand.hf_model
    attn = patch(rand, clean, corrupted, "attn_heads", answer=ANSWER, wrong=WRONG)
    assert attn.scores.shape == (1, 4) and attn.row_layers == [1] and attn.axis == "head"
    ref = naive_head_scores(hf, clean, corrupted, hf.model.layers[1].mixer.o_proj, 4)
    torch.testing.assert_close(attn.scores[0], ref, rtol=1e-4, atol=1e-5)

    mamba = patch(rand, clean, corrupted, "mamba_heads", answer=ANSWER, wrong=WRONG)
    assert mamba.scores.shape == (2, 8) and mamba.row_types == ["mamba", "mamba"]
    for r, i in enumerate((0, 4)):
        ref = naive_head_scores(hf, clean, corrupted, hf.model.layers[i].mixer.norm, 8)
        torch.testing.assert_close(mamba.scores[r], ref, rtol=1e-4, atol=1e-5)


def test_head_by_position_patching_equals_patching_hf_by_hand(rand, pair):
    clean, corrupted = pair
    hf = rand.hf_model
    attn = patch(rand, clean, corrupted, "attn_head_positions", answer=ANSWER, wrong=WRONG)
    assert attn.scores.shape == (4, 10) and attn.axis == "position"
    assert attn.row_layers == [1] * 4 and attn.row_heads == [0, 1, 2, 3]
    # before the corrupted token nothing differs, up to rounding: the patched forwards run 4 copies of the
    # batch, and HF's MoE batches tokens by expert, so its products round by batch size (HF's own forward of
    # the batch repeated differs in the last bit from block 4 on; 4.6e-6 in these scores on transformers 5.25)
    torch.testing.assert_close(attn.scores[:, :4], torch.zeros(4, 4), rtol=0, atol=1e-5)
    for j in (4, 7, 9):
        ref = naive_head_scores(hf, clean, corrupted, hf.model.layers[1].mixer.o_proj, 4, position=j)
        torch.testing.assert_close(attn.scores[:, j], ref, rtol=1e-4, atol=1e-5)
    assert attn.scores[:, 4:].abs().max() > 1e-3

    mamba = patch(rand, clean, corrupted, "mamba_head_positions", answer=ANSWER, wrong=WRONG)
    assert mamba.scores.shape == (16, 10) and mamba.row_heads == list(range(8)) * 2
    assert mamba.row_layers == [0] * 8 + [4] * 8
    ref = naive_head_scores(hf, clean, corrupted, hf.model.layers[4].mixer.norm, 8, position=9)
    torch.testing.assert_close(mamba.scores[8:, 9], ref, rtol=1e-4, atol=1e-5)
    assert "head 3" in mamba.figure().data[0].y[3]


def test_routing_patching_equals_forcing_hf_router(rand, pair):
    clean, corrupted = pair
    hf = rand.hf_model
    res = patch(rand, clean, corrupted, "moe_routing", answer=ANSWER, wrong=WRONG)
    assert res.scores.shape == (1, 10) and res.row_layers == [3]
    ref = naive_routing_scores(hf, clean, corrupted, hf.model.layers[3].mixer.gate)
    torch.testing.assert_close(res.scores[0], ref, rtol=1e-4, atol=1e-5)
    assert res.scores[0, 4:].abs().max() > 1e-3  # the test exercises a routing change


def test_whole_hook_points_and_a_custom_metric(rand, pair):
    clean, corrupted = pair
    hf = rand.hf_model

    def prob(logits):  # a scalar metric: mean probability of ANSWER at the last position
        return logits[:, -1].softmax(-1)[:, ANSWER].mean()

    res = patch(rand, clean, corrupted, ["blocks.0.hook_resid_pre", "blocks.2.hook_mixer_out"], metric=prob)
    assert res.axis == "all" and res.scores.shape == (2, 1)
    assert res.scores[0, 0] == pytest.approx(1.0, abs=1e-5)  # a clean input is the clean run
    seen = {}
    mlp = hf.model.layers[2].mixer
    hf_run(hf, clean, mlp, hook=lambda m, a, out: seen.update(out=out.clone()))

    def p_of(logits):
        return float(prob(logits.detach()))

    ref = hf_run(hf, corrupted, mlp, hook=lambda m, a, out: seen["out"])
    expected = (p_of(ref) - p_of(hf(corrupted).logits)) / (
        p_of(hf(clean).logits) - p_of(hf(corrupted).logits)
    )
    assert res.scores[1, 0] == pytest.approx(expected, abs=1e-5)
    assert res.scores[1, 0] != pytest.approx(0.0, abs=1e-3)


def test_patching_the_copier():
    copier = build_copier()
    clean, corrupted = torch.tensor([[3, 4, 5, 6, 3]]), torch.tensor([[7, 4, 5, 6, 3]])
    kw = dict(answer=3, wrong=7)
    resid = patch(copier, clean, corrupted, "resid_pre", **kw)
    expected = torch.tensor(
        [[1.0, 0, 0, 0, 0], [1, 0, 0, 0, 0], [0, 0, 0, 0, 1]]
    )  # M reads, * copies, E adds 0
    torch.testing.assert_close(resid.scores, expected, rtol=0, atol=1e-5)
    heads = patch(copier, clean, corrupted, "attn_heads", **kw)
    torch.testing.assert_close(heads.scores, torch.tensor([[1.0, 0, 0, 0]]), rtol=0, atol=1e-5)
    for point, shape in [("mamba_heads", (1, 8)), ("moe_routing", (1, 5))]:
        assert torch.equal(patch(copier, clean, corrupted, point, **kw).scores, torch.zeros(shape))


def test_patching_bad_input(rand, pair):
    clean, corrupted = pair
    with pytest.raises(ValueError, match="same batch size and token length"):
        patch(rand, clean, corrupted[:, :-1], answer=ANSWER)
    with pytest.raises(ValueError, match="either metric"):
        patch(rand, clean, corrupted)
    with pytest.raises(ValueError, match="either metric"):
        patch(rand, clean, corrupted, metric=metric, answer=ANSWER)
    with pytest.raises(ValueError, match="nothing can be restored"):
        patch(rand, clean, clean, answer=ANSWER)
    with pytest.raises(ValueError, match="points must be one of"):
        patch(rand, clean, corrupted, "resid", answer=ANSWER)
    with pytest.raises(ValueError, match="read-only"):
        patch(rand, clean, corrupted, ["blocks.0.mamba.hook_hidden_attn"], answer=ANSWER)
    with pytest.raises(ValueError, match="has none"):
        patch(ne.HookedNemotronH(random_model("M-")), clean, corrupted, "attn_heads", answer=ANSWER)


def test_logit_diff_per_row():
    logits = torch.randn(3, 4, 10)
    got = logit_diff(torch.tensor([1, 2, 3]), 0, position=2)(logits)
    torch.testing.assert_close(got, torch.stack([logits[r, 2, r + 1] - logits[r, 2, 0] for r in range(3)]))


# ---------------------------------------------------------------------------------------- induction


def test_repeated_tokens(rand):
    x, prefix = repeated_tokens(rand, seq_len=20, batch=3, seed=1)
    assert prefix == 1 and x.shape == (3, 41)
    assert torch.equal(x[:, 0], torch.full((3,), rand.cfg.bos_token_id))
    assert torch.equal(x[:, 1:21], x[:, 21:])
    assert all(len(set(row)) == 20 for row in x[:, 1:21].tolist())
    assert not set(x[:, 1:].flatten().tolist()) & {0, 1, 2}  # pad, bos, eos
    with pytest.raises(ValueError, match="seq_len must be between"):
        repeated_tokens(rand, seq_len=95)


def test_repeated_tokens_skip_the_tokenizers_special_tokens():
    tiny = ne.load("tiny")
    unk = tiny.tokenizer.unk_token_id
    assert unk not in {tiny.cfg.pad_token_id, tiny.cfg.bos_token_id, tiny.cfg.eos_token_id}
    x, _ = repeated_tokens(tiny, seq_len=tiny.cfg.vocab_size - 4, batch=1)  # every ordinary token once
    assert not set(x[0, 1:].tolist()) & set(tiny.tokenizer.all_special_ids)


def test_scores_of_hand_set_attention_patterns(rand):
    L = 8

    def hand(t, hook):  # induction_scores asks for the second copy's query rows only: the last n_q
        n_q, P = t.shape[-2:]
        q, rows = torch.arange(P - n_q, P), torch.arange(n_q)
        new = torch.zeros_like(t)
        for h, back in enumerate((L - 1, L, 1)):  # induction, duplicate, previous-token heads
            new[:, h, rows, (q - back).clamp_min(0)] = 1
        new[:, 3] = torch.tril(torch.ones(P, P))[P - n_q :] / (q[:, None] + 1)  # uniform over the prefix
        return new

    with rand.hooks([("blocks.1.attn.hook_pattern", hand)]):
        res = induction_scores(rand, seq_len=L, batch=2)
    uniform = float((1 / (torch.arange(1 + L, 1 + 2 * L) + 1.0)).mean())  # queries of the second copy
    row = res.layers.index(1)
    for score, col in (("induction", 0), ("duplicate", 1), ("previous", 2)):
        expected = torch.full((4,), 0.0)
        expected[col], expected[3] = 1.0, uniform
        torch.testing.assert_close(getattr(res, score)[row, :4], expected)
    assert torch.isnan(res.induction[row, 4:]).all()  # 4 attention heads, 8 Mamba heads
    top = res.top(2, "duplicate")
    assert top[0] == dict(layer=1, layer_type="attention", head=1, score=1.0)
    assert top[1]["score"] <= 1.0


def test_scores_against_patterns_written_out_by_hand(rand):
    res = induction_scores(rand, seq_len=6, batch=2, seed=3)
    x, first, L = res.tokens, res.prefix + res.seq_len, res.seq_len
    names = [f"blocks.{i}.mamba.hook_{p}" for i in (0, 4) for p in ("dt", "B", "C")]
    names += ["blocks.1.attn.hook_q", "blocks.1.attn.hook_k"]
    _, cache = rand.run_with_cache(x, names_filter=names)
    P = x.shape[1]
    causal = torch.ones(P, P, dtype=torch.bool).tril()
    weights = {}
    for i in (0, 4):  # M[t, s] = (C_t·B_s) exp(A Σ_{s<r≤t} dt_r) dt_s, then |M| / row sum
        mixer = rand.hf_model.model.layers[i].mixer
        dt, B, C = (cache[f"blocks.{i}.mamba.hook_{p}"].double() for p in ("dt", "B", "C"))
        A = -torch.exp(mixer.A_log.double())
        heads_per_group = mixer.num_heads // mixer.n_groups
        cum = dt.cumsum(1)  # b p h
        M = torch.zeros(2, mixer.num_heads, P, P, dtype=torch.float64)
        for h in range(mixer.num_heads):
            g = h // heads_per_group
            cb = C[:, :, g] @ B[:, :, g].transpose(1, 2)  # b t s
            decay = torch.exp(A[h] * (cum[:, :, h, None] - cum[:, None, :, h]))
            M[:, h] = torch.where(causal, cb * decay * dt[:, None, :, h], 0)
        weights[i] = M.abs() / M.abs().sum(-1, keepdim=True)
    attn = rand.hf_model.model.layers[1].mixer
    q = cache["blocks.1.attn.hook_q"].double().transpose(1, 2)
    k = cache["blocks.1.attn.hook_k"].double().transpose(1, 2).repeat_interleave(2, dim=1)
    scores = (q @ k.transpose(-1, -2) * attn.scaling).masked_fill(~causal, float("-inf"))
    weights[1] = scores.softmax(-1)
    t = torch.arange(first, P)
    for r, i in enumerate(res.layers):
        for score, back in (("induction", L - 1), ("duplicate", L), ("previous", 1)):
            ref = weights[i][:, :, t, t - back].mean((0, 2)).float()
            torch.testing.assert_close(getattr(res, score)[r, : len(ref)], ref, rtol=1e-4, atol=1e-6)
    assert res.layer_types == ["mamba", "attention", "mamba"] and res.n_heads == [8, 4, 8]


def test_scores_of_given_tokens(rand):
    half = ids(b=1, p=5, seed=2)
    res = induction_scores(rand, half)
    assert res.prefix == 0 and res.seq_len == 5 and torch.equal(res.tokens, torch.cat([half, half], 1))
    with pytest.raises(ValueError, match="at least 2 tokens"):
        induction_scores(rand, half[:, :1])


def test_scores_of_a_text_repeat_it_after_bos():
    model = ne.load("tiny")
    text = "The little cat sat on the mat."
    res = induction_scores(model, text)
    half = model.to_tokens(text)[:, 1:]
    assert res.prefix == 1 and res.seq_len == half.shape[1]
    assert torch.equal(res.tokens, torch.cat([torch.tensor([[model.cfg.bos_token_id]]), half, half], 1))
    assert res.tokens[0, 0] == model.cfg.bos_token_id and model.cfg.bos_token_id not in res.tokens[0, 1:]


def test_patching_and_induction_figures(rand, pair):
    clean, corrupted = pair
    figs = [
        patch(rand, clean, corrupted, "resid_pre", answer=ANSWER, wrong=WRONG).figure(),
        induction_scores(rand, seq_len=5, batch=1).figure("previous"),
    ]
    for fig in figs:
        text = json.dumps(fig.to_plotly_json(), default=str)
        for kind in ("mamba", "attention"):
            assert _style.LAYER_COLORS[kind] in text
            assert any(t.name == kind for t in fig.data)
    heads = patch(rand, clean, corrupted, "attn_heads", answer=ANSWER, wrong=WRONG).figure()
    assert list(heads.data[0].x) == ["head 0", "head 1", "head 2", "head 3"]


def test_patching_figure_has_a_fixed_symmetric_scale(rand, pair):
    """0 is white and ±1 (all of the clean behaviour restored, or as much destroyed) the full colours, so a
    grid of small effects stays pale; five colour-bar ticks, and room for them however few rows."""
    clean, corrupted = pair
    res = patch(rand, clean, corrupted, "attn_heads", answer=ANSWER, wrong=WRONG)
    res.scores = torch.tensor([[0.01, -0.02, 0.0, 0.005]])  # small effects
    heat = res.figure().data[0]
    assert (heat.zmin, heat.zmax) == (-1, 1) and list(heat.colorbar.tickvals) == [-1, -0.5, 0, 0.5, 1]
    assert list(heat.colorbar.ticktext) == ["-100%", "-50%", "0", "+50%", "+100%"]
    assert res.figure().layout.height >= 150 + 150  # one row: the plot area still holds the ticks
    zoomed = res.figure(zmax=0.1).data[0]
    assert (zoomed.zmin, zoomed.zmax) == (-0.1, 0.1) and zoomed.colorbar.ticktext[1] == "-5%"
    res.scores = torch.tensor([[-3.0, 0.5, 0.0, 1.0]])
    assert res.figure().data[0].zmax == 3.0 == -res.figure().data[0].zmin  # wider, still symmetric
    by_position = patch(rand, clean, corrupted, "attn_head_positions", answer=ANSWER, wrong=WRONG).figure()
    assert by_position.layout.height > res.figure().layout.height  # room for the rotated token labels
    with pytest.raises(ValueError, match="positive"):
        res.figure(zmax=0)


def test_induction_figure_says_what_was_repeated(rand):
    random_one = induction_scores(rand, seq_len=5, batch=1).figure().layout.title.text
    assert "repeated random sequence (L = 5 tokens)" in random_one
    assert "4 rows" in induction_scores(rand, seq_len=5, batch=4).figure().layout.title.text
    given = induction_scores(rand, ids(b=1, p=6)).figure().layout.title.text
    assert "repeated token sequence (L = 6 tokens)" in given and "random" not in given
    model = ne.load("tiny")
    said = induction_scores(model, "The little cat sat on the mat.")
    assert said.source == "text" and "text said twice" in said.figure().layout.title.text
