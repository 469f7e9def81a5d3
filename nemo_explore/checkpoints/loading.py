"""``load``: the bundled tiny checkpoint, a hub id, a local directory, or an HF model already in memory.

Always the native transformers class, never remote code: a legacy config that names custom code
(``auto_map``) or says ``hybrid_override_pattern`` / ``attention_head_dim`` is read into a native
``NemotronHConfig`` (transformers renames legacy ``backbone.*`` weights itself). Safetensors only,
unless ``allow_pickle=True``.
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path
from typing import Any

import torch

from ..core.dtypes import as_dtype
from ..model import HookedNemotronH
from .describe import MemoryWarning
from .sources import TINY, CheckpointError, read_config, resolve, weight_files

__all__ = ["TINY", "CheckpointError", "MemoryWarning", "announce_memory", "load", "read_config"]


def load(
    source: Any = TINY,
    *,
    dtype: torch.dtype | str | None = None,
    device: str | torch.device | None = None,
    device_map: str | dict | None = None,
    tokenizer: Any = None,
    allow_pickle: bool = False,
    revision: str | None = None,
    ungroup_grouped_query_attention: bool = False,
    **from_pretrained_kwargs: Any,
) -> HookedNemotronH:
    """Load a Nemotron-H model with hook points.

    ``source``: ``"tiny"`` (bundled, offline), a hub id (``"nvidia/Nemotron-H-8B-Base-8K"``; resolved
    through the normal HF cache, so ``HF_HUB_OFFLINE=1`` works for cached models), a local checkpoint
    directory, or a ``NemotronHForCausalLM`` already built. ``dtype`` (``torch.bfloat16``, ``"bfloat16"``,
    ``"bf16"``, ``"fp16"``...: ``dtypes.as_dtype``),
    ``device`` and ``device_map`` (accelerate: ``"auto"``, ``{"model.layers.0": 0, ...}``) go to transformers;
    a CUDA device that this torch build or machine lacks is refused (``ValueError``) before anything loads.
    ``tokenizer``: a tokenizer to use instead of the checkpoint's own. ``ungroup_grouped_query_attention``:
    TransformerLens' option (``model.set_ungroup_grouped_query_attention``): ``hook_k`` / ``hook_v`` carry a
    copy of the KV head per query head.
    """
    model = _load(
        source, dtype, device, device_map, tokenizer, allow_pickle, revision, from_pretrained_kwargs
    )
    if ungroup_grouped_query_attention:
        model.set_ungroup_grouped_query_attention(True)
    return model


def _load(source, dtype, device, device_map, tokenizer, allow_pickle, revision, from_pretrained_kwargs):
    """``load`` less its switches on the built model."""
    quiet_cpu_kernel_advice()
    if isinstance(source, torch.nn.Module):
        check_devices(device, None)
        model = source
        if dtype is not None:
            model = model.to(dtype=as_dtype(dtype))
        if device is not None:
            model = model.to(device)
        return HookedNemotronH(model, tokenizer)
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(
            f"load() takes 'tiny', a hub id, a directory or an HF model, not {type(source).__name__}"
        )

    check_devices(device, device_map)
    where = resolve(str(source), revision)
    config = read_config(where)
    files = weight_files(where)
    if not any(f.endswith(".safetensors") for f in files):
        if not files:
            raise CheckpointError(f"{where} has no weights (*.safetensors or *.bin)")
        if not allow_pickle:
            raise CheckpointError(
                f"{where} holds only pickle weights ({', '.join(sorted(files)[:3])}); "
                "pickle can run code when loaded. Convert them to safetensors, "
                "or pass allow_pickle=True if you trust the source."
            )
    from transformers import NemotronHForCausalLM

    announce_memory(config, dtype, device, device_map)
    kwargs = dict(config=config, trust_remote_code=False, use_safetensors=not allow_pickle or None)
    if dtype is not None:
        kwargs["dtype"] = as_dtype(dtype)
    if device_map is not None:
        kwargs["device_map"] = device_map
    elif device is not None:
        kwargs["device_map"] = {"": torch.device(device)}
    kwargs.update(from_pretrained_kwargs)
    from transformers.utils import logging as hf_logging

    quiet = source == TINY and hf_logging.is_progress_bar_enabled()  # a 1 s load needs no progress bar
    if quiet:
        hf_logging.disable_progress_bar()
    try:
        model = NemotronHForCausalLM.from_pretrained(str(where), **kwargs)
    finally:
        if quiet:
            hf_logging.enable_progress_bar()
    return HookedNemotronH(model, tokenizer if tokenizer is not None else _tokenizer(where))


# Where transformers logs its kernel advice, and the words that tell it from the logger's other messages.
# tests/test_kernel_advice.py runs a real CPU forward and fails when transformers changes either.
KERNEL_LOGGER = "transformers.integrations.hub_kernels"
KERNEL_ADVICE = "falling back to its reference PyTorch"


class _CpuKernelAdvice(logging.Filter):
    """Drops transformers' "`...` is falling back to its reference PyTorch implementation because
    `mamba-ssm` is not installed" (logged at the first forward) on machines without CUDA: those kernels are
    CUDA-only, so the advice cannot be followed there, and in a notebook it prints as an error-coloured
    stderr box. Where CUDA is available the message stays."""

    def filter(self, record: logging.LogRecord) -> bool:
        return torch.cuda.is_available() or KERNEL_ADVICE not in record.getMessage()


def quiet_cpu_kernel_advice() -> None:
    """Install :class:`_CpuKernelAdvice` on transformers' kernel logger (once)."""
    logger = logging.getLogger(KERNEL_LOGGER)
    if not any(isinstance(f, _CpuKernelAdvice) for f in logger.filters):
        logger.addFilter(_CpuKernelAdvice())


