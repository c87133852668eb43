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


def group_ids(prompt_ids: torch.Tensor, prompt_mask: torch.Tensor) -> torch.Tensor:
    """``(B,)`` index of each row's prompt among the distinct prompts of the batch: rows whose (left-padded)
    prompt tokens are equal share an index (an online trainer's group of completions of one prompt)."""
    keyed = prompt_ids.masked_fill(prompt_mask == 0, -1)
    return torch.unique(keyed, dim=0, return_inverse=True)[1]


def online_dpo_loss(
    policy_logps: torch.Tensor,
    ref_logps: torch.Tensor,
    groups: torch.Tensor,
    scores: torch.Tensor,
    beta: float,
    tie: float = 1e-6,
) -> tuple[torch.Tensor, dict[str, float]]:
    """DPO's loss on the best and worst completion of every group of sampled completions (online DPO,
    Guo et al. 2024: the pairs come from the policy being trained, scored as they are sampled).

    Args:
        policy_logps, ref_logps: ``(B,)`` log-probability of each whole completion under the policy and
            the frozen reference.
        groups: ``(B,)`` group index (completions of one prompt), :func:`group_ids`.
        scores: ``(B,)`` the verifier's score of each completion (any per-group increasing transform of
            the reward, such as GRPO's group-normalised advantage, picks the same pair).
        beta: DPO's temperature.
        tie: a group whose best and worst scores differ by at most this gives no pair.

    Returns:
        The mean of ``-log sigmoid(beta * ((pi_w - ref_w) - (pi_l - ref_l)))`` over the pairs (chosen w = the
        group's first best completion, rejected l = its first worst), a zero that keeps the graph when no
        group has a pair; and ``{"pairs", "accuracy", "margin"}``: pairs formed, share of pairs the policy
        already ranks right (implicit reward margin > 0), mean implicit reward margin.
    """
    chosen, rejected = [], []
    for g in torch.unique(groups).tolist():
        rows = (groups == g).nonzero().flatten()
        s = scores[rows].float()
        if float(s.max() - s.min()) <= tie:
            continue
        chosen.append(int(rows[int(torch.argmax(s))]))
        rejected.append(int(rows[int(torch.argmin(s))]))
    if not chosen:
        return policy_logps.sum() * 0.0, {"pairs": 0.0, "accuracy": 0.0, "margin": 0.0}
    w, l_ = torch.tensor(chosen), torch.tensor(rejected)
    margin = beta * ((policy_logps[w] - ref_logps[w]) - (policy_logps[l_] - ref_logps[l_]))
    loss = -torch.nn.functional.logsigmoid(margin).mean()
    stats = {
        "pairs": float(len(chosen)),
        "accuracy": float((margin > 0).float().mean()),
        "margin": float(margin.detach().mean()),
    }
    return loss, stats
