"""Which documents support each sentence of an answer: pure maths and text, no model.

A ``full`` answer (:data:`rag.config.QAConfig.answer_style`) is split into sentences; each sentence
is attributed to the retrieved documents from the model's own document posterior, restricted to the
sentence's tokens (notation of :mod:`rag.marginalize`: ``K`` documents, ``T`` answer tokens,
``token_logprobs[k, i] = log p(y_i | x, z_k, y_<i)``, ``doc_logprobs[k] = log p(z_k | x)``):

* RAG-Token (:func:`rag_token_sentence_posteriors`): the mean over the sentence's tokens of the
  per-token posterior ``w_ki = softmax_k(log p(z_k|x) + log p(y_i|x,z_k,y_<i))``;
* RAG-Sequence (:func:`rag_sequence_sentence_posteriors`):
  ``p(z_k | x, y_s) ∝ p(z_k|x) prod_{i in s} p(y_i|x,z_k,y_<i)``;
* stuff (:func:`overlap_shares`): one prompt holds every chunk, so there is no per-document
  likelihood; a sentence's share of chunk k is its content-word overlap with the chunk.

:func:`choose_documents` cites the top document of a sentence and every other one whose share is at
least a threshold; :func:`cite_supporting` filters and extends that choice by content-word overlap, so that the
cited chunks hold the sentence's words; :func:`supporting_span` finds, in a cited chunk, the sentence that best
supports it.

The sentence-support guard of ``full`` answers: :func:`supported_sentences` keeps the sentences whose content
words the chunks the model read hold; when none is left, :func:`extractive_fallback` quotes the chunk sentences
that best match the question (or nothing, and the answer is "I don't know").
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import combinations

import torch

from rag.marginalize import rag_sequence_doc_posterior, token_contributions
from rag.stemming import s_stem

__all__ = [
    "choose_documents",
    "cite_supporting",
    "content_words",
    "extractive_fallback",
    "is_filler",
    "is_lead_in",
    "Quote",
    "is_finished",
    "overlap_shares",
    "quote_runs",
    "rag_sequence_sentence_posteriors",
    "rag_token_sentence_posteriors",
    "sentence_spans",
    "supported_sentences",
    "support_share",
    "supporting_span",
    "token_sentence_spans",
    "unsaid_sentences",
    "without_dangling_lead_ins",
]

_WORD = re.compile(r"\w+", re.UNICODE)
_STOPWORDS = frozenset(
    """a an the of in on at to for from by with and or but not no is are was were be been being it its this that
    these those which who whom what when where why how as if then than so such can could may might must shall
    should will would do does did done has have had having you your yours we our they their them he she his her
    i me my there here also into onto over under about after before all any each some more most other only own
    same very just use used using one""".split()
)
#: a sentence ends at . ! ? (and closing quotes / brackets / backticks), before whitespace
_SENTENCE_END = re.compile(r"[.!?][\"')\]`*”’]*(?=\s)")
_ABBREVIATIONS = ("e.g.", "i.e.", "etc.", "vs.", "cf.")
_FINISHED = re.compile(r"[.!?][\"')\]`*”’]*$")


def content_words(text: str) -> set[str]:
    """The lower-cased, plural-folded (:func:`rag.stemming.s_stem`) words of ``text`` that are not stopwords.

    A code identifier is one word (``list_list`` is not ``list``); one-character tokens (``x``, ``0``) are left
    out: found in almost any chunk, they would make an invented line of code look supported.
    """
    return {s_stem(w) for w in (m.group(0).lower() for m in _WORD.finditer(text)) if len(w) > 1 and w not in _STOPWORDS}


def sentence_spans(text: str) -> list[tuple[int, int]]:
    """Char spans ``[start, end)`` of the sentences of ``text``, surrounding whitespace excluded.

    A sentence ends at ``.``, ``!`` or ``?`` (with closing quotes / brackets) followed by whitespace,
    except after "e.g." and similar, and at every line break (list items, code lines).
    """
    cuts: list[int] = []
    for line in re.finditer(r"[^\n]+", text):
        start = line.start()
        for m in _SENTENCE_END.finditer(line.group(0)):
            end = line.start() + m.end()
            if text[start:end].lower().endswith(_ABBREVIATIONS):
                continue
            cuts += [start, end]
            start = end
        cuts += [start, line.end()]
    spans = []
    for a, b in zip(cuts[::2], cuts[1::2]):
        piece = text[a:b]
        stripped = piece.strip()
        if stripped:
            lead = len(piece) - len(piece.lstrip())
            spans.append((a + lead, a + lead + len(stripped)))
    return spans


def is_finished(sentence: str) -> bool:
    """True when ``sentence`` ends with sentence-final punctuation."""
    return _FINISHED.search(sentence.rstrip()) is not None


def token_sentence_spans(token_ends: Sequence[int], spans: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    """The tokens of each sentence, as ``[first, last + 1)`` token index ranges.

    Args:
        token_ends: ``T`` char offsets, ``token_ends[i]`` = length of the text of tokens ``0..i``
            (non-decreasing); token i covers chars ``[token_ends[i-1], token_ends[i])``.
        spans: sentence char spans (:func:`sentence_spans`), in order.

    A token belongs to the first sentence its chars overlap (a token such as ``". The"`` goes to the
    sentence whose full stop it holds); tokens of whitespace between sentences belong to none. A sentence whose
    chars no token covers (impossible for text decoded from the tokens) gets an empty range.
    """
    out = []
    t = 0
    for start, end in spans:
        while t < len(token_ends) and token_ends[t] <= start:
            t += 1
        first = t
        while t < len(token_ends) and token_ends[t] < end:
            t += 1
        last = min(t + 1, len(token_ends))  # the token that reaches the sentence's end
        out.append((first, max(first, last)))
        t = last
    return out


def _mask(spans: Sequence[tuple[int, int]], length: int, device: torch.device) -> torch.Tensor:
    """``(S, T)`` bool, True on each sentence's tokens."""
    mask = torch.zeros((len(spans), length), dtype=torch.bool, device=device)
    for s, (a, b) in enumerate(spans):
        mask[s, a:b] = True
    return mask


