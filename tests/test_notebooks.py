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
    top = analysis.induction_scores(model, seq_len=24, batch=4).top(5, "induction")
    assert [t["layer_type"] for t in top[:4]] == ["attention"] * 4 and min(t["score"] for t in top[:4]) > 0.8
    assert top[4]["layer_type"] == "mamba" and top[4]["score"] < 0.05
    tokens, _ = analysis.repeated_tokens(model, seq_len=16, batch=1)
    half = tokens.shape[1] // 2
    ablate = analysis.ablate_layers
    delta = {k: ablate(model, tokens, layer_type=k, mode="zero").delta[0] for k in ne.LAYER_TYPES}
    assert delta["attention"][half:].mean() > 3.5 and delta["attention"][:half].mean() < 0.5
    assert delta["mamba"][half:].mean() > 3.0
    assert abs(delta["moe"][half:].mean()) < 0.1 and 0.3 < delta["mlp"][half:].mean() < 0.7

    clean, corrupted = tokens.clone(), tokens.clone()
    corrupted[0, 1:half] = torch.roll(corrupted[0, 1:half], 1)
    answer = int(clean[0, -1])
    whole = analysis.patch(model, clean[:, :-1], corrupted[:, :-1], "attn_heads", answer=answer).scores
    assert whole.min() > 0.3 and whole.max() < 0.65  # each head alone restores 33-60%
    pair = clean[:, :-1], corrupted[:, :-1]
    by_position = analysis.patch(model, *pair, "attn_head_positions", answer=answer)
    best = by_position.scores.max(dim=1)  # each head's best position: the last query, 28-57%
    assert (best.indices == tokens.shape[1] - 2).all() and best.values.min() > 0.25
    layer, t = model.layers("mamba")[-1], half - 1
    name = f"blocks.{layer}.mamba.hook_state"
    _, donor = model.run_with_cache(corrupted, names_filter=[name], state_positions=[t])
    clean_loss = model(clean, return_type="loss_per_token")[0]
    hooks = [(name, lambda s, hook: donor[name])]
    patched = model.run_with_hooks(clean, hooks, state_positions=[t], return_type="loss_per_token")[0]
    assert abs(float((patched[t:].mean() - clean_loss[t:].mean()).detach())) < 0.01
