"""Analysis tools against naive references (plain HF runs with torch hooks, closed forms written here) and a
hand-built "copier" model whose answers are known: its attention layer is the only path from context to
prediction, its Mamba and MoE layers add exactly zero."""

import ast
import json
import math
from pathlib import Path

import pytest
import torch
from models import random_model
from tokenizers import Tokenizer, pre_tokenizers
from tokenizers.models import WordLevel
from transformers import PreTrainedTokenizerFast

import nemo_explore as ne
from nemo_explore.analysis import _style
from nemo_explore.analysis.ablation import ablate_layers
from nemo_explore.analysis.attribution import direct_logit_attribution
from nemo_explore.analysis.logit_lens import apply_lens, logit_lens

V = 15  # copier vocabulary: token t lives in dim t, its copy in dim 15 + t, dim 31 is constant
COPY_GAIN, UNEMBED_GAIN = 1.0, 2.0


@pytest.fixture(scope="module")
def rand():
    return ne.HookedNemotronH(random_model("M*-EM", seed=3))


@pytest.fixture(scope="module")
def copier():
    return build_copier()


def build_copier() -> ne.HookedNemotronH:
    """Pattern M*E. Embedding e_t + e_31; attention is uniform over the prefix (q = k = 0), head 0 writes
    COPY_GAIN × the mean one-hot of the tokens seen into dims 15..29, which alone the unembedding reads.
    Mamba (out_proj = 0) and MoE (experts = 0) add nothing."""
    hf = random_model("M*E", seed=5, vocab_size=V, head_dim=16)
    layers = hf.model.layers
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if name.endswith("norm.weight") and "mixer" not in name or name.endswith("norm_f.weight"):
                p.fill_(1.0)
        hf.model.embeddings.weight.zero_()
        hf.model.embeddings.weight[:, :V] = torch.eye(V)
        hf.model.embeddings.weight[:, 31] = 1.0
        layers[0].mixer.out_proj.weight.zero_()
        attn = layers[1].mixer
        for w in (attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight, attn.o_proj.weight):
            w.zero_()
        attn.v_proj.weight[:V, :V] = torch.eye(V)  # kv head 0 = token identity
        attn.o_proj.weight[V : 2 * V, :V] = COPY_GAIN * torch.eye(V)  # head 0 only
        moe = layers[2].mixer
        for p in [*moe.experts.parameters(), *moe.shared_experts.parameters()]:
            p.zero_()
        hf.lm_head.weight.zero_()
        hf.lm_head.weight[:, V : 2 * V] = UNEMBED_GAIN * torch.eye(V)
    return ne.HookedNemotronH(hf)


@pytest.fixture(scope="module")
def worded(rand):
    """The random model with a whitespace word-level tokenizer built here (offline)."""
    words = ["the", "cat", "sat", "on", "mat", "dog", "ran", "far", "a", "big", "red"]
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3, **{w: i + 4 for i, w in enumerate(words)}}
    tok = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )
    return ne.HookedNemotronH(rand.hf_model, tokenizer=fast)


def copier_logits(x: torch.Tensor, eps: float) -> torch.Tensor:
    """The copier in closed form: resid_t = e_{x_t} + e_31 + gain·mean_{s≤t} onehot(x_s) / RMS(e_t + e_31)
    (the block norm's scale), logits = UNEMBED_GAIN · copy dims / RMS(resid_t)."""
    b, p = x.shape
    onehot = torch.nn.functional.one_hot(x, V).double()
    seen = onehot.cumsum(1) / torch.arange(1, p + 1, dtype=torch.float64)[:, None]
    resid = torch.zeros(b, p, 32, dtype=torch.float64)
    resid[..., :V] = onehot
    resid[..., 31] = 1
    resid[..., V : 2 * V] = COPY_GAIN * seen / math.sqrt(2 / 32 + eps)
    rms = resid.pow(2).mean(-1, keepdim=True).add(eps).sqrt()
    return UNEMBED_GAIN * resid[..., V : 2 * V] / rms


