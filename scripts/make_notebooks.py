"""Write the user-facing notebooks in notebooks/ (stored without outputs; CI runs them top to bottom).

python scripts/make_notebooks.py
"""

from __future__ import annotations

from pathlib import Path

import nbformat as nbf

OUT = Path(__file__).resolve().parent.parent / "notebooks"


def notebook(cells: list[tuple[str, str]]) -> nbf.NotebookNode:
    nb = nbf.v4.new_notebook()
    nb.cells = [
        nbf.v4.new_markdown_cell(src.strip()) if kind == "md" else nbf.v4.new_code_cell(src.strip())
        for kind, src in cells
    ]
    for k, cell in enumerate(nb.cells):
        cell.id = f"cell-{k:02d}"  # stable ids: regenerating a notebook changes only what changed
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    return nb


QUICKSTART = [
    (
        "md",
        """
# nemo-explore quickstart

Load the bundled tiny Nemotron-H (trained, offline), list its hook points, cache a run, look at every kind of
layer with the widgets, and write a hook point to see what changes.""",
    ),
    (
        "code",
        """
import torch

import nemo_explore as ne

model = ne.load("tiny")
model""",
    ),
    (
        "md",
        "A model shows its description. `describe` gives the same before loading anything (registry names, "
        "directories, hub ids), offline:",
    ),
    ("code", 'ne.describe("nvidia/Nemotron-H-8B-Base-8K")'),
    (
        "md",
        """
Every block has the residual-stream points, plus the points of its own kind: `attn.*` for attention,
`mamba.*` for Mamba-2, `moe.*` for MoE, `mlp.*` for MLP.""",
    ),
    (
        "code",
        """
print(model.layer_types)
model.hook_names(layer_type="attention")""",
    ),
    (
        "code",
        """
text = "The little cat sat on the mat. The little cat sat on the mat."
logits, cache = model.run_with_cache(text)
attn = model.layers("attention")[0]
mamba = model.layers("mamba")[0]
print(cache.str_tokens[:12])
print(cache[f"blocks.{attn}.attn.hook_pattern"].shape, cache[f"blocks.{mamba}.mamba.hook_state_norm"].shape)""",
    ),
    ("md", "A cache shows what it holds, block by block:"),
    ("code", "cache"),
    (
        "md",
        """
## Widgets
Attention heads and, in the same view, Mamba's implicit ("hidden") attention — switch the layer to compare.
Hidden attention is signed and unnormalised; the view says how it is scaled.""",
    ),
    (
        "code",
        """
from nemo_explore.widgets import AttentionHeads, Explorer, MoERouting, SSMStateNorms

AttentionHeads(cache)""",
    ),
    ("code", "SSMStateNorms(cache)"),
    ("code", "MoERouting(cache)"),
    ("md", "The explorer ties them together: click a layer in the hybrid layer map, or type a new prompt."),
    ("code", "Explorer(model, text)"),
    (
        "md",
        """
## Writing a point
A hook function gets the tensor and returns a replacement (or None to only look). Here: remove what the
attention layers add to the residual stream. The second copy of the sentence is cheap to predict only while
the attention layer can look back at the first: remove it and the second copy costs about what the first did.""",
    ),
    (
        "code",
        """
ids = model.to_tokens(text)
clean = model(ids, return_type="loss_per_token")[0]
ablated = model.run_with_hooks(
    ids,
    fwd_hooks=[(f"blocks.{i}.hook_mixer_out", lambda out, hook: torch.zeros_like(out)) for i in model.layers("attention")],
    return_type="loss_per_token",
)[0]
half = ids.shape[1] // 2  # <s>, then two copies of the same number of tokens: half = tokens per copy
print(f"first copy: {clean[:half].mean():.2f} nats/token; second copy: {clean[half:].mean():.2f}, "
      f"and {ablated[half:].mean():.2f} with the attention layer's output removed")""",
    ),
]

