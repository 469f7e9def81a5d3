"""nemo_explore.corpus resume: the weights are part of a run's identity (other weights, an overwritten
checkpoint: refused, never mixed; overwrite=True starts over), damaged shard files are computed again, and
the merge refuses shards of another run."""

from __future__ import annotations

import shutil
import warnings

import pytest
import torch
from models import random_model
from streams import Interrupted, failing
from transformers import NemotronHForCausalLM

import nemo_explore as ne
import nemo_explore.corpus as corpus
from nemo_explore.corpus import store
from nemo_explore.corpus.__main__ import main
from nemo_explore.corpus.fingerprint import WHOLE, weights_fingerprint

KW = dict(seq_len=48, batch_size=3, top_k=4, window=3, shard_docs=2, progress=False)


@pytest.fixture(scope="module")
def docs():
    return list(corpus.read_documents(corpus.demo_corpus()))[:6]  # three shards


@pytest.fixture(scope="module")
def model_a():
    return ne.load("tiny")


@pytest.fixture(scope="module")
def model_b():
    """The tiny checkpoint with its MoE router perturbed: same name, shape and parameter count."""
    model = ne.load("tiny")
    gate = model.hf_model.model.layers[model.layers("moe")[0]].mixer.gate.weight
    with torch.no_grad():
        gate.add_(torch.randn(gate.shape, generator=torch.Generator().manual_seed(0)) * gate.std())
    return model


@pytest.fixture(scope="module")
def fresh_b(model_b, docs):
    return corpus.collect(model_b, docs, **KW)


def assert_same_tables(a, b):
    """Equal, bit for bit (pandas: NaN equals NaN, as for an expert no token chose)."""
    assert a.table_names == b.table_names
    for name in a.table_names:
        assert a.table(name).schema == b.table(name).schema, name
        assert a.to_pandas(name).equals(b.to_pandas(name)), name


def moe_load(result):
    return result.table("moe_experts").column("load").to_pylist()


def test_fingerprint_sees_the_values_not_where_they_live(tmp_path):
    from accelerate import cpu_offload, disk_offload

    base = weights_fingerprint(random_model(seed=0))
    assert weights_fingerprint(random_model(seed=0)) == base
    assert weights_fingerprint(random_model(seed=1)) != base
    edited = random_model(seed=0)
    with torch.no_grad():
        next(m for n, m in edited.named_modules() if n.endswith("mixer.gate")).weight[3, 5] += 1e-3
    assert weights_fingerprint(edited) != base  # one element of a router (hashed whole)
    bf16 = random_model(seed=0).to(torch.bfloat16)
    assert weights_fingerprint(bf16) not in (base, weights_fingerprint(random_model(seed=1).bfloat16()))
    offloaded = cpu_offload(random_model(seed=0), execution_device="cpu")
    assert next(offloaded.parameters()).is_meta
    assert weights_fingerprint(offloaded) == base  # read from the offload hooks' weights maps
    on_disk = disk_offload(random_model(seed=0), str(tmp_path / "offload"), execution_device="cpu")
    assert weights_fingerprint(on_disk) == base
    with torch.device("meta"):
        empty = NemotronHForCausalLM(random_model(seed=0).config)
    with pytest.raises(ValueError, match="meta device.*no accelerate offload hook"):
        weights_fingerprint(empty)


