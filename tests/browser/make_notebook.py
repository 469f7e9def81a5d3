"""Writes the notebook the browser test runs: every widget on a random model with a character tokenizer.

``python tests/browser/make_notebook.py out.ipynb`` writes it for a manual look in JupyterLab.
A hook interrupts any run of ``STOP_AT`` tokens halfway, as the kernel's ■ would. Each widget gets a CSS class
(``t-attn``, ``t-ssm``, ``t-moe``, ``t-explorer``, ``t-long``: a 600-token input, windowed; ``t-text``:
routing of that input with a split character, quotes and a long space token) the test finds it by; the
Explorer's ``to_html()`` is written to ``explorer_static.html``.
"""

from __future__ import annotations

import sys
from pathlib import Path

from labserver import code_notebook

HERE = Path(__file__).resolve().parent
# "<script>" is token 26: on a tick even when the axis shows every other token
TEXT = 'The cat sat on the "mats" <script>alert(1)</script>\nThe cat sat on the mat. The cat'
DONE = "ALL CELLS DONE"
STOP_AT = 41  # a run of this many tokens is interrupted mid-forward (a hook raises KeyboardInterrupt)


def cells(text: str = TEXT) -> list[str]:
    return [
        f"""import sys, torch
torch.set_num_threads(1)
sys.path.insert(0, {str(HERE)!r})
from demo_model import demo_model
from nemo_explore.widgets import AttentionHeads, Explorer, MoERouting, SSMStateNorms
from nemo_explore.analysis import mean_memory_horizon
model = demo_model()
text = {text!r}
_, cache = model.run_with_cache(text, names_filter=lambda n: n.endswith(
    ("hook_pattern", "hook_hidden_attn", "hook_state_norm", "hook_dt", "hook_router_scores",
     "hook_topk_indices", "hook_topk_weights")))
print(model, len(cache.str_tokens), "tokens")""",
        """attn = AttentionHeads(cache)
attn.add_class("t-attn")
attn""",
        """attn.as_circuitsvis()""",
        """A = {i: -torch.exp(model.blocks[i].mixer.A_log.detach()) for i in cache.layers("mamba")}
horizons = {i: mean_memory_horizon(cache[f"blocks.{i}.mamba.hook_dt"], A[i]) for i in A}
ssm = SSMStateNorms(cache, horizons=horizons)
ssm.add_class("t-ssm")
ssm""",
        """moe = MoERouting(cache)
moe.add_class("t-moe")
moe""",
        f"""def interrupt(tensor, hook):  # as the kernel's ■ would, to a run of {STOP_AT} tokens
    if tensor.shape[1] == {STOP_AT}:
        raise KeyboardInterrupt
model.add_hook("blocks.2.hook_resid_post", interrupt, is_permanent=True)  # other runs reset hooks
explorer = Explorer(model, text)
explorer.add_class("t-explorer")
explorer""",
        """from pathlib import Path
Path("explorer_static.html").write_text(explorer.to_html(), encoding="utf-8")
long_text = "The cat sat on the mat. " * 25
_, long_cache = model.run_with_cache(long_text, names_filter=lambda n: n.endswith("hook_pattern"))
long_view = AttentionHeads(long_cache)
long_view.add_class("t-long")
long_view""",
        """from nemo_explore.cache import ActivationCache
_, routed = model.run_with_cache(long_text, names_filter=lambda n: ".moe.hook_" in n)
pieces = list(routed.str_tokens)  # a split character, quotes and a long run of spaces, as a BPE model gives
pieces[1:5] = ["\\\\xe2", "\\\\x80", "\\\\x94", ' "q"']
pieces[10] = " " * 40  # on a tick: the routing map's 256-token window gets one every 5
pieces[20] = "漢字" * 5  # wide glyphs, on a tick
routed = ActivationCache(
    dict(routed), layer_types=routed.layer_types, str_tokens=[pieces], tokens=routed.tokens
)
text_view = MoERouting(routed)
text_view.add_class("t-text")
text_view""",
        f"""print({DONE!r})""",
    ]


def write_notebook(path: Path, text: str = TEXT) -> Path:
    return code_notebook(path, cells(text))


if __name__ == "__main__":
    print(write_notebook(Path(sys.argv[1] if len(sys.argv) > 1 else "widgets_demo.ipynb")))
