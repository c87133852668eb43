"""The pure parts of bench/longform.py: ROUGE-L, the supported-sentence rate, citation precision, FAQ parsing."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from bench.longform import (
    citation_precision,
    content_words,
    is_question,
    lcs_length,
    parse_faq_html,
    ragqa_answer,
    rouge_l,
    split_sentences,
    strip_markers,
    support_share,
    supported_sentence_rate,
)


class TestRougeL:
    def test_lcs_classic_example(self):
        assert lcs_length(list("ABCBDAB"), list("BDCABA")) == 4
        assert lcs_length([], list("abc")) == 0

    def test_hand_computed(self):
        # LCS "the cat on the mat" = 5; P = 5/6, R = 5/7, F1 = 2PR/(P+R) = 10/13
        p, r, f = rouge_l("the cat sat on the mat", "the cat is on the mat today")
        assert p == pytest.approx(5 / 6)
        assert r == pytest.approx(5 / 7)
        assert f == pytest.approx(10 / 13)

    def test_reversed_order_keeps_one_word(self):
        assert rouge_l("a b c d", "d c b a") == pytest.approx((0.25, 0.25, 0.25))

    def test_case_and_punctuation_are_ignored(self):
        assert rouge_l("The CAT, sat.", "the cat sat")[2] == pytest.approx(1.0)

    def test_no_words_or_nothing_in_common_scores_zero(self):
        assert rouge_l("", "the cat") == (0.0, 0.0, 0.0)
        assert rouge_l("dog", "the cat") == (0.0, 0.0, 0.0)


class TestSupportedSentences:
    def test_content_words_leave_out_function_words(self):
        assert content_words("It is a module of the library, x.") == ["module", "library"]

    def test_rate(self):
        sentences = [
            # use, venv, module, create, environments: all found -> supported
            (
                "Use the venv module to create environments [1].",
                ["Use the venv module to create lightweight environments."],
            ),
            # pickle, stores, objects, json, files: 2/5 found -> not supported
            ("Pickle stores objects in JSON files.", ["The pickle module serializes objects."]),
            # only function words: left out
            ("It is so.", ["anything"]),
            # cites nothing -> not supported
            ("Threads share memory.", []),
        ]
        assert supported_sentence_rate(sentences) == pytest.approx(1 / 3)

    def test_threshold_is_inclusive(self):
        words = "alpha beta gamma delta epsilon zeta theta iota kappa lambda".split()
        sentence = " ".join(words)
        seven = " ".join(words[:7])
        assert support_share(sentence, [seven]) == pytest.approx(0.7)
        assert supported_sentence_rate([(sentence, [seven])]) == 1.0
        assert supported_sentence_rate([(sentence, [" ".join(words[:6])])]) == 0.0

    def test_evidence_is_the_union_of_the_cited_chunks(self):
        assert support_share("alpha beta", ["alpha", "beta"]) == 1.0

    def test_nothing_to_count(self):
        assert supported_sentence_rate([]) is None
        assert supported_sentence_rate([("It is.", ["x"])]) is None


def test_markers_and_sentences():
    assert (
        strip_markers("Create it with venv [1]. Then activate it [1][2].") == "Create it with venv. Then activate it."
    )
    assert split_sentences("One. Two? Three!\n\n- four\n- five") == ["One.", "Two?", "Three!", "- four", "- five"]
    assert split_sentences("Use os.path.join() e.g. here.") == ["Use os.path.join() e.g. here."]


def test_citation_precision():
    page = "faq/programming.html"
    sources = ["/usr/share/doc/python3.11/html/faq/programming.html", "/x/library/os.html", "faq/programming.html"]
    assert citation_precision(sources, page) == pytest.approx(2 / 3)
    assert citation_precision([], page) is None


def _citation(index, source, text, contribution):
    return SimpleNamespace(index=index, source=source, text=text, contribution=contribution)


class TestRagqaAnswer:
    cites = [_citation(1, "/d/faq/a.html", "alpha text", 0.7), _citation(2, "/d/library/b.html", "beta text", 0.0)]

    def test_without_sentences_one_sentence_cites_every_contributing_chunk(self):
        ans = SimpleNamespace(answer="Alpha it is [1].", abstained=False, citations=self.cites, timings={})
        out = ragqa_answer(ans, 1.5)
        assert out.sentences == [("Alpha it is.", ["alpha text"])]
        assert out.cited_sources == ["/d/faq/a.html"]
        assert out.latency_s == 1.5

    def test_with_sentences_each_cites_its_own_chunks(self):
        sentences = [SimpleNamespace(text="Alpha.", citations=[1]), SimpleNamespace(text="Beta.", citations=[2, 1])]
        ans = SimpleNamespace(
            answer="Alpha [1]. Beta [2][1].", abstained=False, citations=self.cites, sentences=sentences, timings={}
        )
        out = ragqa_answer(ans, 0.1)
        assert out.sentences == [("Alpha.", ["alpha text"]), ("Beta.", ["beta text", "alpha text"])]
        assert sorted(out.cited_sources) == ["/d/faq/a.html", "/d/library/b.html"]

    def test_quoted_words_are_counted(self):
        sentences = [
            SimpleNamespace(text="Alpha it is.", citations=[1]),
            SimpleNamespace(text="Beta text says so.", citations=[2], quoted=True),
        ]
        ans = SimpleNamespace(
            answer="Alpha it is [1]. Beta text says so [2].",
            abstained=False,
            citations=self.cites,
            sentences=sentences,
            timings={},
        )
        out = ragqa_answer(ans, 0.1)
        assert out.quoted_words == 4
        from bench.longform import FaqEntry, Row, SystemResult

        entry = FaqEntry("faq/a.html", "a", "Alpha?", "Alpha it is.")
        summary = SystemResult([Row(entry, out, 0.5, 0.5, 1.0, 1.0)]).summary()
        assert summary["quoted_word_share"] == 4 / 7  # of the 7 words shown, markers aside

    def test_abstention_has_no_sentences(self):
        ans = SimpleNamespace(answer="I don't know.", abstained=True, citations=self.cites, sentences=[], timings={})
        out = ragqa_answer(ans, 0.1)
        assert out.abstained and out.sentences == [] and out.cited_sources == []


FAQ_HTML = """<html><body>
<div class="sphinxsidebar"><h3>Navigation</h3></div>
<div class="body" role="main">
<section id="programming-faq"><h1>Programming FAQ<a class="headerlink" href="#programming-faq">¶</a></h1>
<div class="topic"><p class="topic-title">Contents</p></div>
<section id="general-questions"><h2>General Questions<a class="headerlink" href="#g">¶</a></h2>
<section id="is-there-a-debugger"><h3><a class="toc-backref" href="#id1">Is there a debugger?</a><a class="headerlink" href="#d">¶</a></h3>
<p>Yes. The <a href="../library/pdb.html">pdb</a> module is a simple
but adequate debugger.</p>
<pre>import pdb; pdb.set_trace()</pre>
<section id="nested-sub-question"><h4>What about IDEs?</h4><p>Many IDEs include one.</p></section>
</section>
<section id="short"><h3>Why so short?</h3><p>Because.</p></section>
<section id="a-statement"><h3>My class defines __del__ but it is not called</h3><p>Long enough answer text here.</p></section>
<section id="how-to"><h3>How do I copy a file</h3><p>Use shutil.copy() from the standard library.</p></section>
</section></section></div></body></html>"""


class TestFaqParsing:
    def test_entries(self):
        entries = parse_faq_html(FAQ_HTML, "faq/programming.html")
        assert [(e.anchor, e.question) for e in entries] == [
            ("is-there-a-debugger", "Is there a debugger?"),
            ("nested-sub-question", "What about IDEs?"),
            ("short", "Why so short?"),
            ("how-to", "How do I copy a file"),
        ]
        debugger = entries[0]
        assert debugger.page == "faq/programming.html"
        # the body without the heading, the headerlink or the nested section; code kept
        assert debugger.answer == "Yes. The pdb module is a simple but adequate debugger. import pdb; pdb.set_trace()"

    def test_min_words(self):
        entries = parse_faq_html(FAQ_HTML, "faq/programming.html", min_words=4)
        assert [e.anchor for e in entries] == ["is-there-a-debugger", "nested-sub-question", "how-to"]

    def test_is_question(self):
        assert is_question("Why can’t lambda expressions contain statements?")
        assert is_question("How do I copy a file")
        assert not is_question("General Questions")
        assert not is_question("Table of Contents")


class TestSweep:
    def test_settings_are_validated_qa_configs(self):
        from bench.longform import parse_sweep
        from rag.config import QAConfig

        base = QAConfig(full_min_support=0.6)
        (label, cfg), (_, off) = parse_sweep(
            ["full_min_support=0.7,citation_by_overlap=false", "full_min_support=0"], base
        )
        assert label == "full_min_support=0.7,citation_by_overlap=false"
        assert cfg.full_min_support == 0.7 and cfg.citation_by_overlap is False and cfg.mode == base.mode
        assert off.full_min_support == 0.0 and base.full_min_support == 0.6
        for bad in ["full_min_support", "no_such_field=1", "full_min_support=2"]:
            with pytest.raises(SystemExit, match="--sweep"):
                parse_sweep([bad], base)

    def test_replies_are_generated_once_per_prompt(self):
        from bench.longform import replaying_strategy
        from rag.strategies import STRATEGIES

        calls = []

        class Inner:
            mode = "rag-token"

            def select_documents(self, doc_logprobs, config):
                return [0]

            def generate(self, decoder, generator, config, request):
                calls.append(request.question)
                return f"reply to {request.question} #{len(calls)}"

            def sentence_posteriors(self, *args):
                return args

        replay = replaying_strategy(Inner())
        assert replay.mode == "rag-token" and STRATEGIES["rag-token"] is not replay
        req = SimpleNamespace(question="q1", contexts=["c"], style="full", max_new_tokens=8)
        assert replay.generate(None, None, None, req) == replay.generate(None, None, None, req) == "reply to q1 #1"
        other = SimpleNamespace(question="q2", contexts=["c"], style="full", max_new_tokens=8)
        assert replay.generate(None, None, None, other) == "reply to q2 #2" and calls == ["q1", "q2"]
        assert replay.select_documents(None, None) == [0] and replay.sentence_posteriors(1, 2) == (1, 2)