def rag_token_sentence_posteriors(
    token_logprobs: torch.Tensor, doc_logprobs: torch.Tensor, spans: Sequence[tuple[int, int]]
) -> torch.Tensor:
    """RAG-Token document posterior of each sentence: the mean over its tokens of
    ``w_ki = softmax_k(log p(z_k|x) + log p(y_i|x,z_k,y_<i))`` (:func:`rag.marginalize.token_contributions`
    with the sentence's mask; a sentence without tokens gets the prior p(z|x)).

    Args:
        token_logprobs: ``(K, T)`` per-document log-probs of the chosen answer tokens.
        doc_logprobs: ``(K,)`` log p(z|x).
        spans: ``S`` token ranges (:func:`token_sentence_spans`).

    Returns:
        ``(S, K)``, rows summing to 1.
    """
    if not spans:
        return token_logprobs.new_zeros((0, token_logprobs.shape[0]))
    mask = _mask(spans, token_logprobs.shape[-1], token_logprobs.device)
    return token_contributions(token_logprobs.unsqueeze(0).expand(len(spans), -1, -1), doc_logprobs, mask)


def rag_sequence_sentence_posteriors(
    token_logprobs: torch.Tensor, doc_logprobs: torch.Tensor, spans: Sequence[tuple[int, int]]
) -> torch.Tensor:
    """RAG-Sequence document posterior of each sentence,
    ``p(z_k|x,y_s) ∝ p(z_k|x) prod_{i in s} p(y_i|x,z_k,y_<i)``
    (:func:`rag.marginalize.rag_sequence_doc_posterior` with the sentence's mask).

    Entries of ``-inf`` (fast decoding: documents that did not generate the answer) get posterior 0.

    Args:
        token_logprobs: ``(K, T)``; doc_logprobs: ``(K,)``; spans: ``S`` token ranges.

    Returns:
        ``(S, K)``, rows summing to 1.
    """
    if not spans:
        return token_logprobs.new_zeros((0, token_logprobs.shape[0]))
    mask = _mask(spans, token_logprobs.shape[-1], token_logprobs.device)
    return rag_sequence_doc_posterior(token_logprobs.unsqueeze(0).expand(len(spans), -1, -1), doc_logprobs, mask)


def support_share(sentence: str, chunks: Sequence[str]) -> float | None:
    """Share of ``sentence``'s content words (:func:`content_words`) found in ``chunks``; None when it has none."""
    words = content_words(sentence)
    if not words:
        return None
    found: set[str] = set()
    for chunk in chunks:
        found |= content_words(chunk)
    return len(words & found) / len(words)


