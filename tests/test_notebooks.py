"""Every notebook in notebooks/ runs top to bottom offline on the tiny checkpoint, is stored clean, and says
only what it computes.

Each notebook runs once per session (``executed``). For the notebooks whose prose states numbers, rankings or
comparisons, a probe cell runs after the last cell in the same kernel and reports, as JSON, the values the
notebook itself computed (its variables, its figures, what it displayed); the ``test_notebook_*_claims``
tests check every claim of the prose against them. Where the prose is printed by a code cell from those
values, the test checks the claim the sentence makes (a ranking, "about 0", "the largest effects are
negative") still holds, so the generated sentence cannot turn false when the numbers move.
"""

import functools
import json
import math
import re
from pathlib import Path

import nbformat
import numpy as np
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((Path(__file__).parent.parent / "notebooks").glob("*.ipynb"))
MARK = "NOTEBOOK-PROBE "

# Run after a notebook's last cell, in its kernel: ``values`` (plain numbers, strings, lists, dicts), printed
# as JSON after MARK. Each reads the notebook's own variables: nothing here recomputes what it shows.
PROBES = {
    "01_quickstart": """
kinds = ("attention", "mamba", "mlp", "moe")
values = {
    "first": float(clean[:half].mean()), "second": float(clean[half:].mean()),
    "without": float(ablated[half:].mean()), "half": half, "n_ids": ids.shape[1],
    "one_copy": model.to_tokens("The little cat sat on the mat.").shape[1],
    "prefixes": {k: sorted({n.split(".")[2] for n in model.hook_names(layer_type=k) if n.count(".") == 3})
                 for k in kinds},
    "resid": {k: sorted({n.split(".")[2] for n in model.hook_names(layer_type=k) if n.count(".") == 2})
              for k in kinds},
}
""",
    "02_attention_vs_ssm": """
values = {
    "random_title": random_scores.figure().layout.title.text,
    "attn_ind": attn_ind.tolist(), "rand_ind": rand_ind.tolist(), "mamba_ind": mamba_ind.tolist(),
    "first_copy": first_copy, "second_copy": second_copy, "dla_second": dla_second,
    "restored": restored, "best_position": by_position.scores.argmax(1).tolist(),
    "n_positions": by_position.scores.shape[1], "elsewhere": float(elsewhere),
    "mamba_scores": mamba_heads.scores.tolist(), "ranked": ranked, "negative": negative,
    "state": [float(clean_loss[t:].mean()), float(patched_loss[t:].mean())],
    "n": n, "q": dla.per_block.shape[-1],
    "second_starts_new": int(tokens[0, n + 1]) not in tokens[0, 1:n + 1].tolist(),
}
""",
    "03_moe_routing": """
values = {
    "sentence": [[tok, CLASSES[class_of[i]]] for tok, i in zip(cache.str_tokens, ids.tolist(), strict=True)],
    "lift": {f"{e} {c}": x for (e, c), x in lift.items()}, "best": best,
    "mi": [mi_trained, mi_untrained], "clean": float(clean), "forced": list(forced_loss.values()),
    "most": most, "top1": top1, "held_ids": held_ids.tolist(),
}
""",
    "04_full_checkpoints": """
eight = "nvidia/Nemotron-H-8B-Base-8K"
values = {
    "names": ne.registry.names(), "bf16_8b": ne.describe(eight).load_bytes("bfloat16") / 2**30,
    "short_layers": model.n_layers, "short_widths": [cfg.hidden_size, ne.registry.get(eight).hidden_size],
}
""",
    "05_from_transformer_lens": """
values = {
    "layer_types": model.layer_types, "attn": attn, "induction": induction_score_store.tolist(),
    "state_max": float(state_result.abs().max()), "first": first, "top10": top10,
    "copiers": copiers, "others": others, "positions": len(tokens), "vocab": model.cfg.d_vocab,
    "agreement": float(agreement), "attribution": attribution.tolist(), "patched": patching_result.tolist(),
}
""",
    "06_corpus": """
top_contexts = {c: result.contexts("moe", moe, int(lift[c].idxmax()))[:4] for c in ("space", "punct")}
values = {
    "documents": result.manifest["documents"], "tokens": tokens, "share": experts.share.tolist(), "k": k,
    "lift": {c: {int(e): float(x) for e, x in lift[c].items()} for c in lift.columns},
    "fav": fav, "never": never, "together": list(together),
    "co_max": [int(x) for x in co.loc[co["count"].idxmax(), ["expert_a", "expert_b"]]],
    "contexts": {c: [[x.score, CLASSES[class_of[x.token_ids[x.centre]]]] for x in top]
                 for c, top in top_contexts.items()},
    "cap": cap, "horizons": {str(b): [float(r["min"]), float(r["max"])] for b, r in horizons.iterrows()},
    "widest": str(widest), "induction": attention.induction.tolist(), "sink": attention.sink.tolist(),
    "sink_head": int(attention.loc[sink, "head"]),
}
""",
}


