"""Which transformers releases the instrumented forwards were verified against, and the error for drift.

The mixer forwards in ``mixers/`` mirror HF's private Nemotron-H code; a release can change that code.
``OLDEST_VERIFIED`` .. ``NEWEST_VERIFIED`` is the range whose whole test suite passed (CI runs both
ends); ``guard.py`` checks the installed release at run time, wherever it lies.
"""

from __future__ import annotations

OLDEST_VERIFIED = "5.21.0"
NEWEST_VERIFIED = "5.24.0"


class MirrorError(RuntimeError):
    """nemo_explore's instrumented forwards no longer mirror the installed transformers."""


def installed() -> str:
    import transformers

    return transformers.__version__


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
        "risk: nemo_explore.guard.accept_risk() or NEMO_EXPLORE_ACCEPT_DRIFT=1."
    )
