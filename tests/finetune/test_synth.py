"""Synthetic question/answer pairs from a collection's chunks: cloze heuristics and generated questions."""

from __future__ import annotations

import json
import os
import re
import subprocess

import pytest

from finetune.data import read_jsonl, write_jsonl
from finetune.synth import (
    SynthError,
    answer_candidates,
    clean_generated_question,
    cloze_question,
    sentence_spans,
    synthesize,
)
from ingest.config import ChunkingConfig, EmbedderConfig, IngestConfig
from ingest.workspace import Workspace
from tests.conftest import ragqa_cmd

DOCS = {
    "paris.txt": (
        "Paris is the capital of France. The Eiffel Tower was finished in 1889 for the World's Fair. "
        "Gustave Eiffel's company built the tower. The tower is 330 metres tall and weighs about 10,000 tonnes.\n\n"
        "In 2016, the tower was repainted by a team of 25 painters. About 45% of the visitors came from abroad."
    ),
    "rome.txt": (
        "Rome is the capital of Italy. The Colosseum held fifty thousand people at its games.\n\n"
        "Construction of the Colosseum was ordered by Emperor Vespasian. The arena was finished in 80 under Titus, "
        "and the building has survived since then with about 80 entrances."
    ),
    "curie.md": (
        "# Marie Curie\n\n"
        "Marie Curie won the Nobel Prize in Physics on 10 December 1903. She was born in Warsaw in 1867.\n\n"
        "## Later work\n\n"
        "- The Radium Institute was founded in 1914 in Paris.\n"
        "- She received a second Nobel Prize in 1911, this time in Chemistry.\n\n"
        "```\ncode 1999 should be ignored\n```\n"
    ),
    "notes.txt": "no sentences here\njust lower case fragments without names",
}


@pytest.fixture(scope="module")
def ws(tmp_path_factory, tiny_st_model):
    root = tmp_path_factory.mktemp("synth")
    docs = root / "docs"
    docs.mkdir()
    for name, text in DOCS.items():
        (docs / name).write_text(text, encoding="utf-8")
    workspace = Workspace(
        root / "home",
        IngestConfig(
            embedder=EmbedderConfig(model=str(tiny_st_model)),
            chunking=ChunkingConfig(chunk_tokens=48, overlap_tokens=8),
        ),
    )
    assert workspace.ingest([docs], "c").ok
    return workspace


@pytest.fixture(scope="module")
def chunks(ws):
    with ws.open("c", readonly=True) as coll:
        rows = list(coll.store.iter_chunks())
    assert len(rows) >= 4
    return rows


def on_topic(context: str, answer: str) -> str:
    """A well-formed question that shares two words with the context and does not give the answer away."""
    words = [w for w in re.findall(r"[A-Za-z]{5,}", context) if w.lower() not in answer.lower()][:2]
    return f"Which detail about {' and '.join(words)} does the passage give?"


def question_for(sentence: str, answer: str) -> tuple[str, str] | None:
    cands = [c for c in answer_candidates(sentence) if sentence[c.start : c.end] == answer]
    assert cands, f"{answer!r} is not a candidate in {sentence!r}: {answer_candidates(sentence)}"
    return cloze_question(sentence, cands[0])


