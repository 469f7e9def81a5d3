"""``load``: the bundled tiny checkpoint, a hub id, a local directory, or an HF model already in memory.

Always the native transformers class, never remote code: a legacy config that names custom code
(``auto_map``) or says ``hybrid_override_pattern`` / ``attention_head_dim`` is read into a native
``NemotronHConfig`` (transformers renames legacy ``backbone.*`` weights itself). Safetensors only,
unless ``allow_pickle=True``.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import torch

from .model import HookedNemotronH, NotNemotronHError

TINY = "tiny"
# Keys of remote-code configs that the native config spells differently or must not see.
_LEGACY_RENAMES = {"attention_head_dim": "head_dim"}
_DROP = ("auto_map", "architectures", "transformers_version", "_name_or_path")


class CheckpointError(ValueError):
    pass


def load(
    source: Any = TINY,
    *,
    dtype: torch.dtype | str | None = None,
    device: str | torch.device | None = None,
    device_map: str | dict | None = None,
    tokenizer: Any = None,
    allow_pickle: bool = False,
    revision: str | None = None,
    **from_pretrained_kwargs: Any,
) -> HookedNemotronH:
    """Load a Nemotron-H model with hook points.

    ``source``: ``"tiny"`` (bundled, offline), a hub id (``"nvidia/Nemotron-H-8B-Base-8K"``; resolved
    through the normal HF cache, so ``HF_HUB_OFFLINE=1`` works for cached models), a local checkpoint
    directory, or a ``NemotronHForCausalLM`` already built. ``dtype`` (``torch.bfloat16`` or ``"bfloat16"``),
    ``device`` and ``device_map`` (accelerate: ``"auto"``, ``{"model.layers.0": 0, ...}``) go to transformers.
    ``tokenizer``: a tokenizer to use instead of the checkpoint's own.
    """
    if isinstance(source, torch.nn.Module):
        model = source
        if dtype is not None:
            model = model.to(dtype=_dtype(dtype))
        if device is not None:
            model = model.to(device)
        return HookedNemotronH(model, tokenizer)
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(
            f"load() takes 'tiny', a hub id, a directory or an HF model, not {type(source).__name__}"
        )

    where = _resolve(str(source), revision)
    config = read_config(where)
    files = _weight_files(where)
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
        kwargs["dtype"] = _dtype(dtype)
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
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*falling back to its reference PyTorch.*")
            model = NemotronHForCausalLM.from_pretrained(str(where), **kwargs)
    finally:
        if quiet:
            hf_logging.enable_progress_bar()
    return HookedNemotronH(model, tokenizer if tokenizer is not None else _tokenizer(where))


class MemoryWarning(ResourceWarning):
    """The weights may not fit where they are going."""


def announce_memory(config, dtype, device, device_map) -> None:
    """Before any weight loads: refuse a dtype the device cannot run, warn when the weights may not fit."""
    from .describe import describe

    target = torch.device(device) if device is not None else None
    on_gpu = (target is not None and target.type == "cuda") or (
        device_map is not None and torch.cuda.is_available()
    )
    stored = config.dtype if isinstance(config.dtype, torch.dtype) else torch.float32
    dt = _dtype(dtype) if dtype is not None else stored
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


def _free_memory(device: torch.device) -> int | None:
    """Free bytes on a CUDA device, or available RAM for the CPU (None where it cannot be read)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _dtype(dtype: torch.dtype | str) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    value = getattr(torch, str(dtype).replace("torch.", ""), None)
    if not isinstance(value, torch.dtype):
        raise ValueError(f"unknown dtype {dtype!r}: use e.g. torch.bfloat16, 'bfloat16', 'float32'")
    return value


def _resolve(source: str, revision: str | None) -> Path:
    """'tiny' | directory | hub id -> a local directory holding config.json and the weights."""
    if source == TINY:
        from .checkpoints import tiny_path

        return tiny_path()
    path = Path(source).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise CheckpointError(f"{path} is a directory but has no config.json: is it a checkpoint?")
        return path
    if path.exists() or source.count("/") != 1 or source.startswith((".", "/", "~")):
        raise CheckpointError(
            f"{source!r} is neither 'tiny', a checkpoint directory, nor a hub id of the form 'org/name'"
        )
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    patterns = ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja"]
    try:
        return Path(snapshot_download(source, revision=revision, allow_patterns=patterns))
    except LocalEntryNotFoundError as err:
        raise CheckpointError(
            f"{source!r} is not in the local Hugging Face cache and the hub cannot be reached "
            f"(HF_HUB_OFFLINE={os.environ.get('HF_HUB_OFFLINE', '0')}). Download it where there is network "
            "(huggingface-cli download ...) or pass a local directory."
        ) from err


def read_config(where: Path):
    """config.json -> a native NemotronHConfig, legacy spellings mapped, remote code ignored."""
    from transformers import NemotronHConfig

    raw = NemotronHConfig._dict_from_json_file(Path(where) / "config.json")  # decodes Infinity & co
    model_type = raw.get("model_type")
    if model_type != "nemotron_h":
        arch = ", ".join(raw.get("architectures") or []) or "unknown architecture"
        raise NotNemotronHError(
            f"{where} holds a {model_type!r} model ({arch}), not Nemotron-H (model_type 'nemotron_h'); "
            "nemo_explore only instruments Nemotron-H checkpoints."
        )
    cfg = {_LEGACY_RENAMES.get(k, k): v for k, v in raw.items() if k not in _DROP}
    if "layers_block_type" in cfg and "hybrid_override_pattern" in cfg:
        cfg.pop("hybrid_override_pattern")
    if isinstance(cfg.get("layers_block_type"), list):
        from .layer_types import to_hf

        cfg["layers_block_type"] = to_hf(cfg["layers_block_type"])
    return NemotronHConfig.from_dict(cfg)


def _weight_files(where: Path) -> list[str]:
    return [p.name for p in Path(where).iterdir() if p.suffix in (".safetensors", ".bin", ".pt", ".pth")]


def _tokenizer(where: Path):
    if not any((Path(where) / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json")):
        return None
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(where), trust_remote_code=False)
