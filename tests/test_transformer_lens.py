"""TransformerLens idioms run on the tiny checkpoint and mean what a TL user thinks, each value checked
against an independent computation (HF's modules, the cache's own points, a by-hand formula)."""

from functools import partial

import pytest
import torch
import torch.nn.functional as F
from models import hooked_pair

import nemo_explore as ne
from nemo_explore.core.hook_names import HookNameError
from nemo_explore.tl import utils

TEXT = "The little cat sat on the mat. The little cat sat on the mat."


@pytest.fixture(scope="module")
def model():
    return ne.load("tiny")


@pytest.fixture(scope="module")
def run(model):
    with torch.no_grad():
        return model.run_with_cache(TEXT)


def attn_layer(model):
    return model.layers("attention")[0]


# ---------------------------------------------------------------- names
def test_get_act_name_maps_tl_and_nemotron_names():
    assert utils.get_act_name("pattern", 3) == "blocks.3.attn.hook_pattern"
    assert utils.get_act_name("attn", 3) == "blocks.3.attn.hook_pattern"  # TL's alias
    assert utils.get_act_name("attn_scores", 3) == "blocks.3.attn.hook_attn_scores"
    for short in "qkvz":
        assert utils.get_act_name(short, 1) == f"blocks.1.attn.hook_{short}"
    assert utils.get_act_name("resid_pre", 0) == "blocks.0.hook_resid_pre"
    assert utils.get_act_name("resid_post", 6) == "blocks.6.hook_resid_post"
    assert utils.get_act_name("attn_out", 3) == utils.get_act_name("mlp_out", 3) == "blocks.3.hook_mixer_out"
    assert utils.get_act_name("embed") == "hook_embed"
    assert utils.get_act_name("normalized") == "ln_final.hook_normalized"
    assert utils.get_act_name("state_norm", 2) == "blocks.2.mamba.hook_state_norm"
    assert utils.get_act_name("hidden_attn", 2) == "blocks.2.mamba.hook_hidden_attn"
    assert utils.get_act_name("topk_indices", 1) == "blocks.1.moe.hook_topk_indices"
    assert utils.get_act_name("post", 5) == utils.get_act_name("mlp_post", 5) == "blocks.5.mlp.hook_post"
    assert utils.get_act_name("blocks.3.attn.hook_z") == "blocks.3.attn.hook_z"
    assert utils.get_act_name("result", 3) == "blocks.3.attn.hook_result"
    assert utils.get_act_name("scale", 3, "ln1") == utils.get_act_name("scale", 3) == "blocks.3.hook_scale"
    final = utils.get_act_name("scale", None, "ln_final")
    assert utils.get_act_name("scale") == final == "ln_final.hook_scale"
    for layer, sub in [(3, "ln2"), (3, "ln_final"), (None, "ln1")]:
        with pytest.raises(HookNameError, match="one norm, before its mixer"):
            utils.get_act_name("scale", layer, sub)


@pytest.mark.parametrize(
    "name, why",
    [
        ("resid_mid", "one mixer and one residual add"),
        ("pos_embed", "no positional embedding"),
    ],
)
def test_get_act_name_says_why_a_tl_name_has_no_meaning(name, why):
    with pytest.raises(HookNameError, match=why):
        utils.get_act_name(name, 0)


def test_get_act_name_bad_layers_are_clear():
    with pytest.raises(HookNameError, match="give the block"):
        utils.get_act_name("pattern")
    with pytest.raises(HookNameError, match=r"cache\['pattern', -1\]"):
        utils.get_act_name("pattern", -1)
    with pytest.raises(HookNameError, match="mixer_in"):
        utils.get_act_name("normalized", 2)
    with pytest.raises(HookNameError, match="known short names"):
        utils.get_act_name("patern", 2)


def test_cache_tuple_keys(model, run):
    _, cache = run
    a, n = attn_layer(model), model.n_layers
    assert cache["pattern", a] is cache[f"blocks.{a}.attn.hook_pattern"]
    assert cache["resid_post", -1] is cache[f"blocks.{n - 1}.hook_resid_post"]
    assert cache["q", a - n] is cache[f"blocks.{a}.attn.hook_q"]
    assert cache["embed"] is cache["hook_embed"]
    mamba = model.layers("mamba")[0]
    with pytest.raises(HookNameError, match=f"block {mamba} is a mamba layer.*hook_hidden_attn"):
        cache["pattern", mamba]