@functools.cache
def executed(stem: str) -> tuple[nbformat.NotebookNode, dict | None]:
    """The notebook run top to bottom (once per session), and its probe's values (None without a probe)."""
    path = next(p for p in NOTEBOOKS if p.stem == stem)
    nb = nbformat.read(path, as_version=4)
    if stem in PROBES:
        report = f"\nimport json\nprint({MARK!r} + json.dumps(values))"
        nb.cells.append(nbformat.v4.new_code_cell(PROBES[stem] + report))
    client = NotebookClient(
        nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}
    )
    client.execute()
    if stem not in PROBES:
        return nb, None
    text = "".join(o.get("text", "") for o in nb.cells[-1].outputs if o.get("name") == "stdout")
    return nb, json.loads(text.split(MARK, 1)[1])


def shown(nb: nbformat.NotebookNode, mime: str = "text/markdown") -> list:
    """Everything the notebook displayed as ``mime``, in order."""
    return [o["data"][mime] for c in nb.cells for o in c.get("outputs", []) if mime in o.get("data", {})]


def figure(nb: nbformat.NotebookNode, title: str) -> dict:
    """The one plotly figure the notebook displayed whose title holds ``title`` (as JSON)."""
    found = [f for f in shown(nb, "application/vnd.plotly.v1+json") if title in f["layout"]["title"]["text"]]
    assert len(found) == 1, (title, len(found))
    return found[0]


