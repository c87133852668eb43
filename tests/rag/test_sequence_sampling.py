"""rag.decoding.rag_sequence_sample: ancestral sampling from the RAG-Sequence marginal, against brute force."""

from __future__ import annotations

import math
from collections import Counter

import pytest
import torch

from rag.decoding import rag_sequence_sample, rag_token_generate
from tests.rag.tiny_llama import tiny_llama

pytestmark = pytest.mark.unit

PROMPTS = [[1, 5, 6], [3], [7, 2, 4, 4]]
DOC_LOGPROBS = torch.log_softmax(torch.tensor([0.2, 0.9, -0.5]), dim=0)
EOS = [0]


@pytest.fixture(scope="module")
def model():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield tiny_llama(vocab_size=8, seed=1)
    torch.set_num_threads(previous)


@torch.no_grad()
def brute_seq_prob(model, prompt: list[int], tokens: list[int]) -> float:
    """prod_i p(y_i | prompt, y_<i): one unpadded forward, no cache."""
    logits = model(input_ids=torch.tensor([prompt + tokens])).logits[0].double()
    probs = torch.softmax(logits[len(prompt) - 1 : -1], dim=-1)
    return math.prod(probs[i, t].item() for i, t in enumerate(tokens))


def test_a_draw_is_scored_by_the_brute_force_marginal_and_posterior(model):
    for seed in range(5):
        hyp = rag_sequence_sample(
            model,
            PROMPTS,
            DOC_LOGPROBS,
            max_new_tokens=3,
            eos_token_ids=EOS,
            generator=torch.Generator().manual_seed(seed),
        )
        joint = [math.exp(float(lp)) * brute_seq_prob(model, p, hyp.token_ids) for p, lp in zip(PROMPTS, DOC_LOGPROBS)]
        assert hyp.logprob == pytest.approx(math.log(sum(joint)), abs=1e-4)
        assert hyp.doc_posterior == pytest.approx([j / sum(joint) for j in joint], abs=1e-4)
        assert 1 <= len(hyp.token_ids) <= 3 and all(t != 0 for t in hyp.token_ids[:-1])


def test_the_document_is_drawn_first_then_the_tokens_from_it(model):
    """All prior mass on document 1: the answer is a plain sample from that prompt with the same generator."""
    doc_lp = torch.tensor([float("-inf"), 0.0, float("-inf")])
    for seed in range(4):
        hyp = rag_sequence_sample(
            model, PROMPTS, doc_lp, max_new_tokens=4, eos_token_ids=EOS, generator=torch.Generator().manual_seed(seed)
        )
        g = torch.Generator().manual_seed(seed)
        assert int(torch.multinomial(torch.tensor([0.0, 1.0, 0.0]), 1, generator=g)) == 1
        plain = rag_token_generate(
            model, [PROMPTS[1]], torch.zeros(1), max_new_tokens=4, eos_token_ids=EOS, strategy="sample", generator=g
        )
        assert hyp.token_ids == plain.token_ids
        assert hyp.doc_posterior == pytest.approx([0.0, 1.0, 0.0], abs=1e-6)


def test_one_token_draws_follow_the_mixture(model):
    """With one token, p(y|x) = sum_z p(z|x) p(y|x,z): the empirical frequencies of 600 seeded draws agree."""
    expected = torch.zeros(8, dtype=torch.float64)
    with torch.no_grad():
        for p, lp in zip(PROMPTS, DOC_LOGPROBS):
            logits = model(input_ids=torch.tensor([p])).logits[0, -1].double()
            expected += math.exp(float(lp)) * torch.softmax(logits, -1)
    g = torch.Generator().manual_seed(0)
    n = 600
    counts = Counter(
        rag_sequence_sample(model, PROMPTS, DOC_LOGPROBS, max_new_tokens=1, eos_token_ids=EOS, generator=g).token_ids[0]
        for _ in range(n)
    )
    observed = torch.tensor([counts[t] / n for t in range(8)], dtype=torch.float64)
    assert torch.max(torch.abs(observed - expected)).item() < 0.07  # ~3.5 standard errors at n=600


def test_bad_input_is_refused(model):
    with pytest.raises(ValueError, match="eos"):
        rag_sequence_sample(model, PROMPTS, DOC_LOGPROBS, max_new_tokens=2, eos_token_ids=[])
