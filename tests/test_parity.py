"""Every hook value against HF's own intermediates (plain torch hooks on HF modules) or a naive reference,
and logits / generations bit-identical to HF while observing."""

import copy

import pytest
import torch
import torch.nn.functional as F
from models import hooked_pair, random_model

import nemo_explore as ne

SHAPES = {
    # pattern, overrides: groups > 1 + GQA; no GQA + one group + grouped routing + latent MoE; short & wide
    "gqa_groups": ("M*-EM", {}),
    "grouped_routing_latent": (
        "ME*M-",
        dict(
            n_groups=1,
            num_key_value_heads=4,
            n_routed_experts=8,
            n_group=2,
            topk_group=1,
            moe_latent_size=16,
            num_experts_per_tok=3,
        ),
    ),
    "attention_first": ("*M-ME", dict(chunk_size=5, mamba_num_heads=4, n_groups=4)),
}
CHEAP = lambda n: not n.endswith(("hook_state_norm", "hook_hidden_attn", "hook_state"))  # noqa: E731


@pytest.fixture(params=list(SHAPES), scope="module")
def pair(request):
    pattern, overrides = SHAPES[request.param]
    return hooked_pair(pattern, seed=1, **overrides)


def tokens(b=2, p=13, seed=0, vocab=97):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, vocab, (b, p), generator=g)


def capture(hf, ids, spec):
    """Run HF with plain torch hooks; spec: name -> (module, 'out'|'in'|callable(args, out))."""
    got, handles = {}, []
    for name, (module, what) in spec.items():

        def hook(m, args, out, name=name, what=what):
            got[name] = out if what == "out" else args[0] if what == "in" else what(args, out)

        handles.append(module.register_forward_hook(hook))
    try:
        logits = hf(ids).logits
    finally:
        for h in handles:
            h.remove()
    return logits, got


def test_no_hook_logits_bit_identical(pair):
    hf, model = pair
    ids = tokens()
    assert torch.equal(model(ids), hf(ids).logits)


def test_observing_everything_is_bit_identical(pair):
    hf, model = pair
    ids = tokens(p=13)
    logits, cache = model.run_with_cache(ids, names_filter=CHEAP)
    assert torch.equal(logits, hf(ids).logits)
    assert len(cache) == len([n for n in model.hook_names() if CHEAP(n)])


def test_residual_points_equal_hf_modules(pair):
    hf, model = pair
    ids = tokens()
    spec = {"embed": (hf.model.embeddings, "out"), "final": (hf.model.norm_f, "out")}
    for i, block in enumerate(hf.model.layers):
        spec[f"{i}.pre"] = (block, lambda args, out: args[0])
        spec[f"{i}.in"] = (block.norm, "out")
        spec[f"{i}.mix"] = (block.mixer, lambda args, out: out[0] if isinstance(out, tuple) else out)
        spec[f"{i}.post"] = (block, "out")
    _, ref = capture(hf, ids, spec)
    _, cache = model.run_with_cache(
        ids, names_filter=lambda n: "." not in n.split("hook_")[-1] and (n.count(".") <= 2)
    )
    assert torch.equal(cache["hook_embed"], ref["embed"])
    assert torch.equal(cache["ln_final.hook_normalized"], ref["final"])
    for i in range(model.n_layers):
        for short, key in [
            ("resid_pre", "pre"),
            ("mixer_in", "in"),
            ("mixer_out", "mix"),
            ("resid_post", "post"),
        ]:
            assert torch.equal(cache[f"blocks.{i}.hook_{short}"], ref[f"{i}.{key}"]), (i, short)


