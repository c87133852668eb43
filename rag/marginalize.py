"""Marginalisation over retrieved documents for RAG-Sequence and RAG-Token.

Pure tensor maths after Lewis et al. 2020, "Retrieval-Augmented Generation for
Knowledge-Intensive NLP Tasks". Notation used in every docstring:

- ``K``: number of retrieved documents z_1..z_K,
- ``T``: number of (possibly padded) answer tokens y_1..y_T,
- ``V``: vocabulary size,
- ``C``: number of candidate answers, ``B``: number of beams,
- ``doc_logprobs``: the document log-posterior log p(z_k | x), shape ``(K,)``
  (e.g. ``log_softmax(scores / temperature)``),
- ``token_logprobs[k, i]``: log p(y_i | x, z_k, y_<i).

RAG-Sequence uses one document for the whole answer::

    p(y|x) = sum_k p(z_k|x) prod_i p(y_i | x, z_k, y_<i)

RAG-Token may use a different document for every token; the document
distribution is the prior p(z|x) at every step::

    p(y|x) = prod_i sum_k p(z_k|x) p(y_i | x, z_k, y_<i)

Everything is computed in log space with ``logsumexp``. Masked positions
(``mask == False``) contribute exactly nothing, even if their log-probabilities
are ``-inf`` or garbage, because they are removed with ``torch.where`` rather
than by multiplication (``0 * -inf`` is ``nan``).

All functions accept extra leading batch dimensions (candidates ``C`` or beams
``B``) and broadcast ``doc_logprobs`` and ``mask`` against them.
"""

from __future__ import annotations

import torch

__all__ = [
    "rag_sequence_logprob",
    "rag_sequence_fast_logprob",
    "rag_sequence_doc_posterior",
    "rag_token_next_logprobs",
    "rag_token_sequence_logprob",
    "token_contributions",
]