def test_fingerprint_samples_big_tensors():
    big = torch.nn.Linear(WHOLE // 64 + 1, 128, bias=False)  # just over WHOLE elements: sampled
    before = weights_fingerprint(big)
    with torch.no_grad():
        big.weight.mul_(1.001)  # any change to many elements is seen
    assert weights_fingerprint(big) != before


def test_other_weights_are_refused_never_mixed(model_a, model_b, docs, fresh_b, tmp_path):
    fresh_a = corpus.collect(model_a, docs, **KW)
    assert moe_load(fresh_a) != moe_load(fresh_b)  # the perturbation changes the routing
    out = tmp_path / "run"
    with pytest.raises(Interrupted):  # shards 0 and 1 of model A are written
        corpus.collect(model_a, failing(docs, 5), out=out, **KW)
    refused = rf"{out}.*other settings \(model\.weights: saved '\w+', now '\w+'\).*overwrite=True"
    with pytest.raises(ValueError, match=refused):  # the same data, as a generator again
        corpus.collect(model_b, failing(docs, None), out=out, **KW)
    assert_same_tables(corpus.collect(model_b, docs, out=out, overwrite=True, **KW), fresh_b)
    assert_same_tables(corpus.load(out), fresh_b)
    assert corpus.load(out).manifest["model"]["weights"] == weights_fingerprint(model_b.hf_model)
    with pytest.raises(ValueError, match="model.weights"):  # a finished run is refused too
        corpus.collect(model_a, docs, out=out, **KW)


def test_checkpoint_overwritten_in_place(model_a, docs, tmp_path):
    ckpt, out = tmp_path / "ckpt", tmp_path / "run"
    shape = dict(pattern=model_a.pattern, vocab_size=len(model_a.tokenizer))
    model_a.tokenizer.save_pretrained(ckpt)
    random_model(seed=0, **shape).save_pretrained(ckpt)
    first = corpus.collect(ne.load(ckpt), docs, out=out, **KW)
    random_model(seed=1, **shape).save_pretrained(ckpt)  # the same name, shape and size; other weights
    second = ne.load(ckpt)
    fresh = corpus.collect(second, docs, **KW)
    assert moe_load(first) != moe_load(fresh)
    with pytest.raises(ValueError, match="model.weights"):
        corpus.collect(second, docs, out=out, **KW)
    assert_same_tables(corpus.collect(second, docs, out=out, overwrite=True, **KW), fresh)


def test_damaged_shards_are_computed_again(model_a, docs, tmp_path):
    out = tmp_path / "run"
    whole = corpus.collect(model_a, docs, out=out, **KW)
    paths = [store.shard_path(out, i) for i in range(3)]
    data = paths[1].read_bytes()
    paths[0].write_bytes(b"\x00garbage" * 100)
    paths[1].write_bytes(data[: len(data) // 2])  # truncated
    middle = bytearray(paths[2].read_bytes())  # one byte of an array flipped: the zip CRC catches it
    middle[len(middle) // 2] ^= 0xFF
    paths[2].write_bytes(bytes(middle))
    for path in paths:
        with pytest.raises(store.DamagedShard, match=path.name):
            store.read_shard(path)
    with pytest.raises(ValueError, match=rf"{paths[0]} is not a whole shard file.*collect again"):
        corpus.merge(out)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        resumed = corpus.collect(model_a, docs, out=out, **KW)
    damaged = [str(w.message) for w in caught if "not a whole shard file" in str(w.message)]
    assert len(damaged) == 3 and all(str(p) in m for p, m in zip(paths, damaged, strict=True))
    assert_same_tables(resumed, whole)
    assert_same_tables(corpus.merge(out), whole)


def test_merge_refuses_a_shard_of_another_run(model_a, model_b, docs, tmp_path):
    """As rank 0's merge of a data-parallel run does when a rank computed with other weights."""
    a, b = tmp_path / "a", tmp_path / "b"
    corpus.collect(model_a, docs, out=a, **KW)
    corpus.collect(model_b, docs, out=b, **KW)
    shutil.copy(store.shard_path(b, 1), store.shard_path(a, 1))
    other = rf"{store.shard_path(a, 1)} was written by a run of another identity"
    with pytest.raises(ValueError, match=other):
        corpus.merge(a)
    with pytest.raises(ValueError, match="shard-00001.npz was written by a run of another identity"):
        corpus.collect(model_a, docs, out=a, **KW)


def test_overwrite_starts_over(model_a, docs, tmp_path):
    out = tmp_path / "run"
    corpus.collect(model_a, docs + docs[:2], out=out, **KW)  # four shards, other data
    before = store.shard_path(out, 0).stat().st_mtime_ns
    (out / "shards" / ".shard-00001.npz.999.tmp").write_bytes(b"a write cut short")
    again = corpus.collect(model_a, docs, out=out, overwrite=True, **KW)
    assert store.shard_path(out, 0).stat().st_mtime_ns != before  # computed again
    assert sorted(p.name for p in (out / "shards").iterdir()) == [
        "shard-00000.npz", "shard-00001.npz", "shard-00002.npz", "stream.json"
    ]  # fmt: skip
    assert_same_tables(again, corpus.collect(model_a, docs, **KW))
    path = tmp_path / "docs.txt"
    path.write_text("\n\n".join(docs) + "\n")
    args = ["collect", "--data", str(path), "--out", str(out), "--seq-len", "48", "--batch-size", "3",
            "--top-k", "4", "--window", "3", "--shard-docs", "2", "--no-progress"]  # fmt: skip
    with pytest.raises(ValueError, match="other settings.*data"):
        main(args)
    assert main([*args, "--overwrite"]) == 0
    assert_same_tables(corpus.load(out), again)  # the same documents, from a file
