"""Answer-only LM-head projection, shared by SFT (:mod:`finetune.sft`) and end-to-end RAG training
(:mod:`finetune.rag_e2e`).

A QA example is ~200 prompt tokens and ~6 answer tokens; the usual causal-LM forward projects every
position onto the whole vocabulary, which on a CPU costs as much as a quarter of the model. Here only
the positions that predict a labelled token go through the LM head.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

IGNORE_INDEX = -100


def project_labelled_positions(
    hidden: torch.Tensor, labels: torch.Tensor, head: Callable[[torch.Tensor], torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Logits of the labelled positions only, with the causal shift.

    ``hidden``: ``(N, L, H)`` last hidden states; ``labels``: ``(N, L)``, ``-100`` = not a target;
    ``head``: the LM head, ``(M, H) -> (M, V)``. Position ``t`` predicts ``labels[:, t + 1]``.

    Returns ``(logits, target, mask)``: ``logits`` ``(M, V)`` in float32 for the ``M`` labelled
    positions in row-major order, ``target`` ``(M,)`` their token ids, ``mask`` ``(N, L-1)`` where they are.
    Equal to projecting every position and keeping the labelled ones, at ``M / (N (L-1))`` of the cost.
    """
    target = labels[:, 1:]
    mask = target != IGNORE_INDEX
    logits = head(hidden[:, :-1][mask]).float()
    return logits, target[mask], mask


def causal_lm_parts(model: Any) -> tuple[Any, Any]:
    """``(backbone, lm_head)`` of a causal LM or a PeftModel around one."""
    causal = model.get_base_model() if hasattr(model, "get_base_model") else model
    return getattr(causal, causal.base_model_prefix), causal.get_output_embeddings()


def answer_logits(
    model: Any, input_ids: torch.Tensor, labels: torch.Tensor, **forward_kwargs: Any
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Run the backbone on ``input_ids`` ``(N, L)`` (``forward_kwargs``: ``attention_mask``,
    ``position_ids``) and return :func:`project_labelled_positions` of its last hidden states."""
    backbone, head = causal_lm_parts(model)
    hidden = backbone(input_ids=input_ids, use_cache=False, **forward_kwargs).last_hidden_state
    return project_labelled_positions(hidden, labels, head)