ATTENTION_VS_SSM = [
    (
        "md",
        """
# What do the attention layers do that the Mamba layers cannot?

Nemotron-H is mostly Mamba-2. Here we take the tiny checkpoint and ask the hybrid question with the analysis
tools: induction (copying a repeated sequence), layer-type ablation, the logit lens across the stack, direct
logit attribution by layer type, and activation patching of attention heads against Mamba heads — on a
sentence of ordinary English said twice, one the model never saw in training.""",
    ),
    (
        "code",
        """
import torch
from IPython.display import Markdown

import nemo_explore as ne
from nemo_explore import analysis
from nemo_explore.widgets import AttentionHeads

torch.set_grad_enabled(False)  # no backward pass in this notebook
model = ne.load("tiny")
# a held-out sentence (checkpoints/tiny/heldout_sentences.txt): the model never saw it in training
sentence = "What if he had written this piece with lyrics, as a song to be sung?"
tokens = model.to_tokens(sentence + " " + sentence)
n = model.to_tokens(sentence).shape[1] - 1  # tokens per copy; the first copy is tokens[:, 1:n + 1]
print(model.pattern, tokens.shape)""",
    ),
    (
        "md",
        """
## Induction: a repeated sentence, and repeated random ids
After the first copy, predicting the second copy needs to look back at what followed the current token last
time. An induction head attends from each token of the second copy to the token after its first occurrence.
First on our sentence, then on random token ids (no meaning to lean on, only the repeat):""",
    ),
    (
        "code",
        """
scores = analysis.induction_scores(model, sentence)
scores.figure()""",
    ),
    ("code", "scores.top(5, 'induction')"),
    (
        "code",
        """
random_scores = analysis.induction_scores(model, seq_len=24, batch=4)
random_scores.top(5, 'induction')""",
    ),
    (
        "md",
        "Attention and Mamba's hidden attention on the same repeated sentence, side by side (switch layers):",
    ),
    (
        "code",
        """
_, cache = model.run_with_cache(tokens)
AttentionHeads(cache, layer=model.layers("attention")[0])""",
    ),
    ("md", "## Ablating each layer type: which tokens get worse?"),
    (
        "code",
        """
first_copy, second_copy = {}, {}  # mean loss change per layer type on each copy's tokens
for kind in ("attention", "mamba", "mlp", "moe"):
    result = analysis.ablate_layers(model, tokens, layer_type=kind, mode="zero")
    first_copy[kind], second_copy[kind] = float(result.delta[0, :n].mean()), float(result.delta[0, n:].mean())
    print(f"{kind:>9}: loss change on the first copy {first_copy[kind]:+.3f}, on the second copy {second_copy[kind]:+.3f}")""",
    ),
    (
        "code",
        """
result = analysis.ablate_layers(model, tokens, layer_type="attention", mode="zero")
result.figure()""",
    ),
    (
        "md",
        "## Logit lens across the hybrid stack\nWhere does the prediction of the repeated half form, and at which kind of layer does it jump?",
    ),
    (
        "code",
        """
lens = analysis.logit_lens(model, tokens)
lens.figure()""",
    ),
    (
        "md",
        """
## Direct logit attribution by layer type
On the second copy's predictions after its first token (the first, " What" after "?", has nothing to copy
from): the numbers printed and the bars drawn are the same mean.""",
    ),
    (
        "code",
        """
dla = analysis.direct_logit_attribution(model, tokens)
copyable = slice(n + 1, None)  # column j predicts token j + 1: the second copy's tokens after its first
dla_second = {k: float(v[0, copyable].mean()) for k, v in dla.per_type.items()}
print({k: round(v, 3) for k, v in dla_second.items()})
dla.figure(positions=copyable)""",
    ),
    (
        "md",
        """
## Activation patching: attention heads vs Mamba heads
Clean: the sentence twice. Corrupted: the same with the first copy's words shuffled round by one. Which heads
carry the answer (the last token, which the first copy predicts)? Both figures share one colour scale, ±100% of
the clean logit difference, so a small effect looks small.""",
    ),
    (
        "code",
        """
clean = tokens.clone()
corrupted = tokens.clone()
corrupted[0, 1:n + 1] = torch.roll(corrupted[0, 1:n + 1], 1)
answer = int(clean[0, -1])
heads = analysis.patch(model, clean[:, :-1], corrupted[:, :-1], points="attn_heads", answer=answer)
mamba_heads = analysis.patch(model, clean[:, :-1], corrupted[:, :-1], points="mamba_heads", answer=answer)
heads.figure()""",
    ),
    ("code", "mamba_heads.figure()"),
    (
        "code",
        """
ranked = sorted(((float(s), layer, h) for row, layer in zip(mamba_heads.scores, mamba_heads.row_layers, strict=True)
                 for h, s in enumerate(row)), reverse=True)
print("Mamba heads that restore the most:", ", ".join(f"block {b} head {h} {s:+.1%}" for s, b, h in ranked[:3]))
print("and the least (negative: patched alone, they move the answer further away):",
      ", ".join(f"block {b} head {h} {s:+.1%}" for s, b, h in ranked[::-1][:3]))""",
    ),
    (
        "md",
        """
Per position: at which query position does each attention head's contribution matter?""",
    ),
    (
        "code",
        """
by_position = analysis.patch(model, clean[:, :-1], corrupted[:, :-1], points="attn_head_positions", answer=answer)
by_position.figure()""",
    ),
    (
        "md",
        """
## State patching
The SSM analogue of activation patching: replace a Mamba layer's recurrent state after a token with the
state another prompt left there, and see what changes downstream.""",
    ),
    (
        "code",
        """
layer = model.layers("mamba")[-1]
t = n  # the state after the first copy's last token
_, donor = model.run_with_cache(corrupted, names_filter=[f"blocks.{layer}.mamba.hook_state"], state_positions=[t])
state = donor[f"blocks.{layer}.mamba.hook_state"]
clean_loss = model(clean, return_type="loss_per_token")[0]
patched_loss = model.run_with_hooks(clean, fwd_hooks=[(f"blocks.{layer}.mamba.hook_state", lambda s, hook: state)],
                                    state_positions=[t], return_type="loss_per_token")[0]
print(f"loss after the patch: clean {clean_loss[t:].mean():.3f}, patched {patched_loss[t:].mean():.3f}")""",
    ),
    (
        "md",
        """
## What this shows on the tiny checkpoint
Each number below is read from the cells above (CPU, float32), on a held-out sentence said twice;
tests/test_notebooks.py checks every claim against them.""",
    ),
    (
        "code",
        """
def head_scores(result, kind):  # every head of the layers of one kind, from an induction result
    rows = [r for r, k in enumerate(result.layer_types) if k == kind]
    return torch.cat([result.induction[r, :result.n_heads[r]] for r in rows])

attn_ind, mamba_ind = head_scores(scores, "attention"), head_scores(scores, "mamba")
rand_ind = head_scores(random_scores, "attention")
restored = heads.scores[0].tolist()  # the one attention layer's heads
order = sorted(range(len(restored)), key=lambda h: -restored[h])
elsewhere = by_position.scores[:, :-1].abs().max()  # any head, any query position but the last
negative = [(s, b, h) for s, b, h in ranked[::-1] if s <= -0.02]  # Mamba heads, most negative first
state_change = float(patched_loss[t:].mean() - clean_loss[t:].mean())
Markdown(f\"\"\"
- **Copying is the attention layer's job.** Its {len(attn_ind)} heads score {attn_ind.min():.2f}–{attn_ind.max():.2f}
  as induction heads on the sentence ({rand_ind.min():.2f}–{rand_ind.max():.2f} on random ids); the best Mamba head
  scores {mamba_ind.max():.2f}. Zeroing the attention layer costs **{second_copy['attention']:+.1f} nats/token on
  the second copy** and {first_copy['attention']:+.2f} on the first, where there is nothing to copy.
- **It cannot copy without the Mamba layers.** Zeroing every Mamba layer costs {second_copy['mamba']:+.1f} nats on
  the second copy (and {first_copy['mamba']:+.1f} on the first: they are most of the model). The attention layer has
  no position embedding, so the previous-token information an induction head keys on has to come from the Mamba
  layers below it (our reading; the ablation shows the dependence).
- **The MLP after the attention layer writes the copy into the logits.** Direct logit attribution on the second
  copy (the mean the figure shows): MLP {dla_second['mlp']:.1f}, attention {dla_second['attention']:.1f}, Mamba and
  MoE about 0 ({dla_second['mamba']:+.2f}, {dla_second['moe']:+.2f}); zeroing the MLP costs
  {second_copy['mlp']:+.1f} nats there.
- **The Mamba state does not carry the first copy.** Patching the last Mamba layer's state after the first copy
  with the corrupted prompt's state changes the second copy's loss by {state_change:+.3f} nats
  ({clean_loss[t:].mean():.3f} → {patched_loss[t:].mean():.3f}).
- **The attention heads carry the answer, at the last position.** Patched alone, each attention head restores
  this share of the answer's logit difference: {', '.join(f'head {h} {restored[h]:.0%}' for h in order)};
  {'all' if elsewhere < 0.005 else 'most'} of it at the final query position (at any other, at most
  {elsewhere:.2%}).
- **No Mamba head carries it.** The most any one restores is {ranked[0][0]:.1%}; the largest effects are negative
  (patched alone, the head moves the logit difference further from the clean one):
  {', '.join(f'block {b} head {h} {s:+.1%}' for s, b, h in negative) or 'none beyond −2%'}.
- The MoE layer plays no part in copying: zeroing it changes the second copy by {second_copy['moe']:+.2f}.
\"\"\")""",
    ),
]

