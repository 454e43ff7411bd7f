"""Token log-probabilities and entropy from a causal LM's logits.

Pure functions of tensors. The caller aligns logits with the tokens they predict (logits at
position t predict token t + 1); these functions take already-aligned tensors.

Example::

    >>> logits = torch.zeros(1, 2, 4); tokens = torch.tensor([[0, 3]])
    >>> logprobs_from_logits(logits, tokens)   # uniform over 4 → log(1/4)
    tensor([[-1.3863, -1.3863]])
"""

from __future__ import annotations

import torch
from torch import Tensor


def logprobs_from_logits(logits: Tensor, tokens: Tensor, temperature: float = 1.0) -> Tensor:
    """Log-probability of each chosen token under softmax(logits / temperature).

    log π(y_t) = z_{t,y_t}/τ − logsumexp_v(z_{t,v}/τ). The temperature must be the one used to
    sample, so that these logprobs are those of the sampling distribution (TRL divides the
    logits by the same τ before its logprob forward).

    Computed as a gather minus a logsumexp, in float32, without materialising the full
    log-softmax, which halves peak memory for large vocabularies.

    Args:
        logits: next-token logits aligned with ``tokens``.
        tokens: the token ids whose probability is wanted.
        temperature: τ > 0.

    Returns:
        log π(tokens), float32.

    Shapes: logits (B, T, V), tokens (B, T) → (B, T).
    """
    z = logits.float()
    if temperature != 1.0:
        z = z / temperature
    chosen = torch.gather(z, -1, tokens.long().unsqueeze(-1)).squeeze(-1)
    return chosen - torch.logsumexp(z, dim=-1)


def entropy_from_logits(logits: Tensor, temperature: float = 1.0) -> Tensor:
    """Entropy of softmax(logits / temperature) at each position.

    H_t = logsumexp(z_t) − Σ_v softmax(z_t)_v · z_{t,v}, with z = logits/τ, in float32.

    Shapes: logits (B, T, V) → (B, T).
    """
    z = logits.float()
    if temperature != 1.0:
        z = z / temperature
    p = torch.softmax(z, dim=-1)
    return torch.logsumexp(z, dim=-1) - (p * z).sum(dim=-1)


def logprobs_and_entropy(logits: Tensor, tokens: Tensor, temperature: float = 1.0) -> tuple[Tensor, Tensor]:
    """`logprobs_from_logits` and `entropy_from_logits` together, sharing one logsumexp.

    With L = logsumexp(z): log π(y_t) = z_{y_t} − L and H = L − Σ_v exp(z_v − L)·z_v.

    Shapes: logits (B, T, V), tokens (B, T) → (B, T), (B, T).
    """
    z = logits.float()
    if temperature != 1.0:
        z = z / temperature
    lse = torch.logsumexp(z, dim=-1)
    chosen = torch.gather(z, -1, tokens.long().unsqueeze(-1)).squeeze(-1)
    entropy = lse - (torch.exp(z - lse.unsqueeze(-1)) * z).sum(dim=-1)
    return chosen - lse, entropy
