"""Training files: line-numbered errors, too-small datasets, contexts, and the shipped examples."""

from __future__ import annotations

import json

import pytest

from finetune.data import DataError, Example, parse_records, read_jsonl, write_jsonl
from tests.conftest import DATA

EXAMPLES = DATA / "finetune"


def write(path, lines):
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


class TestReadJsonl:
    def test_malformed_lines_are_reported_with_line_numbers(self, tmp_path):
        path = write(
            tmp_path / "bad.jsonl",
            [
                json.dumps({"question": "q1", "answer": "a1"}),
                "{not json",
                json.dumps(["a", "list"]),
                json.dumps({"question": "q4"}),
                "",
                json.dumps({"question": "q6", "answer": "a6", "contexts": "not a list"}),
                json.dumps({"question": "q7", "answer": "a7"}),
            ],
        )
        with pytest.raises(DataError) as info:
            read_jsonl(path, "sft")
        msg = str(info.value)
        assert "4 malformed line(s)" in msg
        for line in (2, 3, 4, 6):
            assert f"{path}:{line}:" in msg
        assert f"{path}:1:" not in msg and f"{path}:7:" not in msg
        assert "not valid JSON" in msg and "expected a JSON object" in msg and "answer" in msg

    def test_lenient_mode_keeps_the_good_lines(self, tmp_path):
        path = write(
            tmp_path / "mixed.jsonl",
            [
                json.dumps({"question": "q1", "answer": "a1"}),
                "{oops",
                json.dumps({"question": "q3", "answer": "a3"}),
            ],
        )
        examples = read_jsonl(path, "sft", strict=False)
        assert [e.question for e in examples] == ["q1", "q3"] and [e.line for e in examples] == [1, 3]

    def test_too_small_and_empty_datasets_are_errors(self, tmp_path):
        one = write(tmp_path / "one.jsonl", [json.dumps({"question": "q", "answer": "a"})])
        with pytest.raises(DataError, match="1 usable sft record"):
            read_jsonl(one, "sft")
        assert len(read_jsonl(one, "sft", min_examples=1)) == 1
        empty = write(tmp_path / "empty.jsonl", ["# only a comment", ""])
        with pytest.raises(DataError, match="0 usable"):
            read_jsonl(empty, "preference")
        with pytest.raises(DataError, match="does not exist"):
            read_jsonl(tmp_path / "missing.jsonl", "sft")

    def test_not_utf8_is_an_error(self, tmp_path):
        path = tmp_path / "latin1.jsonl"
        path.write_bytes('{"question": "caf\xe9", "answer": "x"}\n'.encode("latin-1") * 2)
        with pytest.raises(DataError, match="UTF-8"):
            read_jsonl(path, "sft")

    def test_contexts_handling(self, tmp_path):
        path = write(
            tmp_path / "ctx.jsonl",
            [
                json.dumps({"question": "q1", "answer": "a1", "context": "one passage"}),
                json.dumps({"question": "q2", "answer": "a2", "contexts": ["p1", " ", "p2"]}),
                json.dumps({"question": "q3", "answer": "a3"}),
                json.dumps({"question": "q4", "answer": "a4", "context": "   "}),
            ],
        )
        ex = read_jsonl(path, "sft")
        assert [e.contexts for e in ex] == [["one passage"], ["p1", "p2"], [], []]
        bad = write(
            tmp_path / "badctx.jsonl",
            [
                json.dumps({"question": "q1", "answer": "a1", "contexts": ["ok", 3]}),
                json.dumps({"question": "q2", "answer": "a2", "context": ["not", "a string"]}),
            ],
        )
        with pytest.raises(DataError) as info:
            read_jsonl(bad, "sft")
        assert "'contexts' must be a list of strings" in str(info.value)
        assert "'context' must be a string" in str(info.value)

    def test_kinds_check_their_own_fields(self):
        lines = [
            json.dumps({"question": "q", "chosen": "c", "rejected": "r"}),
            json.dumps({"question": "q", "answer": "a"}),
        ]
        prefs, errors = parse_records(lines, "preference")
        assert len(prefs) == 1 and prefs[0].chosen == "c" and prefs[0].rejected == "r" and prefs[0].answer is None
        assert len(errors) == 1 and errors[0].startswith("<data>:2:") and "chosen" in errors[0]
        prompts, errors = parse_records(lines, "prompt")
        assert len(prompts) == 2 and not errors
        with pytest.raises(ValueError, match="unknown data kind"):
            parse_records(lines, "rlhf")

    def test_write_then_read_round_trip(self, tmp_path):
        records = [Example("q1", answer="a1", contexts=["c1"]), {"question": "q2", "answer": "a2"}]
        path = tmp_path / "out" / "sft.jsonl"
        assert write_jsonl(path, records) == 2
        back = read_jsonl(path, "sft")
        assert [(e.question, e.answer, e.contexts) for e in back] == [("q1", "a1", ["c1"]), ("q2", "a2", [])]
        assert not list(path.parent.glob("*.tmp"))


class TestShippedExamples:
    """data/finetune/: every file parses, answers are extractive, sizes match the README."""

    def test_sft(self):
        ex = read_jsonl(EXAMPLES / "sft.jsonl", "sft")
        assert len(ex) >= 40
        assert all(e.contexts and e.answer in e.contexts[0] for e in ex)
        assert len({e.question for e in ex}) == len(ex)

    def test_preferences(self):
        ex = read_jsonl(EXAMPLES / "preferences.jsonl", "preference")
        assert len(ex) >= 30
        assert all(e.contexts and e.chosen in e.contexts[0] and e.chosen != e.rejected for e in ex)

    def test_prompts(self):
        ex = read_jsonl(EXAMPLES / "prompts.jsonl", "prompt")
        assert len(ex) >= 20 and all(e.contexts for e in ex)

    def test_readme_describes_the_formats(self):
        text = (EXAMPLES / "README.md").read_text(encoding="utf-8")
        for word in ("sft.jsonl", "preferences.jsonl", "prompts.jsonl", "chosen", "rejected", "contexts"):
            assert word in text
