"""Jupyter widgets over an ActivationCache (ipywidgets 8 / JupyterLab 4, plotly inside).

``AttentionHeads(cache)``, ``SSMStateNorms(cache)``, ``MoERouting(cache)`` and ``Explorer(model, text)``;
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

from .attention import AttentionHeads
from .explorer import Explorer
from .moe import MoERouting
from .ssm import SSMStateNorms

__all__ = ["AttentionHeads", "Explorer", "MoERouting", "SSMStateNorms"]
