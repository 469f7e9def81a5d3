"""load(): HF models, local directories (current and legacy configs), a hub-shaped cache offline,
safetensors-only, bf16, and a model split by accelerate (offloaded blocks)."""

import json
import shutil

import pytest
import torch
from models import random_model
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

import nemo_explore as ne

TEXT = "the cat sat on the mat and the dog sat on the log " * 20


def make_tokenizer(vocab=97):
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab,
        special_tokens=["<pad>", "<s>", "</s>", "<unk>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()[:40],
    )
    tok.train_from_iterator([TEXT], trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )


@pytest.fixture(scope="module")
def hf():
    return random_model("M*-EM", seed=7)


@pytest.fixture(scope="module")
def ckpt(hf, tmp_path_factory):
    d = tmp_path_factory.mktemp("ckpt")
    hf.save_pretrained(d)
    make_tokenizer().save_pretrained(d)
    return d


def ids(p=11):
    return torch.randint(3, 97, (2, p), generator=torch.Generator().manual_seed(0))


def test_load_hf_model_in_memory(hf):
    model = ne.load(hf)
    assert model.hf_model is hf and model.layer_types == ["mamba", "attention", "mlp", "moe", "mamba"]
    assert torch.equal(model(ids()), hf(ids()).logits)


def test_load_directory_with_tokenizer(hf, ckpt):
    model = ne.load(ckpt)
    assert torch.equal(model(ids()), hf(ids()).logits)
    assert model.tokenizer is not None
    toks = model.to_str_tokens("the cat sat")
    assert "".join(toks) == "the cat sat"
    logits, cache = model.run_with_cache(
        ["the cat", "the dog sat on the mat"], names_filter="blocks.1.attn.hook_pattern"
    )
    assert cache.str_tokens == model.to_str_tokens("the cat") and len(cache.str_tokens_all[1]) > len(
        cache.str_tokens
    )


def test_legacy_remote_code_config_and_backbone_weights(hf, ckpt, tmp_path):
    d = tmp_path / "legacy"
    shutil.copytree(ckpt, d)
    cfg = json.loads((d / "config.json").read_text())
    cfg["hybrid_override_pattern"] = cfg.pop("hybrid_override_pattern", None) or "M*-EM"
    cfg.pop("layers_block_type", None)
    cfg["attention_head_dim"] = cfg.pop("head_dim")
    cfg["auto_map"] = {"AutoModelForCausalLM": "modeling_nemotron_h.NemotronHForCausalLM"}
    (d / "config.json").write_text(json.dumps(cfg))
    (d / "modeling_nemotron_h.py").write_text("raise RuntimeError('remote code must never run')\n")
    weights = load_file(d / "model.safetensors")
    save_file(
        {k.replace("model.", "backbone.", 1): v for k, v in weights.items()},
        d / "model.safetensors",
        metadata={"format": "pt"},
    )
    model = ne.load(d)
    assert model.pattern == "M*-EM"
    assert torch.equal(model(ids()), hf(ids()).logits)


def test_hub_id_through_offline_cache(hf, ckpt, tmp_path, monkeypatch):
    repo = tmp_path / "hub" / "models--acme--tiny-nemotron-h"
    snap = repo / "snapshots" / ("a" * 40)
    shutil.copytree(ckpt, snap)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("a" * 40)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    model = ne.load("acme/tiny-nemotron-h")
    assert torch.equal(model(ids()), hf(ids()).logits)
    with pytest.raises(ne.CheckpointError, match="not in the local Hugging Face cache") as err:
        ne.load("acme/not-there")
    assert "`hf download acme/not-there`" in str(err.value)  # the CLI huggingface_hub installs today
    assert "huggingface-cli" not in str(err.value)
    with pytest.raises(ne.CheckpointError, match="`hf download acme/not-there --revision v2`"):
        ne.load("acme/not-there", revision="v2")


def test_pickle_refused_unless_allowed(hf, tmp_path):
    d = tmp_path / "pickled"
    hf.save_pretrained(
        d, safe_serialization=False
    ) if "safe_serialization" in hf.save_pretrained.__code__.co_varnames else None
    if not any(d.glob("*.bin")):
        d.mkdir(exist_ok=True)
        hf.config.save_pretrained(d)
        torch.save(hf.state_dict(), d / "pytorch_model.bin")
    with pytest.raises(ne.CheckpointError, match="pickle"):
        ne.load(d)
    model = ne.load(d, allow_pickle=True)
    assert torch.equal(model(ids()), hf(ids()).logits)


def test_not_nemotron_h_is_named(tmp_path):
    (tmp_path / "config.json").write_text(
        json.dumps({"model_type": "llama", "architectures": ["LlamaForCausalLM"]})
    )
    with pytest.raises(ne.NotNemotronHError, match="'llama' model \\(LlamaForCausalLM\\), not Nemotron-H"):
        ne.load(tmp_path)
    with pytest.raises(ne.CheckpointError, match="neither 'tiny', a checkpoint directory"):
        ne.load("no/such/thing/here")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_cuda_without_cuda_is_refused_up_front(hf):
    """A CUDA device this torch build or machine lacks: a clear error before anything loads, instead of
    torch's bare AssertionError ("Torch not compiled with CUDA enabled") from deep inside the load."""
    build = "a CPU-only build" if not torch.backends.cuda.is_built() else "sees no CUDA device"
    asks = [
        dict(device="cuda"),
        dict(device=torch.device("cuda", 0)),
        dict(device_map="cuda:0"),
        dict(device_map={"": 0}),
        dict(device_map={"model.embeddings": "cpu", "model.layers": "cuda:1", "lm_head": "cpu"}),
    ]
    for kwargs in asks:
        with pytest.raises(ValueError, match=f"asks for a CUDA GPU, but .*{build}.*device='cpu'"):
            ne.load("tiny", **kwargs)
    with pytest.raises(ValueError, match="asks for a CUDA GPU"):
        ne.load(hf, device="cuda")  # a model in memory, moved
    assert next(hf.parameters()).device.type == "cpu"
    from nemo_explore.checkpoints.loading import check_devices

    check_devices("cpu", {"model.layers.0": "cpu", "model.layers.1": "disk"})  # no CUDA asked: fine
    check_devices(None, "auto")