def _masked_token_logprobs(token_logprobs: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Zero the masked positions of ``token_logprobs``.

    Args:
        token_logprobs: ``(..., K, T)``.
        mask: ``(..., T)`` bool (or 0/1), broadcastable against the batch dims; ``None`` keeps all.

    Returns:
        ``(..., K, T)`` with masked positions set to ``0.0``.
    """
    if mask is None:
        return token_logprobs
    if mask.shape[-1] != token_logprobs.shape[-1]:
        raise ValueError(
            f"mask has {mask.shape[-1]} positions but token_logprobs has {token_logprobs.shape[-1]}; "
            "pass a mask of shape (..., T) matching token_logprobs (..., K, T)."
        )
    keep = mask.to(torch.bool).unsqueeze(-2)  # (..., 1, T)
    return torch.where(keep, token_logprobs, 0.0)


def _check_docs(token_logprobs: torch.Tensor, doc_logprobs: torch.Tensor, doc_axis: int) -> None:
    if doc_logprobs.shape[-1] != token_logprobs.shape[doc_axis]:
        raise ValueError(
            f"doc_logprobs has {doc_logprobs.shape[-1]} documents but the document axis of the "
            f"log-probabilities has {token_logprobs.shape[doc_axis]}; they must both be K."
        )


def rag_sequence_logprob(
    token_logprobs: torch.Tensor,
    doc_logprobs: torch.Tensor,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """RAG-Sequence marginal ``log p(y|x) = logsumexp_k [log p(z_k|x) + sum_i log p(y_i|x,z_k,y_<i)]``.

    Args:
        token_logprobs: ``(K, T)`` for one candidate, or ``(C, K, T)`` for ``C`` candidates.
        doc_logprobs: ``(K,)`` log p(z|x), or ``(C, K)``.
        mask: ``(T,)`` or ``(C, T)``, True where the candidate has a real token; ``None`` = all real.

    Returns:
        ``()`` for one candidate, ``(C,)`` for a batch.
    """
    _check_docs(token_logprobs, doc_logprobs, -2)
    per_doc = _masked_token_logprobs(token_logprobs, mask).sum(-1)  # (..., K)
    return torch.logsumexp(doc_logprobs + per_doc, dim=-1)


def rag_sequence_fast_logprob(
    token_logprobs: torch.Tensor,
    doc_logprobs: torch.Tensor,
    generated_by: torch.Tensor,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """RAG-Sequence "Fast Decoding" marginal: documents that did not produce a candidate count as p=0.

    ``log p(y|x) ~= logsumexp_{k : y in beam(k)} [log p(z_k|x) + sum_i log p(y_i|x,z_k,y_<i)]``.
    Only the entries with ``generated_by`` True are read, so the others may hold anything
    (the per-document generation scores are all that fast decoding has).

    Args:
        token_logprobs: ``(K, T)`` or ``(C, K, T)``.
        doc_logprobs: ``(K,)`` or ``(C, K)``.
        generated_by: ``(K,)`` or ``(C, K)`` bool, True where document k generated the candidate.
        mask: ``(T,)`` or ``(C, T)``.

    Returns:
        ``()`` or ``(C,)``; ``-inf`` for a candidate that no document generated.
    """
    _check_docs(token_logprobs, doc_logprobs, -2)
    per_doc = _masked_token_logprobs(token_logprobs, mask).sum(-1)  # (..., K)
    joint = doc_logprobs + per_doc
    return torch.logsumexp(torch.where(generated_by.to(torch.bool), joint, float("-inf")), dim=-1)


def rag_sequence_doc_posterior(
    token_logprobs: torch.Tensor,
    doc_logprobs: torch.Tensor,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Document posterior given the answer under RAG-Sequence, ``p(z_k | x, y)``.

    ``p(z_k|x,y) = p(z_k|x) p(y|x,z_k) / sum_j p(z_j|x) p(y|x,z_j)`` — the citation weights of a
    RAG-Sequence answer.

    Args:
        token_logprobs: ``(K, T)`` or ``(C, K, T)``.
        doc_logprobs: ``(K,)`` or ``(C, K)``.
        mask: ``(T,)`` or ``(C, T)``.

    Returns:
        ``(K,)`` or ``(C, K)`` probabilities summing to 1 over the last axis.
    """
    _check_docs(token_logprobs, doc_logprobs, -2)
    per_doc = _masked_token_logprobs(token_logprobs, mask).sum(-1)  # (..., K)
    return torch.softmax(doc_logprobs + per_doc, dim=-1)


def rag_token_next_logprobs(next_token_logprobs: torch.Tensor, doc_logprobs: torch.Tensor) -> torch.Tensor:
    """RAG-Token next-token distribution ``log sum_k p(z_k|x) p(.|x, z_k, y_<i)``.

    Args:
        next_token_logprobs: ``(K, V)`` log p(.|x,z_k,y_<i) (log-softmaxed), or ``(B, K, V)`` for beams.
        doc_logprobs: ``(K,)`` or per-beam ``(B, K)`` document log-posterior.

    Returns:
        ``(V,)`` or ``(B, V)`` log-probabilities (they sum to 1 in probability space when
        ``doc_logprobs`` and every row of ``next_token_logprobs`` are normalised).
    """
    _check_docs(next_token_logprobs, doc_logprobs, -2)
    return torch.logsumexp(doc_logprobs.unsqueeze(-1) + next_token_logprobs, dim=-2)


def rag_token_sequence_logprob(
    token_logprobs: torch.Tensor,
    doc_logprobs: torch.Tensor,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """RAG-Token sequence log-probability ``sum_i logsumexp_k [log p(z_k|x) + log p(y_i|x,z_k,y_<i)]``.

    Args:
        token_logprobs: ``(K, T)`` or ``(C, K, T)``.
        doc_logprobs: ``(K,)`` or ``(C, K)``.
        mask: ``(T,)`` or ``(C, T)``.

    Returns:
        ``()`` or ``(C,)``.
    """
    _check_docs(token_logprobs, doc_logprobs, -2)
    per_token = torch.logsumexp(doc_logprobs.unsqueeze(-1) + token_logprobs, dim=-2)  # (..., T)
    if mask is not None:
        per_token = torch.where(mask.to(torch.bool), per_token, 0.0)
    return per_token.sum(-1)


def token_contributions(
    token_logprobs: torch.Tensor,
    doc_logprobs: torch.Tensor,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """How much each document contributed to a RAG-Token answer (citation weights).

    For each token i the chosen token's mixed probability ``sum_k p(z_k|x) p(y_i|x,z_k,y_<i)``
    is split into per-document shares
    ``w_ki = p(z_k|x) p(y_i|...,z_k) / sum_j p(z_j|x) p(y_i|...,z_j)`` (the per-token document
    posterior); the result averages ``w_ki`` over the unmasked tokens. With no unmasked token
    the prior ``p(z|x)`` is returned.

    Args:
        token_logprobs: ``(K, T)`` or ``(C, K, T)``.
        doc_logprobs: ``(K,)`` or ``(C, K)``.
        mask: ``(T,)`` or ``(C, T)``.

    Returns:
        ``(K,)`` or ``(C, K)`` non-negative weights summing to 1 over the document axis.
    """
    _check_docs(token_logprobs, doc_logprobs, -2)
    shares = torch.softmax(doc_logprobs.unsqueeze(-1) + token_logprobs, dim=-2)  # (..., K, T)
    if mask is None:
        mask = torch.ones(token_logprobs.shape[-1], dtype=torch.bool, device=token_logprobs.device)
    keep = mask.to(torch.bool).unsqueeze(-2)  # (..., 1, T)
    total = torch.where(keep, shares, 0.0).sum(-1)  # (..., K)
    count = keep.sum(-1).to(shares.dtype)  # (..., 1)
    prior = torch.exp(doc_logprobs).expand_as(total)
    return torch.where(count > 0, total / count.clamp(min=1), prior)