class ClaimCheck:
    """Whether a sentence may be followed by more of the reply: True unless it makes a claim (at least
    ``min_words`` content words) of which less than ``min_support`` is found in ``chunks`` (the
    words of the chunks are read once, for every sentence checked)."""

    def __init__(self, chunks: Sequence[str], min_support: float, min_words: int = 3) -> None:
        self.found: set[str] = set().union(*(content_words(c) for c in chunks))
        self.min_support, self.min_words = min_support, min_words

    def __call__(self, sentence: str) -> bool:
        words = content_words(sentence)
        return len(words) < self.min_words or len(words & self.found) / len(words) >= self.min_support


def supported_sentences(sentences: Sequence[str], chunks: Sequence[str], min_support: float) -> list[int]:
    """Indices of the ``sentences`` to keep: each, the first included, whose :func:`support_share` in ``chunks``
    is at least ``min_support`` or that has no content words (``min_support`` 0 keeps every sentence)."""
    found: set[str] = set().union(*(content_words(c) for c in chunks))  # the chunks' words, read once
    keep = []
    for i, sentence in enumerate(sentences):
        words = content_words(sentence)
        if not words or len(words & found) / len(words) >= min_support:
            keep.append(i)
    return keep


def is_filler(sentence: str) -> bool:
    """True when ``sentence`` says nothing: no word of two or more letters ("1.", "-"), or a Markdown code fence."""
    text = sentence.strip()
    return text.startswith("```") or not re.search(r"[^\W\d_]{2}", text)


def is_lead_in(sentence: str) -> bool:
    """True when ``sentence`` only announces what follows it (it ends with ``:``, e.g. "The steps are:")."""
    return sentence.rstrip().rstrip("*`").endswith(":")


def without_dangling_lead_ins(sentences: Sequence[str], keep: Sequence[int]) -> list[int]:
    """``keep`` less the fillers (:func:`is_filler`: "1.", a code fence) and the lead-ins (:func:`is_lead_in`)
    whose next sentence is not kept: a kept "The steps are:" before a left-out (or missing) list promises an
    answer it does not give."""
    kept = {i for i in keep if not is_filler(sentences[i])}

    def announces_kept(i: int) -> bool:  # the next sentence that says something ("1." aside) is kept
        nxt = next((j for j in range(i + 1, len(sentences)) if not is_filler(sentences[j])), None)
        return nxt is not None and nxt in kept

    return [i for i in keep if i in kept and (not is_lead_in(sentences[i]) or announces_kept(i))]


def _overlap(words: set[str], text: str) -> float:
    return len(words & content_words(text)) / len(words) if words else 0.0


def overlap_shares(sentences: Sequence[str], chunks: Sequence[str]) -> torch.Tensor:
    """Each sentence's share of each chunk by content-word overlap (stuff mode's attribution).

    ``overlap[s, k]`` = share of sentence s's content words found in chunk k; each row is normalised
    to sum to 1 (a row without any overlap stays all zeros: nothing supports that sentence).

    Returns:
        ``(S, K)`` float32.
    """
    raw = torch.tensor(
        [[_overlap(content_words(s), c) for c in chunks] for s in sentences], dtype=torch.float32
    ).reshape(len(sentences), len(chunks))
    total = raw.sum(-1, keepdim=True)
    return torch.where(total > 0, raw / total.clamp(min=1e-12), 0.0)


def choose_documents(shares: torch.Tensor | Sequence[float], min_share: float) -> list[int]:
    """The documents a sentence cites: the one with the largest share, then every other with a share
    of at least ``min_share``, in decreasing order of share; none when every share is 0.

    Args:
        shares: ``(K,)`` non-negative shares of one sentence.
    """
    values = [float(v) for v in (shares.tolist() if isinstance(shares, torch.Tensor) else shares)]
    order = sorted(range(len(values)), key=lambda k: (-values[k], k))
    if not order or values[order[0]] <= 0:
        return []
    return [order[0]] + [k for k in order[1:] if values[k] >= min_share and values[k] > 0]


def supporting_span(sentence: str, chunk: str) -> tuple[int, int] | None:
    """Char span ``[start, end)`` in ``chunk`` of its sentence with the highest content-word overlap
    with ``sentence`` (the first on ties), or None when no chunk sentence shares a content word."""
    words = content_words(sentence)
    best, best_score = None, 0.0
    for start, end in sentence_spans(chunk):
        score = _overlap(words, chunk[start:end])
        if score > best_score:
            best, best_score = (start, end), score
    return best