def test_return_type_none_caches_the_same_and_unembeds_one_position(pair):
    """Run for the hooks (return_type=None): every point as with logits, bit for bit, while HF's lm_head
    sees the last position only (HF's logits_to_keep=1: no (b, p, vocab) tensor)."""
    hf, model = pair
    ids = tokens(p=13)
    seen = []
    handle = hf.lm_head.register_forward_hook(lambda m, args, out: seen.append(tuple(args[0].shape)))
    try:
        none, cache = model.run_with_cache(ids, names_filter=CHEAP, return_type=None)
        _, ref = model.run_with_cache(ids, names_filter=CHEAP)
    finally:
        handle.remove()
    assert none is None and seen == [(2, 1, hf.config.hidden_size), (2, 13, hf.config.hidden_size)]
    assert list(cache) == list(ref) and all(torch.equal(cache[n], ref[n]) for n in ref)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_norm_scales_are_the_divisors_of_hf_norms(pair, dtype):
    """hook_scale / ln_final.hook_scale: √(mean x² + ε) of what HF's norm received (float32, b p 1), and
    HF's norm output is w · x / scale up to HF's own rounding (it multiplies by the rsqrt of the same sum)."""
    hf, _ = pair
    hf = copy.deepcopy(hf).to(dtype)
    model = ne.HookedNemotronH(hf)
    ids = tokens()
    norms = {f"{i}": block.norm for i, block in enumerate(hf.model.layers)} | {"final": hf.model.norm_f}
    spec = {f"{k}.{io}": (m, io) for k, m in norms.items() for io in ("in", "out")}
    _, ref = capture(hf, ids, spec)
    _, cache = model.run_with_cache(ids, names_filter=lambda n: n.endswith("hook_scale"))
    assert len(cache) == model.n_layers + 1
    for key, norm in norms.items():
        scale = cache["ln_final.hook_scale" if key == "final" else f"blocks.{key}.hook_scale"]
        x = ref[f"{key}.in"].float()
        assert scale.dtype == torch.float32 and scale.shape == (*x.shape[:2], 1)
        assert torch.equal(scale, (x.pow(2).mean(-1, keepdim=True) + norm.variance_epsilon).sqrt()), key
        by_scale = (norm.weight.float() * (x / scale)).to(dtype)
        tol = dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 else dict(rtol=1e-2, atol=1e-2)
        torch.testing.assert_close(by_scale, ref[f"{key}.out"], **tol)
    with pytest.raises(ne.ReadOnlyHookError):
        model.run_with_hooks(ids, fwd_hooks=[("blocks.0.hook_scale", lambda s, hook: s * 2)])


def test_attention_points(pair):
    hf, model = pair
    ids = tokens()
    for i in model.layers("attention"):
        attn = hf.model.layers[i].mixer
        spec = {
            "q": (attn.q_proj, "out"),
            "k": (attn.k_proj, "out"),
            "v": (attn.v_proj, "out"),
            "z": (attn.o_proj, "in"),
        }
        _, ref = capture(hf, ids, spec)
        _, cache = model.run_with_cache(ids, names_filter=lambda n, i=i: n.startswith(f"blocks.{i}.attn."))
        b, p = ids.shape
        for name in "qkv":
            assert torch.equal(cache[f"blocks.{i}.attn.hook_{name}"].reshape(b, p, -1), ref[name])
        assert torch.equal(cache[f"blocks.{i}.attn.hook_z"].reshape(b, p, -1), ref["z"])
        # pattern against HF's own eager attention (output_attentions), an independent implementation
        eager = copy.deepcopy(hf)
        eager.config._attn_implementation = "eager"
        eager_out = eager(ids, output_attentions=True)
        torch.testing.assert_close(
            cache[f"blocks.{i}.attn.hook_pattern"], eager_out.attentions[0], rtol=0, atol=1e-6
        )
        scores = cache[f"blocks.{i}.attn.hook_attn_scores"]
        upper = torch.ones(p, p, dtype=torch.bool).triu(1)
        assert torch.isneginf(scores[..., upper]).all() and torch.isfinite(scores[..., ~upper]).all()
        torch.testing.assert_close(scores.softmax(-1), cache[f"blocks.{i}.attn.hook_pattern"])


def naive_conv_silu(xbc, weight, bias):
    """xbc (b p c), weight (c k), bias (c): causal depthwise conv, by hand."""
    b, p, c = xbc.shape
    k = weight.shape[1]
    padded = torch.cat([xbc.new_zeros(b, k - 1, c), xbc], dim=1)
    out = torch.stack([(padded[:, t : t + k] * weight.T).sum(1) for t in range(p)], dim=1) + bias
    return F.silu(out)


