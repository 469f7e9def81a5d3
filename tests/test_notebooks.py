"""Every notebook in notebooks/ runs top to bottom offline on the tiny checkpoint, and is stored clean."""

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((Path(__file__).parent.parent / "notebooks").glob("*.ipynb"))


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
def test_notebook_runs(path, tmp_path):
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(
        nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}
    )
    client.execute()
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


def test_notebook_02_conclusions_hold():
    """The numbers the last cell of 02_attention_vs_ssm states, recomputed the way its cells compute them."""
    import torch

    import nemo_explore as ne
    from nemo_explore import analysis

    model = ne.load("tiny")
    sentence = "What if he had written this piece with lyrics, as a song to be sung?"
    top = analysis.induction_scores(model, sentence).top(5, "induction")
    assert [t["layer_type"] for t in top[:4]] == ["attention"] * 4 and min(t["score"] for t in top[:4]) > 0.85
    assert top[4]["layer_type"] == "mamba" and top[4]["score"] < 0.05
    random_ids = analysis.induction_scores(model, seq_len=24, batch=4)
    row = random_ids.layers.index(model.layers("attention")[0])
    heads = random_ids.induction[row, : random_ids.n_heads[row]]
    assert float(heads.min()) > 0.95 and float(heads.max()) < 0.975
    tokens = model.to_tokens(sentence + " " + sentence)
    n = model.to_tokens(sentence).shape[1] - 1
    ablate = analysis.ablate_layers
    delta = {k: ablate(model, tokens, layer_type=k, mode="zero").delta[0] for k in ne.LAYER_TYPES}
    assert 4.0 < delta["attention"][n:].mean() < 4.4 and delta["attention"][:n].mean() < 0.2
    assert delta["mamba"][n:].mean() > 8.5 and delta["mamba"][:n].mean() > 4.5
    assert 3.5 < delta["mlp"][n:].mean() < 3.9 and abs(delta["moe"][n:].mean()) < 0.1
    dla = analysis.direct_logit_attribution(model, tokens).per_type
    second = {k: float(v[0, n + 1 :].mean()) for k, v in dla.items()}
    assert 9.4 < second["mlp"] < 9.8 and 1.2 < second["attention"] < 1.45
    assert abs(second["mamba"]) < 0.05 and abs(second["moe"]) < 0.05

    clean, corrupted = tokens.clone(), tokens.clone()
    corrupted[0, 1 : n + 1] = torch.roll(corrupted[0, 1 : n + 1], 1)
    answer = int(clean[0, -1])
    pair = clean[:, :-1], corrupted[:, :-1]
    whole = analysis.patch(model, *pair, "attn_heads", answer=answer).scores[0]
    assert (whole[:2] > 0.35).all() and (whole[:2] < 0.45).all()  # heads 0 and 1: about 40% each
    assert (whole[2:] > 0.05).all() and (whole[2:] < 0.15).all()  # heads 2 and 3: about 10%
    assert analysis.patch(model, *pair, "mamba_heads", answer=answer).scores.max() < 0.02
    by_position = analysis.patch(model, *pair, "attn_head_positions", answer=answer)
    best = by_position.scores.max(dim=1)  # each head's best position: the last query
    assert (best.indices == tokens.shape[1] - 2).all()
    torch.testing.assert_close(best.values, whole, atol=0.01, rtol=0)
    layer, t = model.layers("mamba")[-1], n
    name = f"blocks.{layer}.mamba.hook_state"
    _, donor = model.run_with_cache(corrupted, names_filter=[name], state_positions=[t])
    clean_loss = model(clean, return_type="loss_per_token")[0]
    hooks = [(name, lambda s, hook: donor[name])]
    patched = model.run_with_hooks(clean, hooks, state_positions=[t], return_type="loss_per_token")[0]
    assert abs(float((patched[t:].mean() - clean_loss[t:].mean()).detach())) < 0.01


def test_notebook_01_copying_claim_holds():
    """01's 'Writing a point': the second copy is cheap only while the attention layer can look back."""
    import torch

    import nemo_explore as ne

    model = ne.load("tiny")
    ids = model.to_tokens("The little cat sat on the mat. The little cat sat on the mat.")
    half = ids.shape[1] // 2
    assert model.to_tokens("The little cat sat on the mat.").shape[1] == half + 1  # <s> + one copy
    clean = model(ids, return_type="loss_per_token")[0]
    zero = [
        (f"blocks.{i}.hook_mixer_out", lambda o, hook: torch.zeros_like(o)) for i in model.layers("attention")
    ]
    ablated = model.run_with_hooks(ids, fwd_hooks=zero, return_type="loss_per_token")[0]
    first, second, without = clean[:half].mean(), clean[half:].mean(), ablated[half:].mean()
    assert second < first - 3 and without > first - 1.5, (first, second, without)


