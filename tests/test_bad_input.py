"""Rough edges a newcomer hits on ``ne.load("tiny")``: each is a clear error that says what to do, or the
right result."""

from __future__ import annotations

import warnings

import pytest
import torch

import nemo_explore as ne
from nemo_explore.core.hook_names import HookNameError
from nemo_explore.mirror.mixers import mamba

TEXT = "The cat sat on the mat"


@pytest.fixture(scope="module")
def model():
    return ne.load("tiny")


# -------------------------------------------------------------- empty / short / odd inputs
@pytest.mark.parametrize(
    "empty", [[], (), torch.zeros(0, dtype=torch.long), torch.zeros(1, 0, dtype=torch.long)], ids=repr
)
def test_empty_input_says_it_has_no_tokens(model, empty):
    with pytest.raises(ValueError, match="the input has no tokens"):
        model(empty)


def test_text_without_tokens_says_so(model, monkeypatch):
    nothing = torch.zeros(1, 0, dtype=torch.long)
    monkeypatch.setattr(model, "_encode", lambda text, *args: (nothing, None))
    with pytest.raises(ValueError, match="the input has no tokens.*non-empty text"):
        model("")


@pytest.mark.parametrize("return_type", ["loss", "loss_per_token"])
def test_loss_of_one_token_is_an_error(model, return_type):
    assert model.to_tokens("").shape == (1, 1)  # the empty text is BOS alone: logits work
    assert model("").shape == (1, 1, model.cfg.vocab_size)
    for one in ("", torch.tensor([5]), ["", ""]):
        with pytest.raises(ValueError, match="needs a next token to predict.*return_type='logits'"):
            model(one, return_type=return_type)


def test_loss_skips_positions_predicted_from_padding(model):
    ids = model.to_tokens("The cat sat on")
    alone = model(ids, return_type="loss")
    padded = torch.cat([torch.zeros(1, 2, dtype=torch.long), ids], dim=1)  # left-padded
    mask = torch.cat([torch.zeros(1, 2, dtype=torch.long), torch.ones_like(ids)], dim=1)
    per_token = model(padded, attention_mask=mask, return_type="loss_per_token")
    assert torch.allclose(model(padded, attention_mask=mask, return_type="loss"), per_token[:, 2:].mean())
    assert torch.allclose(model(padded, attention_mask=mask, return_type="loss"), alone, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.int8, torch.uint8, torch.int16, torch.int32, torch.int64])
def test_any_integer_dtype_is_accepted(model, dtype):
    ids = model.to_tokens(TEXT)
    small = ids.clamp(max=120).to(dtype)  # within every dtype's range
    got, _ = model.to_inputs(small)
    assert got.dtype == torch.int64
    assert torch.equal(model(small), model(small.long()))


@pytest.mark.parametrize("bad", [torch.tensor([1.0, 2.0]), torch.tensor([True, False])], ids=repr)
def test_non_integer_ids_are_refused(model, bad):
    with pytest.raises(TypeError, match=r"token ids must be integers.*ids\.long\(\)"):
        model(bad)


# -------------------------------------------------------------- to_str_tokens
def test_to_str_tokens_one_input_is_a_flat_list(model):
    one = model.to_str_tokens(TEXT)
    assert isinstance(one, list) and all(isinstance(s, str) for s in one)
    ids = model.to_tokens(TEXT)
    assert model.to_str_tokens(ids) == one  # (1, p), as to_tokens gives it: TransformerLens squeezes it
    assert model.to_str_tokens(ids[0]) == one
    assert model.to_str_tokens(ids[0].tolist()) == one


def test_to_str_tokens_of_a_batch_is_one_list_per_row(model):
    texts = ["The cat", "The cat sat on the mat"]
    rows = model.to_str_tokens(texts)
    assert rows == [model.to_str_tokens(t) for t in texts]  # padding dropped
    assert "<pad>" not in rows[0] and len(rows[0]) < len(rows[1])
    ids = model.to_tokens(texts)
    by_ids = model.to_str_tokens(ids)  # ids carry no mask: every position, padding included
    assert len(by_ids) == 2 and all(len(r) == ids.shape[1] for r in by_ids)
    assert by_ids[1] == rows[1]


