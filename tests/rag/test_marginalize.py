"""rag.marginalize on hand-made tensors, against brute force in probability space."""

from __future__ import annotations

import math

import pytest
import torch

from rag.marginalize import (
    rag_sequence_doc_posterior,
    rag_sequence_fast_logprob,
    rag_sequence_logprob,
    rag_token_next_logprobs,
    rag_token_sequence_logprob,
    token_contributions,
)

# Three documents, four token positions; the last position of candidate 1 is padding.
DOC_P = [0.5, 0.3, 0.2]
TOKEN_P = [  # [candidate][doc][position] = p(y_i | x, z_k, y_<i)
    [[0.9, 0.5, 0.4, 0.7], [0.1, 0.2, 0.8, 0.6], [0.3, 0.3, 0.3, 0.3]],
    [[0.6, 0.05, 0.5, 0.0], [0.2, 0.9, 0.7, 0.0], [0.5, 0.5, 0.9, 0.0]],
]
MASK = [[True, True, True, True], [True, True, True, False]]


def _tensors() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """token_logprobs (C=2, K=3, T=4) (log 0 = -inf on the padded position), doc_logprobs (3,), mask (2, 4)."""
    token_lp = torch.tensor(TOKEN_P, dtype=torch.float64).log()
    return token_lp, torch.tensor(DOC_P, dtype=torch.float64).log(), torch.tensor(MASK)


def _brute_sequence(c: int, docs: list[int] | None = None) -> float:
    total = 0.0
    for k, p_doc in enumerate(DOC_P):
        if docs is not None and k not in docs:
            continue
        prod = 1.0
        for i, p in enumerate(TOKEN_P[c][k]):
            if MASK[c][i]:
                prod *= p
        total += p_doc * prod
    return total


def _brute_token(c: int) -> float:
    prod = 1.0
    for i in range(4):
        if MASK[c][i]:
            prod *= sum(DOC_P[k] * TOKEN_P[c][k][i] for k in range(3))
    return prod


class TestRagSequence:
    def test_single_candidate(self) -> None:
        token_lp, doc_lp, mask = _tensors()
        for c in range(2):
            got = rag_sequence_logprob(token_lp[c], doc_lp, mask[c])
            assert got.shape == ()
            assert math.isclose(got.exp().item(), _brute_sequence(c), rel_tol=1e-12)

    def test_batched_over_candidates(self) -> None:
        token_lp, doc_lp, mask = _tensors()
        got = rag_sequence_logprob(token_lp, doc_lp, mask)
        assert got.shape == (2,)
        assert torch.allclose(got.exp(), torch.tensor([_brute_sequence(0), _brute_sequence(1)], dtype=torch.float64))
        assert torch.isfinite(got).all()  # the -inf at the padded position is ignored

    def test_no_mask_means_all_positions(self) -> None:
        token_lp, doc_lp, _ = _tensors()
        all_real = torch.ones(4, dtype=torch.bool)
        assert torch.allclose(
            rag_sequence_logprob(token_lp[0], doc_lp), rag_sequence_logprob(token_lp[0], doc_lp, all_real)
        )

    def test_numerically_stable_for_long_answers(self) -> None:
        token_lp = torch.full((3, 2000), -5.0, dtype=torch.float32)  # prod of probs underflows to 0
        doc_lp = torch.log(torch.tensor(DOC_P))
        got = rag_sequence_logprob(token_lp, doc_lp, torch.ones(2000, dtype=torch.bool))
        assert math.isclose(got.item(), -10000.0, rel_tol=1e-6)

    def test_fast_uses_only_generating_documents(self) -> None:
        token_lp, doc_lp, mask = _tensors()
        generated_by = torch.tensor([[True, False, True], [False, True, False]])
        token_lp = token_lp.clone()
        token_lp[0, 1] = 123.0  # never read: document 1 did not generate candidate 0
        got = rag_sequence_fast_logprob(token_lp, doc_lp, generated_by, mask)
        expected = torch.tensor([_brute_sequence(0, [0, 2]), _brute_sequence(1, [1])], dtype=torch.float64)
        assert torch.allclose(got.exp(), expected)
        nobody = rag_sequence_fast_logprob(token_lp[1], doc_lp, torch.zeros(3, dtype=torch.bool), mask[1])
        assert nobody.item() == float("-inf")

    def test_doc_posterior(self) -> None:
        token_lp, doc_lp, mask = _tensors()
        got = rag_sequence_doc_posterior(token_lp, doc_lp, mask)
        for c in range(2):
            joint = [_brute_sequence(c, [k]) for k in range(3)]
            assert torch.allclose(got[c], torch.tensor(joint, dtype=torch.float64) / sum(joint))

    def test_shape_mismatch_says_what_to_do(self) -> None:
        token_lp, _, mask = _tensors()
        with pytest.raises(ValueError, match="documents"):
            rag_sequence_logprob(token_lp, torch.zeros(2), mask)
        with pytest.raises(ValueError, match="mask"):
            rag_sequence_logprob(token_lp, torch.zeros(3), torch.ones(2, 3, dtype=torch.bool))


