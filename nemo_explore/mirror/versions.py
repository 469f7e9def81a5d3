"""Which transformers releases the instrumented forwards were verified against, and the error for drift.

The mixer forwards in ``mixers/`` mirror HF's private Nemotron-H code; a release can change that code.
``OLDEST_VERIFIED`` .. ``NEWEST_VERIFIED`` is the range whose whole test suite passed (CI runs both
ends); ``guard.py`` checks the installed release at run time, wherever it lies.
"""

from __future__ import annotations

import inspect

OLDEST_VERIFIED = "5.21.0"
NEWEST_VERIFIED = "5.25.0"


class MirrorError(RuntimeError):
    """nemo_explore's instrumented forwards no longer mirror the installed transformers."""


class MirrorWarning(UserWarning):
    """The installed transformers' Nemotron-H code is not one that was verified (its self-check passed)."""


def installed() -> str:
    import transformers

    return transformers.__version__


def cache_keyword(model) -> str:
    """The keyword a model's forward takes its cache under: ``cache`` (transformers >= 5.24) or
    ``past_key_values`` (earlier), e.g. ``hf(ids, use_cache=True, **{cache_keyword(hf): cache})``."""
    return "cache" if "cache" in inspect.signature(type(model).forward).parameters else "past_key_values"


def drift_error(what: str) -> MirrorError:
    """A ``MirrorError`` saying ``what`` went wrong, which transformers is installed, which was verified,
    and what to do."""
    return MirrorError(
        f"{what}\n"
        f"transformers {installed()} is installed; nemo_explore's hook points inside the mixers were "
        f"verified bit for bit on transformers {OLDEST_VERIFIED} to {NEWEST_VERIFIED}. Its numbers cannot "
        "be trusted here, so nothing ran. What to do: install a verified release "
        f"(pip install 'transformers>={OLDEST_VERIFIED},<={NEWEST_VERIFIED}'), or hook only the residual "
        "stream (hook_embed, blocks.{i}.hook_resid_pre / hook_mixer_in / hook_mixer_out / hook_resid_post, "
        "ln_final.hook_normalized), which does not depend on the mirrored code. To run anyway at your own "
        "risk: nemo_explore.mirror.guard.accept_risk() or NEMO_EXPLORE_ACCEPT_DRIFT=1."
    )


# Releases whose whole test suite failed (scripts/verify_release.py writes them): the guard refuses every
# mirrored hook point on them, with the reason, whatever its self-check says.
REFUSED: dict[str, str] = {
}

# ------------------------------------------------------------------------------- the code that was verified
# HF code each kind's instrumented forward mirrors (the block's call into the mixer included).
MIRRORED = {
    "mamba": (
        "NemotronHBlock.forward",
        "NemotronHMamba2Mixer.forward",
        "causal_conv1d_forward",  # transformers >= 5.25: the conv step and the scan moved out of the forward
        "mamba2_scan_forward",
    ),
    "attention": ("NemotronHBlock.forward", "NemotronHAttention.forward", "eager_attention_forward"),
    "moe": ("NemotronHBlock.forward", "NemotronHMoE.forward", "NemotronHTopkRouter.forward"),
    "mlp": ("NemotronHBlock.forward", "NemotronHMLP.forward"),
}
# kind -> fingerprint of that code -> the releases that ship it; the whole test suite ran on a release of
# each (CI: OLDEST_VERIFIED and NEWEST_VERIFIED). Written by scripts/fingerprint_hf.py.
VERIFIED_CODE: dict[str, dict[str, str]] = {
    'mamba': {
        '9548d4eaf9c4875f': '5.21.0, 5.21.1, 5.22.0, 5.22.1, 5.22.2, 5.23.0',
        '052221846a92a29d': '5.24.0',
        '86d4a28e01f0e324': '5.25.0',
    },
    'attention': {
        'bc468f4c5363517d': '5.21.0, 5.21.1, 5.22.0, 5.22.1, 5.22.2, 5.23.0',
        '7c7cde1aebbfa143': '5.24.0, 5.25.0',
    },
    'moe': {
        'a5eae9b08c5fe96e': '5.21.0, 5.21.1, 5.22.0, 5.22.1, 5.22.2, 5.23.0',
        '2cb11f5c2ceeb3be': '5.24.0, 5.25.0',
    },
    'mlp': {
        'e3e61d6702e42c2c': '5.21.0, 5.21.1, 5.22.0, 5.22.1, 5.22.2, 5.23.0',
        '4f9c335aa62bbf12': '5.24.0, 5.25.0',
    },
}


def code_fingerprints(source: str) -> dict[str, str]:
    """The text of ``modeling_nemotron_h.py`` -> a short hash per kind of the code that kind mirrors
    (``MIRRORED``), blind to comments and layout."""
    import ast
    import hashlib
    import io
    import textwrap
    import tokenize

    lines, defs = source.splitlines(), {}
    for node in ast.parse(source).body:
        members = node.body if isinstance(node, ast.ClassDef) else [node]
        for item in members:
            if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)):
                defs[f"{node.name}.{item.name}" if item is not node else item.name] = item
    skip = {tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT}

    def text(name: str) -> str:
        node = defs.get(name)
        if node is None:
            return f"<{name} missing>"
        start = min([d.lineno for d in node.decorator_list] + [node.lineno])
        code = textwrap.dedent("\n".join(lines[start - 1 : node.end_lineno]))
        tokens = tokenize.generate_tokens(io.StringIO(code).readline)
        return " ".join(t.string for t in tokens if t.type not in skip)

    return {
        kind: hashlib.sha256("\n".join(text(n) for n in names).encode()).hexdigest()[:16]
        for kind, names in MIRRORED.items()
    }
