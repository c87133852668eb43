"""The QA pipeline on tiny in-process models: modes, citations, streaming, abstention, adapters."""

from __future__ import annotations

import math
import re

import pytest
import torch

from rag.config import GeneratorConfig, QAConfig, RetrieverConfig
from rag.generator import AdapterError, Generator
from rag.qa import QAError, QAPipeline
from rag.retriever import Retriever
from rag.strategies import kept_documents
from tests.rag.capitals import capitals_workspace


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_st_model, tiny_llm):
    root = tmp_path_factory.mktemp("qa")
    ws = capitals_workspace(root, tiny_st_model)
    # float32 on every CPU: these tests compare answers computed in different batch shapes (batched vs solo, cached
    # vs uncached), exact in float32; bf16 (auto on CPUs with AMX / AVX512-BF16) rounds differently per shape
    cfg = GeneratorConfig(model=str(tiny_llm), dtype="float32")
    gen = Generator(cfg, root / "home" / "models", root / "home" / "adapters")
    return ws, gen


def pipeline(setup, **qa):
    ws, gen = setup
    options = {
        "max_new_tokens": 6,
        "answer_style": "short",
        "abstain_min_score": None,
        "abstain_min_logprob": None,
        **qa,
    }
    return QAPipeline(Retriever(ws.embedder, RetrieverConfig(k=3)), gen, QAConfig(**options))


@pytest.mark.parametrize("mode", ["stuff", "rag-sequence", "rag-token"])
def test_modes_answer_with_citations(setup, mode):
    ws, _ = setup
    qa = pipeline(setup)
    with ws.open("c", readonly=True) as coll:
        ans = qa.answer(coll, "What is the capital of France?", mode=mode)
    assert ans.mode == mode and ans.collection == "c" and ans.adapter is None
    assert len(ans.citations) == 3 and ans.answer_id
    assert 0 < ans.generated_tokens <= 6 and math.isfinite(ans.logprob) and ans.logprob <= 0
    assert sum(c.posterior for c in ans.citations) == pytest.approx(1.0, abs=1e-4)
    assert sum(c.contribution for c in ans.citations) == pytest.approx(1.0, abs=1e-3)
    assert ans.timings["total_s"] >= ans.timings["generate_s"] > 0


def test_kept_documents():
    lp = torch.log(torch.tensor([0.02, 0.70, 0.08, 0.20]))
    assert kept_documents(lp, 0.05) == [1, 2, 3]
    assert kept_documents(lp, 0.0) == [0, 1, 2, 3]
    assert kept_documents(lp, 0.9) == [1]  # the best document always stays


@pytest.mark.parametrize("mode", ["rag-sequence", "rag-token"])
def test_weak_documents_are_skipped(setup, mode):
    ws, _ = setup
    question = "What is the capital of France?"
    with ws.open("c", readonly=True) as coll:
        only_best = pipeline(setup, min_doc_posterior=0.99).answer(coll, question, mode=mode)
        ks = Retriever(ws.embedder, RetrieverConfig(k=1))
        alone = QAPipeline(ks, setup[1], QAConfig(max_new_tokens=6, answer_style="short")).answer(
            coll, question, mode=mode, abstain=False
        )
    # the same as retrieving the best chunk alone: one prompt, p(z|x) = 1
    assert only_best.raw_answer == alone.raw_answer
    assert only_best.logprob == pytest.approx(alone.logprob, abs=1e-4)
    assert len(only_best.citations) == 3  # every retrieved chunk is still cited ...
    shares = [c.contribution for c in only_best.citations]
    best = max(range(3), key=lambda i: only_best.citations[i].posterior)
    assert shares[best] == pytest.approx(1.0) and sum(shares) == pytest.approx(1.0)  # ... the others with share 0


def test_streaming_matches_final_answer(setup):
    ws, gen = setup
    qa = pipeline(setup)
    pieces: list[str] = []
    with ws.open("c", readonly=True) as coll:
        ans = qa.answer(coll, "Which city is in Norway?", mode="rag-token", on_token=pieces.append)
    assert ans.raw_answer, f"the tiny model produced no text: {ans}"
    assert len(pieces) >= 1
    assert "".join(pieces) == ans.raw_answer