def naive_scan(x, dt, A, B, C, D):
    """Sequential float64 recurrence. x (b p h d), dt (b p h), B/C (b p g n) -> y (b p h d)."""
    b, p, h, d = x.shape
    rep = h // B.shape[2]
    B, C = B.double().repeat_interleave(rep, 2), C.double().repeat_interleave(rep, 2)
    x, dt, A, D = x.double(), dt.double(), A.double(), D.double()
    state = x.new_zeros(b, h, d, B.shape[-1])
    ys = []
    for t in range(p):
        state = (
            state * torch.exp(dt[:, t] * A)[..., None, None]
            + (dt[:, t, :, None] * x[:, t])[..., None] * B[:, t, :, None, :]
        )
        ys.append((state * C[:, t, :, None, :]).sum(-1) + D[:, None] * x[:, t])
    return torch.stack(ys, 1)


def test_mamba_points(pair):
    hf, model = pair
    ids = tokens(p=13)
    for i in model.layers("mamba"):
        mixer = hf.model.layers[i].mixer
        spec = {
            "in_proj": (mixer.in_proj, "out"),
            "scan": (mixer.norm, lambda args, out: args[0]),
            "gate": (mixer.norm, lambda args, out: args[1]),
        }
        norm_args = {}

        def keep_norm_args(m, a, store=norm_args):
            store.update(y=a[0], gate=a[1])

        handle = mixer.norm.register_forward_pre_hook(keep_norm_args)
        try:
            _, ref = capture(hf, ids, {"in_proj": spec["in_proj"]})
        finally:
            handle.remove()
        _, cache = model.run_with_cache(
            ids, names_filter=lambda n, i=i: n.startswith(f"blocks.{i}.mamba.") and CHEAP(n)
        )
        c = {k.split(".")[-1][5:]: v for k, v in cache.items()}
        b, p = ids.shape
        assert torch.equal(c["in_proj"], ref["in_proj"])
        assert torch.equal(c["gate"], norm_args["gate"])
        assert torch.equal(c["ssm_out"].reshape(b, p, -1), norm_args["y"])
        # naive references for the rest
        d_in, conv_dim, h = mixer.intermediate_size, mixer.conv_dim, mixer.num_heads
        xbc = ref["in_proj"][..., d_in : d_in + conv_dim]
        conv = naive_conv_silu(xbc, mixer.conv1d.weight.squeeze(1), mixer.conv1d.bias)
        torch.testing.assert_close(c["conv_out"], conv, rtol=1e-5, atol=1e-6)
        gn = mixer.n_groups * mixer.ssm_state_size
        assert torch.equal(c["x"].reshape(b, p, -1), c["conv_out"][..., :d_in])
        assert torch.equal(c["B"].reshape(b, p, -1), c["conv_out"][..., d_in : d_in + gn])
        assert torch.equal(c["C"].reshape(b, p, -1), c["conv_out"][..., d_in + gn :])
        dt = F.softplus(ref["in_proj"][..., -h:].double() + mixer.dt_bias.double()).clamp(
            min=mixer.time_step_limit[0]
        )
        torch.testing.assert_close(c["dt"].double(), dt, rtol=1e-6, atol=1e-7)
        A = -torch.exp(mixer.A_log.float())
        y = naive_scan(c["x"], c["dt"], A, c["B"], c["C"], mixer.D)
        torch.testing.assert_close(c["ssm_out"].double(), y, rtol=1e-4, atol=1e-5)


def test_moe_points(pair):
    hf, model = pair
    ids = tokens()
    for i in model.layers("moe"):
        moe = hf.model.layers[i].mixer
        spec = {
            "router": (moe.gate, "out"),
            "routed": (moe.fc2_latent_proj, "out"),
            "shared": (moe.shared_experts, "out"),
        }
        _, ref = capture(hf, ids, spec)
        _, cache = model.run_with_cache(ids, names_filter=lambda n, i=i: n.startswith(f"blocks.{i}.moe."))
        b, p = ids.shape
        c = {k.split(".")[-1][5:]: v for k, v in cache.items()}
        logits, weights, indices = ref["router"]
        assert torch.equal(c["router_logits"].reshape(b * p, -1), logits)
        assert torch.equal(c["router_scores"], c["router_logits"].sigmoid())
        assert torch.equal(c["topk_indices"].reshape(b * p, -1), indices)
        assert torch.equal(c["topk_weights"].reshape(b * p, -1), weights)
        assert torch.equal(c["routed_out"].reshape(b * p, -1), ref["routed"])
        assert torch.equal(c["shared_out"], ref["shared"])
        # independent check of the routing rule: the chosen experts are the top-k of score + bias (no groups)
        if moe.gate.num_group == 1:
            choice = (c["router_scores"] + moe.gate.e_score_correction_bias).topk(moe.gate.top_k, dim=-1)[1]
            assert torch.equal(choice.sort(-1)[0], c["topk_indices"].sort(-1)[0])