MOE_ROUTING = [
    (
        "md",
        """
# MoE routing

Which tokens go to which expert, how the load spreads, and what happens when we force a route.""",
    ),
    (
        "code",
        """
import torch
from IPython.display import Markdown

import nemo_explore as ne
from nemo_explore.widgets import MoERouting

torch.set_grad_enabled(False)  # no backward pass in this notebook
model = ne.load("tiny")
moe = model.layers("moe")[0]
text = "In 1984, 42 cats and 7 dogs ran 3.5 miles: fast, faster, fastest!"
logits, cache = model.run_with_cache(text, names_filter=lambda n: ".moe." in n)
MoERouting(cache)""",
    ),
    (
        "md",
        """
Which expert does each kind of token prefer? Token classes are the package's one rule
(`ne.corpus.token_classes`, also used by the corpus tables of notebook 06): space, word start (a letter after
whitespace, or a capital letter), word piece (a lower-case letter inside a word), digit, punct, and the
tokenizer's special tokens (`<s>`) in a class of their own. The expert shown is each token's top-1 (its larger
routing weight).""",
    ),
    (
        "code",
        """
from nemo_explore.corpus import CLASSES, token_classes

class_of = token_classes(model.tokenizer)  # token id -> index into CLASSES
ids = model.to_tokens(text)[0]
weights = cache[f"blocks.{moe}.moe.hook_topk_weights"][0]
first = cache[f"blocks.{moe}.moe.hook_topk_indices"][0].gather(1, weights.argmax(-1, keepdim=True))[:, 0]
for tok, i, e in zip(cache.str_tokens, ids.tolist(), first.tolist(), strict=True):
    print(f"{tok!r:>12} {CLASSES[class_of[i]]:>10} -> expert {e}")""",
    ),
    (
        "md",
        """
One sentence is a small sample. Over a few thousand tokens of held-out text (prose the model never saw in
training, shipped with the checkpoint), each expert's favourite class of token and how much more often it
gets that class than the class's share of all tokens (its *lift*):""",
    ),
    (
        "code",
        """
from collections import Counter

from nemo_explore.checkpoints import tiny_path

held = (tiny_path() / "heldout.txt").read_text()[:8000]
held_ids = model.to_tokens(held)[0]

def top1_experts(m):  # each token's top-1 expert (larger routing weight) in model m's MoE layer
    _, c = m.run_with_cache(held_ids[None], names_filter=lambda n: n.startswith(f"blocks.{moe}.moe.hook_topk"))
    w = c[f"blocks.{moe}.moe.hook_topk_weights"][0]
    return c[f"blocks.{moe}.moe.hook_topk_indices"][0].gather(1, w.argmax(-1, keepdim=True))[:, 0].tolist()

top1 = top1_experts(model)
classes = [CLASSES[class_of[i]] for i in held_ids.tolist()]
pairs, base = Counter(zip(top1, classes, strict=True)), Counter(classes)
common = [k for k in CLASSES if base[k] >= 0.02 * len(classes)]  # classes of at least 2% of all tokens
lift = {(e, k): pairs[e, k] / max(sum(pairs[e, c] for c in CLASSES), 1) / (base[k] / len(classes))
        for e in range(model.cfg.n_routed_experts) for k in common}
for e in range(model.cfg.n_routed_experts):
    n_e = sum(pairs[e, k] for k in CLASSES)
    fav = max(common, key=lambda k: lift[e, k])
    print(f"expert {e}: {n_e:5d} tokens, favourite {fav:>10}: {pairs[e, fav] / max(n_e, 1):.0%} of its tokens, "
          f"{lift[e, fav]:.1f}x the base rate")""",
    ),
    (
        "md",
        """
Does training matter? The mutual information between a token's class and its top-1 expert, in bits, for the
trained router and for the same architecture untrained (HF's initialisation, seeded):""",
    ),
    (
        "code",
        """
import math

from transformers import NemotronHForCausalLM


def mutual_information(xs, ys):  # in bits, from the joint counts
    joint, n = Counter(zip(xs, ys, strict=True)), len(xs)
    px, py = Counter(xs), Counter(ys)
    return sum(c / n * math.log2(c * n / (px[x] * py[y])) for (x, y), c in joint.items())

torch.manual_seed(0)
untrained = ne.load(NemotronHForCausalLM(model.config).eval())
mi_trained, mi_untrained = mutual_information(classes, top1), mutual_information(classes, top1_experts(untrained))
best = {k: max(range(model.cfg.n_routed_experts), key=lambda e, k=k: lift[e, k]) for k in ("space", "punct", "word piece")}
Markdown(
    f"On these {len(classes):,} tokens the router sends whitespace to expert {best['space']} "
    f"({lift[best['space'], 'space']:.1f}× its share of all tokens), punctuation to expert {best['punct']} "
    f"({lift[best['punct'], 'punct']:.1f}×) and pieces inside words to expert {best['word piece']} "
    f"({lift[best['word piece'], 'word piece']:.1f}×). Training made the routing class-aware: "
    f"{mi_trained:.2f} bits of mutual information between token class and top-1 expert, against "
    f"{mi_untrained:.2f} for the untrained router."
)""",
    ),
    (
        "md",
        """
## Forcing a route
Writing `hook_topk_indices` sends every token to the experts we name; the weights come from the router's own
scores at those experts, normalised and scaled as the router does.""",
    ),
    (
        "code",
        """
k = cache[f"blocks.{moe}.moe.hook_topk_indices"].shape[-1]
clean = model(ids[None], return_type="loss")
forced_loss = {}
for expert in range(model.cfg.n_routed_experts):
    chosen = [(expert + j) % model.cfg.n_routed_experts for j in range(k)]
    forced_loss[expert] = float(model.run_with_hooks(
        ids[None],
        fwd_hooks=[(f"blocks.{moe}.moe.hook_topk_indices",
                    lambda idx, hook, e=expert: (torch.arange(k) + e).remainder(model.cfg.n_routed_experts).expand_as(idx))],
        return_type="loss",
    ))
    print(f"experts {chosen}: loss {forced_loss[expert]:.3f} (clean {clean:.3f})")
most = max(abs(v - float(clean)) for v in forced_loss.values())
print(f"forcing every token onto {k} other experts changes the loss by at most {most:.3f} nats")""",
    ),
    (
        "md",
        """
In this model the MoE layer sorts tokens more than it changes predictions: its router tells token classes apart,
and yet sending every token to any other pair of experts barely moves the loss.""",
    ),
]

