"""HF's Nemotron-H layout is read in one folder, ``nemo_explore/mirror/``.

The package's source is parsed (``ast``: code only, docstrings and comments are free to name HF's
attributes) for the names of HF's modules and parameters (``.mixer``, ``.norm_f``, ``.A_log``, ``q_proj``...)
and accelerate's offload hook: as an attribute read (``x.mixer``), as the name given to ``getattr`` /
``hasattr`` / ``setattr``, or inside a string that is a dotted module path (``"model.layers.3.mixer"``).
Outside ``mirror/`` (``hf_layout.py``, the one reader every other module asks, and the code that mirrors HF's
forward, releases and parameter layout) no module may do so. Then each accessor is checked against the
module it names on a random model.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import torch
from models import random_model

import nemo_explore
from nemo_explore.core.layer_types import ATTENTION, MAMBA, MLP, MOE, parse_pattern
from nemo_explore.mirror import hf_layout

PACKAGE = Path(nemo_explore.__file__).resolve().parent

# HF's attribute names: the causal LM and its base model, a block, the four mixers, the RMSNorm;
# accelerate's offload hook.
HF_NAMES = frozenset(
    {
        *("backbone", "embeddings", "layers", "norm_f", "lm_head"),
        *("mixer", "norm", "variance_epsilon"),
        *("A_log", "dt_bias", "D", "conv1d", "in_proj", "out_proj"),
        *("q_proj", "k_proj", "v_proj", "o_proj"),
        *("up_proj", "down_proj", "gate", "experts", "shared_experts", "e_score_correction_bias"),
        *("_hf_hook", "weights_map"),
    }
)
# Names that are also ordinary names of the package's own objects (``self.norm`` of a widget,
# ``model.layers('mamba')``, the key ``f"mixer.{i}"``): as an attribute of ``self`` or a method called, or
# in a string, they are not HF's; ``layers`` in a string is, when a block index follows (``"layers.3"``).
COMMON = frozenset({"layers", "mixer", "norm", "gate", "experts", "D"})

# The mirror folder: hf_layout.py, the one reader of HF's layout the rest of the package asks, and the code
# that re-implements HF's forward (mixers/, instrument.py, guard.py), its releases (versions.py) and its
# parameter layout and loading dtype plan (state_dict.py), which read HF's names by design.
MIRROR = ("mirror/",)

_ATTR_FUNCTIONS = ("getattr", "hasattr", "setattr", "delattr")
_PATH = re.compile(r"^[\w.{}*]+$")  # a string that is a dotted name or path ("{}": an f-string's field)
_BLOCK_PATH = re.compile(r"(?<![\w])layers\.(\d|\{\}|\*)")


def _docstrings(tree: ast.AST) -> set[int]:
    """ids of the docstring constants (module, class, function)."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                found.add(id(body[0].value))
    return found


def _path_names(text: str) -> set[str]:
    """HF's names in a string that is a dotted name or path."""
    if not _PATH.match(text):
        return set()
    found = {w for w in re.split(r"[^\w]+", text) if w in HF_NAMES and w not in COMMON}
    return found | ({"layers"} if _BLOCK_PATH.search(text) else set())


def hf_names_in(source: str) -> list[tuple[int, str]]:
    """``(line, name)`` of every place ``source`` reads one of HF's attribute names."""
    tree = ast.parse(source)
    docstrings = _docstrings(tree)
    called = {id(n.func) for n in ast.walk(tree) if isinstance(n, ast.Call)}
    hits = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr in HF_NAMES:
            owner = node.value.id if isinstance(node.value, ast.Name) else None
            if owner == "hf_layout":  # an accessor: the way to read the layout
                continue
            if not (node.attr in COMMON and (owner == "self" or id(node) in called)):
                hits.append((node.lineno, node.attr))
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and len(node.args) >= 2:
            name = node.args[1]
            if node.func.id in _ATTR_FUNCTIONS and isinstance(name, ast.Constant) and name.value in HF_NAMES:
                hits.append((node.lineno, name.value))
        elif isinstance(node, ast.JoinedStr):
            text = "".join(v.value if isinstance(v, ast.Constant) else "{}" for v in node.values)
            hits += [(node.lineno, w) for w in sorted(_path_names(text))]
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            hits += [(node.lineno, w) for w in sorted(_path_names(node.value))]
    # an f-string's constant parts are visited again on their own: keep each (line, name) once
    return sorted(set(hits))


def _package_files() -> dict[str, Path]:
    return {p.relative_to(PACKAGE).as_posix(): p for p in sorted(PACKAGE.rglob("*.py"))}


def _mirror(rel: str) -> bool:
    return any(rel == m or (m.endswith("/") and rel.startswith(m)) for m in MIRROR)


def test_only_the_mirror_reads_hf_attribute_names():
    offending = {}
    for rel, path in _package_files().items():
        if _mirror(rel):
            continue
        hits = hf_names_in(path.read_text())
        if hits:
            offending[rel] = hits
    assert not offending, (
        "these modules read HF's layout themselves; ask nemo_explore/mirror/hf_layout.py instead (add an "
        f"accessor there if none fits): {offending}"
    )