def test_mlp_points(pair):
    hf, model = pair
    ids = tokens()
    for i in model.layers("mlp"):
        mlp = hf.model.layers[i].mixer
        _, ref = capture(hf, ids, {"pre": (mlp.up_proj, "out"), "post": (mlp.down_proj, "in")})
        _, cache = model.run_with_cache(
            ids, names_filter=[f"blocks.{i}.mlp.hook_pre", f"blocks.{i}.mlp.hook_post"]
        )
        assert torch.equal(cache[f"blocks.{i}.mlp.hook_pre"], ref["pre"])
        assert torch.equal(cache[f"blocks.{i}.mlp.hook_post"], ref["post"])
        torch.testing.assert_close(ref["post"], F.relu(ref["pre"]) ** 2)


@pytest.mark.parametrize("p", [1, 9])
def test_greedy_generation_equal(pair, p):
    hf, model = pair
    ids = tokens(b=2, p=p, seed=3)
    ref = hf.generate(ids, max_new_tokens=7, do_sample=False, pad_token_id=0)
    assert torch.equal(model.generate(ids, max_new_tokens=7), ref)
    seen = []
    with model.hooks([(CHEAP, lambda t, hook: seen.append(hook.name))]):
        assert torch.equal(model.generate(ids, max_new_tokens=7), ref)
    assert len(seen) > len(model.hook_names())  # fired on the prompt and on every decode step


def test_right_padded_batch_rows_equal_each_row_alone():
    hf = random_model("M*-EM", seed=2)
    model = ne.HookedNemotronH(hf)
    ids = tokens(b=2, p=11, seed=5)
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    batch = model(ids, attention_mask=mask)
    alone0, alone1 = model(ids[:1]), model(ids[1:, :6])
    torch.testing.assert_close(batch[:1], alone0, rtol=0, atol=1e-5)
    torch.testing.assert_close(batch[1:, :6], alone1, rtol=0, atol=1e-5)


def test_decode_steps_fire_rows_of_the_full_forward(pair):
    """During generation each decode step's pattern is the last row of a full forward over the sequence,
    and hook_dt reports the unclamped softplus(dt + bias) the decode step really uses."""
    hf, model = pair
    prompt = tokens(b=1, p=6, seed=9)
    steps: dict[str, list] = {}

    def keep(t, hook):
        steps.setdefault(hook.short, []).append(t.clone())

    attn_i, mamba_i = model.layers("attention")[0], model.layers("mamba")[0]
    names = [
        f"blocks.{attn_i}.attn.hook_pattern",
        f"blocks.{mamba_i}.mamba.hook_dt",
        f"blocks.{mamba_i}.mamba.hook_in_proj",
    ]
    out = model.generate(prompt, max_new_tokens=4, fwd_hooks=[(n, keep) for n in names])
    _, full = model.run_with_cache(out[:, :-1], names_filter=names[:1])
    pattern = full[names[0]]
    assert len(steps["hook_pattern"]) == 4 and steps["hook_pattern"][0].shape[-2] == 6
    for s, step in enumerate(steps["hook_pattern"][1:], start=1):
        q = 6 + s - 1
        assert step.shape[-2:] == (1, q + 1)
        torch.testing.assert_close(step[..., 0, :], pattern[..., q, : q + 1], rtol=1e-5, atol=1e-6)
    mixer = hf.model.layers[mamba_i].mixer
    for proj, dt in zip(steps["hook_in_proj"][1:], steps["hook_dt"][1:], strict=True):
        raw = proj[..., -mixer.num_heads :]
        torch.testing.assert_close(dt, F.softplus(raw + mixer.dt_bias), rtol=1e-6, atol=1e-7)
