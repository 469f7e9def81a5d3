"""Jupyter widgets over an ActivationCache (ipywidgets 8 / JupyterLab 4, plotly inside).

``AttentionHeads(cache)``, ``SSMStateNorms(cache)``, ``MoERouting(cache)``, ``Explorer(model, text)`` and
``CorpusView(result)`` (over ``nemo_explore.corpus.collect``);
each has ``to_html()``, a self-contained static page of what it shows. Needs the ``widgets`` extra
(``pip install 'nemo-explore[widgets]'``); ``import nemo_explore`` itself does not.
"""

try:
    import ipywidgets  # noqa: F401
    import plotly  # noqa: F401
except ImportError as err:  # pragma: no cover - depends on the environment
    raise ImportError(
        f"nemo_explore.widgets needs ipywidgets and plotly ({err.name} is missing): "
        "pip install 'nemo-explore[widgets]'"
    ) from err

# plotly's widget base, imported here: its first import takes seconds (plotly.io imports nbformat, which
# imports jsonschema and its format checkers), which belongs on the import line, not on the first figure.
from . import _plotly  # noqa: I001
from .attention import AttentionHeads
from .corpus import CorpusView
from .explorer import Explorer
from .moe import MoERouting
from .ssm import SSMStateNorms

_plotly.preload()

__all__ = ["AttentionHeads", "CorpusView", "Explorer", "MoERouting", "SSMStateNorms"]
