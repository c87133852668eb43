"""Validated configuration of the generation layer."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class GeneratorConfig(BaseModel):
    model: str = Field(
        "SmolLM2-135M-Instruct",
        description="Bundled name, a local Hugging Face model folder, or a hub id (where a hub is reachable).",
    )
    gguf_file: str | None = Field(None, description="GGUF file inside `model` when it is a GGUF folder.")
    device: str = Field("auto", description="'auto' (cuda when available), 'cpu', 'cuda', 'cuda:1', ...")
    dtype: str = Field(
        "auto",
        description="'auto' (bfloat16 on GPU and on CPUs with bf16 matmuls: AMX, AVX512-BF16; else float32), "
        "'float32', 'bfloat16', 'float16'.",
    )
    int8_decode: Literal["auto", "on", "off"] = Field(
        "auto",
        description="Decode steps read an int8 copy of the weights (half the bytes of bf16, a quarter of float32; "
        "prefill keeps the model's weights). 'auto': on for a bf16 model on a CPU, where decoding is memory-bound; "
        "'on' also serves float32 CPU models (fbgemm's dynamic int8 linear with per-row activation scales in every "
        "decode step: 1.1-1.25x the answers/s on a 2-core AVX2 CPU, but batched greedy answers then differ from solo "
        "ones more often); 'off' decodes with the model's own weights.",
    )
    prefix_cache_bytes: int = Field(
        1 << 30,
        ge=0,
        description="Budget of the prompt-prefix KV cache (system prompt + context chunk, reused across questions; "
        "least recently used entries are evicted). 0 turns it off. SmolLM2-135M: ~46 KB per token in float32, "
        "~12 MB per 265-token chunk prompt.",
    )
    cudnn_attention: bool = Field(
        False,
        description="On a CUDA GPU, let PyTorch's attention (SDPA) use cuDNN kernels. Off: FlashAttention / "
        "memory-efficient kernels. cuDNN plans per sequence length and a decode step changes the length every "
        "time: measured on an H200 (torch 2.11), 1.5 ms of CPU per attention call, 44 of a 66 ms decode step of "
        "the 135M model, for 2.5 ms of GPU work.",
    )


class BM25Config(BaseModel):
    """The lexical half of the retriever (bm25s, Lucene's BM25 variant)."""

    k1: float = Field(1.5, gt=0, description="Term-frequency saturation.")
    b: float = Field(0.75, ge=0, le=1, description="Length normalisation.")
    stopwords: bool = Field(True, description="Drop bm25s's English stopwords from chunks and queries.")
    stem: bool = Field(
        True, description="Light English plural stemming (Harman's S-stemmer): 'Normans' matches 'Norman'."
    )
    persist: bool = Field(
        True,
        description="Save the index under the collection as bm25-<generation>/ (bm25s's numpy+JSON format, no pickle).",
    )


class RetrieverConfig(BaseModel):
    """Hybrid retrieval: dense (FAISS) + BM25, fused by reciprocal rank fusion."""

    mode: Literal["hybrid", "dense", "bm25"] = Field(
        "hybrid", description="Which retrievers run; 'hybrid' fuses both with RRF."
    )
    k: int = Field(4, ge=1, le=1000, description="Chunks returned (K documents of the posterior).")
    candidates: int = Field(
        20, ge=1, le=10000, description="Chunks each part fetches before fusion / MMR (at least k)."
    )
    rrf_k: int = Field(60, ge=0, description="RRF constant: score = sum over rankings of 1 / (rrf_k + rank).")
    temperature: float = Field(
        0.05,
        gt=0,
        description="Posterior p(z|x) = softmax(score / temperature); score = dense cosine "
        "(bm25 mode: BM25 score / the best BM25 score of the returned chunks).",
    )
    mmr: bool = Field(False, description="Re-rank the fused candidates with maximal marginal relevance.")
    mmr_lambda: float = Field(0.5, ge=0, le=1, description="MMR trade-off: 1 = relevance only, 0 = diversity only.")
    bm25: BM25Config = BM25Config()
    backend: Literal["local", "ray"] = Field(
        "local",
        description="Where dense search runs: 'local' (the collection's own FAISS index, in this process) or 'ray' "
        "(the vectors split into `shards` FAISS indexes held by Ray actors, queried in parallel and merged; "
        "`pip install -e '.[ray]'`). Both give the same top-k with an exact ('flat') index.",
    )
    shards: int = Field(
        2, ge=1, le=1024, description="backend 'ray': FAISS shards per collection (chunk faiss_id modulo shards)."
    )
    ray_address: str | None = Field(
        None,
        description="backend 'ray': the cluster to join, e.g. '10.0.0.5:6379' (`ray start --head` prints it); "
        "None: RAY_ADDRESS, else a cluster started on this machine, else a new local Ray.",
    )


class QAConfig(BaseModel):
    """How answers are generated and when the system abstains."""

    mode: Literal["stuff", "rag-sequence", "rag-token"] = Field("rag-token", description="Generation mode.")
    answer_style: Literal["short", "full"] = Field(
        "full",
        description="'full': a complete answer of a few sentences with inline citation markers [n]; "
        "'short': a few words copied from the context (SQuAD-shaped; `ragqa eval` and bench/qa.py use it).",
    )
    max_new_tokens: int = Field(12, ge=1, le=4096, description="Token budget of a 'short' answer.")
    full_max_new_tokens: int = Field(
        200,
        ge=1,
        le=4096,
        description="Token budget of a 'full' answer (a cut answer loses its unfinished last sentence).",
    )
    full_min_support: float = Field(
        0.7,
        ge=0,
        le=1,
        description="'full' answers leave out each sentence, the first included, when less than this share of its "
        "content words appear in the chunks the model read: a guard against sentences the documents do not support "
        "(0: keep all). When no sentence is left, the answer falls back to a quote (full_fallback_min_overlap).",
    )
    full_stop_unsupported: bool = Field(
        True,
        description="'full' answers stop generating at the first finished sentence that makes a claim (3+ content "
        "words) the chunks read do not support (full_min_support): the guard would leave it out, and what the model "
        "writes after it rarely returns to the documents. False: generate to eos, the budget or a repetition.",
    )
    full_fallback_min_overlap: float = Field(
        0.5,
        ge=0,
        le=1,
        description="When the guard leaves no sentence of a 'full' answer, the answer quotes the sentences of the "
        "read chunks that best match the question, cited (`fallback: extractive`), if the best holds at least "
        "this share of the question's content words; else it says \"I don't know.\" (`fallback: abstain`).",
    )
    full_quote_min_words: int = Field(
        60,
        ge=0,
        le=1000,
        description="'full' answers shorter than this many words (after the guard) go on with the sentences of the "
        "read chunks that best match the question and that the answer does not already say, quoted as written and "
        "cited (each marked `quoted`), up to this length; the fallback quote runs to it too. A small model's own "
        "words rarely cover an answer; the documents' do. 0: never add a quote.",
    )
    citation_by_overlap: bool = Field(
        True,
        description="'full' answers: a sentence cites the posterior's chunks that share its content words, plus the "
        "fewest other read chunks that hold the rest of its words (False: the posterior's choice alone).",
    )
    citation_min_share: float = Field(
        0.3,
        gt=0,
        le=1,
        description="'full' answers cite, per sentence, the most supporting chunk plus every other chunk whose "
        "share of the sentence (document posterior; stuff mode: word overlap) is at least this.",
    )
    decoding: Literal["thorough", "fast"] = Field("thorough", description="RAG-Sequence decoding of Lewis et al.")
    strategy: Literal["greedy", "beam", "sample"] = Field(
        "greedy",
        description="RAG-Token search strategy; 'sample' also draws RAG-Sequence answers from their marginal "
        "(z ~ p(z|x), then y ~ p(y|x,z)).",
    )
    num_beams: int = Field(1, ge=1, le=32, description="Beams (rag-token beam search; per document for rag-sequence).")
    temperature: float = Field(1.0, gt=0, description="Sampling temperature (strategy=sample).")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling mass (strategy=sample).")
    seed: int | None = Field(None, description="Seed for sampling (reproducible answers).")
    one_shot: bool = Field(
        False, description="Show the model one worked example in the prompt (off: the 135M model copies it)."
    )
    min_doc_posterior: float = Field(
        0.05,
        ge=0,
        lt=1,
        description="rag-token / rag-sequence skip retrieved chunks whose p(z|x) is below this (their prompts are "
        "never run) and renormalise p(z|x) over the rest; the best chunk always stays. 0 keeps all k.",
    )
    max_context_tokens: int = Field(
        200, ge=16, description="Each retrieved chunk is cut to this many generator tokens."
    )
    query_encoder_cache: int = Field(
        2,
        ge=1,
        le=64,
        description="Adapter query encoders (`ragqa finetune rag --train-query-encoder`) kept loaded at once; the "
        "least recently used one is dropped beyond this (each is a copy of the embedder).",
    )
    # The evidence threshold is each collection's own by default (auto_abstain: computed by rag.calibration
    # when the collection is ingested or changed, from questions made from its chunks versus general-knowledge
    # probe questions). The fixed thresholds stay off by default: those fitted by rag.evaluate.calibrate on one
    # SQuAD 2.0 sample (bench/qa.py --calibrate --seed 1 --n 30 gave min_score 0.507, min_logprob -0.675)
    # withheld 45% of the answerable questions of another sample (seed 0; F1 0.146 -> 0.086). Calibrate on your
    # own data with `ragqa eval --calibrate` and set RAGQA_QA__ABSTAIN_MIN_SCORE / RAGQA_QA__ABSTAIN_MIN_LOGPROB.
    auto_abstain: bool = Field(
        True,
        description="When abstain_min_score is unset, use the collection's calibrated evidence threshold "
        "(`ragqa collections show NAME`; redo it with `ragqa collections calibrate NAME`). False: no calibrated "
        "threshold.",
    )
    abstain_min_score: float | None = Field(
        None,
        description=(
            "Abstain without generating when the best dense cosine is below this (None: the collection's "
            "calibrated threshold, see auto_abstain; calibrate on labelled data with `ragqa eval --calibrate`)."
        ),
    )
    abstain_min_logprob: float | None = Field(
        None, description="Abstain when the answer's mean per-token marginal log-likelihood is below this."
    )
    abstain_max_idk_margin: float | None = Field(
        None,
        description=(
            "Abstain when the model prefers its own \"I don't know.\": mean per-token marginal log p(I don't know.) "
            "minus the answer's is above this (the null-answer score of SQuAD 2.0 readers; 0 = whichever is likelier)."
        ),
    )


class ConversationConfig(BaseModel):
    """Follow-up questions (:mod:`rag.conversation`): how a follow-up is made standalone before retrieval."""

    method: Literal["condense", "history"] = Field(
        "history",
        description="'history': retrieve with the previous question(s) + the follow-up; 'condense': the generator "
        "rewrites the follow-up as a standalone question (falls back to it as written when the rewrite is unusable). "
        "bench/followups.py measures both.",
    )
    max_turns: int = Field(3, ge=0, le=50, description="Previous turns a follow-up is made standalone from.")
    max_stored_turns: int = Field(
        100, ge=1, description="Turns a server conversation keeps (the oldest are dropped beyond it)."
    )
    max_history_chars: int = Field(
        2000, ge=0, description="Most characters of previous questions and answers used (the latest turn always)."
    )
    history_turns: int = Field(1, ge=1, le=10, description="'history': previous questions joined to the follow-up.")
    condense_max_new_tokens: int = Field(
        40, ge=4, le=256, description="'condense': token budget of the rewritten question (greedy)."
    )
