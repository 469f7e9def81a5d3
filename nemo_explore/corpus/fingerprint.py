"""A cheap fingerprint of a model's weights: part of a corpus run's identity (``driver.model_summary``).

Every state-dict tensor (parameters and persistent buffers, in order) adds its name, dtype, shape and bytes
to one SHA-256: the whole tensor up to ``WHOLE`` elements, else about ``SAMPLE`` elements at an odd stride
spread over all of it. So any change to a small tensor (norms, routers, biases, A_log) is seen, and so is
any change that touches more than a handful of a big tensor's elements (fine-tuning, another checkpoint);
a single-element edit of a big matrix can go unseen. The bytes are the values as the model computes with
them, so the fingerprint is the same on CPU and CUDA and with accelerate's offload, and differs by dtype.
"""

from __future__ import annotations

import hashlib

import torch

from ..mirror import hf_layout

WHOLE = 1 << 20  # tensors of at most this many elements are hashed whole
SAMPLE = 1 << 16  # of bigger ones, about this many elements


def weights_fingerprint(model: torch.nn.Module) -> str:
    """16 hex digits of SHA-256 over a bounded sample of every state-dict tensor of ``model``."""
    digest = hashlib.sha256()
    with torch.no_grad():
        for name, tensor in model.state_dict(keep_vars=True).items():
            flat = _values(model, name, tensor).detach().reshape(-1)
            if flat.numel() > WHOLE:
                flat = flat[:: flat.numel() // SAMPLE | 1]
            flat = flat.to(dtype=tensor.dtype)  # accelerate casts an offloaded value to the parameter's dtype
            digest.update(f"{name} {tensor.dtype} {tuple(tensor.shape)}\n".encode())
            digest.update(flat.contiguous().cpu().view(torch.uint8).numpy().tobytes())  # bf16: no numpy dtype
    return digest.hexdigest()[:16]


def _values(model: torch.nn.Module, name: str, tensor: torch.Tensor) -> torch.Tensor:
    """The tensor's values; for one on the meta device, the copy an accelerate offload hook keeps."""
    if not tensor.is_meta:
        return tensor
    offloaded = hf_layout.offloaded_value(model, name)
    if offloaded is not None:
        return offloaded
    raise ValueError(
        f"{name} is on the meta device and no accelerate offload hook holds its values: the weights are not "
        "loaded, so they can be neither run nor fingerprinted"
    )