def test_abstains_when_evidence_is_weak(setup):
    ws, _ = setup
    qa = pipeline(setup, abstain_min_score=1.01)  # no cosine reaches it
    with ws.open("c", readonly=True) as coll:
        ans = qa.answer(coll, "What is the capital of France?")
        assert ans.abstained and ans.answer == "I don't know." and "evidence score" in ans.abstain_reason
        assert ans.timings["generate_s"] == 0.0 and ans.citations
        forced = qa.answer(coll, "What is the capital of France?", abstain=False)
    assert not forced.abstained or "model" in forced.abstain_reason


def test_abstains_when_answer_is_unlikely(setup):
    ws, _ = setup
    qa = pipeline(setup, abstain_min_logprob=0.0)  # every real answer has log p < 0
    with ws.open("c", readonly=True) as coll:
        ans = qa.answer(coll, "What is the capital of Italy?")
    assert ans.abstained and "likelihood" in ans.abstain_reason


def test_bad_questions(setup):
    ws, _ = setup
    qa = pipeline(setup)
    with ws.open("c", readonly=True) as coll:
        with pytest.raises(QAError, match="empty"):
            qa.answer(coll, "   ")
        with pytest.raises(QAError, match="unknown mode"):
            qa.answer(coll, "hi", mode="magic")