def test_cuda_device_count_is_checked(monkeypatch):
    from nemo_explore.checkpoints.loading import check_devices

    monkeypatch.setattr(torch.backends.cuda, "is_built", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    with pytest.raises(ValueError, match="sees no CUDA device on this machine.*nvidia-smi"):
        check_devices("cuda", None)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    check_devices("cuda:1", {"": 0})
    too_far = r"device_map\['lm_head'\]='cuda:2' .* 2 CUDA device\(s\): use cuda:0 .. cuda:1"
    with pytest.raises(ValueError, match=too_far):
        check_devices(None, {"model": 0, "lm_head": "cuda:2"})


def test_bf16_hooks_within_tolerance(hf, ckpt):
    ref_model = ne.load(ckpt)
    bf = ne.load(ckpt, dtype="bfloat16")
    assert next(bf.hf_model.parameters()).dtype == torch.bfloat16
    names = [
        "blocks.1.attn.hook_pattern",
        "blocks.3.moe.hook_router_scores",
        "blocks.4.hook_resid_post",
        "blocks.0.mamba.hook_ssm_out",
    ]
    _, c32 = ref_model.run_with_cache(ids(), names_filter=names)
    logits, c16 = bf.run_with_cache(ids(), names_filter=names, dtype=torch.float32)
    assert torch.equal(logits, bf.hf_model(ids()).logits)
    for n in names:
        assert c16[n].dtype == torch.float32
        torch.testing.assert_close(c16[n], c32[n], rtol=5e-2, atol=5e-2)


def test_offloaded_blocks_via_device_map(hf, ckpt, tmp_path):
    device_map = {
        "model.embeddings": "cpu",
        "model.layers.0": "disk",
        "model.layers.1": "cpu",
        "model.layers.2": "disk",
        "model.layers.3": "disk",
        "model.layers.4": "cpu",
        "model.norm_f": "cpu",
        "lm_head": "cpu",
    }
    model = ne.load(ckpt, device_map=device_map, offload_folder=str(tmp_path / "off"))
    assert hasattr(model.blocks[0], "_hf_hook")
    ref = hf(ids()).logits
    assert torch.equal(model(ids()), ref)
    cheap = [n for n in model.hook_names() if not n.endswith(("state_norm", "hidden_attn", "hook_state"))]
    logits, cache = model.run_with_cache(ids(), names_filter=cheap)
    assert torch.equal(logits, ref)
    _, ref_cache = ne.load(hf).run_with_cache(ids(), names_filter=cheap)
    for n in cheap:
        assert torch.equal(cache[n], ref_cache[n]), n
    zeroed = model.run_with_hooks(ids(), fwd_hooks=[("blocks.0.mamba.hook_ssm_out", lambda t, h: t * 0)])
    assert torch.equal(
        zeroed,
        ne.load(hf).run_with_hooks(ids(), fwd_hooks=[("blocks.0.mamba.hook_ssm_out", lambda t, h: t * 0)]),
    )


def test_out_of_memory_risk_announced_before_loading(ckpt, monkeypatch):
    import nemo_explore.checkpoints.loading as loading

    monkeypatch.setattr(loading, "_free_memory", lambda device: 10_000)  # bytes: far too little
    with pytest.warns(ne.MemoryWarning, match=r"needs .* for its float32 weights, more than the device's"):
        ne.load(ckpt)
    monkeypatch.setattr(loading, "_free_memory", lambda device: 2**40)
    with pytest.warns(UserWarning, match="float16 on the CPU is slow"):
        ne.load(ckpt, dtype=torch.float16)


def test_token_pieces_of_multibyte_characters_show_their_bytes():
    """A byte-level BPE token holding part of a UTF-8 character decodes alone to U+FFFD; views show its
    bytes instead, so different pieces stay distinguishable, and whole characters stay text."""
    from nemo_explore.core.token_text import _piece_bytes, token_text

    tiny = ne.load("tiny")
    tok = tiny.tokenizer
    pieces = [i for i in range(tiny.cfg.vocab_size) if "\ufffd" in tok.decode([i])]
    assert len(pieces) > 100  # the 128 continuation / lead bytes of the byte-level alphabet, at least
    shown = [token_text(tok, i) for i in pieces]
    assert not any("\ufffd" in s for s in shown) and len(set(shown)) == len(shown)
    euro = tok.encode("€", add_special_tokens=False)  # 3 UTF-8 bytes
    assert b"".join(_piece_bytes(tok.convert_ids_to_tokens(i)) for i in euro) == "€".encode()
    assert "".join(tiny.to_str_tokens(torch.tensor(euro))) in ("€", "\\xe2\\x82\\xac")
    text = "The cat sat."
    assert "".join(tiny.to_str_tokens(text)) == tok.bos_token + text  # ordinary tokens untouched
    assert _piece_bytes("<0xE2>") == b"\xe2" and _piece_bytes("日本") is None
    decoded = {tok.decode([i]): i for i in range(tiny.cfg.vocab_size)}
    assert token_text(tok, decoded["\x14"]) == "\\x14" and token_text(tok, decoded["\n"]) == "\n"
