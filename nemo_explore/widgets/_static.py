"""Self-contained static HTML: a page that needs no network and no kernel to be viewed.

plotly.js is inlined once per page; circuitsvis is inlined from its local bundle (never its CDN). JSON
placed inside a ``<script>`` block is escaped so that no token text can close the block or open a comment.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

# In JSON text these characters occur only inside strings, where a \\u escape means the same thing.
_SCRIPT_ESCAPES = {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"}

CSS = """
.ne-view { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; font-size: 13px; color: #222; }
.ne-view h2 { font-size: 16px; margin: 12px 0 4px; }
.ne-note { color: #555; margin: 2px 0 6px; line-height: 1.4; }
.ne-warn { background: #fff4e0; border-left: 3px solid #f0a030; padding: 3px 8px; margin: 4px 0; }
.ne-toks { line-height: 1.9; font-family: ui-monospace, "DejaVu Sans Mono", monospace; font-size: 12px;
  max-width: 100%; }
.ne-tok { display: inline-block; border: 1px solid #ddd; border-radius: 3px; padding: 0 2px; margin: 1px;
  line-height: 1.5; white-space: pre-wrap; overflow-wrap: anywhere; max-width: 100%; box-sizing: border-box; }
.ne-legend span.ne-sw { display: inline-block; width: 12px; height: 12px; border-radius: 2px;
  vertical-align: -2px; margin: 0 4px 0 10px; }
.ne-map { display: flex; flex-wrap: wrap; gap: 2px; margin: 4px 0; }
.ne-map div { width: 26px; height: 22px; border-radius: 3px; color: white; font: bold 11px monospace;
  text-align: center; line-height: 22px; }
"""


def script_json(value) -> str:
    """JSON (a value, or JSON text) made safe inside ``<script>``: no ``</script>``, ``<!--`` or ``]]>``."""
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, allow_nan=False)
    for ch, escaped in _SCRIPT_ESCAPES.items():
        text = text.replace(ch, escaped)
    return text


def inline_js(code: str) -> str:
    """A JS bundle made safe to inline: ``</script`` (only in strings or regexes) -> ``<\\/script``."""
    return code.replace("</script", "<\\/script").replace("</SCRIPT", "<\\/SCRIPT")


def _plotly_js() -> str:
    from plotly.offline import get_plotlyjs

    return inline_js(get_plotlyjs())


class Page:
    """A static page built from escaped HTML fragments and plotly figures, rendered by :meth:`render`."""

    def __init__(self, title: str) -> None:
        from ..core.token_text import escape

        self.title = escape(title)
        self.parts: list[str] = []
        self.has_figures = False

    def html(self, fragment: str) -> None:
        """Add HTML the caller has already escaped."""
        self.parts.append(fragment)

    def figure(self, fig) -> None:
        """Add a plotly figure (Figure or FigureWidget), drawn by the inlined plotly.js."""
        import plotly.io as pio

        self.has_figures = True
        div = f"ne-fig-{uuid.uuid4().hex[:12]}"
        spec = script_json(pio.to_json(fig, validate=False))
        self.parts.append(
            f'<div id="{div}" class="ne-fig"></div>\n<script>(function () {{ const f = {spec};\n'
            f'Plotly.newPlot("{div}", f.data, f.layout, {{displaylogo: false, responsive: true}}); }})();'
            "</script>"
        )

    def render(self) -> str:
        head = f"<script>{_plotly_js()}</script>" if self.has_figures else ""
        body = "\n".join(self.parts)
        return (
            '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f"<title>{self.title}</title><style>{CSS}</style>{head}</head>\n"
            f'<body><div class="ne-view"><h2>{self.title}</h2>\n'
            '<p class="ne-note"><i>A static copy of the widget as it was: hover for details; '
            "the controls need the live widget.</i></p>\n"
            f"{body}\n</div></body></html>\n"
        )


def circuitsvis_html(component: str, props: dict) -> str:
    """circuitsvis ``component`` (e.g. ``'AttentionHeads'``) rendered from its local bundle, never the CDN.

    circuitsvis chooses between an inline bundle and unpkg by probing the network at display time; this
    always inlines, so the output is the same online and offline.
    """
    import importlib.util

    spec = importlib.util.find_spec("circuitsvis")
    if spec is None or spec.origin is None:
        raise ImportError("circuitsvis is not installed: pip install 'nemo-explore[widgets]'")
    bundle = Path(spec.origin).parent / "dist" / "cdn" / "iife.js"
    div = f"circuits-vis-{uuid.uuid4().hex[:12]}"
    return (
        f'<div id="{div}" style="margin: 15px 0;"></div>\n<script type="module">\n'
        f"{inline_js(bundle.read_text(encoding='utf-8'))}\n"
        f'CircuitsVis.render("{div}", CircuitsVis.{component}, {script_json(props)});\n</script>'
    )


class StaticHTML:
    """Shows ``html`` as a notebook output (``_repr_html_``); ``str()`` gives the HTML itself."""

    def __init__(self, html: str) -> None:
        self.html = html

    def _repr_html_(self) -> str:
        return self.html

    def __str__(self) -> str:
        return self.html
