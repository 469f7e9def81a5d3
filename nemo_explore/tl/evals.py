"""TransformerLens' ``evals`` for Nemotron-H: ``from nemo_explore import evals``.

``induction_loss(model)``: the mean next-token loss on the second copy of a repeated random sequence, TL's
quick test for in-context copying (an induction mechanism drives it far below the first copy's loss).
"""

from __future__ import annotations

import torch

from ..analysis.induction import repeated_tokens


def induction_loss(
    model,
    tokenizer=None,
    batch_size: int = 4,
    subseq_len: int = 384,
    prepend_bos: bool | None = None,
    seed: int = 0,
) -> torch.Tensor:
    """Mean loss (scalar, float32) on the tokens ``2..L`` of the second copy of ``batch_size`` random
    sequences of ``subseq_len`` distinct ordinary tokens, each said twice (after BOS unless ``prepend_bos``
    is False). The first token of the second copy is left out: nothing before it says the repeat starts.
    ``tokenizer``: accepted for TL's signature; the model's own decides the special tokens."""
    del tokenizer
    tokens, prefix = repeated_tokens(
        model, seq_len=subseq_len, batch=batch_size, seed=seed, bos=prepend_bos is not False
    )
    with torch.no_grad():
        losses = model(tokens, return_type="loss_per_token")  # (b, p-1): entry j predicts token j+1
    return losses[:, prefix + subseq_len :].float().mean()