def test_lora_adapter_changes_the_answer_distribution(setup, tmp_path):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    ws, gen = setup
    base = AutoModelForCausalLM.from_pretrained(gen.config.model)
    torch.manual_seed(1)
    peft_model = get_peft_model(
        base, LoraConfig(r=4, lora_alpha=64, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    )
    peft_model.save_pretrained(gen.adapters_dir / "noisy")
    assert gen.list_adapters() == ["noisy"]
    qa = pipeline(setup)
    with ws.open("c", readonly=True) as coll:
        plain = qa.answer(coll, "What is the capital of France?", mode="rag-token")
        adapted = qa.answer(coll, "What is the capital of France?", mode="rag-token", adapter="noisy")
        again = qa.answer(coll, "What is the capital of France?", mode="rag-token")
        with pytest.raises(AdapterError, match="not found"):
            qa.answer(coll, "What is the capital of France?", adapter="missing")
    assert adapted.adapter == "noisy"
    assert adapted.logprob != pytest.approx(plain.logprob, abs=1e-6)
    assert again.logprob == pytest.approx(plain.logprob, abs=1e-5)  # the adapter is off again


def test_batched_answers_equal_solo_answers(setup):
    """The server's path (continuous batching + prefix KV cache) answers exactly as the solo path, for
    concurrent questions of every mode, with and without an adapter-free cache warm-up."""
    import threading

    from rag.scheduler import Scheduler

    ws, gen = setup
    questions = [
        "What is the capital of France?",
        "Which city held fifty thousand people?",
        "Where is the Oslofjord?",
        "When was the Eiffel Tower finished?",
    ]
    jobs = [(q, mode) for q in questions for mode in ("rag-token", "stuff", "rag-sequence")]
    solo_qa = pipeline(setup, min_doc_posterior=0.0)
    with ws.open("c", readonly=True) as coll:
        solo = {job: solo_qa.answer(coll, job[0], mode=job[1]) for job in jobs}
        with Scheduler(gen.session, pad_token_id=gen.tokenizer.pad_token_id, max_batch_rows=16) as sched:
            batched_qa = pipeline(setup, min_doc_posterior=0.0)
            batched_qa.scheduler = sched
            got: dict = {}

            def ask(job):
                got[job] = batched_qa.answer(coll, job[0], mode=job[1])

            for _ in range(2):  # cold, then warm prefix cache
                threads = [threading.Thread(target=ask, args=(job,)) for job in jobs]
                for t in threads:
                    t.start()
                for t in threads:
                    t.join()
                for job in jobs:
                    assert got[job].raw_answer == solo[job].raw_answer, job
                    assert got[job].generated_tokens == solo[job].generated_tokens
                    assert got[job].logprob == pytest.approx(solo[job].logprob, abs=1e-4)
            assert sched.stats().completed >= 2 * len(questions) * 2  # rag-token + stuff joined the batch
    assert gen.prefix_cache.stats().hits > 0


# --------------------------------------------------------------------------- answer styles

MARKER = re.compile(r" ?\[(\d+)\]")


def test_short_style_is_unchanged_and_explicit(setup):
    """``style="short"`` on a full-style config answers exactly as a short-style config."""
    ws, _ = setup
    with ws.open("c", readonly=True) as coll:
        short = pipeline(setup).answer(coll, "What is the capital of France?", mode="rag-token")
        asked = pipeline(setup, answer_style="full").answer(
            coll, "What is the capital of France?", mode="rag-token", style="short"
        )
    assert short.style == asked.style == "short"
    assert asked.raw_answer == short.raw_answer and asked.answer == short.answer
    assert asked.generated_tokens == short.generated_tokens <= 6
    assert not MARKER.search(short.answer)
    if not short.abstained:
        assert [s.text for s in short.sentences] == [short.answer]
        assert all(1 <= n <= len(short.citations) for n in short.sentences[0].citations)


@pytest.mark.parametrize("mode", ["stuff", "rag-sequence", "rag-token"])
def test_full_style_budget_stop_and_markers(setup, mode):
    ws, gen = setup
    qa = pipeline(setup, answer_style="full", full_max_new_tokens=24, citation_min_share=0.2)
    with ws.open("c", readonly=True) as coll:
        ans = qa.answer(coll, "What is the capital of France?", mode=mode, abstain=False)
    assert ans.style == "full" and 0 < ans.generated_tokens <= 24  # the full budget, not max_new_tokens=6
    if ans.abstained:  # the tiny random model may say nothing
        assert ans.sentences == [] and ans.answer == "I don't know."
        return
    assert ans.sentences, ans.raw_answer
    # the answer is the sentences, in order, with their markers; every marker is a citation index
    plain, at = MARKER.sub("", ans.answer), 0
    for s in ans.sentences:
        at = plain.index(s.text, at) + len(s.text)
    for s in ans.sentences:
        # the model's own sentences, or (the guard left none: the tiny random model's are gibberish) a quote
        source = ans.raw_answer if ans.fallback is None else ans.citations[s.citations[0] - 1].text
        assert s.text in source and len(s.spans) == len(s.citations)
        for n, span in zip(s.citations, s.spans):
            assert 1 <= n <= len(ans.citations)
            if span is not None:
                assert 0 <= span[0] < span[1] <= len(ans.citations[n - 1].text)
        marks = "".join(f"[{n}]" for n in s.citations)
        assert marks in ans.answer
        if mode != "stuff":  # the posterior always names a document
            assert s.citations
    cited = {n for s in ans.sentences for n in s.citations}
    assert {int(n) for n in MARKER.findall(ans.answer)} == cited


def test_full_style_decoding_ends_on_its_stop_rule(setup, monkeypatch):
    """Full answers stop on the style's rule (:class:`rag.extract.FullReplyStop`: the model repeating
    itself), here replaced by one that fires after 5 tokens, in every mode."""
    ws, _ = setup
    seen: list[int] = []

    def stop_after_five(decode, **_):
        def stop(ids):
            seen.append(len(ids))
            return len(ids) >= 5

        return stop

    monkeypatch.setattr("rag.qa.FullReplyStop", stop_after_five)
    qa = pipeline(setup, answer_style="full", full_max_new_tokens=40)
    with ws.open("c", readonly=True) as coll:
        for mode in ("rag-token", "rag-sequence", "stuff"):
            ans = qa.answer(coll, "Where is the Oslofjord?", mode=mode, abstain=False)
            assert ans.generated_tokens <= 5, mode
    assert seen and max(seen) == 5


def test_batched_full_answers_carry_the_attribution(setup):
    """The scheduler's answers carry the per-document token log-probs: the same sentences and citations."""
    from rag.scheduler import Scheduler

    ws, gen = setup
    question = "Which city held fifty thousand people?"
    solo_qa = pipeline(setup, answer_style="full", full_max_new_tokens=16, min_doc_posterior=0.0)
    with ws.open("c", readonly=True) as coll:
        solo = solo_qa.answer(coll, question, mode="rag-token", abstain=False)
        with Scheduler(gen.session, pad_token_id=gen.tokenizer.pad_token_id, max_batch_rows=16) as sched:
            batched_qa = pipeline(setup, answer_style="full", full_max_new_tokens=16, min_doc_posterior=0.0)
            batched_qa.scheduler = sched
            batched = batched_qa.answer(coll, question, mode="rag-token", abstain=False)
    assert batched.raw_answer == solo.raw_answer and batched.answer == solo.answer
    assert [s.citations for s in batched.sentences] == [s.citations for s in solo.sentences]


def test_with_markers():
    from rag.qa import with_markers

    text = "Create it with venv. Then activate it!\nDone"
    spans = [(0, 20), (21, 38), (39, 43)]
    assert with_markers(text, spans, [[1], [1, 2], []]) == "Create it with venv [1]. Then activate it [1][2]!\nDone"


def test_with_markers_leaves_out_a_dropped_sentence_with_its_separator():
    from rag.qa import with_markers

    text = "Create it with venv. Zebras paint volcanoes.\n\nThen activate it!"
    spans = [(0, 20), (46, 63)]  # the middle sentence (21, 44) is left out
    got = with_markers(text, spans, [[1], [2]], gaps=[0, 44])
    assert got == "Create it with venv [1].\n\nThen activate it [2]!"


def test_full_answers_leave_out_sentences_the_chunks_do_not_support(setup, monkeypatch):
    """A full answer keeps its first sentence and every later one whose content words the chunks hold
    (``full_min_support``); an invented sentence is left out of the answer, its sentences and its markers."""
    import rag.qa as qa_module
    from rag.extract import FullReply

    ws, _ = setup
    text = "Paris is the capital of France. Zebras paint volcanoes purple. The Eiffel Tower was finished in 1889."
    real = qa_module.full_reply

    def scripted(ids, decode, eos):
        r = real(ids, decode, eos)
        n = len(r.token_ids)
        assert n >= 3, "the tiny model generated too few tokens to map three sentences onto"
        ends = [round((i + 1) * len(text) / n) for i in range(n)]
        spans = [(0, 31), (32, 62), (63, len(text))]
        return FullReply(text=text, token_ids=r.token_ids, token_ends=ends, spans=spans)

    monkeypatch.setattr(qa_module, "full_reply", scripted)
    with ws.open("c", readonly=True) as coll:
        kept = pipeline(setup, answer_style="full", full_max_new_tokens=24).answer(
            coll, "What is the capital of France?", mode="rag-token", abstain=False, k=2
        )
        every = pipeline(setup, answer_style="full", full_max_new_tokens=24, full_min_support=0.0).answer(
            coll, "What is the capital of France?", mode="rag-token", abstain=False, k=2
        )
    assert [s.text for s in every.sentences] == [text[0:31], text[32:62], text[63:]]
    assert [s.text for s in kept.sentences] == [text[0:31], text[63:]]
    assert "Zebras" not in kept.answer and "Zebras" in every.answer
    assert MARKER.sub("", kept.answer) == "Paris is the capital of France. The Eiffel Tower was finished in 1889."


def _script_reply(monkeypatch, text: str) -> None:
    """Full answers read ``text`` as the model's reply (its sentences mapped evenly onto the generated tokens)."""
    import rag.qa as qa_module
    from rag.attribution import sentence_spans
    from rag.extract import FullReply

    real = qa_module.full_reply
    spans = sentence_spans(text)

    def scripted(ids, decode, eos):
        r = real(ids, decode, eos)
        n = len(r.token_ids)
        assert n >= len(spans), "the tiny model generated too few tokens to map the sentences onto"
        ends = [round((i + 1) * len(text) / n) for i in range(n)]
        return FullReply(text=text, token_ids=r.token_ids, token_ends=ends, spans=spans)

    monkeypatch.setattr(qa_module, "full_reply", scripted)


def _full(setup, question: str, **qa):
    ws, _ = setup
    # the guard's tests see the guard alone: no quote added to short answers unless a test asks for it
    options = {"answer_style": "full", "full_max_new_tokens": 24, "min_doc_posterior": 0.0, "full_quote_min_words": 0}
    options |= qa
    with ws.open("c", readonly=True) as coll:
        return pipeline(setup, **options).answer(coll, question, mode="rag-token", abstain=False)


def test_full_answers_check_the_first_sentence_too(setup, monkeypatch):
    """An unsupported first sentence is left out like any other; the answer starts at the next kept one."""
    _script_reply(monkeypatch, "Zebras paint volcanoes purple. Paris is the capital of France. Giraffes sing.")
    ans = _full(setup, "What is the capital of France?")
    assert [s.text for s in ans.sentences] == ["Paris is the capital of France."]
    assert MARKER.sub("", ans.answer) == "Paris is the capital of France."
    assert ans.sentences_left_out == 2 and ans.fallback is None and not ans.abstained
    every = _full(setup, "What is the capital of France?", full_min_support=0.0)  # the guard off: all kept
    assert len(every.sentences) == 3 and every.sentences_left_out == 0 and every.fallback is None
    assert MARKER.sub("", every.answer).startswith("Zebras paint volcanoes purple.")


def test_unsupported_answers_fall_back_to_a_cited_quote(setup, monkeypatch):
    """No generated sentence is supported: the answer quotes the chunk sentences that best match the
    question, each citing the chunk it is copied from, and says so (``fallback == "extractive"``)."""
    _script_reply(monkeypatch, "Zebras paint volcanoes purple. Giraffes sing loudly.")
    ans = _full(setup, "What is the capital of France?")
    assert ans.fallback == "extractive" and not ans.abstained and ans.sentences_left_out == 2
    # the quote is one passage, as written, with one marker
    assert [s.text for s in ans.sentences] == ["Paris is the capital of France. The Eiffel Tower was finished in 1889."]
    for s in ans.sentences:
        assert len(s.citations) == 1
        chunk = ans.citations[s.citations[0] - 1].text
        start, end = s.spans[0]
        assert chunk[start:end] == s.text  # copied from the chunk it cites
    assert "Zebras" not in ans.answer and MARKER.findall(ans.answer)
    assert MARKER.sub("", ans.answer).startswith("Paris is the capital of France.")
    # the guard off: the unsupported reply stays, with no fallback
    off = _full(setup, "What is the capital of France?", full_min_support=0.0)
    assert off.fallback is None and MARKER.sub("", off.answer) == "Zebras paint volcanoes purple. Giraffes sing loudly."


def test_short_full_answers_go_on_with_the_quote_they_do_not_already_say(setup, monkeypatch):
    """An answer shorter than ``full_quote_min_words`` goes on with the best-matching chunk sentences it does not
    already say, copied as written, each citing its chunk and marked ``quoted``; the model's own sentence stays
    first and unmarked."""
    _script_reply(monkeypatch, "Paris is the capital of France.")
    ans = _full(setup, "What is the capital of France?", full_quote_min_words=60)
    own, *quoted = ans.sentences
    assert own.text == "Paris is the capital of France." and not own.quoted
    assert [s.text for s in quoted] == ["The Eiffel Tower was finished in 1889."]  # not the sentence it said
    for s in quoted:
        assert s.quoted and len(s.citations) == 1
        start, end = s.spans[0]
        assert ans.citations[s.citations[0] - 1].text[start:end] == s.text
    assert MARKER.sub("", ans.answer) == "Paris is the capital of France. The Eiffel Tower was finished in 1889."
    assert ans.fallback is None and not ans.abstained
    # long enough already (3 words asked for) or turned off (0): the model's answer alone
    for words in (3, 0):
        alone = _full(setup, "What is the capital of France?", full_quote_min_words=words)
        assert [s.text for s in alone.sentences] == ["Paris is the capital of France."]
        assert not any(s.quoted for s in alone.sentences)


def test_a_lead_in_whose_list_was_left_out_falls_back_to_the_quote(setup, monkeypatch):
    """A kept sentence that only announces what follows ("... is:") is left out when what follows was, so an
    answer that would only say "The capital of France is:" quotes the documents instead."""
    _script_reply(monkeypatch, "The capital of France is:\nZebras paint volcanoes purple.")
    ans = _full(setup, "What is the capital of France?")
    assert ans.fallback == "extractive" and ans.sentences_left_out == 2
    assert all(s.quoted for s in ans.sentences) and ans.sentences[0].text.startswith("Paris is the capital of France.")
    # a lead-in followed by a kept sentence stays
    _script_reply(monkeypatch, "The capital of France is:\nParis is the capital of France.")
    kept = _full(setup, "What is the capital of France?")
    assert kept.fallback is None and [s.text for s in kept.sentences][0] == "The capital of France is:"


def test_a_reply_with_no_sentence_falls_back_to_the_quote(setup, monkeypatch):
    """A reply with no sentence left (e.g. only "The answer is:\n\nThe answer is:", which full_reply cuts to
    nothing): with the guard on, the documents' best-matching passage answers; with it off, "I don't know"."""
    _script_reply(monkeypatch, "")
    ans = _full(setup, "What is the capital of France?")
    assert ans.fallback == "extractive" and not ans.abstained and ans.sentences[0].quoted
    off = _full(setup, "What is the capital of France?", full_min_support=0.0)
    assert off.abstained and off.abstain_reason == "the model gave no answer"


def test_unsupported_answers_without_a_good_quote_say_i_do_not_know(setup, monkeypatch):
    """When no chunk sentence holds enough of the question's words either, the answer is "I don't know"."""
    _script_reply(monkeypatch, "Zebras paint volcanoes purple. Giraffes sing loudly.")
    ans = _full(setup, "Which zebras paint volcanoes?")
    assert ans.abstained and ans.answer == "I don't know." and ans.fallback == "abstain"
    assert ans.sentences == [] and ans.abstain_reason == "the documents support no sentence of the answer"
    lenient = _full(setup, "Which zebras paint the capital?", full_fallback_min_overlap=0.2)
    assert lenient.fallback == "extractive" and "capital" in lenient.answer


def test_full_sentences_cite_the_chunks_that_hold_their_words(setup, monkeypatch):
    """A sentence drawing on two chunks cites both, whatever the posterior favours; without
    ``citation_by_overlap`` it cites the posterior's choice alone."""
    _script_reply(monkeypatch, "Paris and Rome are capitals. The Colosseum held fifty thousand people.")
    ans = _full(setup, "What is the capital of France?")
    assert len(ans.sentences) == 2
    first = {ans.citations[n - 1].doc_id for n in ans.sentences[0].citations}
    texts = [ans.citations[n - 1].text for n in ans.sentences[0].citations]
    assert any("Paris" in t for t in texts) and any("Rome" in t for t in texts), first
    assert all("Paris" in t or "Rome" in t for t in texts)  # every cited chunk holds a word of it
    second = [ans.citations[n - 1].text for n in ans.sentences[1].citations]
    assert second and all("Colosseum" in t for t in second)
    plain = _full(setup, "What is the capital of France?", citation_by_overlap=False, citation_min_share=0.99)
    assert all(len(s.citations) == 1 for s in plain.sentences)  # the top posterior document alone


def test_unknown_style(setup):
    ws, _ = setup
    with ws.open("c", readonly=True) as coll, pytest.raises(QAError, match="answer style"):
        pipeline(setup).answer(coll, "hi", style="long")


def test_style_prompts_and_their_cacheable_prefixes(setup):
    """The style's system message is part of the prompt ids (so cached prefix KV states of the two
    styles never mix); the question part is the same, and each style's shared head is its own."""
    from rag.prompts import FULL_SYSTEM, SYSTEM

    _, gen = setup
    short_prefix, short_suffix = gen.prompt_parts("Where is Oslo?", ["Oslo is in Norway."], one_shot=False)
    full_prefix, full_suffix = gen.prompt_parts("Where is Oslo?", ["Oslo is in Norway."], one_shot=False, style="full")
    assert short_suffix == full_suffix and short_prefix != full_prefix
    assert SYSTEM in gen.tokenizer.decode(short_prefix) and FULL_SYSTEM in gen.tokenizer.decode(full_prefix)
    assert gen.prompt_ids("Where is Oslo?", ["x"], one_shot=False) == sum(
        gen.prompt_parts("Where is Oslo?", ["x"], one_shot=False), []
    )
    short_spec = gen.prefix_spec([(short_prefix, short_suffix)], one_shot=False)
    full_spec = gen.prefix_spec([(full_prefix, full_suffix)], one_shot=False, style="full")
    assert short_spec is not None and full_spec is not None
    for spec, prefix, system in ((short_spec, short_prefix, SYSTEM), (full_spec, full_prefix, FULL_SYSTEM)):
        shared = spec.shared_lengths[0]
        assert spec.lengths == [len(prefix)] and 0 < shared < len(prefix)
        assert system in gen.tokenizer.decode(prefix[:shared])  # the shared head holds the style's system turn


def test_full_answers_stop_at_a_sentence_the_chunks_do_not_support(setup, monkeypatch):
    """With ``full_stop_unsupported`` the full style's stop rule gets a check built from the chunks read: an
    invented claim fails it (decoding ends there), a sentence of the documents passes; off, or with the guard
    off, no check."""
    import rag.qa as qa_module

    ws, _ = setup
    checks: list = []
    real = qa_module.FullReplyStop

    def capture(decode, sentence_ok=None, **kw):
        checks.append(sentence_ok)
        return real(decode, sentence_ok=sentence_ok, **kw)

    monkeypatch.setattr(qa_module, "FullReplyStop", capture)
    question = "What is the capital of France?"
    with ws.open("c", readonly=True) as coll:
        for settings in ({}, {"full_stop_unsupported": False}, {"full_min_support": 0.0}):
            qa = pipeline(setup, answer_style="full", full_max_new_tokens=8, min_doc_posterior=0.0, **settings)
            qa.answer(coll, question, mode="rag-token", abstain=False, k=10)  # every chunk read
    on, off, guard_off = checks
    assert off is None and guard_off is None and on is not None
    assert not on("Zebras paint volcanoes purple every winter.")
    assert on("Zebras paint.")  # fewer than three content words: not a claim to stop on
    assert on("Paris is the capital of France.")