def test_cache_str_tokens_follow_the_mask_on_either_side(model):
    ids, mask = model.to_inputs(["The cat", "The cat sat on the mat"], padding_side="left")
    _, cache = model.run_with_cache(ids, names_filter="hook_embed", attention_mask=mask)
    assert cache.str_tokens_all == model.to_str_tokens(["The cat", "The cat sat on the mat"])


# -------------------------------------------------------------- generate
def test_a_sampling_argument_samples(model, monkeypatch):
    seen = {}

    def spy(**kwargs):
        seen.update(kwargs)
        return kwargs["input_ids"]

    monkeypatch.setattr(model.hf_model, "generate", spy)
    model.generate("Once upon", max_new_tokens=2, temperature=0.7)
    assert seen["do_sample"] is True and seen["temperature"] == 0.7
    for arg in ("top_k", "top_p", "typical_p", "min_p"):
        seen.clear()
        model.generate("Once upon", max_new_tokens=2, **{arg: 0.5})
        assert seen["do_sample"] is True, arg
    seen.clear()
    model.generate("Once upon", max_new_tokens=2)
    assert seen["do_sample"] is False  # greedy by default
    seen.clear()
    model.generate("Once upon", max_new_tokens=2, temperature=0)  # TransformerLens' greedy
    assert seen["do_sample"] is False and "temperature" not in seen


def test_a_sampling_argument_with_do_sample_false_is_an_error(model):
    with pytest.raises(ValueError, match="would ignore temperature: drop do_sample=False"):
        model.generate("Once upon", max_new_tokens=2, temperature=0.7, do_sample=False)
    with pytest.raises(ValueError, match="temperature=0 means greedy"):
        model.generate("Once upon", max_new_tokens=2, temperature=0, do_sample=True)


def test_sampling_really_samples(model):
    torch.manual_seed(0)
    outs = {tuple(model.generate("The", max_new_tokens=8, temperature=1.5)[0].tolist()) for _ in range(4)}
    assert len(outs) > 1


