"""nemo_explore.corpus: every statistic against an independent computation from run_with_cache, resume,
input forms, bad input, bounded memory."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest
import torch
from streams import Interrupted, failing

import nemo_explore as ne
import nemo_explore.corpus as corpus
from nemo_explore.corpus import store
from nemo_explore.corpus.stats import HORIZON_EDGES

SEQ, K, W = 48, 4, 3
TOKENIZER = ne.load("tiny").tokenizer


def TEXT(i):  # noqa: N802
    from nemo_explore.core.token_text import token_text

    return token_text(TOKENIZER, i)


@pytest.fixture(scope="module")
def model():
    return ne.load("tiny")


@pytest.fixture(scope="module")
def docs():
    found = list(corpus.read_documents(corpus.demo_corpus()))
    return found[:9]


@pytest.fixture(scope="module")
def labels(docs):
    return [f"source {i % 3}" for i in range(len(docs))]


@pytest.fixture(scope="module")
def result(model, docs, labels):
    """batch_size=1: each row runs alone, exactly as the reference below runs it."""
    return corpus.collect(model, list(zip(docs, labels, strict=True)), seq_len=SEQ, batch_size=1, top_k=K,
                          window=W, shard_docs=4, progress=False)  # fmt: skip


@pytest.fixture(scope="module")
def reference(model, docs):
    """Per row: (doc, start, ids, cache), from run_with_cache of that row alone."""
    tok = model.tokenizer
    names = ("hook_topk_indices", "hook_topk_weights", "hook_dt", "hook_state_norm", "hook_pattern")
    rows = []
    for d, text in enumerate(docs):
        ids = [tok.bos_token_id] + tok(text, add_special_tokens=False)["input_ids"]
        for start in range(0, len(ids), SEQ):
            row = ids[start : start + SEQ]
            _, cache = model.run_with_cache(torch.tensor([row]), names_filter=lambda n: n.endswith(names))
            rows.append((d, start, row, cache))
    return rows


def rows_of(table, *keys):
    return {tuple(r[k] for k in keys): r for r in table.to_pylist()}


def brute_top(candidates, k):
    """candidates: (unit key, score, doc, pos, window ids, window values) -> the k best per unit."""
    best: dict = {}
    for c in sorted(candidates, key=lambda c: (c[0], -c[1], c[2], c[3])):
        best.setdefault(c[0], [])
        if len(best[c[0]]) < k:
            best[c[0]].append(c)
    return best


def check_contexts(result, kind, best):
    """Each unit's contexts equal the brute-force ones (window centre: the token's place in its row)."""
    row_start = {(d, pos): pos - pos % SEQ for units in best.values() for _, _, d, pos, _, _ in units}
    for (block, unit), want in best.items():
        got = result.contexts(kind, block, unit)
        assert len(got) == len(want)
        for g, (_, score, doc, pos, ids, vals) in zip(got, want, strict=True):
            assert (g.doc, g.position) == (doc, pos)
            assert g.score == pytest.approx(score, rel=1e-6, abs=1e-7)
            assert g.token_ids == ids and g.tokens == [TEXT(i) for i in ids]
            assert g.centre == min(pos - row_start[doc, pos], W)
            np.testing.assert_allclose(g.values, vals, rtol=1e-6, atol=1e-7)


def window(row, p):
    return [i for i in range(p - W, p + W + 1) if 0 <= i < len(row)]


def test_moe_statistics_match_reference(model, result, reference, labels):
    tok = model.tokenizer
    classes = corpus.token_classes(tok)
    block = model.layers("moe")[0]
    E = model.config.n_routed_experts
    load, wsum, by_class, by_label, cosel, cands = Counter(), Counter(), Counter(), Counter(), Counter(), []
    for d, start, row, cache in reference:
        idx = cache[f"blocks.{block}.moe.hook_topk_indices"][0].tolist()
        wts = cache[f"blocks.{block}.moe.hook_topk_weights"][0].tolist()
        dense = [[0.0] * E for _ in row]
        for p, (ii, ww) in enumerate(zip(idx, wts, strict=True)):
            for e, w in zip(ii, ww, strict=True):
                dense[p][e] = w
        for p, (ii, ww) in enumerate(zip(idx, wts, strict=True)):
            for e, w in zip(ii, ww, strict=True):
                load[e] += 1
                wsum[e] += w
                by_class[corpus.CLASSES[int(classes[row[p]])], e] += 1
                by_label[labels[d], e] += 1
                cands.append(((block, e), w, d, start + p, [row[i] for i in window(row, p)],
                              [dense[i][e] for i in window(row, p)]))  # fmt: skip
                for f in ii:
                    cosel[e, f] += 1
    experts = rows_of(result.table("moe_experts"), "block", "expert")
    tokens = sum(len(r[2]) for r in reference)
    for e in range(E):
        assert experts[block, e]["load"] == load[e]
        assert experts[block, e]["share"] == pytest.approx(load[e] / tokens)
        assert experts[block, e]["mean_weight"] == pytest.approx(wsum[e] / load[e], rel=1e-9)
    assert {(r["class"], r["expert"]): r["load"] for r in result.table("moe_class_load").to_pylist()} == {
        (c, e): by_class[c, e] for c in corpus.CLASSES for e in range(E)
    }
    assert {(r["label"], r["expert"]): r["load"] for r in result.table("moe_label_load").to_pylist()} == {
        (lab, e): by_label[lab, e] for lab in sorted(set(labels)) for e in range(E)
    }
    got = {(r["expert_a"], r["expert_b"]): r["count"] for r in result.table("moe_coselection").to_pylist()}
    assert got == {(a, b): cosel[a, b] for a in range(E) for b in range(E)}
    check_contexts(result, "moe", brute_top(cands, K))
    assert result.manifest["tokens"] == tokens


def test_mamba_statistics_match_reference(model, result, reference):
    heads = rows_of(result.table("mamba_heads"), "block", "head")
    hist = rows_of(result.table("mamba_horizon_hist"), "block", "head", "bin")
    cands = []
    for block in model.layers("mamba"):
        a = model.hf_model.model.layers[block].mixer.A_log.detach().double().exp().numpy()
        norms, rates = [], []
        for d, start, row, cache in reference:
            n = cache[f"blocks.{block}.mamba.hook_state_norm"][0].double().numpy()  # p h
            norms.append(n)
            rates.append(cache[f"blocks.{block}.mamba.hook_dt"][0].double().numpy() * a)
            for p in range(1, len(row)):
                for h in range(n.shape[1]):
                    jump = float(np.float32(n[p, h]) - np.float32(n[p - 1, h]))  # as float32 subtracts
                    near = window(row, p)
                    ids, vals = [row[i] for i in near], [n[i, h] for i in near]
                    cands.append(((block, h), jump, d, start + p, ids, vals))
        norms, rates = np.concatenate(norms), np.concatenate(rates)
        for h in range(norms.shape[1]):
            r = heads[block, h]
            assert r["count"] == len(norms)
            assert r["norm_mean"] == pytest.approx(norms[:, h].mean(), rel=1e-9)
            assert r["norm_std"] == pytest.approx(norms[:, h].std(), rel=1e-7)
            assert r["norm_max"] == norms[:, h].max()
            assert r["mean_rate"] == pytest.approx(rates[:, h].mean(), rel=1e-9)
            assert r["mean_rate_horizon"] == pytest.approx(math.log(2) / rates[:, h].mean(), rel=1e-9)
            counts = Counter()
            for rate in rates[:, h]:
                half = math.log(2) / rate
                counts[sum(1 for e in HORIZON_EDGES if e <= half)] += (
                    1  # bin i: edges[i-1] <= half < edges[i]
                )
            assert [hist[block, h, b]["count"] for b in range(len(HORIZON_EDGES) + 1)] == [
                counts[b] for b in range(len(HORIZON_EDGES) + 1)
            ]
    check_contexts(result, "mamba", brute_top(cands, K))


def naive_attention(pattern, row):
    """Per head: entropy, sink, prev, distance (means over q >= 1), induction (mean over queries with an
    earlier occurrence), the number of those queries, and the per-query distances. Plain loops."""
    P = pattern.double().tolist()  # h q k
    out = []
    for ph in P:
        ent = sink = prev = dist = ind = 0.0
        n_ind, dists = 0, []
        for q in range(len(row)):
            dq = sum(ph[q][k] * (q - k) for k in range(q + 1))
            dists.append(dq)
            keys = [k for k in range(1, q + 1) if row[k - 1] == row[q]]
            if keys:
                n_ind += 1
                ind += sum(ph[q][k] for k in keys)
            if q == 0:
                continue
            ent -= sum(x * math.log(x) for x in ph[q][: q + 1] if x > 0)
            sink += ph[q][0]
            prev += ph[q][q - 1]
            dist += dq
        out.append((ent, sink, prev, dist, ind, n_ind, dists))
    return out


def test_attention_statistics_match_reference(model, docs, reference):
    block = model.layers("attention")[0]
    few = [r for r in reference if r[0] < 2]  # the naive loops are slow: two documents are plenty
    sums, cands, queries = 0, [], 0
    for d, start, row, cache in few:
        pattern = cache[f"blocks.{block}.attn.hook_pattern"][0]
        per = naive_attention(pattern, row)
        queries += len(row) - 1
        sums = sums + np.array([h[:6] for h in per])
        for h, stats in enumerate(per):
            for q, dq in enumerate(stats[6]):
                cands.append(((block, h), dq, d, start + q, [row[i] for i in window(row, q)],
                              [float(pattern[h, q, i]) for i in window(row, q)]))  # fmt: skip
    got = corpus.collect(model, docs[:2], seq_len=SEQ, batch_size=1, top_k=K, window=W, kinds=["attention"],
                         progress=False)  # fmt: skip
    assert got.table_names == ["attention_heads", "contexts"]
    heads = rows_of(got.table("attention_heads"), "block", "head")
    for h in range(sums.shape[0]):
        ent, sink, prev, dist, ind, n_ind = sums[h]
        r = heads[block, h]
        assert r["queries"] == queries and r["induction_queries"] == n_ind
        assert r["entropy"] == pytest.approx(ent / queries, rel=1e-5)
        assert r["sink"] == pytest.approx(sink / queries, rel=1e-5)
        assert r["prev_token"] == pytest.approx(prev / queries, rel=1e-5)
        assert r["distance"] == pytest.approx(dist / queries, rel=1e-5)
        assert r["induction"] == pytest.approx(ind / n_ind, rel=1e-5)
    check_contexts(got, "attention", brute_top(cands, K))


def test_padded_batches_equal_one_row_at_a_time(model, docs, labels, result):
    batched = corpus.collect(model, list(zip(docs, labels, strict=True)), seq_len=SEQ, batch_size=5, top_k=K,
                             window=W, shard_docs=4, progress=False)  # fmt: skip
    for name in result.table_names:
        a, b = result.to_pandas(name), batched.to_pandas(name)
        assert list(a.columns) == list(b.columns) and len(a) == len(b)
        for col in a.columns:
            if a[col].dtype.kind in "iu":
                assert (a[col] == b[col]).all(), (name, col)
            elif a[col].dtype.kind == "f":
                np.testing.assert_allclose(a[col], b[col], rtol=1e-4, atol=1e-6, err_msg=f"{name}.{col}")
    assert batched.manifest["tokens"] == result.manifest["tokens"]


def assert_same_tables(a, b):
    assert a.table_names == b.table_names
    for name in a.table_names:
        assert a.table(name).equals(b.table(name)), name


def test_resume_after_interruption_is_identical(model, docs, tmp_path):
    kw = dict(seq_len=SEQ, batch_size=3, top_k=K, window=W, shard_docs=2, progress=False)
    whole = corpus.collect(model, docs, out=tmp_path / "whole", **kw)
    out = tmp_path / "resumed"
    with pytest.raises(Interrupted):  # the data breaks inside shard 2: shards 0 and 1 are written
        corpus.collect(model, failing(docs, 5), out=out, **kw)
    assert sorted(p.name for p in (out / "shards").glob("shard-*")) == ["shard-00000.npz", "shard-00001.npz"]
    with pytest.raises(FileNotFoundError, match="resume"):
        corpus.merge(out)
    before = (out / "shards" / "shard-00000.npz").stat().st_mtime_ns
    resumed = corpus.collect(model, failing(docs, None), out=out, **kw)  # the same kind of data, whole
    assert (out / "shards" / "shard-00000.npz").stat().st_mtime_ns == before  # skipped, not recomputed
    assert_same_tables(whole, resumed)
    assert_same_tables(whole, corpus.load(out))
    assert_same_tables(whole, corpus.merge(out))
    with pytest.raises(ValueError, match="other settings.*top_k"):
        corpus.collect(model, failing(docs, None), out=out, **(kw | {"top_k": K + 1}))
    with pytest.raises(ValueError, match="other settings.*data"):
        corpus.collect(model, docs, out=out, **kw)


def test_a_hook_that_raises_leaves_no_partial_shard(model, docs, tmp_path, monkeypatch):
    from nemo_explore.corpus.stats import MambaStats

    calls = {"n": 0}
    original = MambaStats._state_norm

    def flaky(self, norm, hook):
        calls["n"] += 1
        if calls["n"] == 30:
            raise Interrupted
        return original(self, norm, hook)

    monkeypatch.setattr(MambaStats, "_state_norm", flaky)
    kw = dict(seq_len=SEQ, batch_size=2, top_k=K, window=W, shard_docs=3, progress=False)
    with pytest.raises(Interrupted):
        corpus.collect(model, docs, out=tmp_path / "r", **kw)
    assert not model._registry.names()  # the hooks are gone
    written = sorted((tmp_path / "r" / "shards").glob("shard-*"))
    monkeypatch.setattr(MambaStats, "_state_norm", original)
    assert 0 < len(written) < 3
    assert_same_tables(
        corpus.collect(model, docs, out=tmp_path / "r", **kw), corpus.collect(model, docs, **kw)
    )


def test_input_forms_agree(model, docs, tmp_path):
    datasets = pytest.importorskip("datasets")
    kw = dict(seq_len=SEQ, batch_size=4, top_k=K, window=W, shard_docs=3, progress=False)
    base = corpus.collect(model, docs, **kw)
    path = tmp_path / "docs.txt"
    path.write_text("\n\n".join(docs) + "\n")
    labels = [f"L{i % 2}" for i in range(len(docs))]
    forms = {
        "file": (path, {}),
        "pairs": (list(zip(docs, labels, strict=True)), {}),
        "dicts": ([{"body": d, "src": lab} for d, lab in zip(docs, labels, strict=True)],
                  {"text_column": "body", "label_column": "src"}),
        "dataset": (datasets.Dataset.from_dict({"text": docs, "src": labels}), {"label_column": "src"}),
        "streaming": (datasets.IterableDataset.from_generator(lambda: ({"text": d, "src": lab} for d, lab in
                      zip(docs, labels, strict=True))), {"label_column": "src"}),
        "generator": ((d for d in docs), {}),
    }  # fmt: skip
    for name, (data, extra) in forms.items():
        got = corpus.collect(model, data, **kw, **extra)
        for t in base.table_names:
            if t != "moe_label_load":
                assert got.table(t).equals(base.table(t)), (name, t)
        label_rows = got.table("moe_label_load").num_rows
        assert label_rows == (2 * 8 if extra or name == "pairs" else 0), name
        if label_rows:  # the label loads add up to the load
            per = got.to_pandas("moe_label_load").groupby("expert")["load"].sum()
            assert per.tolist() == base.to_pandas("moe_experts")["load"].tolist()
    capped = corpus.collect(model, forms["streaming"][0], max_docs=4, **kw)
    assert capped.manifest["documents"] == 4


def test_bad_input_is_refused_clearly(model, docs):
    with pytest.raises(ValueError, match="empty"):
        corpus.collect(model, [], progress=False)
    with pytest.raises(ValueError, match="empty"):
        corpus.collect(model, iter([]), progress=False)
    with pytest.raises(ValueError, match="no text"):
        corpus.collect(model, ["", "  \n"], progress=False)
    with pytest.raises(TypeError, match="HookedNemotronH"):
        corpus.collect(model.hf_model, docs, progress=False)
    with pytest.raises(ValueError, match="seq_len"):
        corpus.collect(model, docs, seq_len=1, progress=False)
    with pytest.raises(ValueError, match="unknown layer type"):
        corpus.collect(model, docs, kinds=["moe", "ssm2"], progress=False)
    with pytest.raises(ValueError, match="mlp"):
        corpus.collect(model, docs, kinds="mlp", progress=False)
    with pytest.raises(FileNotFoundError, match="wrap it in a list"):
        corpus.collect(model, "no such file.txt", progress=False)
    with pytest.raises(ValueError, match="no 'body' field"):
        corpus.collect(model, [{"text": "a"}], text_column="body", progress=False)
    with pytest.raises(TypeError, match="items must be"):
        corpus.collect(model, [3], progress=False)


def test_memory_stays_bounded(model, docs):
    """Partials do not grow with the text; the contexts are top_k per unit at most."""
    from nemo_explore.corpus.driver import ShardRunner, resolve_kinds

    settings = {"seq_len": SEQ, "batch_size": 4, "top_k": K, "window": W}
    runner = ShardRunner(model, resolve_kinds(model, None), settings)

    class Bar:
        def update(self, n): ...
        def count_tokens(self, n): ...
        def settle(self): ...

    sizes = []
    for n in (2, 8):
        parts, meta = runner.run(0, 0, [(d, None) for d in (docs * 4)[:n]], Bar())
        sizes.append({f"{k}/{a}": v.shape for k, p in parts.items() for a, v in p.items()})
        for p in parts.values():
            assert max(Counter(p["ctx.key"].tolist()).values()) <= K
    assert sizes[0] == sizes[1]


def test_result_accessors(model, result, tmp_path):
    blocks, units, m = result.matrix("moe", "load")
    assert blocks == model.layers("moe") and units == list(range(8))
    assert m.sum() == 2 * result.manifest["tokens"]  # top-2 routing
    assert result.blocks("M") == model.layers("mamba")
    b, u, std = result.matrix("mamba", "norm_std")
    assert std.shape == (len(b), 8) and np.isfinite(std).all()
    with pytest.raises(KeyError, match="mean_weight"):
        result.matrix("moe", "nope")
    html = result._repr_html_()
    assert "<script" not in html and "moe_experts" in html and "CorpusResult" in repr(result)
    assert set(result.manifest) >= {"model", "data", "settings", "versions", "tokens", "documents", "shards",
                                    "timings", "rows", "definitions", "horizon_bins"}  # fmt: skip


def test_token_classes_are_the_rule_of_tiny_metrics(model):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parents[1] / "scripts"))
    import tiny_metrics

    assert tiny_metrics.token_classes is corpus.token_classes and tiny_metrics.CLASSES == corpus.CLASSES
    classes = corpus.token_classes(model.tokenizer)
    special = set(model.tokenizer.all_special_ids)
    for i in [*range(0, len(model.tokenizer), 97), *special]:  # the rule, restated
        s = model.tokenizer.decode([i], clean_up_tokenization_spaces=False)
        t = s.lstrip()
        want = 5 if i in special else 0 if not t else 3 if t[0].isdigit() else 4
        if i not in special and t[:1].isalpha():
            want = 1 if t != s or t[0].isupper() else 2
        if i not in special and t == s and t[:1] == "'" and t[1:2].islower():
            want = 2
        assert classes[i] == want, (i, s)


@pytest.mark.parametrize(
    ("text", "special", "kind"),
    [
        ("<s>", True, "special"),  # a special token is not punctuation
        ("<s>", False, "punct"),  # the same text, not the tokenizer's special token
        ("In", False, "word start"),  # a capitalised word at the start of a text
        (" the", False, "word start"),
        ("\nThe", False, "word start"),  # after a newline
        ("ats", False, "word piece"),
        ("'s", False, "word piece"),  # a clitic
        ("'The", False, "punct"),  # an opening quote, not a clitic
        (" ", False, "space"),
        ("\n\n", False, "space"),
        ("4", False, "digit"),
        (" 198", False, "digit"),
        (",", False, "punct"),
        (" --", False, "punct"),
    ],
)
def test_token_class_rule(text, special, kind):
    assert corpus.CLASSES[corpus.text.token_class(text, special)] == kind


def test_tiny_tokenizer_classes(model):
    """On the tiny checkpoint's tokenizer: its special tokens have their own class, capitalised words start
    words, and every class is used."""
    tok = model.tokenizer
    classes = corpus.token_classes(tok)
    assert {corpus.CLASSES[int(classes[i])] for i in tok.all_special_ids} == {"special"}
    ids = tok("In 1984, 42 cats", add_special_tokens=False)["input_ids"]
    names = [corpus.CLASSES[int(classes[i])] for i in ids]
    assert names == ["word start", "digit", "digit", "punct", "digit", "digit", "word start", "word piece"], [
        tok.decode([i]) for i in ids
    ]
    assert set(classes.tolist()) == set(range(len(corpus.CLASSES)))


def test_shard_files_are_whole(tmp_path, model, docs):
    out = tmp_path / "s"
    corpus.collect(model, docs[:3], out=out, shard_docs=2, seq_len=SEQ, progress=False)
    parts, meta = store.read_shard(store.shard_path(out, 1))
    assert meta["shard"] == 1 and meta["items"] == 1 and set(parts) == {"moe", "mamba", "attention"}
    assert not list(out.glob("**/*.tmp"))
