"""rag.decoding on a tiny random Llama built in-process, against brute force without KV cache."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from transformers import LlamaForCausalLM

from rag.decoding import (
    RagTokenOutput,
    _advance,
    prefill,
    rag_sequence_generate,
    rag_token_generate,
    score_continuations,
)
from tests.rag.tiny_llama import tiny_llama

PROMPTS = [[1, 5, 6, 7, 8, 9, 4], [3, 4], [9, 10, 11, 12], [7]]  # K=4, different lengths
DOC_LOGPROBS = torch.log_softmax(torch.tensor([0.9, 0.1, -0.4, 0.3]), dim=0)


def _tiny_llama(vocab_size: int, seed: int) -> LlamaForCausalLM:
    return tiny_llama(vocab_size, seed)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """The models are tiny: intra-op threads only add synchronisation cost (large on a busy machine)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def model() -> LlamaForCausalLM:
    return _tiny_llama(vocab_size=32, seed=0)


@pytest.fixture(scope="module")
def small_vocab_model() -> LlamaForCausalLM:
    return _tiny_llama(vocab_size=8, seed=1)


SMALL_PROMPTS = [[1, 5, 6], [3], [7, 2, 4, 4]]
SMALL_DOC_LOGPROBS = torch.log_softmax(torch.tensor([0.2, 0.9, -0.5]), dim=0)
SMALL_VOCAB, SMALL_STEPS = 8, 3


@pytest.fixture(scope="module")
def small_tree(small_vocab_model) -> dict[tuple[int, ...], torch.Tensor]:
    """Brute-force mixture after every prefix of < 3 tokens of the 8-token model (1 + 8 + 64 prefixes)."""
    return _mixture_tree(small_vocab_model, SMALL_PROMPTS, SMALL_DOC_LOGPROBS, SMALL_VOCAB, SMALL_STEPS)


# --------------------------------------------------------------------------- brute force (no cache, no padding)


@torch.no_grad()
def _next_probs(model: LlamaForCausalLM, ids: list[int]) -> torch.Tensor:
    """(V,) float64 p(next | ids), one unpadded forward without cache."""
    logits = model(input_ids=torch.tensor([ids])).logits[0, -1].double()
    return torch.softmax(logits, dim=-1)