class TestRagToken:
    def test_next_logprobs_single(self) -> None:
        gen = torch.Generator().manual_seed(0)
        next_lp = torch.log_softmax(torch.randn(3, 5, generator=gen, dtype=torch.float64), dim=-1)  # (K, V)
        doc_lp = torch.tensor(DOC_P, dtype=torch.float64).log()
        got = rag_token_next_logprobs(next_lp, doc_lp)
        assert got.shape == (5,)
        for v in range(5):
            brute = sum(DOC_P[k] * next_lp[k, v].exp().item() for k in range(3))
            assert math.isclose(got[v].exp().item(), brute, rel_tol=1e-12)
        assert math.isclose(got.exp().sum().item(), 1.0, rel_tol=1e-12)

    def test_next_logprobs_batched_over_beams_with_own_posteriors(self) -> None:
        gen = torch.Generator().manual_seed(1)
        next_lp = torch.log_softmax(torch.randn(4, 3, 6, generator=gen, dtype=torch.float64), dim=-1)  # (B, K, V)
        doc_lp = torch.log_softmax(torch.randn(4, 3, generator=gen, dtype=torch.float64), dim=-1)  # (B, K)
        got = rag_token_next_logprobs(next_lp, doc_lp)
        assert got.shape == (4, 6)
        for b in range(4):
            for v in range(6):
                brute = sum(doc_lp[b, k].exp().item() * next_lp[b, k, v].exp().item() for k in range(3))
                assert math.isclose(got[b, v].exp().item(), brute, rel_tol=1e-12)
        # a shared (K,) prior broadcasts over beams
        shared = rag_token_next_logprobs(next_lp, doc_lp[0])
        assert torch.allclose(shared[2], rag_token_next_logprobs(next_lp[2], doc_lp[0]))

    def test_sequence_logprob(self) -> None:
        token_lp, doc_lp, mask = _tensors()
        for c in range(2):
            got = rag_token_sequence_logprob(token_lp[c], doc_lp, mask[c])
            assert math.isclose(got.exp().item(), _brute_token(c), rel_tol=1e-12)
        batched = rag_token_sequence_logprob(token_lp, doc_lp, mask)
        assert torch.allclose(batched.exp(), torch.tensor([_brute_token(0), _brute_token(1)], dtype=torch.float64))

    def test_one_document_token_equals_sequence(self) -> None:
        # with a single document both models coincide
        token_lp, _, mask = _tensors()
        one = torch.zeros(1, dtype=torch.float64)
        assert torch.allclose(
            rag_token_sequence_logprob(token_lp[:, :1], one, mask), rag_sequence_logprob(token_lp[:, :1], one, mask)
        )

    def test_token_contributions(self) -> None:
        token_lp, doc_lp, mask = _tensors()
        got = token_contributions(token_lp, doc_lp, mask)
        assert got.shape == (2, 3)
        for c in range(2):
            positions = [i for i in range(4) if MASK[c][i]]
            for k in range(3):
                shares = [
                    DOC_P[k] * TOKEN_P[c][k][i] / sum(DOC_P[j] * TOKEN_P[c][j][i] for j in range(3)) for i in positions
                ]
                assert math.isclose(got[c, k].item(), sum(shares) / len(shares), rel_tol=1e-12)
        assert torch.allclose(got.sum(-1), torch.ones(2, dtype=torch.float64))
        assert torch.isfinite(got).all()

    def test_token_contributions_without_tokens_is_the_prior(self) -> None:
        token_lp, doc_lp, _ = _tensors()
        got = token_contributions(token_lp[0], doc_lp, torch.zeros(4, dtype=torch.bool))
        assert torch.allclose(got, torch.tensor(DOC_P, dtype=torch.float64))
