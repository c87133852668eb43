"""From the model's reply to a short answer, and when decoding may stop."""

from __future__ import annotations

import pytest

from rag.extract import (
    FullReplyStop,
    clean_answer,
    full_reply,
    prompt_echo_start,
    repetition_start,
    reply_complete,
    strip_restatement,
)


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


# --------------------------------------------------------------------------- full style

WORDS = {1: "To", 2: " create", 3: " it", 4: ",", 5: " run", 6: " venv", 7: ".", 8: " Then", 9: " activate", 10: "!"}
EOS = 0


def _decode(ids):
    return "".join(WORDS[i] for i in ids if i != EOS).strip()


def test_repetition_start():
    assert repetition_start([1, 2, 3, 4, 1, 2, 3, 5], n=3) == 4
    assert repetition_start([1, 2, 3, 4, 5], n=3) is None
    assert repetition_start([1, 2], n=3) is None


def test_full_reply_stop_on_repeated_tokens_or_sentence():
    stop = FullReplyStop(_decode, n=4)
    assert not stop([1, 2, 3, 4, 5, 6, 7])
    assert stop([1, 2, 3, 4, 5, 6, 7, 8, 1, 2, 3, 4])  # "To create it," seen before
    sentence_stop = FullReplyStop(_decode, n=50)
    assert not sentence_stop([5, 6, 7, 8, 9, 10])
    assert sentence_stop([5, 6, 7, 8, 9, 10, 5, 6, 7])  # "run venv." again


def test_full_reply_stop_on_a_sentence_that_fails_the_check():
    checked: list[str] = []

    def ok(sentence: str) -> bool:
        checked.append(sentence)
        return "activate" not in sentence

    stop = FullReplyStop(_decode, n=50, sentence_ok=ok)
    assert not stop([1, 2, 3, 4, 5])  # no finished sentence yet
    assert not stop([1, 2, 3, 4, 5, 6, 7])  # "To create it, run venv." passes
    assert not stop([1, 2, 3, 4, 5, 6, 7, 8, 9])  # "Then activate" is not finished
    assert stop([1, 2, 3, 4, 5, 6, 7, 8, 9, 10])  # "Then activate!" fails: stop
    assert stop([8, 9, 10])  # a first sentence that fails stops too (no per-row state)
    assert checked.count("To create it, run venv.") == 1  # each verdict is computed once
    without = FullReplyStop(_decode, n=50)
    assert not without([1, 2, 3, 4, 5, 6, 7, 8, 9, 10])


def test_full_reply_keeps_finished_sentences():
    # ended on eos: everything kept
    reply = full_reply([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, EOS], _decode, [EOS])
    assert [reply.text[a:b] for a, b in reply.spans] == ["To create it, run venv.", "Then activate!"]
    assert reply.token_ids == [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]
    assert reply.token_ends[-1] == len(reply.text) and reply.token_ends == sorted(reply.token_ends)
    # cut by the budget: the unfinished last sentence goes
    cut = full_reply([1, 2, 3, 4, 5, 6, 7, 8, 9], _decode, [EOS])
    assert [cut.text[a:b] for a, b in cut.spans] == ["To create it, run venv."]
    # only one, unfinished sentence: kept rather than nothing
    alone = full_reply([1, 2, 3, 4, 5], _decode, [EOS])
    assert [alone.text[a:b] for a, b in alone.spans] == ["To create it, run"]
    # a looping reply: the repetition and the repeated sentence go
    loop = full_reply([5, 6, 7, 8, 9, 10, 5, 6, 7, EOS], _decode, [EOS])
    assert [loop.text[a:b] for a, b in loop.spans] == ["run venv.", "Then activate!"]


def test_a_new_prompt_turn_ends_the_answer():
    words = {**WORDS, 11: "\n\nQuestion", 12: ":", 13: " Context"}
    decode = lambda ids: "".join(words[i] for i in ids if i != EOS).strip()  # noqa: E731
    assert prompt_echo_start("Done.\n\nQuestion: why?") == 5 and prompt_echo_start("A question: why?") is None
    assert FullReplyStop(decode)([5, 6, 7, 11, 12]) and not FullReplyStop(decode)([5, 6, 7, 13, 12])
    reply = full_reply([5, 6, 7, 11, 12, 8, 9, 10], decode, [EOS])
    assert [reply.text[a:b] for a, b in reply.spans] == ["run venv."]
    unfinished = full_reply([5, 6, 7, 8, 9, 11, 12, 8, 9, 10, EOS], decode, [EOS])
    assert [unfinished.text[a:b] for a, b in unfinished.spans] == ["run venv."]


def test_full_reply_drops_an_answer_lead_in():
    words = ["", "The answer is:", " Normandy", " is", " in", " France.", " It", " is", " old."]

    def decode(ids):
        return "".join(words[i] for i in ids if i != EOS).strip()

    reply = full_reply([1, 2, 3, 4, 5, 6, 7, 8, EOS], decode, [EOS])
    assert [reply.text[a:b] for a, b in reply.spans] == ["Normandy is in France.", "It is old."]
    only = full_reply([1, EOS], decode, [EOS])
    assert only.spans == []
    plain = ["", "The answer is", " to", " use", " venv."]

    def decode_plain(ids):
        return "".join(plain[i] for i in ids if i != EOS).strip()

    kept = full_reply([1, 2, 3, 4, EOS], decode_plain, [EOS])
    assert [kept.text[a:b] for a, b in kept.spans] == ["The answer is to use venv."]