FULL_CHECKPOINTS = [
    (
        "md",
        """
# Full checkpoints

Everything in the other notebooks works on the real models: Nemotron-H 4B/8B/47B/56B, Nemotron Nano 9B/12B v2,
Nemotron 3 Nano 4B, Nemotron 3 Nano 30B-A3B (MoE) and Nemotron 3 Super 120B-A12B. This notebook runs offline
on a CPU: it describes them from the built-in registry and runs a shortened random-weight model of real widths.
The loading code for a GPU machine is at the end.""",
    ),
    (
        "code",
        """
import torch
from IPython.display import HTML

import nemo_explore as ne

rows = []
for name in ne.registry.names():
    d = ne.describe(name)
    cells = [name, d.pattern.count("*"), len(d.layer_types), f"{d.n_params / 1e9:.1f}", f"{d.load_bytes('bfloat16') / 2**30:.1f}"]
    rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
header = "".join(f"<th>{h}</th>" for h in ("checkpoint", "attention layers", "layers", "parameters (B)", "bf16 weights (GiB)"))
HTML(f'<table style="white-space:nowrap"><tr>{header}</tr>{"".join(rows)}</table>')  # a row never wraps""",
    ),
    ("code", "ne.describe('nvidia/Nemotron-H-8B-Base-8K')"),
    ("md", "What will a cache cost? (bf16, batch 1)"),
    (
        "code",
        """
d = ne.describe("nvidia/Nemotron-H-8B-Base-8K")
for tokens in (1024, 4096):
    for hooks in ("residual", "all"):
        print(f"{tokens:>5} tokens, {hooks:>8}: {d.activation_memory(tokens, hooks=hooks) / 2**30:8.1f} GiB")
print(d.fits(80 * 2**30, "bfloat16", seq_len=4096, hooks="all"))""",
    ),
    ("md", "## The 8B widths, shortened to 4 layers, on this CPU (random weights)"),
    (
        "code",
        """
from transformers import NemotronHForCausalLM

cfg = ne.shortened(ne.registry.get("nvidia/Nemotron-H-8B-Base-8K"), 4)
torch.manual_seed(0)
model = ne.load(NemotronHForCausalLM(cfg).eval())
ids = torch.randint(3, cfg.vocab_size, (1, 64))
logits, cache = model.run_with_cache(ids, names_filter=lambda n: n.endswith(("hook_resid_post", "state_norm", "pattern")))
model, {k: tuple(v.shape) for k, v in list(cache.items())[:6]}""",
    ),
    (
        "md",
        """
## On a GPU machine
```python
model = ne.load("nvidia/Nemotron-H-8B-Base-8K", dtype="bfloat16", device="cuda")      # one GPU, ~15 GiB
model = ne.load("nvidia/NVIDIA-Nemotron-3-Super-120B-A12B", dtype="bfloat16", device_map="auto")  # several GPUs
logits, cache = model.run_with_cache(text, names_filter=..., device="cpu", dtype=torch.float32)
```
What changes at scale: load in bf16 (hook values then agree with fp32 within bf16 tolerance); keep big caches on
the CPU (`device="cpu"`: copied asynchronously into pinned memory while the forward runs); attention patterns
and hidden attention are O(p²) per layer — keep the query rows you need with `pattern_window=(start, stop)` and
`hidden_attn_window=`, and the heads with `hidden_attn_heads=`; with `device_map` consecutive blocks may sit on
different GPUs or in host memory, and hooks follow them. Measured timings on an H100 are in the README.""",
    ),
]

