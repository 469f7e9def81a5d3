"""Where a model source lives and what its config says: ``"tiny"``, a checkpoint directory or a hub id.

Shared by ``load`` (which then builds the model) and ``describe`` (which only reads the config), so it
imports neither the model nor the loader. Configs are read as data into a native ``NemotronHConfig``:
legacy remote-code spellings (``hybrid_override_pattern``, ``attention_head_dim``, ``auto_map``) are
mapped or dropped, remote code never runs.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["TINY", "CheckpointError", "NotNemotronHError", "cached_config", "read_config", "resolve"]

TINY = "tiny"
# Keys of remote-code configs that the native config spells differently or must not see.
_LEGACY_RENAMES = {"attention_head_dim": "head_dim"}
_DROP = ("auto_map", "architectures", "transformers_version", "_name_or_path")
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


class CheckpointError(ValueError):
    pass


class NotNemotronHError(TypeError):
    pass


def tiny_dir() -> Path:
    """The bundled tiny checkpoint's directory."""
    try:
        from . import tiny_path
    except ImportError:
        raise CheckpointError("this installation has no bundled tiny checkpoint") from None
    return tiny_path()


def is_hub_id(source: str) -> bool:
    """Whether ``source`` has the form of a hub id, 'org/name' (not a relative or absolute path)."""
    return source.count("/") == 1 and not source.startswith((".", "/", "~"))


def resolve(source: str, revision: str | None = None) -> Path:
    """'tiny' | directory | hub id -> a local directory holding config.json and the weights.

    A hub id goes through the normal Hugging Face cache (``HF_HUB_OFFLINE=1`` works for cached models).
    """
    if source == TINY:
        return tiny_dir()
    path = Path(source).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise CheckpointError(f"{path} is a directory but has no config.json: is it a checkpoint?")
        return path
    if path.exists() or not is_hub_id(source):
        raise CheckpointError(
            f"{source!r} is neither 'tiny', a checkpoint directory, nor a hub id of the form 'org/name'"
        )
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    patterns = ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja"]
    try:
        return Path(snapshot_download(source, revision=revision, allow_patterns=patterns))
    except LocalEntryNotFoundError as err:
        command = f"hf download {source}" + (f" --revision {revision}" if revision else "")
        raise CheckpointError(
            f"{source!r} is not in the local Hugging Face cache and the hub cannot be reached "
            f"(HF_HUB_OFFLINE={os.environ.get('HF_HUB_OFFLINE', '0')}). Download it where there is network "
            f"(`{command}`, with the same HF_HOME / HF_HUB_CACHE) or pass a local directory."
        ) from err


def cached_config(repo_id: str, cache_dir: str | os.PathLike | None = None) -> Path | None:
    """The config.json of ``repo_id`` in the local Hugging Face cache, or None; never downloads."""
    from huggingface_hub import try_to_load_from_cache

    try:
        hit = try_to_load_from_cache(repo_id, "config.json", cache_dir=cache_dir)
    except ValueError:  # not a valid repo id
        return None
    return Path(hit) if isinstance(hit, str) else None


def read_config(where: str | os.PathLike):
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
        from ..core.layer_types import to_hf

        cfg["layers_block_type"] = to_hf(cfg["layers_block_type"])
    return NemotronHConfig.from_dict(cfg)


def weight_files(where: str | os.PathLike) -> list[str]:
    """Names of the weight files in a checkpoint directory (safetensors and pickle)."""
    return [p.name for p in Path(where).iterdir() if p.suffix in WEIGHT_SUFFIXES]
