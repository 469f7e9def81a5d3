"""The CPU kernel advice filter of ``loading.py`` matches what transformers really logs.

The filter tells transformers' "... is falling back to its reference PyTorch implementation ..." from its
kernel logger's other messages by their words. Here a real forward on the CPU makes transformers log the
advice (its once-only cache cleared, its verbosity raised, our filter lifted while it runs): if
transformers moves the message to another logger or rewords it, this test fails and says what it logs now.
"""

from __future__ import annotations

import logging

import pytest
import torch
from models import random_model
from transformers.utils import logging as hf_logging

from nemo_explore.checkpoints.loading import KERNEL_ADVICE, KERNEL_LOGGER, _CpuKernelAdvice


class _Keep(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.mark.skipif(torch.cuda.is_available(), reason="with CUDA the advice is kept, and may not be logged")
def test_the_filter_drops_the_advice_transformers_logs_on_cpu():
    hf = random_model("M*")
    kernel_logger = logging.getLogger(KERNEL_LOGGER)
    everything = logging.getLogger("transformers")  # the advice, wherever transformers moves it
    ours = [f for f in kernel_logger.filters if isinstance(f, _CpuKernelAdvice)]
    keep, verbosity = _Keep(), hf_logging.get_verbosity()
    for f in ours:
        kernel_logger.removeFilter(f)
    everything.addHandler(keep)
    hf_logging.set_verbosity_warning()
    logging.Logger.warning_once.cache_clear()  # transformers logs the advice once per process
    try:
        with torch.no_grad():
            hf(input_ids=torch.tensor([[1, 2, 3, 4]]), use_cache=False)
    finally:
        hf_logging.set_verbosity(verbosity)
        everything.removeHandler(keep)
        for f in ours:
            kernel_logger.addFilter(f)
    logged = [(r.name, r.getMessage()) for r in keep.records]
    advice = [r for r in keep.records if r.name == KERNEL_LOGGER]
    assert advice, (
        f"a CPU forward logged no kernel advice on {KERNEL_LOGGER!r} (all it logged: {logged}): update "
        "KERNEL_LOGGER in nemo_explore/checkpoints/loading.py, or drop the filter if transformers no longer "
        "advises"
    )
    kept = [r.getMessage() for r in advice if _CpuKernelAdvice().filter(r)]
    assert not kept, f"the CPU kernel advice filter misses it (KERNEL_ADVICE = {KERNEL_ADVICE!r}): {kept}"