TRANSFORMER_LENS = [
    (
        "md",
        """
# Coming from TransformerLens

A classic TransformerLens analysis — induction heads, activation patching, direct logit attribution — written
the TL way and run on the tiny Nemotron-H. Porting it changed two lines: the loader (`ne.load(...)` instead of
`HookedTransformer.from_pretrained(...)`) and `from nemo_explore import utils`. (TL's demos use einops, which is
not a dependency here, so these cells use plain torch.) After each TL step comes its counterpart for the Mamba
and MoE layers, which TL has no words for. The README's "Coming from TransformerLens" lists every idiom.""",
    ),
    (
        "code",
        """
from functools import partial

import plotly.express as px
import plotly.graph_objects as go
import torch

import nemo_explore as ne
from nemo_explore import utils  # was: from transformer_lens import utils

torch.set_grad_enabled(False)
model = ne.load("tiny")  # was: model = HookedTransformer.from_pretrained("gpt2-small")
print(model.cfg.n_layers, model.cfg.d_model, model.cfg.n_heads, model.cfg.d_head, model.cfg.d_vocab)
print(model.pattern, model.layer_types)


def imshow(tensor, **kwargs):
    return px.imshow(utils.to_numpy(tensor), color_continuous_midpoint=0.0, color_continuous_scale="RdBu", **kwargs)

restored = dict(range_color=(-1, 1))  # a patching map's fixed scale: ±100% of the logit difference restored""",
    ),
    (
        "md",
        """
## Induction heads
TL's cell as it is: a names filter on `pattern`, and `hook.layer()` as the row. Only attention blocks have a
pattern, so the other rows stay zero: a `pattern` filter skips the Mamba blocks without a word.""",
    ),
    (
        "code",
        """
seq_len, batch = 24, 4
torch.manual_seed(0)
random_tokens = torch.randint(100, model.cfg.d_vocab, (batch, seq_len))
repeated_tokens = torch.cat([random_tokens, random_tokens], dim=1)
induction_score_store = torch.zeros((model.cfg.n_layers, model.cfg.n_heads), device=model.cfg.device)

def induction_score_hook(pattern, hook):
    induction_stripe = pattern.diagonal(dim1=-2, dim2=-1, offset=1 - seq_len)
    induction_score_store[hook.layer(), :] = induction_stripe.mean(dim=(0, 2))

model.run_with_hooks(repeated_tokens, return_type=None,
                     fwd_hooks=[(lambda name: name.endswith("pattern"), induction_score_hook)])
imshow(induction_score_store, labels={"x": "head", "y": "layer"}, title="Induction score by head")""",
    ),
    (
        "md",
        """
### The Mamba counterpart
A Mamba-2 layer has no attention pattern, but it has an implicit one, `hook_hidden_attn`: the M in
y_t = Σ_s M[t,s]·x_s + D·x_t, signed and unnormalised. Its absolute value normalised per row scores the same
induction stripe. (It is O(p²) per head: on long inputs restrict it with `hidden_attn_heads=` and
`hidden_attn_window=`.)""",
    ),
    (
        "code",
        """
mamba_score_store = torch.zeros((model.cfg.n_layers, model.cfg.mamba_num_heads))

def mamba_induction_hook(hidden_attn, hook):
    weight = hidden_attn.abs()
    weight = weight / weight.sum(-1, keepdim=True).clamp_min(1e-12)  # |M| row-normalised, like a pattern
    mamba_score_store[hook.layer(), :] = weight.diagonal(dim1=-2, dim2=-1, offset=1 - seq_len).mean(dim=(0, 2))

model.run_with_hooks(repeated_tokens, return_type=None,
                     fwd_hooks=[(lambda name: name.endswith("hidden_attn"), mamba_induction_hook)])
print(f"best attention head {induction_score_store.max():.3f}, best Mamba head {mamba_score_store.max():.3f}")
imshow(mamba_score_store, labels={"x": "Mamba head", "y": "layer"}, title="Induction score of Mamba heads (|M| per row)")""",
    ),
    (
        "md",
        """
## Activation patching
Clean: a random sequence, then the start of its repeat, so the next token should be `seq[k]`. Corrupted: the
same, but the first copy has another token at position k. The metric is TL's logit difference between the two
answers; the patching loop is Main_Demo's, over every block (all four kinds: `blocks.i` numbers them all).""",
    ),
    (
        "code",
        """
torch.manual_seed(1)
seq = torch.randint(100, model.cfg.d_vocab, (1, 12))
k = 6
clean_tokens = torch.cat([seq, seq[:, :k]], dim=1)  # the second copy stops before seq[k]: the answer
corrupted_tokens = clean_tokens.clone()
corrupted_tokens[0, k] = 100 + (seq[0, k] - 99) % (model.cfg.d_vocab - 100)  # the first copy says otherwise
answer, wrong = int(clean_tokens[0, k]), int(corrupted_tokens[0, k])

def logits_to_logit_diff(logits, correct_index=answer, incorrect_index=wrong):
    return logits[0, -1, correct_index] - logits[0, -1, incorrect_index]

clean_logits, clean_cache = model.run_with_cache(clean_tokens)
clean_logit_diff = logits_to_logit_diff(clean_logits)
corrupted_logits = model(corrupted_tokens)
corrupted_logit_diff = logits_to_logit_diff(corrupted_logits)
print(f"clean logit diff {clean_logit_diff:.3f}, corrupted {corrupted_logit_diff:.3f}")""",
    ),
    (
        "code",
        """
def residual_stream_patching_hook(resid_pre, hook, position):
    clean_resid_pre = clean_cache[hook.name]
    resid_pre[:, position, :] = clean_resid_pre[:, position, :]
    return resid_pre

num_positions = len(clean_tokens[0])
patching_result = torch.zeros((model.cfg.n_layers, num_positions), device=model.cfg.device)
for layer in range(model.cfg.n_layers):
    for position in range(num_positions):
        temp_hook_fn = partial(residual_stream_patching_hook, position=position)
        patched_logits = model.run_with_hooks(corrupted_tokens, fwd_hooks=[(utils.get_act_name("resid_pre", layer), temp_hook_fn)])
        patched_logit_diff = logits_to_logit_diff(patched_logits)
        patching_result[layer, position] = (patched_logit_diff - corrupted_logit_diff) / (clean_logit_diff - corrupted_logit_diff)

labels = [f"{i}: {tok}" for i, tok in enumerate(model.to_str_tokens(clean_tokens))]
imshow(patching_result, x=labels, y=[f"{i} {t}" for i, t in enumerate(model.layer_types)], **restored,
       labels={"x": "position", "y": "block"}, title="Patching resid_pre: fraction of the logit difference restored")""",
    ),
    (
        "md",
        """
### Attribution patching: one forward and one backward
The map above took one forward per block and position. Attribution patching estimates every entry at once to
first order, (clean − corrupted activation) · ∂metric/∂activation, from a single backward of the corrupted
run: backward hooks (`bwd_hooks`, TL's) catch the gradient at every `resid_pre`. It finds the same cells (the
correlation printed below), each smaller: swapping a whole position's stream moves the logit difference far
from where its first-order estimate holds.""",
    ),
    (
        "code",
        """
resid_names = [utils.get_act_name("resid_pre", layer) for layer in range(model.cfg.n_layers)]
_, corrupted_cache = model.run_with_cache(corrupted_tokens, names_filter=resid_names)
grads = {}
with torch.enable_grad():  # this notebook runs without grad; the backward needs it here
    logits = model.run_with_hooks(corrupted_tokens, bwd_hooks=[(n, lambda g, hook: grads.update({hook.name: g})) for n in resid_names])
    logits_to_logit_diff(logits).backward()
attribution = torch.stack([((clean_cache[n] - corrupted_cache[n]) * grads[n]).sum(-1)[0] for n in resid_names])
attribution = attribution / (clean_logit_diff - corrupted_logit_diff)
agreement = torch.corrcoef(torch.stack([attribution.flatten(), patching_result.flatten()]))[0, 1]
print(f"{num_positions * model.cfg.n_layers} patched forwards vs 1 forward + 1 backward; correlation of the two maps {float(agreement):.2f}")
imshow(attribution, x=labels, y=[f"{i} {t}" for i, t in enumerate(model.layer_types)], **restored,
       labels={"x": "position", "y": "block"}, title="Attribution patching: first-order estimate of the fraction restored, at each block's input")""",
    ),
    (
        "md",
        """
### The Mamba counterpart: state patching
A Mamba layer carries the past in a recurrent state. Writing `hook_state` with the clean run's state after one
position replaces the state the corrupted run carries on from there (the same as re-running HF from that state).
The map keeps the scale of the one above (±100% of the logit difference restored): an automatic range would
stretch effects of a fraction of a percent to full colour.""",
    ),
    (
        "code",
        """
n_pos = num_positions
state_names = [utils.get_act_name("state", layer) for layer in model.layers("mamba")]
_, clean_states = model.run_with_cache(clean_tokens, names_filter=state_names)  # all positions (≤ 64 tokens)

state_result = torch.zeros((len(state_names), n_pos))
for row, name in enumerate(state_names):
    for position in range(n_pos - 1):
        clean_state = clean_states[name][:, position : position + 1]
        patched_logits = model.run_with_hooks(corrupted_tokens, fwd_hooks=[(name, lambda state, hook, clean=clean_state: clean)],
                                              state_positions=[position])
        state_result[row, position] = (logits_to_logit_diff(patched_logits) - corrupted_logit_diff) / (clean_logit_diff - corrupted_logit_diff)
biggest = state_result.abs().argmax()
row, col = divmod(int(biggest), n_pos)
print(f"the largest effect of one state patch: {float(state_result[row, col]):+.2%} ({state_names[row]}, after position {col})")
imshow(state_result, x=labels, y=state_names, **restored, title="Patching one Mamba layer's recurrent state after each position")""",
    ),
    (
        "md",
        """
### The MoE counterpart: routing patching
`hook_topk_indices` is writable: giving the MoE block the clean run's choice of experts at one position forces
that routing (the weights are recomputed from the router's scores).""",
    ),
    (
        "code",
        """
moe = model.layers("moe")[0]
route = utils.get_act_name("topk_indices", moe)
routing_result = torch.zeros(n_pos)
for position in range(n_pos):
    def clean_route(indices, hook, position=position):
        indices[:, position] = clean_cache[hook.name][:, position]
        return indices
    patched_logits = model.run_with_hooks(corrupted_tokens, fwd_hooks=[(route, clean_route)])
    routing_result[position] = (logits_to_logit_diff(patched_logits) - corrupted_logit_diff) / (clean_logit_diff - corrupted_logit_diff)
print("patching the MoE routing at each position:", [round(float(r), 3) for r in routing_result])""",
    ),
    (
        "md",
        """
## Direct logit attribution
TL's `decompose_resid` + `logit_attrs`. The final RMSNorm is applied at the scale the clean run used *with its
weight* (TL folds that weight into `W_U`; here it stays in the norm), so the components sum to the model's own
logit difference — the cell checks it. Each block is one component: `embed`, then `{i}_{kind}_out`.""",
    ),
    (
        "code",
        """
per_layer_residual, labels = clean_cache.decompose_resid(layer=-1, pos_slice=-1, return_labels=True)
per_layer_logit_diffs = clean_cache.logit_attrs(per_layer_residual, answer, incorrect_tokens=wrong, pos_slice=-1)
torch.testing.assert_close(per_layer_logit_diffs.sum(0)[0], clean_logit_diff, rtol=1e-4, atol=1e-4)  # sums to the logit diff
go.Figure(go.Bar(x=labels, y=utils.to_numpy(per_layer_logit_diffs[:, 0])), layout_title_text="Direct logit attribution per component")""",
    ),
    (
        "md",
        """
The logit lens, TL-style: the accumulated residual stream entering each block, through the final norm; the last
entry (`final_post`) is the model's output.""",
    ),
    (
        "code",
        """
accumulated_residual, labels = clean_cache.accumulated_resid(layer=-1, incl_mid=False, pos_slice=-1, return_labels=True)
logit_lens_logit_diffs = clean_cache.logit_attrs(accumulated_residual, answer, incorrect_tokens=wrong, pos_slice=-1)
torch.testing.assert_close(logit_lens_logit_diffs[-1, 0], clean_logit_diff, rtol=1e-4, atol=1e-4)
go.Figure(go.Scatter(x=labels, y=utils.to_numpy(logit_lens_logit_diffs[:, 0])), layout_title_text="Logit lens: logit difference entering each block")""",
    ),
    (
        "md",
        """
Per attention head: `stack_head_results` splits the attention block's output into its heads,
`z[:, :, h] @ W_O[h]`; they sum to the block's term.""",
    ),
    (
        "code",
        """
per_head_residual, labels = clean_cache.stack_head_results(layer=-1, pos_slice=-1, return_labels=True)
per_head_logit_diffs = clean_cache.logit_attrs(per_head_residual, answer, incorrect_tokens=wrong, pos_slice=-1)
attn = model.layers("attention")[0]
torch.testing.assert_close(per_head_logit_diffs.sum(0), per_layer_logit_diffs[1 + attn], rtol=1e-4, atol=1e-4)
dict(zip(labels, [round(float(x), 3) for x in per_head_logit_diffs[:, 0]], strict=True))""",
    ),
    (
        "md",
        """
### The Mamba and MoE counterparts
Mamba heads are not attention heads: their outputs mix in the gated RMSNorm before `out_proj`, so a Mamba layer
is attributed as a whole. An MoE block splits into its routed experts and its shared expert (`hook_routed_out` +
`hook_shared_out` is its output), and the blocks add up by layer type:""",
    ),
    (
        "code",
        """
parts = torch.stack([clean_cache["routed_out", moe][:, -1], clean_cache["shared_out", moe][:, -1]])
moe_split = clean_cache.logit_attrs(parts, answer, incorrect_tokens=wrong, pos_slice=-1)
torch.testing.assert_close(moe_split.sum(0), per_layer_logit_diffs[1 + moe], rtol=1e-4, atol=1e-4)
by_kind = {kind: float(sum(per_layer_logit_diffs[1 + i, 0] for i in model.layers(kind))) for kind in ("mamba", "attention", "mlp", "moe")}
print("routed experts", round(float(moe_split[0, 0]), 3), "shared expert", round(float(moe_split[1, 0]), 3))
print("per layer type:", {k: round(v, 3) for k, v in by_kind.items()}, "embed", round(float(per_layer_logit_diffs[0, 0]), 3))""",
    ),
    (
        "md",
        """
## Circuits: `model.QK` and `model.OV`
TL's circuits, as a `FactoredMatrix` of shape (heads, d_model, d_model) and rank d_head: `QK` = W_Q W_Kᵀ, `OV` =
W_V W_O, with `svd()`, `eigenvalues` and `norm()` computed from the two factors. Their input is the attention
block's `hook_mixer_in` (its RMSNorm's output), not `W_E`: three Mamba and MoE blocks lie between the embedding
and the attention layer, so TL's direct path `W_E @ OV @ W_U` says little here. Read at each position's own
attention input instead: if a head attended to this token, which token would it write most?""",
    ),
    (
        "code",
        """
print(model.OV[attn], "| head 0's QK singular values:", [round(float(s), 1) for s in model.QK[attn, 0].S[:4]])
text = ne.corpus.demo_corpus().read_text()[:4000]  # held-out prose, never trained on
tokens = model.to_tokens(text)[0]
_, ov_cache = model.run_with_cache(text, names_filter=utils.get_act_name("mixer_in", attn))
x = ov_cache["mixer_in", attn][0]  # (positions, d_model): what the attention layer reads
W_U = model.ln_final.weight[:, None] * model.W_U  # the final norm's weight folded in (ranks ignore its scale)
first, top10 = [], []  # per head: share of positions where the token itself ranks first / in the top 10
for h in range(model.cfg.n_heads):
    logits = (x @ model.OV[attn, h]).AB @ W_U  # what head h writes for each token it could attend to
    rank = (logits > logits.gather(1, tokens[:, None])).sum(1)  # that token's own rank among the vocabulary
    first.append(float((rank == 0).float().mean()))
    top10.append(float((rank < 10).float().mean()))
    print(f"head {h}: the token itself first at {first[h]:.1%} of positions, in the top 10 at {top10[h]:.1%}")""",
    ),
    (
        "code",
        """
from IPython.display import Markdown

copiers = [h for h in range(model.cfg.n_heads) if first[h] >= max(first) / 2]  # within a factor 2 of the best
others = [h for h in range(model.cfg.n_heads) if h not in copiers]
pcts = lambda xs, v: " and ".join(f"{v[h]:.1%}" for h in xs)  # noqa: E731
span = lambda xs: f"{min(top10[h] for h in xs):.0%}–{max(top10[h] for h in xs):.0%}"  # noqa: E731
ind = induction_score_store[attn]
Markdown(
    f"On {len(tokens):,} positions of held-out text ({model.cfg.d_vocab:,} tokens in the vocabulary), "
    f"head{'s' * (len(copiers) > 1)} {' and '.join(map(str, copiers))} copy — the token a head reads is the first "
    f"of what it writes at {pcts(copiers, first)} of positions and in its top 10 at {span(copiers)} — while "
    f"head{'s' * (len(others) > 1)} {' and '.join(map(str, others))} do so at {pcts(others, first)} "
    f"(top 10: {span(others)}). All {model.cfg.n_heads} score as induction heads ({ind.min():.2f}–{ind.max():.2f} "
    f"on the random repeat above); {len(copiers)} of them carry the token itself."
)""",
    ),
    (
        "md",
        """
## What differs from TransformerLens
- `hook_k` / `hook_v` carry the key-value heads (grouped-query attention): query head h reads KV head
  `h // (n_heads // n_key_value_heads)`; `blocks[L].attn.W_K` / `W_V` are expanded per query head, `_W_K` / `_W_V`
  are the KV heads.
- The norms' weights are not folded: `hook_mixer_in` and `ln_final.hook_normalized` include them, and
  `apply_ln_to_stack` applies them.
- There is no positional embedding and no `resid_mid`; a block has one norm and one mixer, and its output is
  `hook_mixer_out` (`attn_out` and `mlp_out` both name it).
- `generate` returns token ids unless asked for text (`return_type="str"`, or TL's `"input"`).""",
    ),
]

