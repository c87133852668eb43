"""From the model's reply to a short answer, and when decoding may stop."""

from __future__ import annotations

import pytest

from rag.extract import clean_answer, reply_complete, strip_restatement


@pytest.mark.parametrize(
    "reply, expected",
    [
        ('"the 1889 World\'s Fair".\nMore text', "the 1889 World's Fair"),
        ("Answer: Paris.", "Paris"),
        ("U.S.", "U.S."),
        ("The answer is: William of Montreuil. He led the army.", "William of Montreuil"),
        ("The answer is: The answer is: Ladner", "Ladner"),
        ("The answer is:\n\nTijuana.", "Tijuana"),
        ("The answer is [Santa Fe].", "Santa Fe"),
        ("", ""),
    ],
)
def test_clean_answer(reply, expected):
    assert clean_answer(reply) == expected


@pytest.mark.parametrize(
    "reply, question, expected",
    [
        (
            "The border to the south is the Mexico–United States border.",
            "What is the name of the border to the south?",
            "the Mexico–United States border",
        ),
        (
            "The other city that maintains the districts is Riverside",
            "What other city maintains the districts?",
            "Riverside",
        ),
        ("The naval base was called Dyrrachium", "What was the naval base called?", "Dyrrachium"),
        # the subject is not a restatement (a word the question lacks): keep the reply
        (
            "The integer factorization problem is a computational problem",
            "What problem is associated with primes?",
            "The integer factorization problem is a computational problem",
        ),
        # nothing after the copula: keep the reply
        ("The naval base is", "What is the naval base?", "The naval base is"),
        ("Riverside", "Which city?", "Riverside"),
    ],
)
def test_restated_question_is_dropped(reply, question, expected):
    assert clean_answer(reply, question) == expected


def test_strip_restatement_matches_plural_forms():
    assert strip_restatement("The Normans were from Normandy", "Where was the Norman from?") == "from Normandy"


@pytest.mark.parametrize(
    "text, done",
    [
        ("The answer is:", False),
        ("The answer is:\n", False),  # a lead-in alone: the answer is still to come
        ("The answer is:\n\nTiju", False),
        ("Tijuana", False),
        ("Tijuana\n", True),
        ("The answer is: Tijuana. The", True),
        ("U.S. Army", False),  # an abbreviation is not a sentence end
        ("It was 1066. Then", True),
    ],
)
def test_reply_complete(text, done):
    assert reply_complete(text) is done
    if done:  # stopping there loses nothing clean_answer keeps
        assert clean_answer(text) == clean_answer(text + " more words.\nAnd more.")