def ids(b=2, p=12, seed=0, vocab=97):
    return torch.randint(3, vocab, (b, p), generator=torch.Generator().manual_seed(seed))


def next_token_loss(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    logits = logits[:, :-1].double()
    return (logits.logsumexp(-1) - logits.gather(-1, x[:, 1:, None]).squeeze(-1)).float()


def hf_logits(hf, x, edits=()):
    """HF's own forward with plain torch forward hooks ``(module, hook)`` attached."""
    handles = [m.register_forward_hook(h) for m, h in edits]
    try:
        return hf(x).logits
    finally:
        for h in handles:
            h.remove()


def mixer_outputs(hf, x) -> tuple[dict[int, torch.Tensor], torch.Tensor]:
    """Each block's mixer output and the final residual stream, from HF's modules directly."""
    outs, final = {}, {}

    def grab(i):
        return lambda m, a, out: outs.__setitem__(i, out[0] if isinstance(out, tuple) else out)

    edits = [(layer.mixer, grab(i)) for i, layer in enumerate(hf.model.layers)]
    edits.append((hf.model.layers[-1], lambda m, a, out: final.__setitem__("x", out)))
    hf_logits(hf, x, edits)
    return outs, final["x"]


def zero_out(m, a, out):
    return (torch.zeros_like(out[0]), out[1]) if isinstance(out, tuple) else torch.zeros_like(out)


# ---------------------------------------------------------------------------------------- ablation


def test_zero_ablation_equals_zeroing_hf_mixers(rand):
    hf, x = rand.hf_model, ids()
    for kw, blocks in [(dict(layer_type="attention"), [1]), (dict(layers=[4, 0, 3]), [0, 3, 4])]:
        res = ablate_layers(rand, x, **kw)
        assert res.layers == blocks
        ref = hf_logits(hf, x, [(hf.model.layers[i].mixer, zero_out) for i in blocks])
        torch.testing.assert_close(res.clean_loss, next_token_loss(hf(x).logits, x), rtol=0, atol=1e-5)
        torch.testing.assert_close(res.ablated_loss, next_token_loss(ref, x), rtol=0, atol=1e-5)
        assert res.delta.shape == (2, 11) and res.delta.abs().max() > 1e-3


def test_mean_ablation_uses_the_reference_mean(rand):
    hf, x, reference = rand.hf_model, ids(), ids(b=3, p=9, seed=7)
    outs, _ = mixer_outputs(hf, reference)
    means = {i: outs[i].mean((0, 1)) for i in (0, 4)}

    def put_mean(i):
        return lambda m, a, out: means[i].expand_as(out).clone()

    ref = hf_logits(hf, x, [(hf.model.layers[i].mixer, put_mean(i)) for i in (0, 4)])
    res = ablate_layers(rand, x, layer_type="mamba", mode="mean", reference=reference)
    torch.testing.assert_close(res.ablated_loss, next_token_loss(ref, x), rtol=0, atol=1e-5)
    # without a reference, the mean is taken over the input itself
    own = ablate_layers(rand, x, layers=[1], mode="mean")
    mean1 = mixer_outputs(hf, x)[0][1].mean((0, 1))
    ref = hf_logits(hf, x, [(hf.model.layers[1].mixer, lambda m, a, out: (mean1.expand_as(out[0]), None))])
    torch.testing.assert_close(own.ablated_loss, next_token_loss(ref, x), rtol=0, atol=1e-5)


def test_ablating_blocks_that_add_nothing_changes_nothing(copier):
    x = ids(p=10, vocab=V)
    for mode in ("zero", "mean"):
        res = ablate_layers(copier, x, layer_type=["mamba", "moe"], mode=mode)
        assert res.layers == [0, 2]
        assert torch.equal(res.ablated_loss, res.clean_loss)


def test_ablating_the_copier_attention_hurts_the_copied_tokens(copier):
    x = torch.tensor([[3, 4, 5, 6, 7, 3, 4, 5, 6, 7, 3, 4]])
    res = ablate_layers(copier, x, "attention")
    eps = copier.cfg.layer_norm_epsilon
    closed = next_token_loss(copier_logits(x, eps), x)
    torch.testing.assert_close(res.clean_loss, closed, rtol=0, atol=1e-5)
    # without attention nothing reaches the dims the unembedding reads: a uniform prediction
    torch.testing.assert_close(res.ablated_loss, torch.full_like(res.ablated_loss, math.log(V)))
    delta = math.log(V) - closed[0]
    worst = res.worst(4)
    expected = delta.sort(descending=True).values[:4]
    torch.testing.assert_close(torch.tensor([w["delta"] for w in worst]), expected.float(), rtol=0, atol=1e-5)
    for w in worst:  # each entry names the position whose loss moved by that much
        assert w["delta"] == pytest.approx(float(delta[w["position"] - 1]), abs=1e-5)
    assert all(w["position"] >= 5 for w in worst)  # all in the repeated half
    assert worst[0]["token"] == f"#{x[0, worst[0]['position']]}"
    assert worst[0]["delta"] == pytest.approx(float(delta.max()), abs=1e-5)
    assert res.mean_delta == pytest.approx(float(delta.mean()), abs=1e-5)


def test_ablation_bad_input(rand, copier):
    x = ids()
    for kw, msg in [
        (dict(), "choose the blocks"),
        (dict(layer_type="attention", layers=[1]), "choose the blocks"),
        (dict(layers=[7]), r"block indices in \[0, 5\)"),
        (dict(layer_type="attention", mode="resample"), "mode must be one of"),
    ]:
        with pytest.raises(ValueError, match=msg):
            ablate_layers(rand, x, **kw)
    with pytest.raises(ValueError, match="this model has no mlp blocks"):
        ablate_layers(copier, ids(vocab=V), "mlp")
    with pytest.raises(ValueError, match="unknown layer type"):
        ablate_layers(rand, x, "transformer")


def test_ablation_of_padded_texts(worded):
    texts = ["the cat sat on the mat", "a big dog ran"]
    res = ablate_layers(worded, texts, "mamba", mode="mean", reference=["the red cat", "a dog sat on a mat"])
    assert res.mask.tolist() == [[True] * 5, [True] * 3 + [False] * 2]
    assert res.str_tokens[1][:4] == ["a", "big", "dog", "ran"]
    # the reference mean is over its real tokens only; each row equals its own unpadded run
    hf = worded.hf_model
    ref_outs = [mixer_outputs(hf, worded.to_tokens(t))[0] for t in ("the red cat", "a dog sat on a mat")]
    means = {i: torch.cat([o[i][0] for o in ref_outs]).mean(0) for i in (0, 4)}
    edits = [
        (hf.model.layers[i].mixer, lambda m, a, out, i=i: means[i].expand_as(out).clone()) for i in (0, 4)
    ]
    for r, text in enumerate(texts):
        x = worded.to_tokens(text)
        n = x.shape[1] - 1
        torch.testing.assert_close(res.ablated_loss[r, :n], next_token_loss(hf_logits(hf, x, edits), x)[0])
        torch.testing.assert_close(res.clean_loss[r, :n], next_token_loss(hf(x).logits, x)[0])
    worst = res.worst(10)
    assert len(worst) == 8 and all(w["batch"] == 0 or w["position"] <= 3 for w in worst)
    assert res.mean_delta == pytest.approx(float(res.delta[res.mask].mean()))


def test_patching_refuses_padded_texts(worded):
    from nemo_explore.analysis.patching import patch

    with pytest.raises(ValueError, match="tokenise to different lengths"):
        patch(worded, ["the cat sat", "a dog"], ["the dog sat", "a cat"], answer="mat")


# ---------------------------------------------------------------------------------------- logit lens


def test_lens_last_row_is_the_model_output(rand):
    hf, x = rand.hf_model, ids()
    res = logit_lens(rand, x)
    logits = hf(x).logits
    lp = torch.log_softmax(logits, -1)
    assert res.logprobs.shape == (6, 2, 11) and res.top_tokens.shape == (6, 2, 12)
    assert torch.equal(res.logprobs[-1], lp[:, :-1].gather(-1, x[:, 1:, None]).squeeze(-1))
    assert torch.equal(res.top_tokens[-1], logits.argmax(-1))
    _, final = mixer_outputs(hf, x)
    assert torch.equal(apply_lens(rand, final), logits)


def test_lens_every_row_against_a_hand_written_norm(rand):
    hf, x = rand.hf_model, ids()
    outs, _ = mixer_outputs(hf, x)
    resid = hf.model.embeddings.weight[x].double()
    streams = [resid]
    for i in range(rand.n_layers):
        resid = resid + outs[i].double()
        streams.append(resid)
    w, W_U = hf.model.norm_f.weight.double(), hf.lm_head.weight.double()
    eps = hf.model.norm_f.variance_epsilon
    res = logit_lens(rand, x)
    for r, s in enumerate(streams):
        logits = (s / s.pow(2).mean(-1, keepdim=True).add(eps).sqrt() * w) @ W_U.T
        lp = torch.log_softmax(logits, -1)
        ref = lp[:, :-1].gather(-1, x[:, 1:, None]).squeeze(-1).float()
        torch.testing.assert_close(res.logprobs[r], ref, rtol=0, atol=2e-5)
        torch.testing.assert_close(res.top_logprobs[r], lp.max(-1).values.float(), rtol=0, atol=2e-5)


def test_lens_targets(rand):
    x = ids()
    full = logit_lens(rand, x)
    one = logit_lens(rand, x, targets=7)
    per_pos = logit_lens(rand, x, targets=x[0])  # (p,) broadcast over the batch
    assert one.logprobs.shape == (6, 2, 12) and torch.equal(one.targets, torch.full((2, 12), 7))
    assert torch.equal(per_pos.targets, x[0].expand(2, 12))
    # next-token targets are the explicit targets x[:, 1:] on the first p-1 positions
    shifted = logit_lens(rand, x, targets=torch.cat([x[:, 1:], x[:, :1]], 1))
    assert torch.equal(shifted.logprobs[..., :-1], full.logprobs)
    with pytest.raises(ValueError, match="do not broadcast"):
        logit_lens(rand, x, targets=torch.zeros(3, 5, dtype=torch.long))
    with pytest.raises(ValueError, match="outside the vocabulary"):
        logit_lens(rand, x, targets=97)
    with pytest.raises(ValueError, match="no tokenizer"):
        logit_lens(rand, x, targets=" Paris")


def test_lens_of_text_with_a_word_target(worded):
    res = logit_lens(worded, "the cat sat on the mat", targets="mat")
    ids = logit_lens(
        worded, worded.to_tokens("the cat sat on the mat"), targets=worded.to_tokens("mat")[0, 0]
    )
    assert torch.equal(res.logprobs, ids.logprobs) and res.token_text[int(res.targets[0, 0])] == "mat"
    with pytest.raises(ValueError, match="is 2 tokens"):
        logit_lens(worded, "the cat", targets="big dog")


def test_lens_on_the_copier(copier):
    x = torch.tensor([[3, 4, 5, 3, 4, 5, 3]])
    res = logit_lens(copier, x)
    uniform = torch.full((1, 6), -math.log(V))
    for row in (0, 1):  # embedding and after Mamba: nothing in the copy dims yet
        torch.testing.assert_close(res.logprobs[row], uniform)
    closed = torch.log_softmax(copier_logits(x, copier.cfg.layer_norm_epsilon), -1)
    ref = closed[:, :-1].gather(-1, x[:, 1:, None]).squeeze(-1).float()
    for row in (2, 3):  # after attention, and after the MoE that adds nothing
        torch.testing.assert_close(res.logprobs[row], ref, rtol=0, atol=1e-5)
    assert torch.equal(res.top_tokens[3, 0, 3:], torch.tensor([3, 3, 3, 3]))  # ties go to the lowest id


# ---------------------------------------------------------------------------------------- attribution


def test_attribution_sums_to_the_logit(rand):
    hf, x = rand.hf_model, ids()
    logits = hf(x).logits
    res = direct_logit_attribution(rand, x)
    assert res.per_block.shape == (5, 2, 11)
    ref = logits[:, :-1].gather(-1, x[:, 1:, None]).squeeze(-1)
    torch.testing.assert_close(res.logit, ref, rtol=0, atol=0)
    torch.testing.assert_close(res.total, ref, rtol=1e-5, atol=1e-5)
    diff = direct_logit_attribution(rand, x, targets=5, against=x)
    ref = logits[..., 5] - logits.gather(-1, x[..., None]).squeeze(-1)
    assert diff.per_block.shape == (5, 2, 12)
    torch.testing.assert_close(diff.total, ref, rtol=1e-5, atol=1e-5)


def test_attribution_terms_against_a_hand_written_linearisation(rand):
    hf, x = rand.hf_model, ids()
    outs, final = mixer_outputs(hf, x)
    eps = hf.model.norm_f.variance_epsilon
    scale = 1 / final.double().pow(2).mean(-1).add(eps).sqrt()  # b p
    target = 11
    direction = hf.model.norm_f.weight.double() * hf.lm_head.weight[target].double()
    res = direct_logit_attribution(rand, x, targets=target)
    for i in range(rand.n_layers):
        ref = (outs[i].double() @ direction) * scale
        torch.testing.assert_close(res.per_block[i], ref.float(), rtol=1e-5, atol=1e-6)
    embed = (hf.model.embeddings.weight[x].double() @ direction) * scale
    torch.testing.assert_close(res.embed, embed.float(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(res.scale, scale.float())
    per_type = res.per_type
    assert list(per_type) == ["embed", "mamba", "attention", "mlp", "moe"]
    torch.testing.assert_close(per_type["mamba"], res.per_block[0] + res.per_block[4])


def test_attribution_on_the_copier(copier):
    x = torch.tensor([[3, 4, 5, 3, 4, 6, 3, 9]])
    res = direct_logit_attribution(copier, x)
    per_type = res.per_type
    for kind in ("embed", "mamba", "moe"):
        assert torch.equal(per_type[kind], torch.zeros(1, 7))
    torch.testing.assert_close(per_type["attention"], res.logit, rtol=1e-6, atol=1e-6)
    closed = copier_logits(x, copier.cfg.layer_norm_epsilon)[:, :-1].gather(-1, x[:, 1:, None]).squeeze(-1)
    torch.testing.assert_close(res.logit, closed.float(), rtol=0, atol=1e-5)


def test_lens_and_attribution_of_padded_texts(worded):
    texts = ["the cat sat on the mat", "a big dog"]
    lens, dla = logit_lens(worded, texts), direct_logit_attribution(worded, texts)
    assert lens.mask.tolist() == dla.mask.tolist() == [[True] * 5, [True, True, False, False, False]]
    short = worded.to_tokens(texts[1])  # the padded row equals its own unpadded run on its real tokens
    torch.testing.assert_close(lens.logprobs[:, 1, :2], logit_lens(worded, short).logprobs[:, 0])
    torch.testing.assert_close(
        dla.per_block[:, 1, :2], direct_logit_attribution(worded, short).per_block[:, 0]
    )
    fig = lens.figure(batch=1)
    assert list(fig.data[0].x) == ["0 a", "1 big"]
    by_block = dla.figure(batch=1).data[0].y
    assert by_block[1] == pytest.approx(float(dla.per_block[0, 1, :2].mean()))


# ---------------------------------------------------------------------------------------- figures


def test_figures_show_every_layer_type(rand):
    x = ids()
    figs = [
        ablate_layers(rand, x, "attention").figure(),
        logit_lens(rand, x).figure(max_positions=5),
        direct_logit_attribution(rand, x).figure(),
        direct_logit_attribution(rand, x).figure(position=-1),
    ]
    for fig in figs:
        text = json.dumps(fig.to_plotly_json(), default=str)
        for kind, color in _style.LAYER_COLORS.items():
            assert color in text, kind
            assert any(t.name == kind for t in fig.data), kind


def test_figures_label_every_row_and_keep_the_legend_off_the_titles(rand):
    x = ids()
    lens = logit_lens(rand, x).figure()
    assert lens.layout.yaxis.dtick == 1 and len(lens.data[0].y) == rand.n_layers + 1  # no row unlabelled
    rows = zip(lens.data[0].y[1:], rand.layer_types, strict=True)
    assert all("mamba" in y for y, k in rows if k == "mamba")
    dla = direct_logit_attribution(rand, x).figure()
    titles = [a.y for a in dla.layout.annotations if a.text in ("per block", "per layer type")]
    assert len(titles) == 2 and dla.layout.legend.yanchor == "bottom"
    assert dla.layout.legend.y > max(titles) + 0.05  # the legend's bottom edge sits above the subplot titles


def test_analysis_modules_import_plotly_only_inside_figure():
    root = Path(ne.__file__).parent / "analysis"
    for name in ("_style", "ablation", "attribution", "logit_lens", "patching", "induction"):
        tree = ast.parse((root / f"{name}.py").read_text())
        top = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
        mods = [a.name for n in top for a in n.names] + [
            n.module or "" for n in top if isinstance(n, ast.ImportFrom)
        ]
        assert not any(m.startswith("plotly") for m in mods), name


def test_token_text_is_escaped():
    assert _style.position_labels(["<b>x</b>", "a\nb"]) == ["0 &lt;b&gt;x&lt;/b&gt;", "1 a↵b"]


def test_attribution_figure_over_chosen_positions(rand):
    """``positions=`` averages the figure over those columns only (what a notebook's prose quotes), and says
    so in the title; the per-type bars are the per-type terms' mean there."""
    res = direct_logit_attribution(rand, ids())
    fig = res.figure(batch=1, positions=slice(6, None))
    by_type = dict(zip(fig.data[1].x, fig.data[1].y, strict=True))
    for kind, terms in res.per_type.items():
        assert by_type[kind] == pytest.approx(float(terms[1, 6:].mean()), abs=1e-6), kind
    assert "mean over 5 positions (6–10)" in fig.layout.title.text
    assert "mean over 11 positions" in res.figure().layout.title.text
    listed = res.figure(positions=[0, 3])
    assert listed.data[0].y[1] == pytest.approx(float(res.per_block[0, 0, [0, 3]].mean()), abs=1e-6)
    with pytest.raises(ValueError, match="not both"):
        res.figure(position=1, positions=[1])


def test_lens_figure_drops_cell_text_when_cells_are_too_small(rand):
    """Up to TEXT_MAX_POSITIONS positions each cell names the lens's top-1 token; beyond, only the hover
    does (the text would not fit), unless asked for."""
    from nemo_explore.analysis.logit_lens import TEXT_MAX_POSITIONS

    short = logit_lens(rand, ids(b=1, p=TEXT_MAX_POSITIONS + 1)).figure()  # p - 1 scored positions
    long = logit_lens(rand, ids(b=1, p=TEXT_MAX_POSITIONS + 2)).figure()
    assert short.data[0].texttemplate == "%{text}" and len(short.data[0].x) == TEXT_MAX_POSITIONS
    assert long.data[0].texttemplate is None and long.data[0].text is None
    assert "top-1" in long.data[0].hovertext[0][0] and "hover" in long.layout.title.text
    forced = logit_lens(rand, ids(b=1, p=TEXT_MAX_POSITIONS + 2)).figure(cell_text=True)
    assert forced.data[0].texttemplate == "%{text}"