def test_the_scan_sees_what_it_should():
    """The scanner itself: what counts as reading HF's layout, and what does not."""
    source = '''
"""The docstring may say hf.model.norm_f and mixer.A_log."""
a = hf.model.layers[3].mixer.A_log  # a comment: lm_head
b = getattr(module, "_hf_hook", None)
c = f"model.layers.{i}.mixer.{name}", "model.layers.*.norm", "lm_head"
d = {"dt_bias": 1, "experts.up_proj": 2}
e = self.norm, self.layers, model.layers("mamba"), cache.layers("moe"), f"mixer.{i}", "norm."
f = "A must be negative (A = -exp(A_log)): a message, not a path"
g = "blocks.0.mamba.hook_in_proj", hf_layout.mixer(hf, 0), hf_layout.final_norm(hf)
h = block.mixer.norm, moe.gate, mamba.D
'''
    assert hf_names_in(source) == [
        (3, "A_log"),
        (3, "layers"),
        (3, "mixer"),
        (4, "_hf_hook"),
        (5, "layers"),
        (5, "lm_head"),
        (6, "dt_bias"),
        (6, "up_proj"),
        (10, "D"),
        (10, "gate"),
        (10, "mixer"),
        (10, "norm"),
    ]


# ------------------------------------------------------------------------------------------- accessors
@pytest.fixture(scope="module")
def hf():
    return random_model("M*-EM")


def test_model_accessors_return_hf_modules(hf):
    assert hf_layout.has_layout(hf)
    assert not hf_layout.has_layout(hf.model) and not hf_layout.has_layout(torch.nn.Linear(2, 2))
    assert hf_layout.blocks(hf) is hf.model.layers
    assert len(hf_layout.blocks(hf)) == 5
    for i, layer in enumerate(hf.model.layers):
        assert hf_layout.block(hf, i) is layer
        assert hf_layout.mixer(hf, i) is layer.mixer
        assert hf_layout.block_norm(hf, i) is layer.norm
        assert hf_layout.norm_eps(hf_layout.block_norm(hf, i)) == layer.norm.variance_epsilon
    assert hf_layout.final_norm(hf) is hf.model.norm_f
    assert hf_layout.norm_eps(hf_layout.final_norm(hf)) == hf.model.norm_f.variance_epsilon
    assert hf_layout.embedding(hf) is hf.model.embeddings
    assert hf_layout.unembed(hf) is hf.lm_head
    # what they are for: the forward, rebuilt from the accessors, is the model's own
    ids = torch.tensor([[1, 5, 9, 2, 7]])
    with torch.no_grad():
        x = hf_layout.embedding(hf)(ids)
        for layer in hf_layout.blocks(hf):
            x = layer(x)
        logits = hf_layout.unembed(hf)(hf_layout.final_norm(hf)(x))
        assert torch.equal(logits, hf(input_ids=ids, use_cache=False).logits)


def test_mixer_accessors_return_hf_parameters(hf):
    mamba, attn, mlp, moe = (hf.model.layers[i].mixer for i in (0, 1, 2, 3))
    assert hf_layout.mamba_A_log(mamba) is mamba.A_log
    assert hf_layout.mamba_dt_bias(mamba) is mamba.dt_bias
    assert hf_layout.mamba_D(mamba) is mamba.D
    assert hf_layout.query_proj(attn) is attn.q_proj
    assert hf_layout.key_proj(attn) is attn.k_proj
    assert hf_layout.value_proj(attn) is attn.v_proj
    assert hf_layout.output_proj(attn) is attn.o_proj
    assert hf_layout.attn_head_dim(attn) == attn.head_dim
    assert hf_layout.attn_kv_repeats(attn) == attn.num_key_value_groups > 1  # the test config's GQA
    assert hf_layout.mlp_up(mlp) is mlp.up_proj and hf_layout.mlp_down(mlp) is mlp.down_proj
    assert hf_layout.router(moe) is moe.gate
    assert hf_layout.routed_experts(moe) is moe.experts
    assert hf_layout.shared_expert(moe) is moe.shared_experts
    assert hf_layout.mlp_up(hf_layout.shared_expert(moe)) is moe.shared_experts.up_proj


def test_config_accessors_read_the_hf_fields(hf):
    c = hf.config
    assert hf_layout.block_types(c) is c.layers_block_type
    assert parse_pattern(hf_layout.block_types(c)) == [MAMBA, ATTENTION, MLP, MOE, MAMBA]
    assert hf_layout.n_kv_heads(c) == c.num_key_value_heads
    assert hf_layout.attention_head_dim(c) == hf.model.layers[1].mixer.head_dim
    assert hf_layout.mlp_width(c) == c.intermediate_size == hf.model.layers[2].mixer.up_proj.out_features
    assert hf_layout.mlp_activation(c) == c.mlp_hidden_act
    assert hf_layout.max_positions(c) == c.max_position_embeddings
    assert hf_layout.norm_epsilon(c) == c.layer_norm_epsilon == hf.model.norm_f.variance_epsilon
    assert hf_layout.n_mamba_heads(c) == c.mamba_num_heads == hf.model.layers[0].mixer.A_log.shape[0]
    assert hf_layout.n_experts(c) == c.n_routed_experts == hf.model.layers[3].mixer.gate.weight.shape[0]
    assert hf_layout.experts_per_token(c) == c.num_experts_per_tok
    assert hf_layout.n_experts(object()) is None and hf_layout.experts_per_token(object()) is None


def test_offloaded_value_reads_accelerates_hook():
    """A parameter on the meta device whose value an offload hook keeps (as accelerate's cpu_offload
    leaves it) is found on the owning module's hook; one that no hook holds is None."""
    pytest.importorskip("accelerate")
    from accelerate import cpu_offload

    net = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Linear(2, 2))
    kept = {k: v.clone() for k, v in net.state_dict().items()}
    cpu_offload(net, execution_device=torch.device("cpu"))
    assert net[0].weight.is_meta
    for name, value in kept.items():
        assert torch.equal(hf_layout.offloaded_value(net, name), value)
    assert hf_layout.offloaded_value(torch.nn.Linear(2, 2), "weight") is None
