"""rag.prefix_cache and prefill(prefix=...): cached prefills equal uncached ones, LRU, invalidation."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from transformers import LlamaForCausalLM

from rag.decoding import prefill, rag_sequence_generate, rag_token_generate, score_continuations
from rag.prefix_cache import PrefixKVCache, PrefixSpec, prefix_key
from tests.rag.tiny_llama import tiny_llama

SYSTEM = [1, 2, 3]
CHUNKS = [[5, 6, 7, 8, 9, 4], [3, 4], [9, 10, 11, 12, 13, 14, 15, 16], [7]]  # rows of different lengths
QUESTIONS = [[20, 21, 22], [23, 24], [25, 26, 27, 28, 29]]
DOC_LOGPROBS = torch.log_softmax(torch.tensor([0.9, 0.1, -0.4, 0.3]), dim=0)
EOS = [0]


def _tiny_llama(seed: int = 0, dtype: torch.dtype = torch.float32) -> LlamaForCausalLM:
    return tiny_llama(32, seed, dtype=dtype)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def model() -> LlamaForCausalLM:
    return _tiny_llama()


def _prompts(question: list[int], chunks=CHUNKS) -> tuple[list[list[int]], list[int]]:
    return [SYSTEM + c + question for c in chunks], [len(SYSTEM) + len(c) for c in chunks]


def _spec(
    cache: PrefixKVCache, lengths: list[int], namespace=("tiny", None, "float32"), shared: bool = True
) -> PrefixSpec:
    return PrefixSpec(cache, namespace, lengths, [len(SYSTEM)] * len(lengths) if shared else None)


class TestCachedPrefill:
    @pytest.mark.parametrize("shared", [True, False])
    def test_equals_uncached_cold_and_warm(self, model, shared):
        cache = PrefixKVCache(1 << 20)
        for question in QUESTIONS:
            prompts, lengths = _prompts(question)
            plain = prefill(model, prompts)
            for _ in range(2):  # first question: cold; then warm
                cached = prefill(model, prompts, prefix=_spec(cache, lengths, shared=shared))
                torch.testing.assert_close(cached.next_logprobs, plain.next_logprobs, atol=1e-5, rtol=0)
                assert torch.equal(cached.attention_mask, plain.attention_mask)
                assert torch.equal(cached.next_positions, plain.next_positions)
                assert cached.past_key_values.get_seq_length() == plain.past_key_values.get_seq_length()
        stats = cache.stats()
        assert stats.entries == len(CHUNKS) + shared  # one per chunk prefix (+ the system prompt)
        assert stats.misses == stats.entries and stats.hits > 0

    def test_runs_only_the_suffix_when_warm(self, model):
        cache = PrefixKVCache(1 << 20)
        prompts, lengths = _prompts(QUESTIONS[0])
        prefill(model, prompts, prefix=_spec(cache, lengths))
        seen: list[tuple[int, ...]] = []
        handle = model.model.embed_tokens.register_forward_hook(lambda m, args, out: seen.append(tuple(args[0].shape)))
        try:
            prefill(model, prompts, prefix=_spec(cache, lengths))
        finally:
            handle.remove()
        assert seen == [(len(CHUNKS), len(QUESTIONS[0]))]  # one forward over the question tokens only

    def test_prefixes_longer_than_other_rows_suffix(self, model):
        """Rows whose cacheable part is everything but one token, beside rows with nothing cacheable."""
        prompts = [[1, 2, 3, 4, 5, 6, 7], [8, 9], [10, 11, 12, 13]]
        cache = PrefixKVCache(1 << 20)
        plain = prefill(model, prompts)
        for lengths in ([7, 0, 2], [6, 1, 4], [0, 0, 0]):
            cached = prefill(model, prompts, prefix=PrefixSpec(cache, "ns", lengths))
            torch.testing.assert_close(cached.next_logprobs, plain.next_logprobs, atol=1e-5, rtol=0)
            assert torch.equal(cached.attention_mask, plain.attention_mask)

    def test_decoding_continues_identically(self, model):
        """Beyond the prefill: the cache assembled from entries serves later decode steps and scoring."""
        cache = PrefixKVCache(1 << 20)
        prompts, lengths = _prompts(QUESTIONS[1])
        conts = [[4, 5, 6], [7], [], [8, 9]]
        plain = score_continuations(model, prompts, conts, max_rows_per_forward=8)
        for _ in range(2):
            cached = score_continuations(model, prompts, conts, max_rows_per_forward=8, prefix=_spec(cache, lengths))
            torch.testing.assert_close(cached, plain, atol=1e-5, rtol=0)

    def test_bad_lengths(self, model):
        prompts, _ = _prompts(QUESTIONS[0])
        with pytest.raises(ValueError, match="one per prompt"):
            prefill(model, prompts, prefix=PrefixSpec(PrefixKVCache(1 << 20), "ns", [3]))


class TestGenerationWithCache:
    @pytest.mark.parametrize("strategy", ["greedy", "beam"])
    def test_rag_token_identical(self, model, strategy):
        cache = PrefixKVCache(1 << 20)
        for question in QUESTIONS:
            prompts, lengths = _prompts(question)
            kwargs = dict(max_new_tokens=6, eos_token_ids=EOS, strategy=strategy, num_beams=3, reference_ids=[4, 5])
            plain = rag_token_generate(model, prompts, DOC_LOGPROBS, **kwargs)
            for _ in range(2):
                cached = rag_token_generate(model, prompts, DOC_LOGPROBS, prefix=_spec(cache, lengths), **kwargs)
                assert cached.token_ids == plain.token_ids
                assert cached.logprob == pytest.approx(plain.logprob, abs=1e-5)
                assert cached.reference_logprob == pytest.approx(plain.reference_logprob, abs=1e-5)
                assert cached.doc_contributions == pytest.approx(plain.doc_contributions, abs=1e-5)

    @pytest.mark.parametrize(("decoding", "num_beams"), [("thorough", 1), ("fast", 1), ("thorough", 3)])
    def test_rag_sequence_identical(self, model, decoding, num_beams):
        cache = PrefixKVCache(1 << 20)
        for question in QUESTIONS:
            prompts, lengths = _prompts(question)
            kwargs = dict(
                max_new_tokens=5, eos_token_ids=EOS, num_beams=num_beams, decoding=decoding, reference_ids=[4, 0]
            )
            plain = rag_sequence_generate(model, prompts, DOC_LOGPROBS, **kwargs)
            for _ in range(2):
                cached = rag_sequence_generate(model, prompts, DOC_LOGPROBS, prefix=_spec(cache, lengths), **kwargs)
                assert [h.token_ids for h in cached] == [h.token_ids for h in plain]
                assert [h.logprob for h in cached] == pytest.approx([h.logprob for h in plain], abs=1e-5)
                assert cached[0].doc_posterior == pytest.approx(plain[0].doc_posterior, abs=1e-5)

    def test_stuff_prompt_reuses_the_context_block(self, model):
        """One prompt with every chunk: the system prompt + the whole context block are the prefix."""
        cache = PrefixKVCache(1 << 20)
        context = [t for c in CHUNKS for t in c]
        for question in QUESTIONS:
            prompt = [SYSTEM + context + question]
            plain = rag_token_generate(model, prompt, torch.zeros(1), max_new_tokens=5, eos_token_ids=EOS)
            spec = _spec(cache, [len(SYSTEM) + len(context)])
            cached = rag_token_generate(model, prompt, torch.zeros(1), max_new_tokens=5, eos_token_ids=EOS, prefix=spec)
            assert cached.token_ids == plain.token_ids
        assert cache.stats().entries == 2 and cache.stats().hits == len(QUESTIONS) - 1


def _kv(tokens: int, width: int = 4) -> tuple[tuple[torch.Tensor, torch.Tensor], ...]:
    """One layer of float32 keys/values (1 head, ``tokens`` x ``width``): 2 * 4 * tokens * width bytes."""
    return ((torch.full((1, tokens, width), float(tokens)), torch.zeros((1, tokens, width))),)


class TestPrefixKVCache:
    def test_lru_eviction_under_budget(self):
        cache = PrefixKVCache(max_bytes=3 * 64)  # three 2-token entries (64 bytes each)
        for i in range(3):
            assert cache.put("ns", [i], _kv(2))
        assert cache.get("ns", [0]) is not None  # 0 is now the most recently used
        assert cache.put("ns", [3], _kv(2))  # evicts 1, the least recently used
        assert cache.get("ns", [1]) is None
        assert all(cache.get("ns", [i]) is not None for i in (0, 2, 3))
        stats = cache.stats()
        assert (stats.entries, stats.bytes, stats.evictions) == (3, 192, 1)
        assert (stats.hits, stats.misses) == (4, 1) and stats.hit_rate == pytest.approx(0.8)

        assert cache.put("ns", [4], _kv(5))  # 160 bytes: only room for itself
        assert cache.stats().entries == 1 and cache.stats().evictions == 4 and cache.stats().bytes == 160

    def test_entry_larger_than_budget_is_not_stored(self):
        cache = PrefixKVCache(max_bytes=100)
        assert not cache.put("ns", [1, 2], _kv(4))  # 128 bytes
        assert cache.get("ns", [1, 2]) is None and cache.stats().entries == 0
        off = PrefixKVCache(0)
        assert not off.enabled and not off.put("ns", [1], _kv(1))

    def test_replacing_an_entry_keeps_the_byte_count(self):
        cache = PrefixKVCache(max_bytes=1000)
        cache.put("ns", [1], _kv(2))
        cache.put("ns", [1], _kv(3))
        assert cache.stats().entries == 1 and cache.stats().bytes == 96

    def test_key_covers_namespace_and_every_token(self):
        assert prefix_key("a", [1, 2]) != prefix_key("b", [1, 2])
        assert prefix_key("a", [1, 2]) != prefix_key("a", [1, 2, 0])
        assert prefix_key("a", [1, 2]) != prefix_key("a", [2, 1])
        assert prefix_key("a", [1, 2]) == prefix_key("a", (1, 2))
        with pytest.raises(ValueError, match="0 turns the cache off"):
            PrefixKVCache(-1)

    def test_no_stale_hit_for_a_changed_chunk_or_namespace(self, model):
        """A chunk text (token ids), model, adapter fingerprint or dtype change misses and gives the
        uncached result of the NEW setting."""
        cache = PrefixKVCache(1 << 20)
        prompts, lengths = _prompts(QUESTIONS[0])
        base_ns = ("tiny-0", "reader", "fingerprint-1", "float32")
        prefill(model, prompts, prefix=_spec(cache, lengths, base_ns))
        misses = cache.stats().misses

        edited = [c[:] for c in CHUNKS]
        edited[0][-1] = 30  # one token of one chunk changed
        e_prompts, e_lengths = _prompts(QUESTIONS[0], edited)
        got = prefill(model, e_prompts, prefix=_spec(cache, e_lengths, base_ns))
        assert cache.stats().misses == misses + 1  # that chunk only (the system prompt hits)
        torch.testing.assert_close(got.next_logprobs, prefill(model, e_prompts).next_logprobs, atol=1e-5, rtol=0)

        other_model = _tiny_llama(seed=1)
        bf16 = _tiny_llama(dtype=torch.bfloat16)
        for ns, m in [
            (("tiny-1", "reader", "fingerprint-1", "float32"), other_model),  # another model
            (("tiny-0", "reader", "fingerprint-2", "float32"), other_model),  # same adapter name, new weights
            (("tiny-0", None, None, "float32"), other_model),  # no adapter
            (("tiny-0", "reader", "fingerprint-1", "bfloat16"), bf16),  # another dtype
        ]:
            before = cache.stats().misses
            got = prefill(m, prompts, prefix=_spec(cache, lengths, ns))
            assert cache.stats().misses == before + len(CHUNKS) + 1  # every entry (and the system prompt) missed
            tol = 1e-5 if m is other_model else 0.05
            torch.testing.assert_close(got.next_logprobs, prefill(m, prompts).next_logprobs, atol=tol, rtol=0)


class TestGeneratorNamespace:
    def test_adapter_fingerprint_tracks_the_loaded_weights(self, tiny_llm, tmp_path):
        from peft import LoraConfig, get_peft_model

        from rag.config import GeneratorConfig
        from rag.generator import Generator

        adapters = tmp_path / "adapters"
        base = LlamaForCausalLM.from_pretrained(tiny_llm)
        for name, seed in [("a", 0), ("b", 1)]:
            torch.manual_seed(seed)
            peft_model = get_peft_model(
                base, LoraConfig(r=2, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
            )
            peft_model.save_pretrained(adapters / name)
            base = peft_model.unload()
        gen = Generator(GeneratorConfig(model=str(tiny_llm), device="cpu", dtype="float32"), tmp_path, adapters)
        with gen.session(None):
            plain = gen.cache_namespace(None)
        with gen.session("a"):
            ns_a = gen.cache_namespace("a")
            assert gen.cache_namespace("a") == ns_a  # computed once per load
        with gen.session("b"):
            ns_b = gen.cache_namespace("b")
        assert len({plain, ns_a, ns_b}) == 3 and ns_a[1] == "a"
        # retrained under the same name and loaded again: new fingerprint
        (adapters / "a").rename(tmp_path / "old-a")
        (adapters / "b").rename(adapters / "a")
        gen.model.delete_adapter("a")
        gen._loaded_adapters.discard("a")
        with gen.session("a"):
            assert gen.cache_namespace("a")[2] == ns_b[2] and gen.cache_namespace("a") != ns_a
        with pytest.raises(ValueError, match="not loaded"):
            gen.cache_namespace("missing")

    def test_prompt_parts_join_to_prompt_ids(self, tiny_llm, tmp_path):
        from rag.config import GeneratorConfig
        from rag.generator import Generator
        from rag.prompts import chat_messages

        gen = Generator(GeneratorConfig(model=str(tiny_llm), device="cpu", dtype="float32"), tmp_path)
        tok = gen.tokenizer
        for one_shot in (False, True):
            for contexts in (["[Normans] The Normans gave their name to Normandy."], ["one.", "two  ", "three"]):
                prefix, suffix = gen.prompt_parts("Who were the Normans?", contexts, one_shot=one_shot)
                joint = tok.apply_chat_template(
                    chat_messages("Who were the Normans?", contexts, one_shot=one_shot),
                    add_generation_prompt=True,
                    tokenize=True,
                    return_dict=False,
                )
                assert (
                    prefix + suffix
                    == list(joint)
                    == gen.prompt_ids("Who were the Normans?", contexts, one_shot=one_shot)
                )
                assert tok.decode(suffix).startswith(" Who were the Normans?")  # the question starts the suffix
                assert tok.decode(prefix).endswith(contexts[-1].strip() + "\n\nQuestion:")  # the marker is cached
            spec = gen.prefix_spec([(prefix, suffix)], one_shot=one_shot)
            head = spec.shared_lengths[0]
            assert 0 < head < len(prefix) and tok.decode(prefix[head:]).startswith("Context:")
        off = Generator(
            GeneratorConfig(model=str(tiny_llm), device="cpu", dtype="float32", prefix_cache_bytes=0), tmp_path
        )
        assert off.prefix_spec([(prefix, suffix)]) is None


@pytest.mark.slow
def test_bundled_model_answers_identically_with_the_cache():
    """SmolLM2-135M (the prepared workspace): greedy answers token-identical, log-probs within tolerance."""
    from rag.config import GeneratorConfig
    from rag.generator import Generator

    home = Path(os.environ.get("RAGQA_HOME", "/root/.ragqa"))
    squad = Path(__file__).resolve().parents[2] / "data" / "benchmarks" / "squad2_dev_public.json"
    gen = Generator(GeneratorConfig(device="cpu", dtype="float32", int8_decode="off"), home / "models")
    data = json.loads(squad.read_text(encoding="utf-8"))
    paragraphs = [p for article in data["data"] for p in article["paragraphs"][:2]]
    contexts = [p["context"][:600] for p in paragraphs[:4]]
    questions = [paragraphs[0]["qas"][0]["question"], paragraphs[1]["qas"][0]["question"]]
    doc_lp = torch.log_softmax(torch.tensor([1.0, 0.5, 0.0, -0.5]), dim=0)
    with gen.session(None) as model:
        for question in questions:
            parts = [gen.prompt_parts(question, [c], one_shot=False) for c in contexts]
            prompts = [p + s for p, s in parts]
            spec = gen.prefix_spec(parts, one_shot=False)
            kwargs = dict(max_new_tokens=8, eos_token_ids=gen.eos_token_ids, reference_ids=gen.abstention_ids)
            plain = rag_token_generate(model, prompts, doc_lp, **kwargs)
            cached = rag_token_generate(model, prompts, doc_lp, prefix=spec, **kwargs)
            assert cached.token_ids == plain.token_ids
            assert cached.logprob == pytest.approx(plain.logprob, abs=1e-3)
            assert cached.reference_logprob == pytest.approx(plain.reference_logprob, abs=1e-3)
            seq_plain = rag_sequence_generate(model, prompts, doc_lp, **kwargs)
            seq_cached = rag_sequence_generate(model, prompts, doc_lp, prefix=spec, **kwargs)
            assert [h.token_ids for h in seq_cached] == [h.token_ids for h in seq_plain]
            assert [h.logprob for h in seq_cached] == pytest.approx([h.logprob for h in seq_plain], abs=1e-3)
    stats = gen.prefix_cache.stats()
    assert stats.entries == len(contexts) + 1 and stats.hits > stats.misses


@pytest.mark.parametrize("mode", ["rag-token", "rag-sequence"])
def test_float32_int8_decode_copy_with_the_cache_keeps_the_answers(mode):
    """A float32 model with the int8 decode copy (``int8_decode=on``): the cached path's short forwards (prefix,
    suffix, a one-token suffix that would make generate's first forward a decode step) keep the float32 weights as
    the uncached prefill does. The answers stay the same; log-probabilities only to ~1e-2, not float tolerance: the
    cached prefill differs from the uncached one by ~5e-7 (float32 matmuls of other shapes), and rounding
    activations to int8 turns that into whole int8 steps (why the copy is opt-in for float32)."""
    from rag.int8_decode import convert_for_int8_decode

    model = _tiny_llama(seed=3)
    assert convert_for_int8_decode(model) > 0
    cache = PrefixKVCache(1 << 20)
    for question in QUESTIONS + [[9]]:
        prompts, lengths = _prompts(question)
        if mode == "rag-token":
            kwargs = dict(max_new_tokens=6, eos_token_ids=EOS, reference_ids=[4, 5])
            plain = rag_token_generate(model, prompts, DOC_LOGPROBS, **kwargs)
            warm = [rag_token_generate(model, prompts, DOC_LOGPROBS, prefix=_spec(cache, lengths), **kwargs)]
            warm.append(rag_token_generate(model, prompts, DOC_LOGPROBS, prefix=_spec(cache, lengths), **kwargs))
            assert [w.token_ids for w in warm] == [plain.token_ids] * 2
            assert warm[0].logprob == pytest.approx(plain.logprob, abs=0.05)
            assert warm[1].logprob == warm[0].logprob  # cold and warm cache: the same numbers
        else:
            kwargs = dict(max_new_tokens=5, eos_token_ids=EOS, num_beams=1, decoding="fast", reference_ids=[4, 0])
            plain_hyps = rag_sequence_generate(model, prompts, DOC_LOGPROBS, **kwargs)
            hyps = rag_sequence_generate(model, prompts, DOC_LOGPROBS, prefix=_spec(cache, lengths), **kwargs)
            assert [h.token_ids for h in hyps] == [h.token_ids for h in plain_hyps]
            assert [h.logprob for h in hyps] == pytest.approx([h.logprob for h in plain_hyps], abs=0.05)
