"""describe(): counts equal what transformers builds, memory equals what loading and caching really take,
and every way of naming a model (registry, directory, legacy config, hub cache, config, model) works."""

import json

import pytest
import torch
from models import random_model, tiny_config
from transformers import NemotronHConfig, NemotronHForCausalLM

import nemo_explore as ne
from nemo_explore.checkpoints import registry
from nemo_explore.checkpoints.configs import small_config
from nemo_explore.checkpoints.describe import describe
from nemo_explore.checkpoints.sources import CheckpointError
from nemo_explore.core.formatting import format_bytes

GiB = 2**30


def hf_counts(config, names=False):
    """(parameters, buffer elements) of transformers' own model, built on the meta device; with
    ``names``, also {name: elements} of every parameter and buffer."""
    with torch.device("meta"):
        model = NemotronHForCausalLM(config)
    counts = sum(p.numel() for p in model.parameters()), sum(b.numel() for b in model.buffers())
    if not names:
        return counts
    return *counts, {n: t.numel() for n, t in [*model.named_parameters(), *model.named_buffers()]}


@pytest.mark.parametrize("name", registry.names())
def test_parameter_count_equals_transformers_for_every_registry_entry(name):
    d = describe(name)
    n_params, n_buffers, sizes = hf_counts(registry.get(name), names=True)
    assert (d.n_params, d.n_buffers) == (n_params, n_buffers)
    assert d.n_params == sum(d.params.values())
    assert d.tensor_sizes() == sizes  # the names load_bytes matches transformers' float32 patterns against


@pytest.mark.parametrize(
    "overrides",
    [
        dict(use_bias=True, mlp_bias=True),
        dict(use_conv_bias=False, moe_latent_size=12),
        dict(moe_latent_size=12, mlp_bias=True, n_group=3, topk_group=2),
        dict(tie_word_embeddings=True),
    ],
)
def test_parameter_count_equals_transformers_for_every_bias_and_moe_option(overrides):
    cfg = small_config("all", **overrides)
    n_params, _, sizes = hf_counts(cfg, names=True)
    assert describe(cfg).n_params == n_params and describe(cfg).tensor_sizes() == sizes


def test_active_parameters_are_those_one_token_touches():
    """Independent count: backpropagate one token and count the routed experts that get a gradient;
    every other tensor counts in full (the convention: embedding and lm_head included)."""
    torch.manual_seed(0)
    routing = dict(n_routed_experts=8, num_experts_per_tok=3, n_group=2, topk_group=1)
    cfg = small_config("moe", moe_latent_size=12, **routing)
    model = NemotronHForCausalLM(cfg)
    logits = model(torch.tensor([[5]])).logits
    (logits[0, -1] @ torch.randn(cfg.vocab_size)).backward()
    active = 0
    for name, p in model.named_parameters():
        if name.endswith(("experts.up_proj", "experts.down_proj")):
            touched = int((p.grad.flatten(1).abs().sum(1) > 0).sum())
            assert touched == cfg.num_experts_per_tok, name
            active += touched * p[0].numel()
        else:
            active += p.numel()
    d = describe(cfg)
    assert d.n_active_params == active < d.n_params


def loaded_bytes(path, dtype):
    """{name: bytes} of every parameter and buffer of the checkpoint at ``path`` loaded in ``dtype``."""
    model = NemotronHForCausalLM.from_pretrained(path, dtype=dtype)
    return {n: t.numel() * t.element_size() for n, t in [*model.named_parameters(), *model.named_buffers()]}


def test_load_bytes_equal_the_loaded_model(tmp_path):
    """Tensor by tensor, whichever of them the installed transformers keeps in float32 (5.21-5.23: the
    routers' e_score_correction_bias; 5.24: also the router weights gate.weight)."""
    random_model("M*-EM", moe_latent_size=12).save_pretrained(tmp_path)
    d = describe(tmp_path)
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        loaded = loaded_bytes(tmp_path, dtype)
        assert d.tensor_bytes(dtype) == loaded
        assert d.load_bytes(dtype) == sum(loaded.values())
        assert d.load_bytes(str(dtype).removeprefix("torch.")) == d.load_bytes(dtype)


def test_load_bytes_follow_the_float32_patterns_of_the_installed_transformers(tmp_path, monkeypatch):
    """More patterns, matched as transformers matches them (a regex, ``*`` = ``.*``, searched in the full
    name): the strict ones for float16 and bfloat16, ``_keep_in_fp32_modules`` for float16 only."""
    from transformers.models.nemotron_h import modeling_nemotron_h

    base = modeling_nemotron_h.NemotronHPreTrainedModel
    strict = list(base._keep_in_fp32_modules_strict or [])
    monkeypatch.setattr(base, "_keep_in_fp32_modules_strict", [*strict, "A_log", "layers.*.conv1d.bias"])
    monkeypatch.setattr(base, "_keep_in_fp32_modules", ["norm_f"])
    random_model("M*-EM").save_pretrained(tmp_path)
    d = describe(tmp_path)
    for dtype in (torch.bfloat16, torch.float16):
        loaded = loaded_bytes(tmp_path, dtype)
        assert d.tensor_bytes(dtype) == loaded
        wide = {n for n, b in d.tensor_bytes(dtype).items() if b == 4 * d.tensor_sizes()[n]}
        assert {"model.layers.0.mixer.A_log", "model.layers.4.mixer.conv1d.bias"} <= wide
        assert ("model.norm_f.weight" in wide) == (dtype == torch.float16)