def _coverage(words: set[str], chunk_words: Sequence[set[str]], docs: Sequence[int]) -> int:
    found: set[str] = set()
    for d in docs:
        found |= chunk_words[d]
    return len(words & found)


#: :func:`cite_supporting` searches the smallest extension exactly up to this many candidate chunks, greedily beyond
_EXACT_EXTENSION = 10


def cite_supporting(
    sentence: str, chunks: Sequence[str], shares: torch.Tensor | Sequence[float], min_share: float
) -> list[int]:
    """The documents a sentence cites: the posterior's choice (:func:`choose_documents`) filtered and extended by
    content-word overlap, so that the cited chunks hold every content word of the sentence that the ``chunks``
    hold together.

    1. Of the documents :func:`choose_documents` picks from ``shares``, those that share no content word with
       the sentence are dropped (the posterior may favour a chunk that holds none of its words).
    2. When the rest miss some of the sentence's words that other chunks hold, the smallest set of further
       chunks that covers them is added (ties: the larger sum of ``shares``; exact up to
       ``_EXACT_EXTENSION`` candidates, greedy beyond), in decreasing order of share.

    A sentence without content words keeps the posterior's choice; one that no chunk shares a word with cites
    nothing.

    Args:
        sentence: the answer sentence.
        chunks: the ``K`` chunk texts.
        shares: ``(K,)`` the sentence's share of each chunk (document posterior or overlap).
        min_share: :func:`choose_documents`'s threshold.

    Returns:
        Indices into ``chunks``, the posterior's choice first.
    """
    values = [float(v) for v in (shares.tolist() if isinstance(shares, torch.Tensor) else shares)]
    chosen = choose_documents(values, min_share)
    words = content_words(sentence)
    if not words:
        return chosen
    chunk_words = [content_words(c) & words for c in chunks]
    cited = [d for d in chosen if chunk_words[d]]
    target = _coverage(words, chunk_words, range(len(chunks)))
    if _coverage(words, chunk_words, cited) == target:
        return cited
    candidates = [d for d in range(len(chunks)) if d not in cited and chunk_words[d]]
    if len(candidates) <= _EXACT_EXTENSION:
        extra = _smallest_extension(words, chunk_words, cited, candidates, values, target)
    else:
        extra = _greedy_extension(words, chunk_words, cited, candidates, values, target)
    return cited + sorted(extra, key=lambda d: (-values[d], d))


def _smallest_extension(
    words: set[str],
    chunk_words: Sequence[set[str]],
    cited: list[int],
    candidates: list[int],
    values: list[float],
    target: int,
) -> list[int]:
    """The fewest ``candidates`` that bring ``cited`` to ``target`` covered words (ties: the larger share sum)."""
    for size in range(1, len(candidates) + 1):
        best: tuple[int, ...] | None = None
        for combo in combinations(candidates, size):
            if _coverage(words, chunk_words, cited + list(combo)) == target and (
                best is None or sum(values[d] for d in combo) > sum(values[d] for d in best)
            ):
                best = combo
        if best is not None:
            return list(best)
    return candidates


def _greedy_extension(
    words: set[str],
    chunk_words: Sequence[set[str]],
    cited: list[int],
    candidates: list[int],
    values: list[float],
    target: int,
) -> list[int]:
    """Add the candidate that covers the most missing words (ties: the larger share) until ``target``."""
    extra: list[int] = []
    left = list(candidates)
    while _coverage(words, chunk_words, cited + extra) < target and left:
        have = _coverage(words, chunk_words, cited + extra)
        best = max(left, key=lambda d: (_coverage(words, chunk_words, cited + extra + [d]) - have, values[d], -d))
        extra.append(best)
        left.remove(best)
    return extra


@dataclass(frozen=True)
class Quote:
    """Sentences quoted from one chunk: ``chunk`` (index into the chunks), ``span`` ``[start, end)`` in its text,
    ``text`` the quoted text and ``overlap`` the share of the question's content words it holds."""

    chunk: int
    span: tuple[int, int]
    text: str
    overlap: float


def _asks(sentence: str) -> bool:
    return sentence.rstrip().endswith("?")