class TestCloze:
    def test_sentences_skip_headings_code_and_fragments(self):
        text = DOCS["curie.md"] + "\n\nlower case fragment without a stop"
        sentences = [text[s:e] for s, e in sentence_spans(text)]
        assert "Marie Curie won the Nobel Prize in Physics on 10 December 1903." in sentences
        assert "The Radium Institute was founded in 1914 in Paris." in sentences  # list marker dropped
        assert not any("code 1999" in s or s.startswith("#") or "fragment" in s for s in sentences)

    def test_sentence_split_keeps_abbreviations(self):
        text = "Lewis et al. proposed retrieval-augmented generation in 2020. Dr. Watson wrote the long report."
        assert [text[s:e] for s, e in sentence_spans(text)] == [
            "Lewis et al. proposed retrieval-augmented generation in 2020.",
            "Dr. Watson wrote the long report.",
        ]

    @pytest.mark.parametrize(
        ("sentence", "answer", "question"),
        [
            (
                "The Eiffel Tower was finished in 1889 for the World's Fair.",
                "1889",
                "In what year was the Eiffel Tower finished for the World's Fair?",
            ),
            (
                "In 2016, the tower was repainted by a team of painters.",
                "2016",
                "In what year was the tower repainted by a team of painters?",
            ),
            ("The company has operated since 1998 in Paris.", "1998", "Since when has the company operated in Paris?"),
            (
                "Marie Curie won the Nobel Prize in Physics on 10 December 1903.",
                "10 December 1903",
                "Marie Curie won the Nobel Prize in Physics on what date?",
            ),
            (
                "Marie Curie won the Nobel Prize in Physics on 10 December 1903.",
                "Marie Curie",
                "Who won the Nobel Prize in Physics on 10 December 1903?",
            ),
            (
                "The tower is 330 metres tall and weighs about 10,000 tonnes.",
                "10,000",
                "The tower is 330 metres tall and weighs about how many tonnes?",
            ),
            (
                "The Colosseum held fifty thousand people at its games.",
                "fifty thousand",
                "The Colosseum held how many people at its games?",
            ),
            (
                "About 45% of the visitors came from abroad.",
                "45%",
                "About what percentage of the visitors came from abroad?",
            ),
            (
                "Gustave Eiffel's company built the tower for the fair.",
                "Gustave Eiffel",
                "Whose company built the tower for the fair?",
            ),
            (
                "The retrieved passage is simply concatenated with the input before it is fed to BART.",
                "BART",
                "The retrieved passage is simply concatenated with the input before it is fed to what?",
            ),
        ],
    )
    def test_wh_questions(self, sentence, answer, question):
        assert question_for(sentence, answer) == (question, "wh")

    def test_falls_back_to_a_blank(self):
        q, form = question_for("It is a SQLite document store plus a small index.", "SQLite")
        assert form == "blank" and q == "It is a ___ document store plus a small index?"

    def test_no_candidates_in_parentheses_or_ranges(self):
        s = "The loader detects the encoding (Latin-1 or UTF-16) and needs 30 to 40 vectors per cell."
        found = [s[c.start : c.end] for c in answer_candidates(s)]
        assert "Latin-1" not in found and "UTF-16" not in found and "40" not in found


