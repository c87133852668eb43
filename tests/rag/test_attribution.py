"""rag.attribution: per-sentence document posteriors against brute force, on hand-made tensors and on
the tiny in-process Llama (per-document forward passes without KV cache)."""

from __future__ import annotations

import math

import pytest
import torch

from rag.attribution import (
    choose_documents,
    content_words,
    is_finished,
    overlap_shares,
    rag_sequence_sentence_posteriors,
    rag_token_sentence_posteriors,
    sentence_spans,
    supporting_span,
    token_sentence_spans,
)
from rag.decoding import rag_sequence_generate, rag_token_generate
from rag.strategies import Generated, RagSequenceStrategy, RagTokenStrategy
from tests.rag.tiny_llama import tiny_llama

K, T = 3, 7
SPANS = [(0, 3), (3, 4), (4, 7)]


def _case(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    token_lp = torch.log_softmax(torch.randn(K, T, 5, generator=g), dim=-1)[..., 0]  # (K, T) log p(y_i|x,z_k,y<i)
    doc_lp = torch.log_softmax(torch.randn(K, generator=g), dim=0)
    return token_lp, doc_lp


def _close(got: torch.Tensor, expected, tol: float) -> None:
    torch.testing.assert_close(got.double(), torch.as_tensor(expected, dtype=torch.float64), atol=tol, rtol=0)


def _brute_token(token_lp: torch.Tensor, doc_lp: torch.Tensor, spans) -> list[list[float]]:
    """Mean over each sentence's tokens of w_ki = p(z_k|x) p(y_i|z_k) / sum_j p(z_j|x) p(y_i|z_j), by loops."""
    out = []
    for a, b in spans:
        row = [0.0] * token_lp.shape[0]
        for i in range(a, b):
            joint = [math.exp(doc_lp[k]) * math.exp(token_lp[k, i]) for k in range(token_lp.shape[0])]
            for k in range(token_lp.shape[0]):
                row[k] += joint[k] / sum(joint) / (b - a)
        out.append(row)
    return out


def _brute_sequence(token_lp: torch.Tensor, doc_lp: torch.Tensor, spans) -> list[list[float]]:
    """p(z_k|x) prod_{i in s} p(y_i|z_k), normalised over k, by loops."""
    out = []
    for a, b in spans:
        joint = []
        for k in range(token_lp.shape[0]):
            p = math.exp(doc_lp[k])
            for i in range(a, b):
                p *= math.exp(token_lp[k, i])
            joint.append(p)
        out.append([j / sum(joint) for j in joint])
    return out


class TestPosteriors:
    @pytest.mark.parametrize("seed", [0, 1, 2])
    def test_rag_token_matches_brute_force(self, seed: int) -> None:
        token_lp, doc_lp = _case(seed)
        got = rag_token_sentence_posteriors(token_lp, doc_lp, SPANS)
        assert got.shape == (len(SPANS), K)
        _close(got, _brute_token(token_lp, doc_lp, SPANS), 1e-6)

    @pytest.mark.parametrize("seed", [0, 1, 2])
    def test_rag_sequence_matches_brute_force(self, seed: int) -> None:
        token_lp, doc_lp = _case(seed)
        got = rag_sequence_sentence_posteriors(token_lp, doc_lp, SPANS)
        _close(got, _brute_sequence(token_lp, doc_lp, SPANS), 1e-6)

    def test_sentences_differ_from_the_whole_answer(self) -> None:
        """A document that explains only the first sentence wins that sentence and loses the other."""
        token_lp = torch.log(torch.tensor([[0.9, 0.9, 0.1, 0.1], [0.1, 0.1, 0.9, 0.9]]))
        doc_lp = torch.log(torch.tensor([0.5, 0.5]))
        for fn in (rag_token_sentence_posteriors, rag_sequence_sentence_posteriors):
            post = fn(token_lp, doc_lp, [(0, 2), (2, 4)])
            assert post[0].argmax() == 0 and post[1].argmax() == 1

    def test_sentence_without_tokens_gets_the_prior(self) -> None:
        token_lp, doc_lp = _case()
        got = rag_token_sentence_posteriors(token_lp, doc_lp, [(2, 2)])
        _close(got[0], doc_lp.exp().tolist(), 1e-6)
        assert rag_token_sentence_posteriors(token_lp, doc_lp, []).shape == (0, K)

    def test_fast_decoding_unknown_documents_get_nothing(self) -> None:
        token_lp, doc_lp = _case()
        token_lp[1] = float("-inf")  # document 1 did not generate the answer
        post = rag_sequence_sentence_posteriors(token_lp, doc_lp, SPANS)
        assert torch.all(post[:, 1] == 0) and post.sum(-1).tolist() == pytest.approx([1.0] * 3)


class TestText:
    def test_sentence_spans(self) -> None:
        text = "Create it with venv, e.g. python -m venv env. Then activate it!\n- pip install x\nDone"
        got = [text[a:b] for a, b in sentence_spans(text)]
        assert got == ["Create it with venv, e.g. python -m venv env.", "Then activate it!", "- pip install x", "Done"]
        assert sentence_spans("  ") == [] and sentence_spans("Version 3.11 is out.") == [(0, 20)]

    def test_is_finished(self) -> None:
        assert is_finished("It works.") and is_finished('He said "yes."') and is_finished("Run `x`?")
        assert not is_finished("To create one, run the command")

    def test_token_sentence_spans(self) -> None:
        pieces = ["It", " works", ".", " Run", " it", ". Then", " stop", "."]
        text = "".join(pieces)
        ends = [len("".join(pieces[: i + 1])) for i in range(len(pieces))]
        spans = sentence_spans(text)
        assert [text[a:b] for a, b in spans] == ["It works.", "Run it.", "Then stop."]
        assert token_sentence_spans(ends, spans) == [(0, 3), (3, 6), (6, 8)]

    def test_overlap_choose_and_span(self) -> None:
        chunks = ["Paris is the capital of France. It has the Eiffel Tower.", "Rome is the capital of Italy."]
        shares = overlap_shares(["The Eiffel Tower is in Paris.", "Nothing matches here whatsoever"], chunks)
        assert shares[0].tolist() == pytest.approx([1.0, 0.0]) and shares[1].tolist() == [0.0, 0.0]
        assert choose_documents(shares[0], 0.3) == [0] and choose_documents(shares[1], 0.3) == []
        assert choose_documents([0.5, 0.1, 0.4], 0.3) == [0, 2]
        span = supporting_span("Where is the Eiffel Tower?", chunks[0])
        assert span is not None and chunks[0][span[0] : span[1]] == "It has the Eiffel Tower."
        assert supporting_span("zebra", chunks[0]) is None
        assert content_words("The Towers of Paris") == content_words("tower paris") == {"tower", "pari"}


# --------------------------------------------------------------------------- the tiny Llama

PROMPTS = [[1, 5, 6, 7, 8, 9, 4], [3, 4], [9, 10, 11, 12]]
DOC_LOGPROBS = torch.log_softmax(torch.tensor([0.9, 0.1, -0.4]), dim=0)


@pytest.fixture(scope="module")
def model():
    return tiny_llama(32, seed=3)


@torch.no_grad()
def _forward_logprobs(model, prompt: list[int], answer: list[int]) -> list[float]:
    """log p(answer_i | prompt, answer_<i) from one full forward pass, no KV cache."""
    ids = torch.tensor([prompt + answer])
    logits = model(input_ids=ids).logits[0].float()
    lp = torch.log_softmax(logits, dim=-1)
    return [float(lp[len(prompt) - 1 + i, t]) for i, t in enumerate(answer)]


def _brute_token_lp(model, answer: list[int]) -> torch.Tensor:
    return torch.tensor([_forward_logprobs(model, p, answer) for p in PROMPTS])


def test_rag_token_marker_posteriors_equal_brute_force(model) -> None:
    out = rag_token_generate(model, PROMPTS, DOC_LOGPROBS, max_new_tokens=8, eos_token_ids=None)
    assert out.token_logprobs is not None and out.token_logprobs.shape == (3, 8)
    brute_lp = _brute_token_lp(model, out.token_ids)
    _close(out.token_logprobs, brute_lp.tolist(), 1e-4)
    spans = [(0, 3), (3, 5), (5, 8)]
    generated = Generated(out.token_ids, out.logprob, out.doc_contributions, None, out.token_logprobs)
    used = RagTokenStrategy().sentence_posteriors(generated, DOC_LOGPROBS, spans, ["a", "b", "c"], ["x"] * 3)
    _close(used, _brute_token(brute_lp, DOC_LOGPROBS, spans), 1e-4)


@pytest.mark.parametrize("decoding", ["thorough", "fast"])
def test_rag_sequence_marker_posteriors_equal_brute_force(model, decoding) -> None:
    hyps = rag_sequence_generate(
        model, PROMPTS, DOC_LOGPROBS, max_new_tokens=6, eos_token_ids=[31], decoding=decoding, pad_token_id=0
    )
    best = hyps[0]
    assert best.token_logprobs is not None and best.token_logprobs.shape == (3, len(best.token_ids))
    brute_lp = _brute_token_lp(model, best.token_ids)
    known = torch.isfinite(best.token_logprobs).all(-1)  # fast: only the documents that generated it
    assert bool(known.any()) and (decoding == "fast" or bool(known.all()))
    _close(best.token_logprobs[known], brute_lp[known].tolist(), 1e-4)
    n = len(best.token_ids)
    spans = [(0, n // 2), (n // 2, n)]
    generated = Generated(best.token_ids, best.logprob, best.doc_posterior, None, best.token_logprobs)
    used = RagSequenceStrategy().sentence_posteriors(generated, DOC_LOGPROBS, spans, ["a", "b"], ["x"] * 3)
    expected = [
        [p if bool(known[k]) else 0.0 for k, p in enumerate(row)]
        for row in _brute_sequence(torch.where(known.unsqueeze(-1), brute_lp, -1e9), DOC_LOGPROBS, spans)
    ]
    _close(used, expected, 1e-4)


def test_support_share_and_supported_sentences():
    from rag.attribution import support_share, supported_sentences

    chunks = ["Paris is the capital of France.", "The Eiffel Tower was finished in 1889."]
    assert support_share("The capital of France is Paris.", chunks) == 1.0
    assert support_share("Zebras paint volcanoes purple.", chunks) == 0.0
    assert support_share("It is.", chunks) is None  # no content words
    share = support_share("Paris towers over zebras.", chunks)  # paris, tower(s) found, zebra(s) not; "over" a stopword
    assert share is not None and abs(share - 2 / 3) < 1e-9
    sentences = ["Zebras paint.", "Paris is the capital.", "Volcanoes sing loudly.", "It is.", "Tower of Paris."]
    assert supported_sentences(sentences, chunks, 0.6) == [1, 3, 4]  # the first sentence is checked too
    assert supported_sentences(sentences, chunks, 0.0) == [0, 1, 2, 3, 4]


# --------------------------------------------------------------------------- citing what supports

#: content words that no stopword list, plural folding or stemming changes
VOCAB = ["apple", "bread", "cedar", "delta", "ember", "fjord", "grape", "hotel", "igloo", "joker", "kayak", "lemon"]


def _brute_cite(sentence: str, chunks: list[str], shares: list[float], min_share: float) -> list[int]:
    """Every subset of the chunks: of those that contain the posterior's choice less its chunks without a
    word of the sentence, and hold as many of its words as all the chunks do, the smallest (ties: the larger
    share sum)."""
    from itertools import combinations

    words = content_words(sentence)
    base = [d for d in choose_documents(shares, min_share) if content_words(chunks[d]) & words]
    everything = set().union(*(content_words(c) for c in chunks)) & words
    best: tuple[int, float, frozenset[int]] | None = None
    for size in range(len(chunks) + 1):
        for combo in combinations(range(len(chunks)), size):
            if not set(base) <= set(combo):
                continue
            held = set().union(*(content_words(chunks[d]) for d in combo)) & words if combo else set()
            if held != everything:
                continue
            key = (-len(combo), sum(shares[d] for d in combo), frozenset(combo))
            if best is None or key[:2] > best[:2]:
                best = key
    assert best is not None
    return sorted(best[2])


@pytest.mark.parametrize("seed", range(40))
def test_cite_supporting_matches_brute_force(seed: int) -> None:
    """The cited chunks hold every word of the sentence that the chunks hold, with the fewest chunks added to
    the posterior's choice (less its chunks without a word of the sentence), brute force over all subsets."""
    import random

    from rag.attribution import cite_supporting

    rng = random.Random(seed)
    k = rng.randint(1, 6)
    chunks = [" ".join(rng.sample(VOCAB, rng.randint(0, 5))) for _ in range(k)]
    sentence = " ".join(rng.sample(VOCAB, rng.randint(1, 5))) + "."
    raw = [rng.random() for _ in range(k)]
    shares = [v / sum(raw) for v in raw]
    got = cite_supporting(sentence, chunks, shares, 0.3)
    assert sorted(got) == _brute_cite(sentence, chunks, shares, 0.3), (sentence, chunks, shares)
    words = content_words(sentence)
    assert all(content_words(chunks[d]) & words for d in got)  # every cited chunk holds a word of the sentence
    posterior = [d for d in choose_documents(shares, 0.3) if content_words(chunks[d]) & words]
    assert got[: len(posterior)] == posterior  # the posterior's choice first, in its order


def test_cite_supporting_by_hand() -> None:
    from rag.attribution import cite_supporting

    chunks = ["Paris is the capital of France.", "Rome is the capital of Italy.", "Zebras are striped."]
    # the posterior favours the zebra chunk, which holds no word of the sentence: it is dropped, and the two
    # chunks that hold its words are cited, the likelier first
    assert cite_supporting("Paris and Rome are capitals.", chunks, [0.1, 0.2, 0.7], 0.3) == [1, 0]
    assert cite_supporting("Rome is a capital.", chunks, [0.1, 0.6, 0.3], 0.3) == [1]  # rome holds both words
    assert cite_supporting("Paris is a capital.", chunks, [0.1, 0.6, 0.3], 0.3) == [1, 0]  # paris holds "paris"
    assert cite_supporting("Paris is in France.", chunks, [0.1, 0.6, 0.3], 0.3) == [0]  # rome holds no word
    assert cite_supporting("Unicorns fly.", chunks, [0.1, 0.6, 0.3], 0.3) == []  # no chunk holds a word
    assert cite_supporting("It is.", chunks, [0.1, 0.6, 0.3], 0.3) == [1, 2]  # no content word: the posterior's


def test_greedy_extension_beyond_the_exact_search() -> None:
    """Past ``_EXACT_EXTENSION`` candidate chunks the extension is greedy and still covers every held word."""
    from rag.attribution import _EXACT_EXTENSION, cite_supporting

    filler = ["apple"] * (_EXACT_EXTENSION + 2)
    chunks = [*filler, "bread cedar", "delta"]
    got = cite_supporting("apple bread cedar delta.", chunks, [1.0] + [0.0] * (len(chunks) - 1), 0.3)
    assert got[0] == 0 and sorted(got[1:]) == [len(chunks) - 2, len(chunks) - 1]


def test_extractive_fallback() -> None:
    from rag.attribution import QUOTE_MIN_WORDS, extractive_fallback

    chunks = [
        "Rome is the capital of Italy. The Colosseum held fifty thousand people.",
        "Paris is the capital of France. The Eiffel Tower was finished in 1889. It is tall.",
    ]
    quote = extractive_fallback("What is the capital of France?", chunks, [0.9, 0.1])
    assert quote is not None and quote.chunk == 1 and quote.overlap == 1.0
    # the best sentence, then the chunk's next ones until QUOTE_MIN_WORDS words or 3 sentences
    assert quote.text == chunks[1] and chunks[1][quote.span[0] : quote.span[1]] == quote.text
    assert len(quote.text.split()) < QUOTE_MIN_WORDS
    one = extractive_fallback("What is the capital of France?", chunks, [0.9, 0.1], max_sentences=1)
    assert one is not None and one.text == "Paris is the capital of France."
    # equal overlap ("capital" only): the larger weight wins
    tie = extractive_fallback("Which capital?", chunks, [0.2, 0.8], max_sentences=1)
    assert tie is not None and tie.text == "Paris is the capital of France."
    tie = extractive_fallback("Which capital?", chunks, [0.8, 0.2], max_sentences=1)
    assert tie is not None and tie.text == "Rome is the capital of Italy."
    # weak matches give nothing to quote: the answer will be "I don't know"
    assert extractive_fallback("What is the capital of Australia?", chunks, min_overlap=0.6) is None
    assert extractive_fallback("What is the capital of Australia?", chunks, min_overlap=0.5) is not None
    assert extractive_fallback("Unicorns?", chunks) is None and extractive_fallback("Is it?", chunks) is None
    assert extractive_fallback("capital", []) is None


def test_extractive_fallback_quotes_the_answer_under_a_heading_that_asks() -> None:
    """A FAQ heading repeating the question is not quoted: the answer after it is, up to the next heading."""
    from rag.attribution import extractive_fallback

    chunks = [
        "Lambdas bind late. How do I share global variables across modules?",  # the heading ends this chunk
        "How do I share global variables across modules?\n\nCreate a config module. Import it everywhere.\n\n"
        "Why is my list changed?",
    ]
    quote = extractive_fallback("How do I share global variables across modules?", chunks, [0.9, 0.1])
    assert quote is not None and quote.chunk == 1 and quote.overlap == 1.0
    assert quote.text == "Create a config module. Import it everywhere."


def test_content_words_keep_identifiers_whole_and_skip_single_characters() -> None:
    """An invented identifier is not supported by the words it is built from, nor by digits found anywhere."""
    from rag.attribution import support_share

    assert content_words("my_tuple = tuple(x, 0)") == {"my_tuple", "tuple"}
    chunks = ["Convert a list to a tuple with tuple(x); x = [0, 1]."]
    assert support_share("list_list = tuple(0, 1)", chunks) == 0.5  # list_list is not in the chunk
    assert support_share("x = 1", chunks) is None  # nothing but one-character tokens


def test_claim_check():
    from rag.attribution import ClaimCheck

    check = ClaimCheck(["Paris is the capital of France.", "The Eiffel Tower was finished in 1889."], 0.7)
    assert check("The capital of France is Paris.")
    assert check("The Eiffel Tower in Paris was finished.")  # tower, eiffel, paris, finished: all found
    assert not check("Zebras paint volcanoes purple in Paris.")  # 1 of 5 found
    assert check("Zebras paint.")  # under three content words: no claim
    assert ClaimCheck([], 0.7, min_words=1)("Paris.") is False


def test_lead_ins_are_left_out_when_what_they_announce_is() -> None:
    from rag.attribution import is_lead_in, without_dangling_lead_ins

    assert is_lead_in("The steps are:") and is_lead_in("Use it like this: ") and is_lead_in("**Steps**:")
    assert not is_lead_in("Paris is the capital.") and not is_lead_in("Ratio 1:2 holds.")
    texts = ["Intro:", "Step one.", "More:", "Unsupported.", "Last:"]
    assert without_dangling_lead_ins(texts, [0, 1, 2, 4]) == [0, 1]  # "More:" lost its next one, "Last:" has none
    assert without_dangling_lead_ins(texts, [1, 3]) == [1, 3]
    # fillers say nothing and go; a lead-in followed only by a filler goes with it; "No." is an answer
    texts = ["The steps are:", "1.", "```python", "No.", "Use it."]
    assert without_dangling_lead_ins(texts, [0, 1, 2, 3, 4]) == [0, 3, 4]  # its list goes on past "1." fillers
    assert without_dangling_lead_ins(texts, [0, 1, 2, 4]) == [4]  # what came after the fillers was left out


def test_unsaid_sentences_skip_what_the_answer_already_says() -> None:
    from rag.attribution import extractive_fallback, unsaid_sentences

    chunk = "Paris is the capital of France. The Eiffel Tower was finished in 1889. It is 330 metres tall."
    quote = extractive_fallback("What is the capital of France?", [chunk], min_words=60, max_sentences=6)
    assert quote is not None and quote.text == chunk
    spans = unsaid_sentences(quote, "The capital of France is Paris [1].")
    assert [chunk[a:b] for a, b in spans] == ["The Eiffel Tower was finished in 1889.", "It is 330 metres tall."]
    assert unsaid_sentences(quote, chunk) == []  # all said
    # the spans are offsets in the chunk, also when the quote starts inside it
    longer = "Intro here. " + chunk
    later = extractive_fallback("When was the Eiffel Tower finished?", [longer], min_words=5)
    assert later is not None and later.span[0] > 0
    a, b = unsaid_sentences(later, "")[0]
    assert longer[a:b] == "The Eiffel Tower was finished in 1889."


def test_quotes_stop_before_a_lead_in_or_a_session_line_and_merge_into_passages() -> None:
    from rag.attribution import extractive_fallback, quote_runs

    chunk = (
        "Objects do not really have names. Assignment binds a name to a value. Consider the following code:\n"
        ">>> class A:\n...     pass"
    )
    quote = extractive_fallback("Do objects have names?", [chunk], min_words=100, max_sentences=10)
    assert quote is not None and quote.text == "Objects do not really have names. Assignment binds a name to a value."
    # a best sentence that is itself a lead-in goes on into what it announces
    lead = "Create one with this command:\npython -m venv tutorial-env\nThen activate it."
    quote = extractive_fallback("Which command creates one?", [lead], min_words=100, max_sentences=10)
    assert quote is not None and quote.text == lead
    text = "One. Two.  Three. Four."
    assert quote_runs([(0, 4), (5, 9), (18, 23)], text) == [(0, 9), (18, 23)]
    assert quote_runs([], text) == []


def test_quotes_are_whole_sentences_not_headings() -> None:
    from rag.attribution import extractive_fallback

    chunk = (
        "General Python FAQ\n\nWhat is Python\n\nPython is an interpreted language. It has modules.\n\nLicence terms"
    )
    quote = extractive_fallback("What is Python?", [chunk], min_words=100, max_sentences=10)
    # the headings hold the question's words too, but a quote starts at a whole sentence and stops before a heading
    assert quote is not None and quote.text == "Python is an interpreted language. It has modules."
    assert extractive_fallback("What is Python?", ["General Python FAQ\nWhat is Python"]) is None
    numbered = "Python is an interpreted language.\n\n6.15.\nExpression lists are tuples."
    quote = extractive_fallback("What is Python?", [numbered], min_words=100, max_sentences=10)
    assert quote is not None and quote.text == "Python is an interpreted language."  # not the section number after it
