"""Exactness on every device this machine has, in float32 and bfloat16: CPU always, CUDA where present.

CI runs the CPU cases; a GPU machine runs the same file (``pytest tests/test_devices.py``) and adds the CUDA
cases and a model split between the GPU and host memory the way accelerate splits big checkpoints.
"""

import pytest
import torch
from accelerate import dispatch_model
from models import random_model

import nemo_explore as ne

DEVICES = ["cpu", *(["cuda"] if torch.cuda.is_available() else [])]
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
CASES = [(d, t) for d in DEVICES for t in DTYPES]
CHEAP = lambda n: not n.endswith(("hook_state_norm", "hook_hidden_attn", "hook_state"))  # noqa: E731


@pytest.fixture(params=CASES, ids=[f"{d}-{t}" for d, t in CASES], scope="module")
def pair(request):
    device, dtype = request.param
    hf = random_model("M*-EM", seed=4, chunk_size=5).to(device=device, dtype=DTYPES[dtype])
    return hf, ne.load(hf)


def tokens(device, b=2, p=13, seed=0):
    return torch.randint(3, 97, (b, p), generator=torch.Generator().manual_seed(seed)).to(device)


def test_observing_every_point_leaves_logits_bit_identical(pair):
    hf, model = pair
    ids = tokens(hf.device)
    ref = hf(ids).logits
    assert torch.equal(model(ids), ref)
    logits, cache = model.run_with_cache(ids, names_filter=CHEAP)
    assert torch.equal(logits, ref)
    assert {t.device.type for t in cache.values()} == {hf.device.type}
    floats = {t.dtype for t in cache.values() if t.is_floating_point()}
    assert hf.dtype in floats  # computed in the model's dtype (router scores etc. may be float32 in HF)
    name = "blocks.1.attn.hook_pattern"
    _, host = model.run_with_cache(ids, names_filter=[name], device="cpu")
    assert host[name].device.type == "cpu" and torch.equal(host[name], cache[name].cpu())
    _, host32 = model.run_with_cache(ids, names_filter=[name], device="cpu", dtype=torch.float32)
    assert host32[name].dtype == torch.float32 and torch.equal(host32[name], cache[name].float().cpu())


def test_greedy_generation_with_every_point_hooked(pair):
    hf, model = pair
    ids = tokens(hf.device, p=9, seed=3)
    ref = hf.generate(ids, max_new_tokens=6, do_sample=False, pad_token_id=0)
    with model.hooks([(CHEAP, lambda t, hook: None)]):
        assert torch.equal(model.generate(ids, max_new_tokens=6), ref)


def test_state_norms_equal_the_state_hf_caches_after_each_prefix(pair):
    hf, model = pair
    ids = tokens(hf.device)
    _, cache = model.run_with_cache(ids, names_filter=lambda n: n.endswith(("state_norm", "hook_state")))
    # float32: the scans differ only in summation order; bfloat16: inputs to the scan are rounded alike,
    # the scan itself runs in float32 in both (HF casts), so agreement stays close.
    tol = dict(rtol=1e-4, atol=1e-5) if hf.dtype == torch.float32 else dict(rtol=2e-2, atol=2e-2)
    for t in [0, 4, 5, 12]:  # chunk_size 5: inside, at and across chunk boundaries
        state = hf(ids[:, : t + 1], use_cache=True).past_key_values.get_recurrent_state(4).float()
        torch.testing.assert_close(cache["blocks.4.mamba.hook_state"][:, t].float(), state, **tol)
        norms = cache["blocks.4.mamba.hook_state_norm"][:, t].float()
        torch.testing.assert_close(norms, state.flatten(2).norm(dim=-1), **tol)


def test_ablation_and_patching_match_hf_with_the_same_edit(pair):
    """Zeroing one attention head through ``hook_z`` equals HF with that head's o_proj input zeroed."""
    hf, model = pair
    ids = tokens(hf.device)
    attn = hf.model.layers[1].mixer
    head_dim = attn.head_dim

    def zero_head_in_hf(module, args):
        x = args[0].clone()
        x[..., head_dim : 2 * head_dim] = 0
        return (x,)

    handle = attn.o_proj.register_forward_pre_hook(zero_head_in_hf)
    try:
        ref = hf(ids).logits
    finally:
        handle.remove()

    def zero_head(z, hook):
        z[:, :, 1] = 0
        return z

    assert torch.equal(model.run_with_hooks(ids, fwd_hooks=[("blocks.1.attn.hook_z", zero_head)]), ref)


if torch.cuda.is_available():  # only a machine with a GPU can offload blocks of a GPU model to host memory

    def test_blocks_offloaded_to_host_memory():
        """accelerate's split for a model bigger than the GPU: 'cpu' blocks keep their weights in host
        memory and run on the GPU, their weights brought over for each forward."""
        hf = random_model("M*-EM", seed=4, chunk_size=5)
        device_map = {
            "model.embeddings": 0,
            "model.layers.0": "cpu",
            "model.layers.1": "cpu",
            "model.layers.2": 0,
            "model.layers.3": "cpu",
            "model.layers.4": 0,
            "model.norm_f": 0,
            "lm_head": 0,
        }
        hf = dispatch_model(hf, device_map=device_map, main_device=0)
        assert hf.model.layers[1].mixer.q_proj.weight.device.type == "meta"  # held by accelerate's hook
        model = ne.load(hf)
        ids = tokens("cuda")
        ref = hf(ids).logits
        logits, cache = model.run_with_cache(ids, names_filter=CHEAP)
        assert torch.equal(logits, ref)
        assert {t.device.type for t in cache.values()} == {"cuda"}
        _, host = model.run_with_cache(ids, names_filter=CHEAP, device="cpu")
        assert all(torch.equal(host[n], cache[n].cpu()) for n in cache)
        zeroed = model.run_with_hooks(ids, fwd_hooks=[("blocks.0.mamba.hook_ssm_out", lambda t, h: t * 0)])
        assert not torch.equal(zeroed, ref)
        handle = hf.model.layers[0].mixer.norm.register_forward_pre_hook(
            lambda m, args: (args[0] * 0, *args[1:])
        )
        try:
            assert torch.equal(zeroed, hf(ids).logits)
        finally:
            handle.remove()
