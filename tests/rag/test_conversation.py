"""Follow-up questions: the history-aware query (pure), the bounds on the history, the check of a
condensed question, and the condenser's greedy decoding on a tiny in-process model."""

from __future__ import annotations

import pytest
import torch

from rag.config import ConversationConfig, GeneratorConfig
from rag.conversation import (
    Condenser,
    Turn,
    accept_condensed,
    condense_messages,
    history_query,
    recent,
    standalone_question,
)
from rag.errors import InvalidInputError
from rag.generator import Generator

EIFFEL = [Turn("Who designed the Eiffel Tower?", "Gustave Eiffel's company")]


class TestHistoryQuery:
    def test_previous_question_then_follow_up(self):
        assert history_query("When was it built?", EIFFEL) == "Who designed the Eiffel Tower? When was it built?"

    def test_turns_counts_previous_questions_oldest_first(self):
        history = [Turn("q1?", "a1"), Turn("q2?", "a2"), Turn("q3?", "a3")]
        assert history_query(" now? ", history, turns=2) == "q2? q3? now?"
        assert history_query("now?", [], turns=2) == "now?"

    def test_standalone_question_history_method(self):
        cfg = ConversationConfig(method="history")
        assert standalone_question("When was it built?", EIFFEL, config=cfg).startswith("Who designed the Eiffel")
        assert standalone_question("  When was it built? ", [], config=cfg) == "When was it built?"  # no history

    def test_unknown_method_and_missing_generator(self):
        with pytest.raises(InvalidInputError, match="unknown conversation method"):
            standalone_question("q?", EIFFEL, method="guess")
        with pytest.raises(InvalidInputError, match="needs the generator"):
            standalone_question("q?", EIFFEL, method="condense")


class TestRecent:
    def test_max_turns_and_chars(self):
        history = [Turn(f"question {i}?", "x" * 50) for i in range(6)]
        assert [t.question for t in recent(history, 3, 10_000)] == ["question 3?", "question 4?", "question 5?"]
        kept = recent(history, 6, 130)  # each turn is 61 characters: two fit
        assert [t.question for t in kept] == ["question 4?", "question 5?"]
        assert recent(history, 0, 10_000) == []

    def test_latest_turn_is_cut_not_dropped(self):
        (turn,) = recent([Turn("a long question?" * 10, "a long answer " * 10)], 3, 40)
        assert len(turn.question) + len(turn.answer) <= 40 and turn.question.startswith("a long question?")


class TestAcceptCondensed:
    def test_accepts_a_rewrite(self):
        out = 'Rewritten question: "When was the Eiffel Tower built?"\nmore text'
        assert accept_condensed(out, "When was it built?") == "When was the Eiffel Tower built?"

    @pytest.mark.parametrize(
        "output",
        [
            "",
            "   \n  ",
            "The Eiffel Tower was built in 1889.",  # an answer, not a question
            "Who designed the Eiffel Tower?",  # another question: drops the follow-up's own words
            "When was " + "very " * 80 + "it built?",  # runs long
        ],
    )
    def test_rejects_unusable_output(self, output):
        assert accept_condensed(output, "When was it built?") is None

    def test_prompt_holds_the_conversation_and_the_question(self):
        messages = condense_messages("When was it built?", [Turn("Who designed the tower in Paris?", "Eiffel")])
        assert messages[0]["role"] == "system" and messages[-1]["role"] == "user"
        assert "Who designed the tower in Paris?" in messages[-1]["content"]
        assert "Assistant: Eiffel" in messages[-1]["content"]
        assert messages[-1]["content"].rstrip().endswith("Rewritten question:")
        assert "Last question: When was it built?" in messages[-1]["content"]


@pytest.fixture(scope="module")
def generator(tiny_llm, tmp_path_factory):
    home = tmp_path_factory.mktemp("conv")
    return Generator(GeneratorConfig(model=str(tiny_llm)), home / "models", home / "adapters").warm_up()


class TestCondenser:
    def test_greedy_within_the_budget(self, generator):
        condenser = Condenser(generator, ConversationConfig(condense_max_new_tokens=6))
        raw = condenser.generate("When was it built?", EIFFEL)
        assert raw == condenser.generate("When was it built?", EIFFEL)  # greedy: deterministic
        ids = condenser.prompt_ids("When was it built?", EIFFEL)
        with torch.no_grad():
            ref = generator.model.generate(
                torch.tensor([ids]), max_new_tokens=6, do_sample=False, pad_token_id=generator.tokenizer.pad_token_id
            )[0, len(ids) :].tolist()
        # the same tokens as transformers' greedy search, cut where the condenser stops (line end, "?")
        assert any(generator.decode(ref[:n]) == raw for n in range(1, 7)), (raw, generator.decode(ref))
        assert len(generator.tokenizer.encode(raw, add_special_tokens=False)) <= 7

    def test_prompt_uses_the_chat_template(self, generator):
        text = generator.tokenizer.decode(Condenser(generator).prompt_ids("When was it built?", EIFFEL))
        assert "Who designed the Eiffel Tower?" in text and "When was it built?" in text
        assert text.rstrip().endswith("assistant")  # ends on the assistant header: the model writes the rewrite

    def test_unusable_rewrite_falls_back_to_the_question(self, generator):
        cfg = ConversationConfig(method="condense", condense_max_new_tokens=8)
        condenser = Condenser(generator, cfg)
        raw = condenser.generate("When was it built?", EIFFEL)  # a random model: not a usable rewrite
        assert accept_condensed(raw, "When was it built?") is None, raw
        out = standalone_question("When was it built?", EIFFEL, config=cfg, generator=generator)
        assert out == "When was it built?"

    def test_no_history_no_model_call(self, generator):
        cfg = ConversationConfig(method="condense")
        assert Condenser(generator, cfg).condense(" Who built it? ", []) == "Who built it?"
        assert (
            standalone_question(
                "Who built it?", [Turn("q", "a")], config=cfg.model_copy(update={"max_turns": 0}), generator=generator
            )
            == "Who built it?"
        )