class TestSynthesize:
    def test_cloze_pairs_are_exact_spans_with_questions(self, chunks):
        result = synthesize(chunks, seed=0)
        pairs = result.pairs
        assert len(pairs) >= 6
        by_id = {c.chunk_id: c.text for c in chunks}
        for p in pairs:
            line = p.to_json()
            assert set(line) == {"question", "answer", "contexts", "source", "chunk_id", "method"}
            assert line["contexts"] == [by_id[p.chunk_id]] and p.answer in line["contexts"][0]
            assert p.answer.strip() == p.answer and p.answer not in p.question
            assert p.question.endswith("?") and p.question.count("?") == 1 and p.method == "cloze"
            assert p.source.endswith((".txt", ".md"))
        questions = [p.question.lower() for p in pairs]
        assert len(set(questions)) == len(questions)
        report = result.report
        assert report.pairs == len(pairs) and report.per_method == {"cloze": len(pairs)}
        assert report.chunks_total == len(chunks) and 0 < report.chunks_used <= report.chunks_with_candidates
        assert sum(report.per_kind.values()) == len(pairs) and {"year", "number"} <= set(report.per_kind)
        assert "code 1999" not in " ".join(questions)

    def test_deterministic_with_a_seed(self, chunks):
        a = [p.to_json() for p in synthesize(chunks, seed=7, n=5).pairs]
        b = [p.to_json() for p in synthesize(list(reversed(chunks)), seed=7, n=5).pairs]
        assert a == b and len(a) == 5
        c = [p.to_json() for p in synthesize(chunks, seed=8, n=5).pairs]
        assert c != a  # another seed, another sample

    def test_n_spreads_over_chunks(self, chunks):
        result = synthesize(chunks, seed=0, n=3)
        assert len(result.pairs) == 3 and result.report.chunks_used == 3

    def test_written_file_is_valid_sft_data(self, chunks, tmp_path):
        pairs = synthesize(chunks, seed=0).pairs
        path = tmp_path / "synth.jsonl"
        write_jsonl(path, [p.to_json() for p in pairs])
        examples = read_jsonl(path, "sft")
        assert [(e.question, e.answer) for e in examples] == [(p.question, p.answer) for p in pairs]

    def test_bad_arguments(self, chunks):
        with pytest.raises(SynthError, match="unknown method"):
            synthesize(chunks, method="magic")
        with pytest.raises(SynthError, match="needs a generator"):
            synthesize(chunks, method="generate")
        with pytest.raises(SynthError, match="at least 1"):
            synthesize(chunks, n=0)

    def test_generate_keeps_only_well_formed_questions(self, chunks):
        calls = []

        def writer(context: str, answer: str) -> str:
            calls.append((context, answer))
            k = len(calls) % 3
            if k == 0:
                return "garbage without a question mark"
            if k == 1:
                return "Question: " + on_topic(context, answer) + "\nextra line"
            return f"Is the answer {answer}?"  # leaks the answer: rejected

        result = synthesize(chunks, seed=0, method="generate", n=3, write_question=writer)
        assert result.pairs and all(p.method == "generate" and p.form == "llm" for p in result.pairs)
        assert all(p.question.startswith("Which detail about") and p.question.endswith("?") for p in result.pairs)
        assert all(p.answer in p.context and (p.context, p.answer) in calls for p in result.pairs)
        rep = result.report
        assert rep.generate_attempts == len(calls) <= 12
        assert rep.generate_rejected + rep.duplicates + len(result.pairs) == len(calls) and rep.generate_rejected >= 2

    def test_both_methods(self, chunks):
        result = synthesize(chunks, seed=0, method="both", n=6, write_question=on_topic)
        assert set(result.report.per_method) == {"cloze", "generate"}
        assert result.report.per_method["cloze"] >= 1 and result.report.per_method["generate"] >= 1

    def test_clean_generated_question(self):
        assert (
            clean_generated_question('Q: "When was the tower finished?" It was 1889.', "1889")
            == "When was the tower finished?"
        )
        assert clean_generated_question("when was it?", "x") is None  # lower-case start
        assert clean_generated_question("What?", "x") is None  # too short
        assert clean_generated_question("", "x") is None
        ctx = "The Eiffel Tower was finished in 1889 for the World's Fair in Paris."
        assert (
            clean_generated_question("When was the Eiffel Tower finished?", "1889", ctx)
            == "When was the Eiffel Tower finished?"
        )
        assert (
            clean_generated_question("What is the best way to tune a neural network?", "1889", ctx) is None
        )  # off topic

    def test_generate_with_the_tiny_llm(self, chunks, tmp_path, tiny_llm):
        from finetune.synth import generator_question_writer
        from rag.config import GeneratorConfig
        from rag.generator import Generator

        gen = Generator(GeneratorConfig(model=str(tiny_llm)), tmp_path / "models", tmp_path / "adapters")
        writer = generator_question_writer(gen, max_new_tokens=12)
        raw = writer(chunks[0].text, "1889")
        assert isinstance(raw, str)
        result = synthesize(chunks, seed=0, method="generate", n=2, max_attempts=3, write_question=writer)
        assert result.report.generate_attempts == 3 or len(result.pairs) == 2
        for p in result.pairs:  # a random model rarely writes a usable question; whatever is kept is valid
            assert p.answer in p.context and p.question.endswith("?")


@pytest.mark.integration
def test_cli_synth(ws, tmp_path, tiny_st_model):
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAGQA_")}
    env.update({"RAGQA_HOME": str(ws.home), "RAGQA_INGEST__EMBEDDER__MODEL": str(tiny_st_model)})
    out = tmp_path / "pairs.jsonl"
    proc = subprocess.run(
        ragqa_cmd() + ["finetune", "synth", "-c", "c", "--output", str(out), "--n", "4", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    lines = [ln for ln in proc.stdout.splitlines() if ln.strip()]
    assert len(lines) == 1
    summary = json.loads(lines[0])
    assert summary["ok"] and summary["pairs"] == 4 and summary["per_method"] == {"cloze": 4}
    assert len(read_jsonl(out, "sft")) == 4

    proc = subprocess.run(
        ragqa_cmd() + ["finetune", "synth", "-c", "nope", "--output", str(out), "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2 and json.loads(proc.stdout)["ok"] is False
    proc = subprocess.run(
        ragqa_cmd() + ["finetune", "synth", "-c", "c", "--output", str(out), "--method", "x"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2 and "unknown method" in proc.stderr