@pytest.fixture(scope="module")
def hooked():
    return ne.load(random_model("M*-EM"))


@pytest.mark.parametrize("seq_len", [10, 70])  # hook_state keeps all positions up to 64 tokens, then the last
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_hook_shapes_and_activation_memory_equal_what_run_with_cache_keeps(hooked, seq_len, dtype):
    tokens = torch.randint(3, 97, (2, seq_len), generator=torch.Generator().manual_seed(1))
    _, cache = hooked.run_with_cache(tokens, dtype=dtype)
    d = describe(hooked)
    assert d.hook_shapes(seq_len, batch=2) == {name: tuple(t.shape) for name, t in cache.items()}
    kept = sum(t.numel() * t.element_size() for t in cache.values())
    assert d.activation_memory(seq_len, batch=2, hooks="all", dtype=dtype) == kept


def test_activation_memory_of_a_selection_with_options(hooked):
    tokens = torch.randint(3, 97, (1, 80), generator=torch.Generator().manual_seed(2))
    names = [
        "blocks.0.mamba.hook_hidden_attn",
        "blocks.0.mamba.hook_state",
        "blocks.1.attn.hook_pattern",
        "blocks.3.moe.hook_topk_indices",
    ]
    options = dict(state_positions=[0, 5, -1], hidden_attn_heads=[1, 3], hidden_attn_window=(10, 30))
    options["pattern_window"] = (70, 80)
    _, cache = hooked.run_with_cache(tokens, names_filter=names, **options)
    kept = sum(t.numel() * t.element_size() for t in cache.values())
    assert describe(hooked).activation_memory(80, 1, names, torch.float32, **options) == kept


def test_residual_selection_is_four_b_p_d_points_per_block(hooked):
    d = describe(hooked)
    b, p, width = 3, 50, hooked.hf_model.config.hidden_size
    assert d.activation_memory(p, b, "residual", "bf16") == 5 * 4 * b * p * width * 2
    tokens = torch.ones(b, p, dtype=torch.long)
    _, cache = hooked.run_with_cache(tokens, names_filter=d.hook_names("residual"))
    assert len(cache) == 20
    assert d.activation_memory(p, b, "residual", torch.float32) == sum(t.numel() * 4 for t in cache.values())


def test_every_way_of_naming_a_model_gives_the_same_description(tmp_path):
    hf = random_model("M*-EM")
    hf.save_pretrained(tmp_path)
    want = describe(hf.config)
    expected = (want.pattern, want.n_params, want.n_active_params, want.load_bytes())
    for source in (hf, ne.load(hf), tmp_path, str(tmp_path), tmp_path / "config.json"):
        d = describe(source)
        assert (d.pattern, d.n_params, d.n_active_params, d.load_bytes()) == expected
    assert want.pattern == "M*-EM" and want.counts == {"mamba": 2, "attention": 1, "mlp": 1, "moe": 1}


def test_legacy_remote_code_config_is_read_natively(tmp_path):
    legacy = {
        "architectures": ["NemotronHForCausalLM"],
        "auto_map": {
            "AutoConfig": "configuration_nemotron_h.NemotronHConfig",
            "AutoModelForCausalLM": "modeling_nemotron_h.NemotronHForCausalLM",
        },
        "model_type": "nemotron_h",
        "hybrid_override_pattern": "M-M*-E",
        "num_hidden_layers": 6,
        "attention_head_dim": 16,
        "hidden_size": 32,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "mamba_num_heads": 8,
        "mamba_head_dim": 4,
        "ssm_state_size": 8,
        "n_groups": 2,
        "intermediate_size": 48,
        "n_routed_experts": 4,
        "num_experts_per_tok": 2,
        "moe_intermediate_size": 16,
        "moe_shared_expert_intermediate_size": 24,
        "vocab_size": 97,
        "rms_norm_eps": 1e-5,
        "transformers_version": "4.48.0.dev0",
    }
    (tmp_path / "config.json").write_text(json.dumps(legacy))
    for module in ("configuration_nemotron_h.py", "modeling_nemotron_h.py"):
        (tmp_path / module).write_text("raise RuntimeError('remote code must never run')\n")
    d = describe(tmp_path)
    assert d.pattern == "M-M*-E" and d.config.head_dim == 16
    native = tiny_config("M-M*-E", head_dim=16, n_routed_experts=4, num_experts_per_tok=2)
    assert d.n_params == hf_counts(native)[0]


def write_hub_cache(root, repo_id, config):
    """The layout huggingface_hub writes: models--org--name/{refs/main, snapshots/<commit>/...}."""
    repo = root / ("models--" + repo_id.replace("/", "--"))
    commit = "0123456789abcdef0123456789abcdef01234567"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    config.save_pretrained(snapshot)