CORPUS = [
    (
        "md",
        """
# Over a corpus: what do the experts of the tiny checkpoint do?

One prompt shows what one prompt does. The questions about experts, Mamba heads and attention heads are corpus
questions: which tokens does an expert take over thousands of tokens, which experts fire together, which heads
remember far, which attention heads copy. `ne.corpus.collect` streams a corpus through the model and reduces
inside the hooks (memory stays flat however long the corpus), writing Parquet tables a data person opens
directly. Here: the tiny checkpoint's held-out text (about 20,000 tokens of prose it never saw in training).""",
    ),
    (
        "code",
        """
import tempfile

import nemo_explore as ne
from nemo_explore.widgets import CorpusView

model = ne.load("tiny")
out = tempfile.mkdtemp()  # a run resumes from the shards already written here
result = ne.corpus.collect(model, ne.corpus.demo_corpus(), out=out, seq_len=256, batch_size=8, progress=False)
result""",
    ),
    (
        "md",
        """
## Experts
How evenly the load spreads, and which tokens each expert takes: its share of each token class, divided by that
class's share of all routed tokens (1.0 = no preference). The classes are the package's one rule
(`ne.corpus.token_classes`: space, word start, word piece, digit, punct, and the tokenizer's special tokens).""",
    ),
    (
        "code",
        """
from collections import Counter

from IPython.display import Markdown

from nemo_explore.corpus import CLASSES, token_classes

experts = result.to_pandas("moe_experts").set_index("expert")
k = model.cfg.num_experts_per_tok
print(f"each expert takes {experts.share.min():.0%}–{experts.share.max():.0%} of the tokens ({k} experts per token: "
      f"the shares sum to {experts.share.sum():.0%})")
load = result.to_pandas("moe_class_load")
table = load.pivot_table(index="expert", columns="class", values="load")
lift = table.div(table.sum(axis=1), axis=0) / (table.sum(axis=0) / table.values.sum())
lift.round(2)""",
    ),
    (
        "md",
        """
Which experts fire together: the pairs chosen for the same token most often, and that count against what
independent choices at the experts' loads would give (`x_independent`):""",
    ),
    (
        "code",
        """
co = result.to_pandas("moe_coselection").query("expert_a < expert_b")
tokens = result.manifest["tokens"]
co["x_independent"] = co["count"] / (experts.loc[co.expert_a, "load"].values * experts.loc[co.expert_b, "load"].values / tokens)
co = co.sort_values("count", ascending=False)
most, paired = co.iloc[0], co.loc[co.x_independent.idxmax()]
together = int(most.expert_a), int(most.expert_b)
print(f"experts {together[0]} and {together[1]} fire together most often ({int(most['count']):,} tokens); against "
      f"independent choices, experts {int(paired.expert_a)} and {int(paired.expert_b)} pair most ({paired.x_independent:.2f}×)")
co.head(4)""",
    ),
    (
        "md",
        """
The tokens an expert weighs most, in context (the centre token in brackets), for the experts that favour
whitespace and punctuation most. A routing weight is at most the routing scale (`routed_scaling_factor`: an expert
that gets all of a token's normalised score), so an expert's top contexts are the tokens it takes nearly alone,
often tied near that cap: they need not be of the class it favours.""",
    ),
    (
        "code",
        """
def show(kind, block, unit, n=4):
    for c in result.contexts(kind, block, unit)[:n]:
        words = "".join(f"[{t}]" if j == c.centre else t for j, t in enumerate(c.tokens))
        print(f"{c.score:7.3f}  doc {c.doc:3d} pos {c.position:4d}  {words!r}")

moe = model.layers("moe")[0]
class_of = token_classes(model.tokenizer)
cap = model.config.routed_scaling_factor
for cls in ("space", "punct"):
    expert = int(lift[cls].idxmax())
    top = result.contexts("moe", moe, expert)[:4]
    kinds = Counter(CLASSES[class_of[c.token_ids[c.centre]]] for c in top)
    print(f"expert {expert}, the most {cls} ({lift.loc[expert, cls]:.1f}×): its top {len(top)} centre tokens: "
          + ", ".join(f"{k} ×{v}" for k, v in kinds.most_common())
          + f", weights {min(c.score for c in top):.3f}–{max(c.score for c in top):.3f} (cap {cap})")
    show("moe", moe, expert)""",
    ),
    (
        "md",
        """
## Mamba heads and attention heads
Each Mamba head's memory horizon on this text (ln 2 over its mean decay rate, from the step sizes actually
used), and what each attention head does on the corpus's own repeated tokens.""",
    ),
    (
        "code",
        """
heads = result.to_pandas("mamba_heads")
horizons = heads.groupby("block")["mean_rate_horizon"].agg(["min", "max"])
print(horizons.round(1))
attention = result.to_pandas("attention_heads")
attention.round(3)""",
    ),
    (
        "md",
        """
## What this shows
Each number below is read from the tables above (CPU, float32); tests/test_notebooks.py checks every claim
against them.""",
    ),
    (
        "code",
        """
fav = {c: int(lift[c].idxmax()) for c in ("space", "punct", "word piece")}
never = [int(e) for e in lift.index if lift.loc[e, "space"] < 0.01]
widest = (horizons["max"] / horizons["min"]).idxmax()
sink = attention["sink"].idxmax()
Markdown(
    f"On {result.manifest['documents']} documents, {tokens:,} tokens: experts sort tokens by kind — expert "
    f"{fav['space']} takes whitespace at {lift.loc[fav['space'], 'space']:.1f}× its share and expert {fav['punct']} "
    f"punctuation at {lift.loc[fav['punct'], 'punct']:.1f}×, expert {fav['word piece']} pieces inside words at "
    f"{lift.loc[fav['word piece'], 'word piece']:.1f}×, while experts {', '.join(map(str, never[:-1]))} and {never[-1]} "
    f"never take whitespace. Experts {together[0]} and {together[1]} fire together most often. Within every "
    f"Mamba layer the horizons span more than an order of magnitude (block {widest}: "
    f"{horizons.loc[widest, 'min']:.1f} to {horizons.loc[widest, 'max']:.0f} tokens). The {len(attention)} heads of "
    f"the attention layer all copy: {attention.induction.min():.0%}–{attention.induction.max():.0%} of their "
    f"attention goes to the token after an earlier occurrence of the current one, where the text repeats a token; "
    f"head {attention.loc[sink, 'head']} also puts {attention.loc[sink, 'sink']:.0%} on the first token."
)""",
    ),
    (
        "md",
        """
## Browse it
Click a cell: its top contexts, each token shaded by its value (routing weight, state norm, attention).""",
    ),
    ("code", "CorpusView(result)"),
    (
        "md",
        """
## Larger corpora, several processes
The same collection from the command line, on any Nemotron-H checkpoint and a text file or a Hugging Face
dataset; under `torchrun` each process takes every N-th shard and rank 0 merges them exactly (the merged
tables equal a one-process run's):

```bash
torchrun --nproc_per_node 8 -m nemo_explore.corpus collect --model nvidia/NVIDIA-Nemotron-Nano-9B-v2 \\
    --dataset wikitext --config wikitext-103-raw-v1 --split train --streaming \\
    --dtype bfloat16 --device cuda --out stats/
```

`ne.corpus.load("stats/")` reopens the result; an interrupted run resumes from its last complete shard.""",
    ),
]


NOTEBOOKS = {
    "01_quickstart": QUICKSTART,
    "02_attention_vs_ssm": ATTENTION_VS_SSM,
    "03_moe_routing": MOE_ROUTING,
    "04_full_checkpoints": FULL_CHECKPOINTS,
    "05_from_transformer_lens": TRANSFORMER_LENS,
    "06_corpus": CORPUS,
}

if __name__ == "__main__":
    OUT.mkdir(exist_ok=True)
    for name, cells in NOTEBOOKS.items():
        nbf.write(notebook(cells), OUT / f"{name}.ipynb")
        print("wrote", OUT / f"{name}.ipynb")