# -------------------------------------------------------------- the long hidden-attention warning
def test_long_hidden_attn_warning_points_at_the_callers_line(model, monkeypatch):
    model.run_with_cache(TEXT, names_filter=lambda n: "hidden_attn" in n)  # any first-use checks, unwarned
    monkeypatch.setattr(mamba, "HIDDEN_ATTN_WARN_LEN", 2)
    monkeypatch.setattr(mamba, "_warned_long", False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.run_with_cache(TEXT, names_filter=lambda n: "hidden_attn" in n)  # THIS LINE
    [w] = [w for w in caught if "hook_hidden_attn at" in str(w.message)]
    assert w.filename == __file__
    with open(__file__) as f:
        assert "# THIS LINE" in f.readlines()[w.lineno - 1]


# -------------------------------------------------------------- cache look-ups
@pytest.fixture(scope="module")
def pattern_cache(model):
    return model.run_with_cache(TEXT, names_filter=lambda n: n.endswith("hook_pattern"))[1]


def test_stack_typo_suggests_the_real_point(pattern_cache):
    with pytest.raises(HookNameError, match=r"'attn\.hook_patern'.*Did you mean 'attn\.hook_pattern'"):
        pattern_cache.stack("attn.hook_patern")
    assert pattern_cache.stack("attn.hook_pattern").shape[0] == 1


def test_stack_of_a_real_point_not_cached_says_how_to_cache_it(pattern_cache):
    with pytest.raises(HookNameError, match=r"'mamba\.hook_dt' was not cached.*names_filter="):
        pattern_cache.stack("mamba.hook_dt")


def test_getitem_of_a_real_point_not_cached_says_how_to_cache_it(pattern_cache):
    with pytest.raises(HookNameError) as err:
        pattern_cache["blocks.0.mamba.hook_dt"]
    msg = str(err.value)
    assert "is a hook point of this model but was not cached" in msg and "names_filter=" in msg
    assert "no hook point named" not in msg


def test_getitem_typo_suggests_real_points(pattern_cache):
    with pytest.raises(HookNameError, match=r"Did you mean 'blocks\.3\.attn\.hook_pattern'"):
        pattern_cache["blocks.3.attn.hook_patern"]


# -------------------------------------------------------------- names_filter / return_type
def test_names_filter_matching_nothing_is_an_error(model):
    with pytest.raises(ValueError, match=r"matched no hook point.*'blocks\.3\.attn\.hook_q'.*hook_names\(\)"):
        model.run_with_cache(TEXT, names_filter=lambda n: "patern" in n)
    with pytest.raises(ValueError, match="names_filter is empty"):
        model.run_with_cache(TEXT, names_filter=[])


@pytest.mark.parametrize("call", ["__call__", "run_with_cache", "run_with_hooks"])
def test_return_type_typo_fails_before_running(model, monkeypatch, call):
    def no_forward(*args, **kwargs):
        raise AssertionError("the model ran")

    monkeypatch.setattr(model.hf_model, "forward", no_forward)
    with pytest.raises(ValueError, match="return_type must be one of.*Did you mean 'logits'"):
        getattr(model, call)(TEXT, return_type="logit")


def test_explorer_on_a_model_without_mamba_or_moe(model):
    from models import random_model

    from nemo_explore.widgets import Explorer

    plain = ne.HookedNemotronH(random_model("*-*", vocab_size=model.cfg.vocab_size), model.tokenizer)
    ex = Explorer(plain, TEXT)  # its cache of Mamba / MoE points would be empty: it must still run
    assert ex.cache.str_tokens == model.to_str_tokens(TEXT)


# -------------------------------------------------------------- block indices as people write them
def test_block_indices_count_from_the_end_and_may_be_tensors(model):
    _, cache = model.run_with_cache(TEXT, names_filter=lambda n: "resid" in n or n.endswith("hook_pattern"))
    n, attn = len(model.layer_types), model.layers("attention")[0]
    assert torch.equal(cache.ln_scale(-1), cache.ln_scale(n - 1))  # the last block's pre-norm
    x = cache[f"blocks.{n - 1}.hook_resid_pre"].float()
    eps = model.hf_model.model.layers[n - 1].norm.variance_epsilon
    torch.testing.assert_close(cache.ln_scale(-1), torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))
    pattern = cache[f"blocks.{attn}.attn.hook_pattern"]
    for layer in (torch.tensor(attn), attn - n, torch.tensor(attn).numpy()[()]):
        assert cache["attn", layer] is pattern and cache["pattern", layer] is pattern


@pytest.mark.parametrize("bad", [99, -99, torch.tensor(99), 2.5, torch.tensor([1, 2])], ids=repr)
def test_a_block_index_that_does_not_exist_says_what_does(model, bad):
    _, cache = model.run_with_cache(TEXT, names_filter=lambda n: "resid" in n)
    error = (IndexError, TypeError)
    with pytest.raises(error, match=r"this model has 7 blocks: 0\.\.6|must be an integer"):
        cache["resid_pre", bad]
    with pytest.raises(error, match=r"this model has 7 blocks: 0\.\.6|must be an integer"):
        cache.ln_scale(bad)


# -------------------------------------------------------------- a cache too big to keep quietly
def test_a_big_cache_is_announced_with_its_size(model, monkeypatch):
    """Before a run_with_cache whose cache passes CACHE_WARN_BYTES: a MemoryWarning (shown by default,
    unlike a ResourceWarning) with the estimate, which is what the cache then holds, to the byte."""
    from nemo_explore import model as model_module
    from nemo_explore.core.formatting import format_bytes

    text = " ".join(["the cat sat on the mat"] * 20)
    monkeypatch.setattr(model_module, "CACHE_WARN_BYTES", 1 << 20)
    with pytest.warns(ne.MemoryWarning, match=r"about to keep .* of activations for 1 × \d+ tokens") as seen:
        _, cache = model.run_with_cache(text)
    held = sum(t.numel() * t.element_size() for t in cache.values())
    assert format_bytes(held) in str(seen[0].message)
    assert "hook_hidden_attn" in str(seen[0].message)  # the heaviest points are named
    assert issubclass(ne.MemoryWarning, UserWarning)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ne.MemoryWarning)
        model.run_with_cache(text, names_filter=lambda n: "resid" in n)  # small: no warning