def test_hub_id_resolves_through_the_local_cache_offline(tmp_path, monkeypatch):
    cfg = tiny_config("M*-EM")
    write_hub_cache(tmp_path, "acme/tiny-nemotron", cfg)
    d = describe("acme/tiny-nemotron", cache_dir=tmp_path)
    assert d.name == "acme/tiny-nemotron" and d.n_params == hf_counts(cfg)[0]
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path))
    assert describe("acme/tiny-nemotron").n_params == d.n_params
    with pytest.raises(registry.UnknownCheckpointError, match="local Hugging Face cache"):
        describe("acme/not-there")


def test_clear_errors(tmp_path):
    with pytest.raises(registry.UnknownCheckpointError, match="Nemotron-H-8B-Base-8K"):
        describe("nvidia/Nemotron-H-8B-Base")
    with pytest.raises(CheckpointError, match="no config.json"):
        describe(tmp_path)
    llama = {"model_type": "llama", "architectures": ["LlamaForCausalLM"]}
    (tmp_path / "config.json").write_text(json.dumps(llama))
    with pytest.raises(ne.NotNemotronHError, match="llama"):
        describe(tmp_path)
    with pytest.raises(TypeError, match="registry name"):
        describe(42)
    d = describe("nvidia/Nemotron-H-8B-Base-8K")
    with pytest.raises(ne.HookNameError, match="mamba layer"):
        d.activation_memory(16, hooks=["blocks.0.attn.hook_pattern"])
    with pytest.raises(ValueError, match="unknown dtype"):
        d.load_bytes("int4")
    with pytest.raises(ValueError, match="seq_len"):
        d.activation_memory(0)


def test_fits_announces_out_of_memory_before_loading():
    d = describe("nvidia/Nemotron-H-8B-Base-8K")
    bf16 = d.load_bytes("bfloat16")
    assert d.fits(2 * bf16) is None
    assert "leaving" in d.fits(bf16 + 1) and "may run out" in d.fits(bf16 + 1)
    small = d.fits(8 * GiB)
    assert "more than the device's 8.0 GiB" in small and "device_map='auto'" in small
    assert "load in bfloat16" in d.fits(bf16 + GiB, torch.float32)
    with_acts = d.fits(bf16 + GiB, seq_len=8192, hooks="all")
    acts = d.activation_memory(8192, hooks="all")
    assert acts > GiB and "cached activations" in with_acts and "cache fewer hooks" in with_acts
    super_ = describe("nvidia/NVIDIA-Nemotron-3-Super-120B-A12B")
    assert super_.fits(80 * GiB) is not None and super_.load_bytes("bf16") > 200 * GiB


def test_repr_and_html():
    d = describe("nvidia/Nemotron-H-8B-Base-8K")
    text = repr(d)
    assert "52: 24 mamba, 4 attention, 24 mlp" in text and d.pattern in text and "8,100,852,736" in text
    moe = repr(describe("nvidia/NVIDIA-Nemotron-3-Nano-30B-A3B"))
    assert "active per token" in moe and "128 experts × 1856, top-6" in moe
    cfg = NemotronHConfig(**tiny_config("M*").to_dict())
    cfg._name_or_path = "<script>alert(1)</script>"
    page = describe(cfg)._repr_html_()
    assert "<script>" not in page and "&lt;script&gt;" in page


def test_notebook_reprs_of_the_model_and_a_cache(hooked, monkeypatch):
    """What a notebook shows for ``model`` and ``cache``: the layer map in the layer colours, every cached
    point with its shape, the total size."""
    import nemo_explore.cache
    from nemo_explore.core.layer_types import LAYER_COLORS

    page = hooked._repr_html_()
    assert all(LAYER_COLORS[t] in page for t in set(hooked.layer_types))
    tokens = torch.randint(3, 97, (2, 9), generator=torch.Generator().manual_seed(0))
    names = ["hook_embed", "blocks.1.attn.hook_pattern", "blocks.0.mamba.hook_state_norm"]
    _, cache = hooked.run_with_cache(tokens, names_filter=names)
    page = cache._repr_html_()
    assert "attn.hook_pattern</code> 2 × 4 × 9 × 9" in page and "hook_embed</code> 2 × 9 × " in page
    assert f'color:{LAYER_COLORS["attention"]}">blocks.1 · attention' in page
    size = sum(t.numel() * t.element_size() for t in cache.values())
    assert f"3 tensors, {format_bytes(size)}, 2 × 9 tokens" in page
    assert "<details>" not in page  # a short cache shows its table; a big one is folded to one line
    _, cache = hooked.run_with_cache(tokens, names_filter=lambda n: "hook_resid" in n)
    monkeypatch.setattr(nemo_explore.cache, "REPR_OPEN_ROWS", hooked.n_layers - 1)
    folded = cache._repr_html_()
    assert folded.startswith("<details><summary>") and f"click for the {hooked.n_layers} blocks" in folded
    assert "hook_resid_post</code> 2 × 9 × " in folded
