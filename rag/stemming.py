"""English plural folding (Harman's S-stemmer), the one stemmer of ragqa.

Used by BM25 tokenisation (:mod:`rag.bm25`, so "Normans" matches "Norman") and by the answer
cleaner (:mod:`rag.extract`, to tell a restated question from an answer).
"""

from __future__ import annotations

import functools

__all__ = ["s_stem"]


@functools.lru_cache(maxsize=1 << 16)
def s_stem(word: str) -> str:
    """Harman's (1991) S-stemmer: fold English plurals, leave everything else alone.

    ``"theories" -> "theory"``, ``"normans" -> "norman"``, ``"classes" -> "classe"``; words of three
    letters or fewer, words with a digit, and words ending in "us" or "ss" are kept as they are.
    Expects lower-case words.
    """
    if len(word) <= 3 or not word.isalpha():
        return word
    if word.endswith("ies") and not word.endswith(("eies", "aies")):
        return word[:-3] + "y"
    if word.endswith("es") and not word.endswith(("aes", "ees", "oes")):
        return word[:-1]
    if word.endswith("s") and not word.endswith(("us", "ss")):
        return word[:-1]
    return word