def _breaks(sentence: str) -> bool:
    """A quote stops before this sentence: a lead-in ("Consider the following code:") or a line of an interactive
    session (``>>>`` / ``...``), which a quote cut by its word budget would leave unfinished."""
    return is_lead_in(sentence) or sentence.lstrip().startswith((">>>", "..."))


def quote_runs(spans: Sequence[tuple[int, int]], text: str) -> list[tuple[int, int]]:
    """``spans`` of ``text`` merged into runs: consecutive ones with only whitespace between them become one."""
    runs: list[tuple[int, int]] = []
    for a, b in spans:
        if runs and not text[runs[-1][1] : a].strip():
            runs[-1] = (runs[-1][0], b)
        else:
            runs.append((a, b))
    return runs


#: :func:`extractive_fallback` quotes sentences until it has at least this many words (or ``max_sentences``)
QUOTE_MIN_WORDS = 25


def unsaid_sentences(quote: Quote, said: str, min_support: float = 0.7) -> list[tuple[int, int]]:
    """Spans (in the quoted chunk) of the sentences of ``quote`` that ``said`` does not already say: those with content
    words of which less than ``min_support`` are in ``said`` (a sentence without content words is left out)."""
    found = content_words(said)
    base = quote.span[0]
    out = []
    for a, b in sentence_spans(quote.text):
        words = content_words(quote.text[a:b])
        if words and len(words & found) / len(words) < min_support:
            out.append((base + a, base + b))
    return out


def extractive_fallback(
    question: str,
    chunks: Sequence[str],
    weights: Sequence[float] | None = None,
    min_overlap: float = 0.5,
    max_sentences: int = 3,
    min_words: int = QUOTE_MIN_WORDS,
) -> Quote | None:
    """The chunk sentence that best matches ``question``, quoted with the sentences after it in its chunk.

    Only whole sentences (ending with ``.``, ``!`` or ``?``) or lead-ins start a quote: a heading or a list item
    alone says nothing.

    Every sentence (:func:`sentence_spans`) of every chunk is scored by the share of the question's content
    words it holds (ties: the larger ``weights[k]``, e.g. the document posterior, then the earlier chunk and
    sentence). A sentence that asks (ends with ``?``, e.g. a FAQ heading) is never quoted: the sentence after
    it scores as well as it does, since that is where its answer starts. The best one starts the quote, which
    runs on through the chunk's next sentences, up to the next one that asks, is unfinished (a heading), a lead-in or
    a line of an interactive session (unless the best one is itself a lead-in), until it has ``min_words`` words or
    ``max_sentences`` sentences.

    Returns:
        The quote, or None when the question has no content words or the best sentence holds less than
        ``min_overlap`` of them (then nothing in the chunks answers it well enough to quote).
    """
    words = content_words(question)
    if not words or not chunks:
        return None
    w = list(weights) if weights is not None else [0.0] * len(chunks)
    best: tuple[float, float, int, int] | None = None  # (overlap, weight, -chunk, -sentence)
    spans_of = [sentence_spans(c) for c in chunks]
    for k, (chunk, spans) in enumerate(zip(chunks, spans_of)):
        texts = [chunk[a:b] for a, b in spans]
        for j, text in enumerate(texts):
            if _asks(text) or not (is_finished(text) or is_lead_in(text)):  # a heading, a list item, a code line
                continue
            score = _overlap(words, text)
            if j and _asks(texts[j - 1]):
                score = max(score, _overlap(words, texts[j - 1]))
            key = (score, w[k], -k, -j)
            if best is None or key > best:
                best = key
    if best is None or best[0] <= 0 or best[0] < min_overlap:
        return None
    k, j = -best[2], -best[3]
    spans = spans_of[k]
    end = j
    lead_in = is_lead_in(chunks[k][spans[j][0] : spans[j][1]])  # then what it announces is the answer: go on
    while (
        end + 1 < len(spans)
        and end + 1 - j < max_sentences
        and not _asks(nxt := chunks[k][spans[end + 1][0] : spans[end + 1][1]])
        and (lead_in or (is_finished(nxt) and not _breaks(nxt) and not is_filler(nxt)))
        and len(chunks[k][spans[j][0] : spans[end][1]].split()) < min_words
    ):
        end += 1
    span = (spans[j][0], spans[end][1])
    return Quote(chunk=k, span=span, text=chunks[k][span[0] : span[1]], overlap=best[0])