def announce_memory(config, dtype, device, device_map) -> None:
    """Before any weight loads: refuse a dtype the device cannot run, warn when the weights may not fit."""
    from .describe import describe

    target = torch.device(device) if device is not None else None
    on_gpu = (target is not None and target.type == "cuda") or (
        device_map is not None and torch.cuda.is_available()
    )
    stored = config.dtype if isinstance(config.dtype, torch.dtype) else torch.float32
    dt = as_dtype(dtype) if dtype is not None else stored
    if on_gpu and dt == torch.bfloat16 and not torch.cuda.is_bf16_supported():
        raise CheckpointError(
            f"{torch.cuda.get_device_name()} cannot run bfloat16; "
            "load with dtype=torch.float16 or torch.float32"
        )
    if not on_gpu and dt == torch.float16:
        warnings.warn("float16 on the CPU is slow and loses range; prefer bfloat16 or float32", stacklevel=3)
    if device_map == "auto":
        return  # accelerate spreads the weights over every device and offloads the rest
    have = _free_memory(target if on_gpu else torch.device("cpu"))
    message = describe(config).fits(have, dt) if have else None
    if message:
        warnings.warn(message, MemoryWarning, stacklevel=3)


_PLACEMENTS = ("auto", "balanced", "balanced_low_0", "sequential")  # device_map strategies, not devices


def check_devices(device, device_map) -> None:
    """Before anything loads: refuse a CUDA device (``device``, or a ``device_map`` entry) that this
    torch build or this machine does not have, saying what to do instead (torch would fail later
    with a bare ``AssertionError: Torch not compiled with CUDA enabled``)."""
    asked = [("device", device)] if device is not None else []
    if isinstance(device_map, dict):
        asked += [(f"device_map[{key!r}]", value) for key, value in device_map.items()]
    elif device_map is not None and not (isinstance(device_map, str) and device_map in _PLACEMENTS):
        asked.append(("device_map", device_map))
    for what, value in asked:
        problem = _missing_cuda(value)
        if problem:
            raise ValueError(f"{what}={value!r} asks for a CUDA GPU, but {problem}")


def _missing_cuda(value) -> str | None:
    """Why the CUDA device ``value`` names cannot be used here, or None (also for non-CUDA devices)."""
    if isinstance(value, int) and not isinstance(value, bool):  # an accelerator index, as accelerate reads it
        if not torch.cuda.is_available() and _other_accelerator():
            return None
        index = value
    else:
        try:
            dev = torch.device(value)
        except (RuntimeError, TypeError, ValueError):
            return None  # not a device name (e.g. "disk"): transformers / accelerate say what they accept
        if dev.type != "cuda":
            return None
        index = dev.index or 0
    cpu_instead = "Load on the CPU instead (device='cpu', or no device / device_map)"
    if not torch.backends.cuda.is_built():
        return (
            f"this torch ({torch.__version__}) is a CPU-only build. {cpu_instead}, or run where there is an "
            "NVIDIA GPU with a CUDA build of torch (https://pytorch.org/get-started/locally/)."
        )
    count = torch.cuda.device_count()
    if count == 0:
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        hidden = f" (CUDA_VISIBLE_DEVICES={visible!r})" if visible is not None else ""
        return (
            f"torch {torch.__version__} sees no CUDA device on this machine{hidden}. {cpu_instead}, or check "
            "the GPU driver (nvidia-smi)."
        )
    if index >= count:
        return f"this machine has {count} CUDA device(s): use cuda:0 .. cuda:{count - 1}."
    return None


def _other_accelerator() -> bool:
    """Whether torch has a non-CUDA accelerator (xpu, mps, ...) that an integer device index may mean."""
    accelerator = getattr(torch, "accelerator", None)
    if accelerator is None or not accelerator.is_available():
        return False
    current = accelerator.current_accelerator()
    return current is not None and current.type != "cuda"


def _free_memory(device: torch.device) -> int | None:
    """Free bytes on a CUDA device, or available RAM for the CPU (None where it cannot be read)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _tokenizer(where: Path):
    if not any((Path(where) / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json")):
        return None
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(where), trust_remote_code=False)