def _mixed_probs(
    model: LlamaForCausalLM, prompts: list[list[int]], doc_logprobs: torch.Tensor, prefix: list[int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mixture in probability space: (V,) sum_k p(z_k) p(.|z_k, prefix), and the per-document (K, V)."""
    per_doc = torch.stack([_next_probs(model, p + prefix) for p in prompts])
    return (doc_logprobs.double().exp()[:, None] * per_doc).sum(0), per_doc


def _brute_rag_token(model, prompts, doc_logprobs, tokens: list[int]) -> tuple[float, list[float]]:
    """RAG-Token probability of ``tokens`` and the per-document contributions, by explicit loops."""
    prob, shares = 1.0, torch.zeros(len(prompts), dtype=torch.float64)
    for i, tok in enumerate(tokens):
        mixed, per_doc = _mixed_probs(model, prompts, doc_logprobs, tokens[:i])
        prob *= mixed[tok].item()
        shares += doc_logprobs.double().exp() * per_doc[:, tok] / mixed[tok]
    return prob, (shares / len(tokens)).tolist()


@torch.no_grad()
def _brute_seq_prob(model, prompt: list[int], tokens: list[int]) -> float:
    """prod_i p(y_i | prompt, y_<i): one unpadded forward of prompt + tokens, without cache."""
    logits = model(input_ids=torch.tensor([prompt + tokens])).logits[0].double()
    probs = torch.softmax(logits[len(prompt) - 1 : -1], dim=-1)  # row i predicts tokens[i]
    return math.prod(probs[i, tok].item() for i, tok in enumerate(tokens))


@torch.no_grad()
def _mixture_tree(model, prompts, doc_logprobs, vocab: int, depth: int) -> dict[tuple[int, ...], torch.Tensor]:
    """Brute-force RAG-Token mixture (V,) after every prefix of length < depth.

    No cache and no padding: for each document and prefix length, all ``vocab**length`` sequences
    ``prompt + prefix`` have the same length and run as one plain batch.
    """
    tree: dict[tuple[int, ...], torch.Tensor] = {}
    weights = doc_logprobs.double().exp()
    for length in range(depth):
        prefixes = list(itertools.product(range(vocab), repeat=length))
        mixed = torch.zeros(len(prefixes), vocab, dtype=torch.float64)
        for k, prompt in enumerate(prompts):
            ids = torch.tensor([prompt + list(prefix) for prefix in prefixes])
            mixed += weights[k] * torch.softmax(model(input_ids=ids).logits[:, -1].double(), dim=-1)
        tree.update(zip(prefixes, mixed))
    return tree


def _tree_prob(tree: dict[tuple[int, ...], torch.Tensor], seq: tuple[int, ...]) -> float:
    return math.prod(tree[seq[:i]][tok].item() for i, tok in enumerate(seq))


def _brute_greedy(model, prompt: list[int], max_new_tokens: int, eos: set[int]) -> list[int]:
    out: list[int] = []
    for _ in range(max_new_tokens):
        tok = int(torch.argmax(_next_probs(model, prompt + out)))
        out.append(tok)
        if tok in eos:
            break
    return out


# --------------------------------------------------------------------------- batching and scoring


class TestPrefillAndScoring:
    def test_left_padded_rows_match_each_prompt_alone(self, model) -> None:
        state = prefill(model, PROMPTS)
        continuation = [13, 2, 30]
        for step in range(len(continuation) + 1):
            for k, prompt in enumerate(PROMPTS):
                alone = torch.log(_next_probs(model, prompt + continuation[:step])).float()
                torch.testing.assert_close(state.next_logprobs[k], alone, atol=1e-5, rtol=1e-5)
            if step < len(continuation):
                _advance(model, state, torch.full((len(PROMPTS),), continuation[step]))

    def test_score_continuations_matches_brute_force(self, model) -> None:
        continuations = [[5, 6, 7], [2], [], [31, 0, 4, 4, 9]]
        # max_rows_per_forward=5 forces several chunks of one candidate (cache copies)
        for max_rows in (64, 5):
            scores = score_continuations(model, PROMPTS, continuations, max_rows_per_forward=max_rows)
            assert scores.shape == (len(PROMPTS), len(continuations), 5)
            for k, prompt in enumerate(PROMPTS):
                for c, cont in enumerate(continuations):
                    for i in range(5):
                        if i < len(cont):
                            expected = math.log(_next_probs(model, prompt + cont[:i])[cont[i]].item())
                            assert math.isclose(scores[k, c, i].item(), expected, abs_tol=1e-4)
                        else:
                            assert scores[k, c, i].item() == 0.0

    @pytest.mark.parametrize("ids", [[7, 3, 11, 5], [9]])
    def test_prefill_scores_a_continuation_in_its_own_forward_and_keeps_only_the_prompts(self, model, ids) -> None:
        plain = prefill(model, PROMPTS)
        scored = prefill(model, PROMPTS, score_ids=ids)
        assert plain.scored is None and scored.scored is not None and scored.scored.shape == (len(PROMPTS), len(ids))
        for k, prompt in enumerate(PROMPTS):
            for i, token in enumerate(ids):
                expected = math.log(_next_probs(model, prompt + ids[:i])[token].item())
                assert math.isclose(scored.scored[k, i].item(), expected, abs_tol=1e-4)
        # the state is the plain prefill's: same layout, cache cut back to the prompts, same next step
        torch.testing.assert_close(scored.next_logprobs, plain.next_logprobs, atol=1e-5, rtol=1e-5)
        assert torch.equal(scored.attention_mask, plain.attention_mask)
        assert torch.equal(scored.next_positions, plain.next_positions)
        assert scored.past_key_values.get_seq_length() == plain.past_key_values.get_seq_length()
        for state in (plain, scored):
            _advance(model, state, torch.full((len(PROMPTS),), 13))
        torch.testing.assert_close(scored.next_logprobs, plain.next_logprobs, atol=1e-5, rtol=1e-5)


# --------------------------------------------------------------------------- RAG-Token


class TestRagTokenGreedy:
    def test_matches_brute_force_mixture(self, model) -> None:
        out = rag_token_generate(model, PROMPTS, DOC_LOGPROBS, max_new_tokens=6, eos_token_ids=[])
        expected: list[int] = []
        for _ in range(6):
            mixed, _ = _mixed_probs(model, PROMPTS, DOC_LOGPROBS, expected)
            expected.append(int(torch.argmax(mixed)))
        assert out.token_ids == expected
        prob, contributions = _brute_rag_token(model, PROMPTS, DOC_LOGPROBS, expected)
        assert math.isclose(out.logprob, math.log(prob), abs_tol=1e-4)
        assert out.doc_contributions == pytest.approx(contributions, abs=1e-5)
        assert sum(out.doc_contributions) == pytest.approx(1.0)

    @pytest.mark.parametrize("strategy", ["greedy", "beam"])
    def test_reference_is_scored_by_brute_force_and_leaves_the_answer_alone(self, model, strategy) -> None:
        reference = [7, 3, 11, 5]
        plain = rag_token_generate(model, PROMPTS, DOC_LOGPROBS, max_new_tokens=6, eos_token_ids=[], strategy=strategy)
        out = rag_token_generate(
            model, PROMPTS, DOC_LOGPROBS, max_new_tokens=6, eos_token_ids=[], strategy=strategy, reference_ids=reference
        )
        assert out.token_ids == plain.token_ids  # the cache was cropped back after scoring the reference
        assert math.isclose(out.logprob, plain.logprob, abs_tol=1e-5)
        assert plain.reference_logprob is None
        prob, _ = _brute_rag_token(model, PROMPTS, DOC_LOGPROBS, reference)
        assert math.isclose(out.reference_logprob, math.log(prob), abs_tol=1e-4)
        one = rag_token_generate(model, PROMPTS, DOC_LOGPROBS, max_new_tokens=2, eos_token_ids=[], reference_ids=[9])
        assert math.isclose(
            one.reference_logprob, math.log(_brute_rag_token(model, PROMPTS, DOC_LOGPROBS, [9])[0]), abs_tol=1e-4
        )

    def test_stop_callback_ends_the_answer_where_it_says(self, model) -> None:
        free = rag_token_generate(model, PROMPTS, DOC_LOGPROBS, max_new_tokens=6, eos_token_ids=[])
        seen: list[list[int]] = []

        def stop(ids: list[int]) -> bool:
            seen.append(list(ids))
            return len(ids) == 3

        out = rag_token_generate(model, PROMPTS, DOC_LOGPROBS, max_new_tokens=6, eos_token_ids=[], stop=stop)
        assert out.token_ids == free.token_ids[:3] and seen == [free.token_ids[:i] for i in (1, 2, 3)]
        prob, _ = _brute_rag_token(model, PROMPTS, DOC_LOGPROBS, out.token_ids)
        assert math.isclose(out.logprob, math.log(prob), abs_tol=1e-4)

    def test_stops_at_eos_and_streams_other_tokens(self, model) -> None:
        free = rag_token_generate(model, PROMPTS, DOC_LOGPROBS, max_new_tokens=6, eos_token_ids=None)
        eos = free.token_ids[2]
        streamed: list[int] = []
        out = rag_token_generate(
            model, PROMPTS, DOC_LOGPROBS, max_new_tokens=6, eos_token_ids=[eos], stream_callback=streamed.append
        )
        stop = free.token_ids.index(eos)
        assert out.token_ids == free.token_ids[: stop + 1]
        assert streamed == free.token_ids[:stop]
        prob, _ = _brute_rag_token(model, PROMPTS, DOC_LOGPROBS, out.token_ids)
        assert math.isclose(out.logprob, math.log(prob), abs_tol=1e-4)

    def test_one_document_equals_plain_generate(self, model) -> None:
        prompt = PROMPTS[0]
        out = rag_token_generate(model, [prompt], torch.zeros(1), max_new_tokens=8, eos_token_ids=[2])
        reference = model.generate(
            input_ids=torch.tensor([prompt]), max_new_tokens=8, do_sample=False, eos_token_id=2, pad_token_id=0
        )[0, len(prompt) :].tolist()
        assert out.token_ids == reference
        assert out.doc_contributions == [1.0]


class TestRagTokenBeam:
    def test_one_beam_equals_greedy(self, model) -> None:
        free = rag_token_generate(model, PROMPTS, DOC_LOGPROBS, max_new_tokens=6, eos_token_ids=[])
        for eos in ([], [free.token_ids[3]]):
            greedy = rag_token_generate(model, PROMPTS, DOC_LOGPROBS, max_new_tokens=6, eos_token_ids=eos)
            beam = rag_token_generate(
                model, PROMPTS, DOC_LOGPROBS, max_new_tokens=6, eos_token_ids=eos, strategy="beam", num_beams=1
            )
            assert beam.token_ids == greedy.token_ids
            assert beam.logprob == pytest.approx(greedy.logprob, abs=1e-5)

    def test_wide_beam_finds_the_most_probable_sequence(self, small_vocab_model, small_tree) -> None:
        model, prompts, doc, tree = small_vocab_model, SMALL_PROMPTS, SMALL_DOC_LOGPROBS, small_tree
        vocab, steps = SMALL_VOCAB, SMALL_STEPS
        best = max(itertools.product(range(vocab), repeat=steps), key=lambda seq: _tree_prob(tree, seq))
        out = rag_token_generate(
            model, prompts, doc, max_new_tokens=steps, eos_token_ids=[], strategy="beam", num_beams=vocab**2
        )
        assert out.token_ids == list(best)
        assert math.isclose(out.logprob, math.log(_tree_prob(tree, best)), abs_tol=1e-4)

    @pytest.mark.parametrize(("eos", "length_penalty"), [(6, 0.0), (6, 1.0), (4, 0.0), (4, 1.0)])
    def test_wide_beam_with_eos_finds_the_best_answer(self, small_vocab_model, small_tree, eos, length_penalty) -> None:
        model, prompts, doc, tree = small_vocab_model, SMALL_PROMPTS, SMALL_DOC_LOGPROBS, small_tree
        vocab, steps = SMALL_VOCAB, SMALL_STEPS
        answers = [  # every answer of at most 3 tokens: eos only as the last token, or no eos at all at length 3
            seq
            for length in range(1, steps + 1)
            for seq in itertools.product(range(vocab), repeat=length)
            if eos not in seq[:-1] and (seq[-1] == eos or length == steps)
        ]
        best = max(answers, key=lambda seq: math.log(_tree_prob(tree, seq)) / len(seq) ** length_penalty)
        out = rag_token_generate(
            model,
            prompts,
            doc,
            max_new_tokens=steps,
            eos_token_ids=[eos],
            strategy="beam",
            num_beams=vocab**2,
            length_penalty=length_penalty,
        )
        assert out.token_ids == list(best)
        assert math.isclose(out.logprob, math.log(_tree_prob(tree, best)), abs_tol=1e-4)


class TestRagTokenSampling:
    def test_seeded_sampling_is_reproducible(self, model) -> None:
        def draw(seed: int) -> RagTokenOutput:
            return rag_token_generate(
                model,
                PROMPTS,
                DOC_LOGPROBS,
                max_new_tokens=8,
                eos_token_ids=[],
                strategy="sample",
                temperature=1.3,
                generator=torch.Generator().manual_seed(seed),
            )

        assert draw(7) == draw(7)
        assert len({tuple(draw(seed).token_ids) for seed in range(3)}) > 1

    def test_samples_only_from_the_top_p_nucleus_of_the_mixture(self, model) -> None:
        top_p = 0.6
        for seed in range(4):
            out = rag_token_generate(
                model,
                PROMPTS,
                DOC_LOGPROBS,
                max_new_tokens=5,
                eos_token_ids=[],
                strategy="sample",
                top_p=top_p,
                generator=torch.Generator().manual_seed(seed),
            )
            for i, tok in enumerate(out.token_ids):
                mixed, _ = _mixed_probs(model, PROMPTS, DOC_LOGPROBS, out.token_ids[:i])
                assert mixed[tok] > 0
                # the tokens strictly more probable than tok cover less than top_p
                assert mixed[mixed > mixed[tok]].sum().item() < top_p
            prob, _ = _brute_rag_token(model, PROMPTS, DOC_LOGPROBS, out.token_ids)
            assert math.isclose(out.logprob, math.log(prob), abs_tol=1e-4)

    def test_rejects_bad_arguments(self, model) -> None:
        with pytest.raises(ValueError, match="temperature"):
            rag_token_generate(
                model, PROMPTS, DOC_LOGPROBS, max_new_tokens=2, eos_token_ids=[], strategy="sample", temperature=0.0
            )
        with pytest.raises(ValueError, match="one log p"):
            rag_token_generate(model, PROMPTS, DOC_LOGPROBS[:2], max_new_tokens=2, eos_token_ids=[])


# --------------------------------------------------------------------------- RAG-Sequence


def _brute_marginal(model, prompts, doc_logprobs, tokens: list[int], docs: range | list[int] | None = None) -> float:
    docs = range(len(prompts)) if docs is None else docs
    return sum(doc_logprobs[k].exp().item() * _brute_seq_prob(model, prompts[k], tokens) for k in docs)


class TestRagSequence:
    EOS = [21, 6]  # greedy: docs 0 and 1 give the same answer (4 tokens), doc 2 stops after 3, doc 3 never stops

    def test_thorough_greedy_ranks_by_brute_force_marginal(self, model) -> None:
        hyps = rag_sequence_generate(
            model, PROMPTS, DOC_LOGPROBS, max_new_tokens=5, eos_token_ids=self.EOS, decoding="thorough"
        )
        per_doc = {tuple(_brute_greedy(model, p, 5, set(self.EOS))) for p in PROMPTS}
        assert {tuple(h.token_ids) for h in hyps} == per_doc
        for h in hyps:
            expected = _brute_marginal(model, PROMPTS, DOC_LOGPROBS, h.token_ids)
            assert math.isclose(h.logprob, math.log(expected), abs_tol=1e-4)
            joint = [DOC_LOGPROBS[k].exp().item() * _brute_seq_prob(model, PROMPTS[k], h.token_ids) for k in range(4)]
            assert h.doc_posterior == pytest.approx([j / sum(joint) for j in joint], abs=1e-5)
        assert [h.logprob for h in hyps] == sorted((h.logprob for h in hyps), reverse=True)

    def test_reference_is_scored_but_not_offered(self, model) -> None:
        plain = rag_sequence_generate(model, PROMPTS, DOC_LOGPROBS, max_new_tokens=5, eos_token_ids=self.EOS)
        reference = [7, 3, 11, 21]
        hyps = rag_sequence_generate(
            model, PROMPTS, DOC_LOGPROBS, max_new_tokens=5, eos_token_ids=self.EOS, reference_ids=reference
        )
        assert [(h.token_ids, round(h.logprob, 5)) for h in hyps] == [(h.token_ids, round(h.logprob, 5)) for h in plain]
        expected = math.log(_brute_marginal(model, PROMPTS, DOC_LOGPROBS, reference))
        assert all(math.isclose(h.reference_logprob, expected, abs_tol=1e-4) for h in hyps)
        generated = hyps[0].token_ids  # a reference that was also generated keeps its place
        again = rag_sequence_generate(
            model, PROMPTS, DOC_LOGPROBS, max_new_tokens=5, eos_token_ids=self.EOS, reference_ids=generated
        )
        assert again[0].token_ids == generated and math.isclose(again[0].reference_logprob, again[0].logprob)

    def test_stop_callback_cuts_every_candidate(self, model) -> None:
        hyps = rag_sequence_generate(
            model, PROMPTS, DOC_LOGPROBS, max_new_tokens=5, eos_token_ids=self.EOS, stop=lambda ids: len(ids) >= 2
        )
        per_doc = {tuple(_brute_greedy(model, p, 5, set(self.EOS))[:2]) for p in PROMPTS}
        assert {tuple(h.token_ids) for h in hyps} == per_doc
        for h in hyps:
            assert math.isclose(
                h.logprob, math.log(_brute_marginal(model, PROMPTS, DOC_LOGPROBS, h.token_ids)), abs_tol=1e-4
            )

    def test_fast_greedy_uses_only_generation_scores(self, model) -> None:
        hyps = rag_sequence_generate(
            model, PROMPTS, DOC_LOGPROBS, max_new_tokens=5, eos_token_ids=self.EOS, decoding="fast"
        )
        generated_by: dict[tuple[int, ...], list[int]] = {}
        for k, p in enumerate(PROMPTS):
            generated_by.setdefault(tuple(_brute_greedy(model, p, 5, set(self.EOS))), []).append(k)
        assert {tuple(h.token_ids) for h in hyps} == set(generated_by)
        for h in hyps:
            docs = generated_by[tuple(h.token_ids)]
            expected = _brute_marginal(model, PROMPTS, DOC_LOGPROBS, h.token_ids, docs)
            assert math.isclose(h.logprob, math.log(expected), abs_tol=1e-4)
            assert [k for k, w in enumerate(h.doc_posterior) if w > 0] == docs
            joint = [DOC_LOGPROBS[k].exp().item() * _brute_seq_prob(model, PROMPTS[k], h.token_ids) for k in docs]
            assert [h.doc_posterior[k] for k in docs] == pytest.approx([j / sum(joint) for j in joint], abs=1e-5)
        assert sorted(len(h.token_ids) for h in hyps) == [3, 4, 5]  # one candidate shared by docs 0 and 1
        assert [h.logprob for h in hyps] == sorted((h.logprob for h in hyps), reverse=True)

    @pytest.mark.parametrize("decoding", ["thorough", "fast"])
    def test_beam_candidates(self, model, decoding) -> None:
        beams = 3
        per_doc: list[set[tuple[int, ...]]] = []
        for p in PROMPTS:  # each document alone, no padding
            out = model.generate(
                input_ids=torch.tensor([p]),
                max_new_tokens=4,
                num_beams=beams,
                num_return_sequences=beams,
                do_sample=False,
                eos_token_id=self.EOS,
                pad_token_id=0,
            )[:, len(p) :].tolist()
            per_doc.append({tuple(_cut(seq, set(self.EOS))) for seq in out})
        hyps = rag_sequence_generate(
            model, PROMPTS, DOC_LOGPROBS, max_new_tokens=4, eos_token_ids=self.EOS, num_beams=beams, decoding=decoding
        )
        assert {tuple(h.token_ids) for h in hyps} == set().union(*per_doc)
        for h in hyps:
            docs = None if decoding == "thorough" else [k for k in range(4) if tuple(h.token_ids) in per_doc[k]]
            expected = _brute_marginal(model, PROMPTS, DOC_LOGPROBS, h.token_ids, docs)
            assert math.isclose(h.logprob, math.log(expected), abs_tol=1e-4)
        assert [h.logprob for h in hyps] == sorted((h.logprob for h in hyps), reverse=True)


def _cut(seq: list[int], eos: set[int]) -> list[int]:
    for i, tok in enumerate(seq):
        if tok in eos:
            return seq[: i + 1]
    return seq


def test_prefill_through_a_peft_model_projects_only_the_last_position():
    from peft import LoraConfig, get_peft_model

    peft_model = get_peft_model(_tiny_llama(vocab_size=32, seed=3), LoraConfig(r=2, target_modules=["q_proj"])).eval()
    head_rows = []
    hook = peft_model.get_base_model().lm_head.register_forward_hook(
        lambda module, args, out: head_rows.append(args[0].shape[1])
    )
    try:
        prefill(peft_model, PROMPTS)
    finally:
        hook.remove()
    assert head_rows == [1]  # logits_to_keep reached the wrapped model: not every prompt position