def test_there_are_notebooks():
    assert len(NOTEBOOKS) >= 4, [p.name for p in NOTEBOOKS]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_stored_without_outputs(path):
    nb = nbformat.read(path, as_version=4)
    assert all(
        not c.get("outputs") and c.get("execution_count") is None for c in nb.cells if c.cell_type == "code"
    )


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs(path):
    nb, _ = executed(path.stem)
    errors = [o for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors, errors[0].get("evalue")
    stderr = [o.get("text", "") for c in nb.cells for o in c.get("outputs", []) if o.get("name") == "stderr"]
    assert not any("Traceback" in s for s in stderr)


def test_notebooks_match_their_generator():
    """notebooks/ is what scripts/make_notebooks.py writes (edit the generator, then run it)."""
    import importlib.util

    script = Path(__file__).parent.parent / "scripts" / "make_notebooks.py"
    spec = importlib.util.spec_from_file_location("make_notebooks", script)
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    for name, cells in gen.NOTEBOOKS.items():
        stored = nbformat.read(gen.OUT / f"{name}.ipynb", as_version=4)
        assert nbformat.writes(gen.notebook(cells)) == nbformat.writes(stored), name


def test_markdown_quotes_no_measurement():
    """No Markdown cell quotes a measured value (a decimal, a percentage, a ratio): those come from code
    cells (a print, a figure, a generated Markdown output), where they cannot go stale. Code is exempt, and
    so are the definitions below."""
    definitions = {"1.0", "100%"}  # "1.0 = no preference" (a lift), "±100%" (a patching map's scale)
    for path in NOTEBOOKS:
        for cell in nbformat.read(path, as_version=4).cells:
            if cell.cell_type == "markdown":
                prose = re.sub(r"```.*?```|`[^`]*`", "", cell.source, flags=re.S)
                measured = set(re.findall(r"\d+\.\d+|\d+(?:\.\d+)?\s?[%×]", prose)) - definitions
                assert not measured, (path.name, measured, cell.source[:200])


@pytest.mark.slow
def test_notebook_01_claims():
    """'Writing a point': the second copy is cheap to predict only while the attention layer can look back;
    without it the second copy costs about what the first did. Every block has the residual points plus
    the points of its own kind."""
    _, v = executed("01_quickstart")
    assert v["n_ids"] == 2 * v["half"] + 1 and v["one_copy"] == v["half"] + 1  # <s> + two equal copies
    assert v["second"] < v["first"] / 2, v  # cheap
    assert abs(v["without"] - v["first"]) < 0.25 * v["first"], v  # about what the first copy cost
    prefix = {"attention": "attn", "mamba": "mamba", "mlp": "mlp", "moe": "moe"}
    assert v["prefixes"] == {k: [p] for k, p in prefix.items()}, v["prefixes"]
    assert all({"hook_resid_pre", "hook_resid_post"} <= set(r) for r in v["resid"].values()), v["resid"]


@pytest.mark.slow
def test_notebook_02_claims():
    """02's prose and its generated summary, against the values its cells computed."""
    nb, v = executed("02_attention_vs_ssm")
    # the induction figure says what was repeated
    title = figure(nb, "Induction score")["layout"]["title"]["text"]
    assert "text said twice" in title and "random" not in title and "random" in v["random_title"], title
    # copying is the attention layer's job: every attention head far above every Mamba head
    attn, rand, mamba = v["attn_ind"], v["rand_ind"], v["mamba_ind"]
    assert len(attn) == 4 and min(attn) > 0.85 and min(rand) > 0.9 and max(mamba) < 0.05, (attn, rand, mamba)
    first, second = v["first_copy"], v["second_copy"]
    assert second["attention"] > 3 and 0 < first["attention"] < 0.2, (first, second)  # nothing to copy
    # it cannot copy without the Mamba layers, which are most of the model
    assert second["mamba"] > second["attention"] and first["mamba"] > 1, (first, second)
    # the MLP writes the copy: the largest term by far; Mamba and MoE about 0; zeroing the MLP costs there
    dla = v["dla_second"]
    assert max(dla, key=dla.get) == "mlp" and dla["mlp"] > 5 * dla["attention"] > 0, dla
    assert abs(dla["mamba"]) < 0.1 and abs(dla["moe"]) < 0.1 and second["mlp"] > 1, (dla, second)
    # the figure shows the quantity the prose quotes (the defect: a mean over all 42 positions)
    shown_dla = figure(nb, "Direct attribution")
    bars = dict(zip(shown_dla["data"][1]["x"], shown_dla["data"][1]["y"], strict=True))  # per layer type
    assert bars.keys() == dla.keys() and all(math.isclose(bars[k], dla[k], abs_tol=1e-5) for k in dla), bars
    n, q = v["n"], v["q"]
    assert v["second_starts_new"]  # "the first [of the second copy] has nothing to copy from"
    assert f"mean over {q - n - 1} positions ({n + 1}–{q - 1})" in shown_dla["layout"]["title"]["text"]
    # the Mamba state does not carry the first copy: a change far below what the attention layer costs
    clean_loss, patched_loss = v["state"]
    assert abs(patched_loss - clean_loss) < 0.02 < second["attention"], v["state"]
    # the attention heads carry the answer, all of it at the final query position
    assert max(v["restored"]) > 0.3 and min(v["restored"]) > 0, v["restored"]
    assert all(p == v["n_positions"] - 1 for p in v["best_position"]) and v["elsewhere"] < 0.005, v
    # no Mamba head carries it; its largest effects are negative, and the prose lists those beyond -2%
    flat = [s for row in v["mamba_scores"] for s in row]
    assert max(flat) < 0.05 and -min(flat) > max(flat), (min(flat), max(flat))
    assert v["negative"] and all(s <= -0.02 for s, _, _ in v["negative"])
    assert sorted(s for s in flat if s <= -0.02) == [s for s, _, _ in v["negative"]]
    # the MoE layer plays no part in copying
    assert abs(second["moe"]) < 0.1, second
    # both head-patching figures share the fixed ±100% scale the prose promises, ticks 50% apart
    for point in ("(attn_heads)", "(mamba_heads)"):
        heat = figure(nb, point)["data"][0]
        assert (heat["zmin"], heat["zmax"]) == (-1, 1), point
        assert len(heat["colorbar"]["tickvals"]) == 5, heat["colorbar"]
    # the logit lens at 42 positions: no cell text, the top-1 token in the hover
    lens = figure(nb, "Logit lens")["data"][0]
    assert len(lens["x"]) == 42 and "texttemplate" not in lens and "top-1" in lens["hovertext"][0][0]
    summary = shown(nb)[-1]  # the generated summary shows the values checked above
    assert f"{second['attention']:+.1f} nats/token" in summary and f"{max(flat):.1%}" in summary, summary


@pytest.mark.slow
def test_notebook_03_claims():
    """03: the token classes, each expert's favourite class on held-out text, training's effect on the
    routing, and the forced-route losses — as the notebook computed them."""
    nb, v = executed("03_moe_routing")
    cls = dict(map(tuple, v["sentence"]))
    assert cls["<s>"] == "special" and cls["In"] == "word start" and cls[" 198"] == "digit", cls
    assert cls["ats"] == "word piece" and cls[","] == "punct" and cls[" "] == "space", cls
    lift, best = v["lift"], v["best"]
    for k in ("space", "punct", "word piece"):  # "sends X to expert e": e takes X at least twice its share
        assert lift[f"{best[k]} {k}"] == max(lift[f"{e} {k}"] for e in range(8)) >= 2, (k, lift)
    trained, untrained = v["mi"]
    assert trained > 5 * untrained, v["mi"]  # "training made the routing class-aware"
    # "barely moves the loss": under 1% of it
    assert v["most"] == max(abs(f - v["clean"]) for f in v["forced"]) < 0.01 * v["clean"], v["forced"]
    assert f"{trained:.2f} bits" in shown(nb)[-1]


@pytest.mark.slow
def test_notebook_03_top1_is_hf_routers_choice():
    """The top-1 expert 03 reads from hook_topk_* is the one HF's own gate gives the larger weight (a check
    outside the hooks: router scores, correction bias, top-k)."""
    import torch

    import nemo_explore as ne

    _, v = executed("03_moe_routing")
    model = ne.load("tiny")
    moe = model.layers("moe")[0]
    gate = model.blocks[moe].mixer.gate
    seen = {}
    handle = model.blocks[moe].norm.register_forward_hook(lambda m, i, o: seen.__setitem__("x", o))
    try:
        with torch.no_grad():
            model(torch.tensor([v["held_ids"]]))
    finally:
        handle.remove()
    scores = (seen["x"][0].float() @ gate.weight.T.float()).sigmoid()
    chosen = (scores + gate.e_score_correction_bias).topk(model.cfg.num_experts_per_tok, dim=-1).indices
    top1 = chosen.gather(1, scores.gather(1, chosen).argmax(-1, keepdim=True))[:, 0]
    assert top1.tolist() == v["top1"]


@pytest.mark.slow
def test_notebook_04_claims():
    """04: the checkpoints the introduction names are in the registry, the 8B's bf16 weights are the ~15 GiB
    its GPU cell says, the shortened model keeps the real widths, and the tables do not wrap a number."""
    nb, v = executed("04_full_checkpoints")
    names = set(v["names"])
    for size in ("4B", "8B", "47B", "56B"):
        assert f"nvidia/Nemotron-H-{size}-Base-8K" in names
    for name in ("Nano-9B-v2", "Nano-12B-v2", "3-Nano-4B", "3-Nano-30B-A3B", "3-Super-120B-A12B"):
        assert f"nvidia/NVIDIA-Nemotron-{name}" in names
    assert round(v["bf16_8b"]) == 15, v["bf16_8b"]
    assert v["short_layers"] == 4 and v["short_widths"][0] == v["short_widths"][1]
    table, described = shown(nb, "text/html")[:2]
    assert table.startswith('<table style="white-space:nowrap">') and table.count("<tr>") == len(names) + 1
    assert '<span style="white-space:nowrap">bfloat16 15.1 GiB</span>' in described  # "GiB" never alone
    assert "32&nbsp;heads" in described
    assert "H100" in (Path(__file__).parents[1] / "README.md").read_text()  # "timings ... in the README"


@pytest.mark.slow
def test_notebook_05_claims():
    """05: only attention rows of the TL induction store fill; three Mamba/MoE blocks precede the attention
    layer; the state map uses the fixed ±1 scale; the OV paragraph's grouping holds."""
    nb, v = executed("05_from_transformer_lens")
    types, attn = v["layer_types"], v["attn"]
    rows = zip(v["induction"], types, strict=True)
    assert all(all(x == 0 for x in row) for row, t in rows if t != "attention"), v["induction"]
    assert attn == 3 and set(types[:attn]) <= {"mamba", "moe"}, types  # "three Mamba and MoE blocks"
    for title in ("recurrent state", "resid_pre"):  # "the map keeps the scale of the one above"
        scale = figure(nb, title)["layout"]["coloraxis"]
        assert (scale["cmin"], scale["cmax"]) == (-1, 1), (title, scale)
    assert v["state_max"] < 0.01, v["state_max"]  # so the map is near white, as it should be
    first, top10, copiers, others = v["first"], v["top10"], v["copiers"], v["others"]
    assert copiers == [0, 1] and others == [2, 3], (first, copiers)
    assert min(first[h] for h in copiers) > 2 * max(first[h] for h in others), first  # copy; the others less
    assert min(top10[h] for h in copiers) > max(top10[h] for h in others), top10
    assert min(v["induction"][attn]) > 0.85  # "all four score as induction heads"
    assert v["positions"] == 1233 and v["vocab"] == 4096
    # attribution patching: the printed correlation is the two maps', and the map uses the same fixed scale
    a, b = np.array(v["attribution"]).ravel(), np.array(v["patched"]).ravel()
    assert v["agreement"] == pytest.approx(float(np.corrcoef(a, b)[0, 1]), abs=1e-6)
    assert v["agreement"] > 0.9  # "the same cells"
    top = b > 0.5 * b.max()  # the cells patching restores: "each smaller" in the estimate
    assert (a[top] < b[top]).all(), (a[top], b[top])
    scale = figure(nb, "Attribution patching")["layout"]["coloraxis"]
    assert (scale["cmin"], scale["cmax"]) == (-1, 1), scale


@pytest.mark.slow
def test_notebook_05_ov_copying_matches_hf_weights():
    """05's circuits numbers, recomputed from HF's projection weights (not through FactoredMatrix)."""
    import torch

    import nemo_explore as ne

    _, v = executed("05_from_transformer_lens")
    model = ne.load("tiny")
    attn = model.layers("attention")[0]
    text = ne.corpus.demo_corpus().read_text()[:4000]
    tokens = model.to_tokens(text)[0]
    with torch.no_grad():
        _, cache = model.run_with_cache(text, names_filter=f"blocks.{attn}.hook_mixer_in")
        x = cache[f"blocks.{attn}.hook_mixer_in"][0]
        mixer, d = model.hf_model.model.layers[attn].mixer, model.cfg.d_head
        rep = model.cfg.n_heads // model.config.num_key_value_heads
        unembed = model.hf_model.lm_head.weight * model.hf_model.model.norm_f.weight  # (vocab, d)
        first, top10 = [], []
        for h in range(model.cfg.n_heads):
            v_w = mixer.v_proj.weight[(h // rep) * d : (h // rep + 1) * d]  # (d_head, d)
            o = mixer.o_proj.weight[:, h * d : (h + 1) * d]  # (d, d_head)
            logits = x @ v_w.T @ o.T @ unembed.T
            rank = (logits > logits.gather(1, tokens[:, None])).sum(1)
            first.append(float((rank == 0).float().mean()))
            top10.append(float((rank < 10).float().mean()))
    assert len(tokens) == v["positions"]
    tie = 3 / len(tokens)  # float32 ties may move a position or two
    assert all(abs(a - b) <= tie for a, b in zip(first + top10, v["first"] + v["top10"], strict=True))


@pytest.mark.slow
def test_notebook_06_claims():
    """06: the corpus paragraph, the co-selection table's order and the top contexts' description."""
    nb, v = executed("06_corpus")
    assert round(v["tokens"], -3) == 20000  # "about 20,000 tokens"
    assert math.isclose(sum(v["share"]), v["k"], rel_tol=1e-9)  # the shares sum to k × 100%
    lift, fav = v["lift"], v["fav"]
    for c in ("space", "punct", "word piece"):  # "expert e takes c at x× its share": the most, and ≥ 2×
        assert lift[c][str(fav[c])] == max(lift[c].values()) >= 2, (c, lift[c])
    assert len(v["never"]) >= 2 and all(lift["space"][str(e)] < 0.01 for e in v["never"])
    # "fire together most often" is the pair of largest count, and the table shown is sorted by that count
    assert v["co_max"] == v["together"], v
    (co_table,) = [t for t in shown(nb, "text/plain") if "x_independent" in t]
    rows = [line.split() for line in co_table.splitlines()[1:]]  # index, block, expert_a, expert_b, count, x
    counts = [int(r[4]) for r in rows]
    assert counts == sorted(counts, reverse=True), co_table
    assert [int(rows[0][2]), int(rows[0][3])] == v["together"], co_table
    # the top contexts sit at the routing cap, and are not of the class their expert favours most
    for top in v["contexts"].values():
        assert all(v["cap"] * 0.99 < score <= v["cap"] + 1e-6 for score, _ in top), top
    assert any(kind != "punct" for _, kind in v["contexts"]["punct"])  # "they need not be of the class"
    horizons = v["horizons"]
    assert all(hi / lo > 10 for lo, hi in horizons.values()), horizons  # "more than an order of magnitude"
    lo, hi = horizons[v["widest"]]
    assert hi / lo == max(b / a for a, b in horizons.values())
    assert min(v["induction"]) > 0.5, v["induction"]  # "all copy"
    assert v["sink"][v["sink_head"]] == max(v["sink"]) > 0.25, v["sink"]  # "also puts x% on the first token"
    assert f"{v['tokens']:,} tokens" in shown(nb)[-1]