def test_notebook_03_routing_claims_hold():
    """03's measured paragraph: each expert's favourite token class on held-out text, recomputed from the
    router's own top-1 choice (HF's gate), and the forced-route losses."""
    import torch

    import nemo_explore as ne
    from nemo_explore.checkpoints import tiny_path

    model = ne.load("tiny")
    moe = model.layers("moe")[0]
    ids = model.to_tokens((tiny_path() / "heldout.txt").read_text()[:8000])
    gate = model.blocks[moe].mixer.gate
    seen = {}
    handle = model.blocks[moe].norm.register_forward_hook(lambda m, i, o: seen.__setitem__("x", o))
    try:
        model(ids)
    finally:
        handle.remove()
    scores = (seen["x"][0].float() @ gate.weight.T.float()).sigmoid()  # p experts
    chosen = (scores + gate.e_score_correction_bias).topk(model.cfg.num_experts_per_tok, dim=-1).indices
    top1 = chosen.gather(1, scores.gather(1, chosen).argmax(-1, keepdim=True))[:, 0]  # the larger weight

    def kind(s: str) -> int:  # 0 space, 1 word start, 2 piece, 3 digit, 4 punct
        t = s.lstrip(" ")
        return (
            0 if not s.strip() else (1 if t != s else 2) if t[:1].isalpha() else 3 if t[:1].isdigit() else 4
        )

    classes = torch.tensor([kind(s) for s in model.to_str_tokens(ids)])
    counts = torch.zeros(model.cfg.n_routed_experts, 5)
    counts.index_put_((top1, classes), torch.ones(len(top1)), accumulate=True)
    lift = counts / counts.sum(1, keepdim=True) / (counts.sum(0) / counts.sum())
    assert 3.4 < lift[2, 0] < 3.8 and 3.1 < lift[7, 4] < 3.5 and 2.2 < lift[5, 2] < 2.6, lift
    text = model.to_tokens("In 1984, 42 cats and 7 dogs ran 3.5 miles: fast, faster, fastest!")
    clean = model(text, return_type="loss")
    for e in range(model.cfg.n_routed_experts):
        forced = (torch.arange(2) + e) % model.cfg.n_routed_experts
        hook = (f"blocks.{moe}.moe.hook_topk_indices", lambda idx, hook, f=forced: f.expand_as(idx))
        assert abs(model.run_with_hooks(text, fwd_hooks=[hook], return_type="loss") - clean) < 0.04


def test_notebook_06_corpus_claims_hold(tmp_path):
    """06's measured paragraph, recomputed from a fresh collection over the demo corpus (each statistic of
    ``collect`` is itself checked against run_with_cache in tests/test_corpus.py)."""
    import nemo_explore as ne

    model = ne.load("tiny")
    result = ne.corpus.collect(model, ne.corpus.demo_corpus(), out=tmp_path, progress=False)
    assert (result.manifest["documents"], result.manifest["tokens"]) == (232, 19667)
    table = result.to_pandas("moe_class_load").pivot_table(index="expert", columns="class", values="load")
    lift = table.div(table.sum(axis=1), axis=0) / (table.sum(axis=0) / table.values.sum())
    assert 2.9 < lift.loc[2, "space"] < 3.3 and 2.4 < lift.loc[7, "punct"] < 2.8, lift
    assert 1.9 < lift.loc[5, "word piece"] < 2.3 and (lift.loc[[1, 4, 5], "space"] < 0.01).all(), lift
    share = result.to_pandas("moe_experts")["share"]
    assert share.between(0.22, 0.28).all(), share
    co = result.to_pandas("moe_coselection").query("expert_a < expert_b")
    top = co.loc[co["count"].idxmax()]
    assert (top.expert_a, top.expert_b) == (1, 7), top
    horizons = result.to_pandas("mamba_heads").groupby("block")["mean_rate_horizon"]
    assert (horizons.max() / horizons.min() > 10).all(), horizons.agg(["min", "max"])
    lo, hi = horizons.min()[2], horizons.max()[2]
    assert 1.2 < lo < 1.4 and 240 < hi < 260, (lo, hi)
    heads = result.to_pandas("attention_heads")
    assert heads["induction"].between(0.62, 0.71).all() and 0.35 < heads.loc[0, "sink"] < 0.39, heads


def test_notebook_05_ov_copying_claim_holds():
    """05's circuits paragraph, recomputed from HF's projection weights (not through FactoredMatrix): the
    token a head reads ranks first among what its OV circuit writes at 18–19% of positions for heads 0-1."""
    import torch

    import nemo_explore as ne

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
            v = mixer.v_proj.weight[(h // rep) * d : (h // rep + 1) * d]  # (d_head, d)
            o = mixer.o_proj.weight[:, h * d : (h + 1) * d]  # (d, d_head)
            logits = x @ v.T @ o.T @ unembed.T
            rank = (logits > logits.gather(1, tokens[:, None])).sum(1)
            first.append(float((rank == 0).float().mean()))
            top10.append(float((rank < 10).float().mean()))
    assert len(tokens) == 1233
    # the paragraph's rounded numbers, with a little room for float32 ties
    assert all(0.17 <= f < 0.2 for f in first[:2]) and all(0.04 <= f < 0.08 for f in first[2:]), first
    assert all(0.5 <= t < 0.55 for t in top10[:2]) and all(0.16 <= t < 0.26 for t in top10[2:]), top10