# ---------------------------------------------------------------- config and weights
def test_cfg_has_tl_names_and_every_hf_attribute(model):
    hf = model.hf_model.config
    cfg = model.cfg
    assert (cfg.n_layers, cfg.d_model, cfg.d_vocab) == (
        len(hf.layers_block_type),
        hf.hidden_size,
        hf.vocab_size,
    )
    assert (cfg.n_heads, cfg.n_key_value_heads, cfg.d_head) == (
        hf.num_attention_heads,
        hf.num_key_value_heads,
        hf.head_dim,
    )
    assert cfg.d_mlp == model.blocks[model.layers("mlp")[0]].mixer.up_proj.out_features
    assert cfg.device == model.hf_model.lm_head.weight.device and cfg.positional_embedding_type == "none"
    assert cfg.mamba_num_heads == hf.mamba_num_heads and cfg.layers_block_type == hf.layers_block_type
    assert model.config is hf and cfg == hf and cfg.to_dict() == hf.to_dict()
    with pytest.raises(AttributeError, match="set that"):
        cfg.n_layers = 3


def test_weights_in_tl_layout_reproduce_the_hook_points(model, run):
    logits, cache = run
    a = attn_layer(model)
    attn = model.blocks[a].attn
    x = cache[f"blocks.{a}.hook_mixer_in"][0]  # p d
    n_rep = model.cfg.n_heads // model.cfg.n_key_value_heads
    for h in range(model.cfg.n_heads):
        torch.testing.assert_close(x @ attn.W_Q[h], cache["q", a][0, :, h], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(x @ attn.W_K[h], cache["k", a][0, :, h // n_rep], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(x @ attn.W_V[h], cache["v", a][0, :, h // n_rep], rtol=1e-5, atol=1e-5)
    assert attn._W_K.shape == (model.cfg.n_key_value_heads, model.cfg.d_model, model.cfg.d_head)
    z = cache["z", a][0]
    out = sum(z[:, h] @ attn.W_O[h] for h in range(model.cfg.n_heads))
    torch.testing.assert_close(out, cache["attn_out", a][0], rtol=1e-5, atol=1e-5)
    assert torch.equal(model.W_Q[a], attn.W_Q) and torch.equal(model.W_O[a, 1], attn.W_O[1])
    assert torch.equal(model.W_Q[a - model.n_layers], attn.W_Q) and not attn.b_O.any()
    m = model.layers("mlp")[0]
    mlp = model.blocks[m].mlp
    torch.testing.assert_close(cache["mixer_in", m] @ mlp.W_in, cache["pre", m], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(cache["post", m] @ mlp.W_out, cache["mlp_out", m], rtol=1e-5, atol=1e-5)
    assert torch.equal(model.W_E[cache.tokens], cache["embed"])
    torch.testing.assert_close(cache["normalized"] @ model.W_U + model.b_U, logits, rtol=1e-5, atol=1e-5)
    assert model.blocks[0].mixer is model.hf_model.model.layers[0].mixer  # HF's module, as before


def test_weights_of_the_wrong_kind_say_which_blocks_have_them(model):
    mamba = model.layers("mamba")[0]
    with pytest.raises(KeyError, match=f"block {mamba} is a mamba layer.*attention blocks are"):
        model.W_Q[mamba]
    with pytest.raises(AttributeError, match=f"its mixer is blocks\\[{mamba}\\].mamba"):
        _ = model.blocks[mamba].attn
    with pytest.raises(AttributeError, match="no positional embedding"):
        _ = model.W_pos


# ---------------------------------------------------------------- residual-stream tools
def test_accumulated_resid_through_ln_final_times_W_U_is_the_logits(model, run):
    logits, cache = run
    n = model.n_layers
    stack, labels = cache.accumulated_resid(return_labels=True)
    assert labels == [f"{k}_pre" for k in range(n)] + ["final_post"]
    for k in range(n):
        assert torch.equal(stack[k], cache["resid_pre", k])
    assert torch.equal(stack[-1], cache["resid_post", -1])
    normed = cache.accumulated_resid(apply_ln=True)
    assert torch.equal(normed[-1], cache["normalized"])  # the frozen norm is the model's, bit for bit
    torch.testing.assert_close(normed[-1] @ model.W_U, logits, rtol=1e-5, atol=1e-5)
    a = attn_layer(model)
    upto = cache.accumulated_resid(layer=a, apply_ln=True, pos_slice=-1)  # through block a's own norm
    assert upto.shape == (a + 1, 1, model.cfg.d_model)
    torch.testing.assert_close(upto[-1], cache["mixer_in", a][:, -1], rtol=1e-6, atol=1e-6)


def test_decompose_resid_sums_to_the_stream_and_logit_attrs_to_the_logit(model, run):
    logits, cache = run
    stack, labels = cache.decompose_resid(return_labels=True)
    kinds = {"mamba": "mamba", "attention": "attn", "mlp": "mlp", "moe": "moe"}
    assert labels == ["embed"] + [f"{i}_{kinds[k]}_out" for i, k in enumerate(model.layer_types)]
    torch.testing.assert_close(stack.sum(0), cache["resid_post", -1], rtol=1e-5, atol=1e-5)
    ids = cache.tokens
    attrs = cache.logit_attrs(stack[:, :, :-1], ids[:, 1:], pos_slice=(0, -1))  # next token at each position
    expected = logits[:, :-1].gather(-1, ids[:, 1:, None])[..., 0]
    torch.testing.assert_close(attrs.sum(0), expected, rtol=1e-4, atol=1e-4)
    last = cache.decompose_resid(pos_slice=-1)  # (c, b, d)
    right, wrong = int(ids[0, -1]), int(ids[0, 3])
    diff = cache.logit_attrs(last, right, incorrect_tokens=wrong, pos_slice=-1)
    torch.testing.assert_close(diff.sum(0), logits[:, -1, right] - logits[:, -1, wrong], rtol=1e-4, atol=1e-4)
    word = model.to_str_tokens(ids[0, -1:])[0]
    assert torch.equal(
        cache.logit_attrs(last, word, pos_slice=-1), cache.logit_attrs(last, right, pos_slice=-1)
    )
    attn_only = cache.decompose_resid(mode="attn", incl_embeds=False)
    assert attn_only.shape[0] == len(model.layers("attention"))
    assert torch.equal(attn_only[0], cache["attn_out", attn_layer(model)])
    with pytest.raises(ValueError, match="no resid_mid"):
        cache.accumulated_resid(incl_mid=True)


def test_stack_activation_and_head_results():
    """A model with two attention blocks: heads stack over both, and each head's result is o_proj of that
    head's z alone (o_proj has no bias)."""
    _, model = hooked_pair("*M-*E", seed=3)
    x = torch.randint(3, 90, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        _, cache = model.run_with_cache(x)
    attn = model.layers("attention")
    patterns = cache.stack_activation("pattern")
    assert patterns.shape[0] == len(attn) and torch.equal(patterns[1], cache["pattern", attn[1]])
    assert torch.equal(cache.stack_activation("resid_post", layer=2), cache.stack("hook_resid_post")[:2])
    results, labels = cache.stack_head_results(return_labels=True)
    h = model.cfg.n_heads
    assert labels == [f"L{i}H{j}" for i in attn for j in range(h)]
    for k, i in enumerate(attn):
        z = cache["z", i]
        torch.testing.assert_close(
            results[k * h : (k + 1) * h].sum(0), cache["attn_out", i], rtol=1e-5, atol=1e-5
        )
        for j in range(h):
            alone = torch.zeros_like(z)
            alone[:, :, j] = z[:, :, j]
            by_hf = model.blocks[i].mixer.o_proj(alone.flatten(-2))
            torch.testing.assert_close(results[k * h + j], by_hf, rtol=1e-5, atol=1e-5)
    full = cache.stack_head_results(incl_remainder=True)
    torch.testing.assert_close(full.sum(0), cache["resid_post", -1], rtol=1e-5, atol=1e-5)
    first = cache.stack_head_results(layer=attn[1])  # only the heads before block attn[1]
    assert first.shape[0] == h


def test_apply_ln_to_stack_on_one_row_of_a_batch(model):
    texts = ["A short one.", TEXT]
    with torch.no_grad():
        logits, cache = model.run_with_cache(texts)
    row = cache.accumulated_resid(pos_slice=-1)[:, 1]  # (c, d): the second row's last position
    normed = cache.apply_ln_to_stack(row, pos_slice=-1, batch_slice=1, has_batch_dim=False)
    torch.testing.assert_close(normed[-1] @ model.W_U, logits[1, -1], rtol=1e-5, atol=1e-5)
    scale = torch.rsqrt(cache["resid_post", -1].pow(2).mean(-1, keepdim=True) + model.cfg.layer_norm_epsilon)
    torch.testing.assert_close(cache.ln_scale(), scale)


def test_remove_batch_dim(model):
    with torch.no_grad():
        logits, cache = model.run_with_cache(TEXT, remove_batch_dim=True)
        _, batched = model.run_with_cache(TEXT)
    assert torch.equal(cache["resid_post", -1], batched["resid_post", -1][0])
    normed = cache.accumulated_resid(apply_ln=True)
    torch.testing.assert_close(normed[-1] @ model.W_U, logits[0], rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="batch of one"):
        model.run_with_cache([TEXT, "Another one"], remove_batch_dim=True)
    assert utils.remove_batch_dim(batched["embed"]).shape == batched["embed"].shape[1:]


# ---------------------------------------------------------------- keywords and helpers
def test_return_types_and_losses(model):
    ids = model.to_tokens(TEXT)
    seen = []
    out = model.run_with_hooks(
        ids, return_type=None, fwd_hooks=[("hook_embed", lambda t, hook: seen.append(1))]
    )
    assert out is None and seen == [1]
    logits = model(ids)
    by_hand = F.cross_entropy(logits[0, :-1], ids[0, 1:], reduction="none")[None]
    torch.testing.assert_close(model(ids, return_type="loss", loss_per_token=True), by_hand)
    torch.testing.assert_close(model.loss_fn(logits, ids, per_token=True), by_hand)
    torch.testing.assert_close(model.loss_fn(logits, ids), by_hand.mean())
    assert torch.equal(
        model(ids, return_type="loss_per_token"), model(ids, return_type="loss", loss_per_token=True)
    )


def test_token_helpers(model):
    tok = model.tokenizer
    word = next(
        w
        for w in (" the", " a", " and", " of", "the")
        if len(tok(w, add_special_tokens=False)["input_ids"]) == 1
    )
    assert model.to_single_token(word) == tok(word, add_special_tokens=False)["input_ids"][0]
    with pytest.raises(ValueError, match="not one"):
        model.to_single_token(TEXT)
    plain = tok(TEXT, add_special_tokens=False)["input_ids"]
    assert model.to_tokens(TEXT, prepend_bos=False)[0].tolist() == plain
    assert model.to_tokens(TEXT, prepend_bos=True)[0].tolist() == [tok.bos_token_id, *plain]
    assert model.to_string(plain[0]) == tok.decode([plain[0]])
    padded = model.to_tokens(["a b", TEXT], prepend_bos=False)
    short = tok("a b", add_special_tokens=False)["input_ids"]
    assert padded[1].tolist() == plain and padded[0, : len(short)].tolist() == short
    assert (padded[0, len(short) :] == tok.pad_token_id).all()
    rows = model.to_tokens(["a b", TEXT])  # the first row padded
    assert model.to_str_tokens(rows) == [model.to_str_tokens(rows[0]), model.to_str_tokens(rows[1])]
    assert model.to_str_tokens(["a b", TEXT]) == [model.to_str_tokens("a b"), model.to_str_tokens(TEXT)]
    assert len(model.to_str_tokens(["a b", TEXT])[0]) == len(model.to_tokens("a b")[0])  # no padding


def test_generate_can_return_text(model):
    ids = model.generate("The cat", max_new_tokens=4)
    text = model.generate("The cat", max_new_tokens=4, return_type="input")
    assert text == model.tokenizer.decode(ids[0], skip_special_tokens=True)
    assert torch.equal(
        model.generate(ids[:, :3], max_new_tokens=2, return_type="input"),
        model.generate(ids[:, :3], max_new_tokens=2),
    )


def test_hook_layer_is_callable_and_int_like(model, run):
    _, cache = run
    got = {}

    def store(pattern, hook):  # a TL hook: hook.layer() as an index
        got[hook.layer()] = pattern.clone()
        assert hook.layer == hook.layer() and isinstance(hook.layer, int)

    model.run_with_hooks(TEXT, return_type=None, fwd_hooks=[(lambda n: n.endswith("pattern"), store)])
    assert list(got) == model.layers("attention")
    for layer, pattern in got.items():
        assert torch.equal(pattern, cache["pattern", layer])


def test_add_hook_persists_until_reset_and_ctx_persists(model):
    ids = model.to_tokens(TEXT)
    clean = model(ids)
    a = attn_layer(model)

    def count_and_zero(z, hook):
        hook.ctx["calls"] = hook.ctx.get("calls", 0) + 1
        return torch.zeros_like(z)

    model.add_hook(utils.get_act_name("z", a), count_and_zero)
    seen = []
    model.add_hook("hook_embed", lambda t, hook: seen.append(hook.name), is_permanent=True)
    try:
        first, second = model(ids), model(ids)
        assert torch.equal(first, second) and not torch.equal(first, clean)
        calls = []
        model.run_with_hooks(
            ids, fwd_hooks=[(utils.get_act_name("z", a), lambda z, hook: calls.append(hook.ctx["calls"]))]
        )
        assert calls == [3]  # the context persisted across the three runs
        model.reset_hooks()
        assert torch.equal(model(ids), clean) and len(seen) == 4  # the permanent hook stayed
        calls.clear()
        model.run_with_hooks(
            ids, fwd_hooks=[(utils.get_act_name("z", a), lambda z, hook: calls.append(dict(hook.ctx)))]
        )
        assert calls == [{}]  # reset_hooks cleared the contexts
    finally:
        model.reset_hooks(including_permanent=True)
    model(ids)
    assert len(seen) == 5 and not model._registry.names()
    with pytest.raises(ValueError, match="dir must be 'fwd' or 'bwd'"):
        model.add_hook("hook_embed", lambda t, hook: None, dir="both")


def test_stop_at_layer_returns_the_stream_and_runs_no_further(model, run):
    _, cache = run
    ids = cache.tokens
    a = attn_layer(model)
    fired = []
    with model.hooks([(f"blocks.{a}.hook_mixer_out", lambda t, hook: fired.append(1))]):
        resid = model(ids, stop_at_layer=a)
    assert torch.equal(resid, cache["resid_pre", a]) and not fired
    assert torch.equal(model(ids, stop_at_layer=-1), cache["resid_pre", -1])
    assert torch.equal(model(ids, stop_at_layer=model.n_layers), cache["resid_post", -1])
    with pytest.raises(ValueError, match="this model has"):
        model(ids, stop_at_layer=model.n_layers + 1)


# ---------------------------------------------------------------- TL notebook cells, ported
def test_main_demo_induction_cell(model):
    """A TL Main_Demo induction cell (einops written as torch; the random tokens drawn from this vocab)."""
    # --- ported cell: only `model = ne.load(...)` and `from nemo_explore import utils` changed
    seq_len, batch = 24, 4
    torch.manual_seed(0)
    random_tokens = torch.randint(100, model.cfg.d_vocab, (batch, seq_len))
    repeated_tokens = torch.cat([random_tokens, random_tokens], dim=1)
    induction_score_store = torch.zeros((model.cfg.n_layers, model.cfg.n_heads), device=model.cfg.device)

    def induction_score_hook(pattern, hook):
        induction_stripe = pattern.diagonal(dim1=-2, dim2=-1, offset=1 - seq_len)
        induction_score = induction_stripe.mean(dim=(0, 2))
        induction_score_store[hook.layer(), :] = induction_score

    pattern_hook_names_filter = lambda name: name.endswith("pattern")  # noqa: E731
    model.run_with_hooks(
        repeated_tokens, return_type=None, fwd_hooks=[(pattern_hook_names_filter, induction_score_hook)]
    )
    # --- end of the cell
    _, cache = model.run_with_cache(repeated_tokens)
    for layer in range(model.cfg.n_layers):
        if layer in model.layers("attention"):
            p = cache["pattern", layer]
            stripe = [p[:, :, q, q + 1 - seq_len] for q in range(seq_len - 1, 2 * seq_len)]
            by_hand = torch.stack(stripe, -1).mean(dim=(0, 2))
            torch.testing.assert_close(induction_score_store[layer], by_hand)
        else:
            assert not induction_score_store[layer].any()  # a Mamba/MoE/MLP block has no pattern


def test_main_demo_patching_cell(model):
    """A TL Main_Demo residual-stream patching cell: patching block 0's input at the one position where the
    prompts differ turns the corrupted run into the clean one (1), any other position changes nothing (0)."""
    tok = model.tokenizer
    names = [
        w
        for w in (" John", " Mary", " the", " a", " and", " of", " to")
        if len(tok(w, add_special_tokens=False)["input_ids"]) == 1
    ]
    correct, incorrect = names[:2]
    # --- ported cell
    clean_prompt = f"After{correct} and{incorrect} went to the store,{incorrect} gave a bottle of milk to"
    corrupted_prompt = f"After{correct} and{incorrect} went to the store,{correct} gave a bottle of milk to"
    clean_tokens = model.to_tokens(clean_prompt)
    corrupted_tokens = model.to_tokens(corrupted_prompt)

    def logits_to_logit_diff(logits, correct_answer=correct, incorrect_answer=incorrect):
        correct_index = model.to_single_token(correct_answer)
        incorrect_index = model.to_single_token(incorrect_answer)
        return logits[0, -1, correct_index] - logits[0, -1, incorrect_index]

    clean_logits, clean_cache = model.run_with_cache(clean_tokens)
    clean_logit_diff = logits_to_logit_diff(clean_logits)
    corrupted_logits = model(corrupted_tokens)
    corrupted_logit_diff = logits_to_logit_diff(corrupted_logits)

    def residual_stream_patching_hook(resid_pre, hook, position):
        clean_resid_pre = clean_cache[hook.name]
        resid_pre[:, position, :] = clean_resid_pre[:, position, :]
        return resid_pre

    num_positions = len(clean_tokens[0])
    ioi_patching_result = torch.zeros((model.cfg.n_layers, num_positions), device=model.cfg.device)
    for layer in range(2):  # TL loops over range(model.cfg.n_layers); two layers keep the test short
        for position in range(num_positions):
            temp_hook_fn = partial(residual_stream_patching_hook, position=position)
            patched_logits = model.run_with_hooks(
                corrupted_tokens, fwd_hooks=[(utils.get_act_name("resid_pre", layer), temp_hook_fn)]
            )
            patched_logit_diff = logits_to_logit_diff(patched_logits).detach()
            ioi_patching_result[layer, position] = (patched_logit_diff - corrupted_logit_diff) / (
                clean_logit_diff - corrupted_logit_diff
            )
    # --- end of the cell
    differ = (clean_tokens[0] != corrupted_tokens[0]).nonzero()[:, 0].tolist()
    assert len(differ) == 1
    expected = torch.zeros(num_positions)
    expected[differ[0]] = 1
    torch.testing.assert_close(ioi_patching_result[0], expected, rtol=0, atol=1e-4)


def test_hook_result_is_each_heads_output_and_writable(model):
    """``hook_result`` (TL's 'result'): each head's z_h · W_O[h]; they sum to the block's output, equal
    stack_head_results, and writing one head's result to zero equals zeroing that head's z (HF's o_proj
    input) — to float rounding, since the written output is their sum, not o_proj's matmul."""
    attn = model.layers("attention")[0]
    model.set_use_attn_result(True)  # TL's switch: accepted, nothing to switch
    text = "The little cat sat on the mat. The little cat sat on the mat."
    logits, cache = model.run_with_cache(text, names_filter=lambda n: "hook_result" in n or "hook_z" in n
                                         or "mixer_out" in n or "resid" in n)  # fmt: skip
    result = cache["result", attn]  # b p h d
    assert torch.equal(logits, model(text))  # observing it perturbs nothing
    torch.testing.assert_close(result.sum(2), cache[f"blocks.{attn}.hook_mixer_out"], rtol=1e-5, atol=1e-5)
    stacked = cache.stack_head_results()  # (h, b, p, d) from z and W_O, computed independently
    torch.testing.assert_close(stacked, result.permute(2, 0, 1, 3), rtol=1e-5, atol=1e-6)

    def zero_result(t, hook):
        t[:, :, 1] = 0

    def zero_z(t, hook):
        t[:, :, 1] = 0

    via_result = model.run_with_hooks(text, fwd_hooks=[(f"blocks.{attn}.attn.hook_result", zero_result)])
    via_z = model.run_with_hooks(text, fwd_hooks=[(f"blocks.{attn}.attn.hook_z", zero_z)])
    assert not torch.allclose(via_result, logits, atol=1e-3)
    torch.testing.assert_close(via_result, via_z, rtol=1e-4, atol=1e-4)


def test_split_qkv_input_says_what_to_patch_instead(model):
    model.set_use_split_qkv_input(False)
    with pytest.raises(NotImplementedError, match="hook_mixer_in"):
        model.set_use_split_qkv_input(True)


def test_hook_points_as_objects(model, run):
    """TL's ``model.blocks[L].attn.hook_z.add_hook(fn)``: the point as an object over the one registry."""
    _, cache = run
    ids = cache.tokens
    attn, mamba = model.layers("attention")[0], model.layers("mamba")[0]
    point = model.blocks[attn].attn.hook_z
    assert point.name == f"blocks.{attn}.attn.hook_z" and point.layer() == attn
    assert model.hook_embed.layer() is None
    seen = []
    point.add_hook(lambda z, hook: seen.append(hook.name))
    model.blocks[mamba].mamba.hook_dt.add_hook(lambda dt, hook: seen.append(hook.name))
    model.blocks[0].hook_resid_pre.add_hook(lambda r, hook: seen.append(hook.name), is_permanent=True)
    model.ln_final.hook_normalized.add_hook(lambda x, hook: seen.append(hook.name))
    try:
        with torch.no_grad():
            model(ids)
        assert seen == [
            "blocks.0.hook_resid_pre", f"blocks.{mamba}.mamba.hook_dt", f"blocks.{attn}.attn.hook_z",
            "ln_final.hook_normalized",
        ]  # fmt: skip
        point.remove_hooks()  # this point's only
        assert f"blocks.{attn}.attn.hook_z" not in model._registry.names()
        assert f"blocks.{mamba}.mamba.hook_dt" in model._registry.names()
        model.blocks[0].hook_resid_pre.remove_hooks()  # a permanent hook stays...
        assert "blocks.0.hook_resid_pre" in model._registry.names()
        model.blocks[0].hook_resid_pre.remove_hooks(including_permanent=True)  # ...unless asked
        assert "blocks.0.hook_resid_pre" not in model._registry.names()
    finally:
        model.reset_hooks(including_permanent=True)
    assert model.ln_final.weight is model.hf_model.model.norm_f.weight  # still the HF module's attributes
    ln1 = model.blocks[attn].ln1  # TL's pre-norm: its points are the block's scale and norm output
    assert ln1.weight is model.hf_model.model.layers[attn].norm.weight
    assert ln1.hook_scale.name == f"blocks.{attn}.hook_scale"
    assert ln1.hook_normalized.name == f"blocks.{attn}.hook_mixer_in"
    assert model.ln_final.hook_scale.name == "ln_final.hook_scale"
    with pytest.raises(AttributeError, match=f"Did you mean 'blocks.{attn}.hook_scale'"):
        ln1.hook_scal  # noqa: B018
    assert torch.equal(model.W_Q[torch.tensor(attn)], model.W_Q[attn])  # a tensor index, as TL allows
    with pytest.raises(AttributeError, match="hook_zz"):
        model.blocks[attn].attn.hook_zz  # noqa: B018
    assert not hasattr(model.blocks[attn].attn, "hook_state")  # an AttributeError, so hasattr works
    with pytest.raises(TypeError, match="fires inside the model's forward"):
        point(torch.zeros(1))


def test_generate_takes_prepend_bos(model):
    """TL's ``generate(..., prepend_bos=...)``: the prompt as ``to_tokens`` makes it, then new tokens."""
    for bos in (True, False):
        out = model.generate("The cat", max_new_tokens=3, prepend_bos=bos)
        prompt = model.to_tokens("The cat", prepend_bos=bos)
        assert torch.equal(out[:, : prompt.shape[1]], prompt) and out.shape[1] == prompt.shape[1] + 3


def test_unindexed_circuits_have_every_block(model):
    """TL's ``model.OV.eigenvalues`` and ``W_E @ model.OV @ W_U``: (n_layers, n_heads, ...), the attention
    block's row equal to ``model.OV[L]``'s, NaN rows for the other blocks (never numbers)."""
    attn = model.layers("attention")[0]
    ov = model.OV
    assert ov.shape == (model.n_layers, model.cfg.n_heads, model.cfg.d_model, model.cfg.d_model)
    eig = ov.eigenvalues
    assert eig.shape == (model.n_layers, model.cfg.n_heads, model.cfg.d_head)
    torch.testing.assert_close(eig[attn], model.OV[attn].eigenvalues)
    others = [i for i in range(model.n_layers) if i != attn]
    assert torch.isnan(eig[others].real).all() and torch.isfinite(eig[attn].real).all()
    full = model.embed.W_E @ model.OV @ model.unembed.W_U
    assert full.shape == (model.n_layers, model.cfg.n_heads, model.cfg.d_vocab, model.cfg.d_vocab)
    one = model.W_E @ model.OV[attn, 1] @ model.W_U
    torch.testing.assert_close(full[attn, 1].get_corner(3), one.get_corner(3))
    assert torch.isnan(model.QK.eigenvalues[others].real).all() and "NaN factors" in repr(model.QK)


def test_token_positions_named_parameters_and_aliases(model):
    text = "The cat sat. The cat ran."
    ids = model.to_tokens(text)
    cat = model.to_single_token(" cat")
    where = (ids[0] == cat).nonzero().flatten().tolist()
    assert len(where) == 2
    assert model.get_token_position(" cat", text) == where[0]
    assert model.get_token_position(cat, ids, mode="last") == where[1]
    with pytest.raises(ValueError, match="not in the input"):
        model.get_token_position(" dog", "The cat sat.")
    named = dict(model.tl_named_parameters())
    attn, mamba = model.layers("attention")[0], model.layers("mamba")[0]
    assert torch.equal(named[f"blocks.{attn}.attn.W_Q"], model.W_Q[attn])
    assert named["embed.W_E"] is model.W_E
    assert named[f"blocks.{mamba}.mamba.A_log"].shape == (model.cfg.mamba_num_heads,)
    n_hf = sum(p.numel() for p in model.hf_model.parameters())
    assert sum(t.numel() for t in named.values()) == n_hf  # every weight once, none twice
    assert utils.get_act_name("in", 2) == "blocks.2.hook_resid_pre"
    assert utils.get_act_name("out", 2) == "blocks.2.hook_resid_post"


def test_cache_dict_hook_dict_and_a_cache_made_by_hand(model, run):
    _, cache = run
    assert cache.cache_dict is cache._data
    hook_dict = model.hook_dict
    assert list(hook_dict) == model.hook_names() and hook_dict["hook_embed"].name == "hook_embed"
    again = ne.ActivationCache(dict(cache.cache_dict), model)  # TL's ActivationCache(cache_dict, model)
    assert again.layer_types == model.layer_types and again.model is model
    assert torch.equal(again["resid_post", -1], cache["resid_post", -1])
    with pytest.raises(TypeError, match="needs the model"):
        ne.ActivationCache({})


def test_heads_by_layer_puts_each_head_in_its_block(model, run):
    """stack_head_results gives the attention blocks' heads; heads_by_layer lays them out as TL's
    (n_layers, n_heads), NaN rows for the other blocks."""
    _, cache = run
    per_head = cache.stack_head_results(layer=-1, pos_slice=-1)[:, 0].norm(dim=-1)  # (attn blocks · h,)
    grid = utils.heads_by_layer(per_head, model)
    attn = model.layers("attention")
    assert grid.shape == (model.n_layers, model.cfg.n_heads)
    assert torch.equal(grid[attn].flatten(), per_head)
    assert torch.isnan(grid[[i for i in range(model.n_layers) if i not in attn]]).all()
    with pytest.raises(ValueError, match="attention blocks"):
        utils.heads_by_layer(per_head[:-1], model)


def test_induction_loss_is_the_second_copys_mean_loss(model):
    """evals.induction_loss (TL's): the mean cross-entropy of tokens 2..L of the second copy, by hand from
    the logits; the tiny checkpoint copies, so it is far below the first copy's loss."""
    from nemo_explore import evals
    from nemo_explore.analysis.induction import repeated_tokens

    L = 48
    tokens, prefix = repeated_tokens(model, seq_len=L, batch=3, seed=5)
    assert prefix == 1 and tokens.shape == (3, 1 + 2 * L)
    with torch.no_grad():
        logits = model(tokens).float()
    ce = F.cross_entropy(logits[:, :-1].transpose(1, 2), tokens[:, 1:], reduction="none")  # b p-1
    second, first = ce[:, prefix + L :], ce[:, prefix : prefix + L - 1]
    assert second.shape == (3, L - 1)
    got = evals.induction_loss(model, batch_size=3, subseq_len=L, seed=5)
    torch.testing.assert_close(got, second.mean(), rtol=1e-5, atol=1e-6)
    assert got < 0.5 * first.mean()
    no_bos = evals.induction_loss(model, batch_size=3, subseq_len=L, seed=5, prepend_bos=False)
    assert no_bos.shape == () and not torch.equal(no_bos, got)
