"""rag.scheduler on a tiny random Llama built in-process: batched answers equal solo answers."""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import LlamaForCausalLM

from rag import scheduler as scheduler_module
from rag.decoding import _advance, prefill, prefill_many, rag_token_generate
from rag.prefix_cache import PrefixKVCache, PrefixSpec
from rag.scheduler import (
    DeadlineExceededError,
    GenerationRequest,
    PredictedLateError,
    QueueFullError,
    RequestCancelledError,
    Scheduler,
    SchedulerClosedError,
    SchedulerError,
    concat_states,
    keep_rows,
    model_session,
)
from rag.serving_errors import ServerBusyError
from tests.rag.tiny_llama import tiny_llama

VOCAB = 32
EOS = [2]
PROMPTS_4 = [[1, 5, 6, 7, 8, 9, 4], [3, 4], [9, 10, 11, 12], [7]]
PROMPTS_4B = [[11, 3, 3], [20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30], [5], [6, 6]]
DOC_4 = torch.log_softmax(torch.tensor([0.9, 0.1, -0.4, 0.3]), dim=0)
DOC_4B = torch.log_softmax(torch.tensor([-0.2, 0.5, 0.0, 1.1]), dim=0)
WAIT = 20.0  # seconds: a generous bound on any result() in these tests


def _tiny_llama(seed: int = 0) -> LlamaForCausalLM:
    return tiny_llama(VOCAB, seed, max_positions=128)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def model() -> LlamaForCausalLM:
    return _tiny_llama()


@pytest.fixture(scope="module")
def peft_model():
    """The tiny model with two random (non-zero) LoRA adapters, "a" and "b"."""
    base = _tiny_llama(seed=3)
    torch.manual_seed(4)
    cfg = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "o_proj"], init_lora_weights=False)
    wrapped = get_peft_model(base, cfg, adapter_name="a")
    wrapped.add_adapter("b", cfg)
    return wrapped.eval()


@pytest.fixture
def make_scheduler():
    made: list[Scheduler] = []

    def make(session, **kwargs) -> Scheduler:
        made.append(Scheduler(session, **kwargs))
        return made[-1]

    yield make
    for scheduler in made:
        scheduler.close()
        assert not scheduler.running


def _stop_after(n: int):
    return lambda ids: len(ids) >= n


def _solo(model, req: GenerationRequest):
    return rag_token_generate(
        model,
        req.prompt_ids,
        req.doc_logprobs,
        max_new_tokens=req.max_new_tokens,
        eos_token_ids=req.eos_token_ids,
        strategy=req.strategy,
        num_beams=req.num_beams,
        temperature=req.temperature,
        top_p=req.top_p,
        reference_ids=req.reference_ids,
        stop=req.stop,
        generator=None if req.generator is None else torch.Generator().manual_seed(req.generator.initial_seed()),
    )


def _assert_same(got, want) -> None:
    assert got.token_ids == want.token_ids
    assert got.logprob == pytest.approx(want.logprob, abs=1e-5)
    assert got.doc_contributions == pytest.approx(want.doc_contributions, abs=1e-5)
    if want.reference_logprob is None:
        assert got.reference_logprob is None
    else:
        assert got.reference_logprob == pytest.approx(want.reference_logprob, abs=1e-5)


class _Gate:
    """A stream callback that blocks the scheduler thread at the n-th token until released."""

    def __init__(self, at: int) -> None:
        self.at, self.seen = at, []
        self.reached, self.release = threading.Event(), threading.Event()

    def __call__(self, token: int) -> None:
        self.seen.append(token)
        if len(self.seen) == self.at:
            self.reached.set()
            assert self.release.wait(WAIT), "the test never released the gate"


# --------------------------------------------------------------------------- batch layout helpers


class TestBatchLayout:
    def test_concat_then_advance_equals_separate_states(self, model):
        a, b = prefill(model, PROMPTS_4[:2]), prefill(model, PROMPTS_4B[1:3])  # lengths 7 and 11
        sep_a, sep_b = prefill(model, PROMPTS_4[:2]), prefill(model, PROMPTS_4B[1:3])
        merged = concat_states(a, b)
        assert merged.attention_mask.shape == (4, 11)
        assert merged.past_key_values.get_seq_length() == 11
        tokens = torch.tensor([4, 4, 9, 9])
        _advance(model, merged, tokens)
        _advance(model, sep_a, tokens[:2])
        _advance(model, sep_b, tokens[2:])
        torch.testing.assert_close(
            merged.next_logprobs, torch.cat([sep_a.next_logprobs, sep_b.next_logprobs]), atol=1e-5, rtol=0
        )
        torch.testing.assert_close(merged.next_positions, torch.cat([sep_a.next_positions, sep_b.next_positions]))

    @pytest.mark.parametrize("trim", [0, scheduler_module.TRIM_COLUMNS])
    def test_keep_rows_drops_columns_padded_in_every_row(self, model, monkeypatch, trim):
        """Nine all-padding columns: dropped when the threshold allows it, else kept (masked); same logits."""
        monkeypatch.setattr(scheduler_module, "TRIM_COLUMNS", trim)
        merged = concat_states(prefill(model, [[3, 4]]), prefill(model, [PROMPTS_4B[1]]))  # lengths 2 and 11
        alone = prefill(model, [[3, 4]])
        keep_rows(merged, [0])
        width = 2 if trim <= 9 else 11
        assert merged.attention_mask.shape == (1, width)
        assert merged.past_key_values.get_seq_length() == width
        _advance(model, merged, torch.tensor([7]))
        _advance(model, alone, torch.tensor([7]))
        torch.testing.assert_close(merged.next_logprobs, alone.next_logprobs, atol=1e-5, rtol=0)

    def test_keep_rows_reorders_and_rejects_empty(self, model):
        state = prefill(model, PROMPTS_4)
        first = state.next_logprobs.clone()
        keep_rows(state, [2, 0])
        torch.testing.assert_close(state.next_logprobs, first[[2, 0]])
        assert state.attention_mask.shape == (2, 7)  # row 0 (length 7) is still there
        with pytest.raises(ValueError, match="at least one row"):
            keep_rows(state, [])


# --------------------------------------------------------------------------- batched == solo


class TestBatchedEqualsSolo:
    def test_staggered_requests_of_different_shapes(self, model, make_scheduler):
        reqs = [
            GenerationRequest(PROMPTS_4, DOC_4, max_new_tokens=9, eos_token_ids=[], reference_ids=[5, 9, 2]),
            GenerationRequest(
                [PROMPTS_4B[1]], torch.zeros(1), max_new_tokens=6, eos_token_ids=EOS, reference_ids=[3]
            ),  # "stuff": K=1
            GenerationRequest(PROMPTS_4B, DOC_4B, max_new_tokens=12, eos_token_ids=[], stop=_stop_after(5)),
            GenerationRequest([[4, 4, 4, 1]], torch.zeros(1), max_new_tokens=3, eos_token_ids=[]),
            GenerationRequest(
                PROMPTS_4[1:],
                DOC_4[1:] - torch.logsumexp(DOC_4[1:], 0),
                max_new_tokens=7,
                eos_token_ids=[],
                reference_ids=[8, 8],
            ),
        ]
        want = [_solo(model, r) for r in reqs]
        gate = _Gate(at=2)
        reqs[0].stream_callback = gate
        rows_per_step: list[int] = []
        scheduler = make_scheduler(model_session(model), on_step=lambda rows, s: rows_per_step.append(rows))
        first = [scheduler.submit(reqs[0]), scheduler.submit(reqs[1])]
        done_at: list[float] = []
        first[0].add_done_callback(lambda h: done_at.append(time.monotonic()))
        assert gate.reached.wait(WAIT)  # request 0 has two tokens: the others join mid-decode
        later = [scheduler.submit(r) for r in reqs[2:]]
        gate.release.set()
        handles = first + later
        for handle, expected in zip(handles, want):
            _assert_same(handle.result(WAIT), expected)
        assert all(h.admitted_at < done_at[0] for h in later)
        assert max(rows_per_step) >= 4 + 4 + 1  # request 0 decoded in one forward with later requests
        stats = scheduler.stats()
        assert stats.completed == 5 and stats.active_rows == 0 and stats.active_requests == 0
        assert stats.tokens_generated == sum(len(w.token_ids) for w in want)
        assert all(h.ttft_s is not None and h.ttft_s >= 0 for h in handles)

    def test_eos_and_sampling_match_solo(self, model, make_scheduler):
        free = rag_token_generate(model, PROMPTS_4, DOC_4, max_new_tokens=6, eos_token_ids=[])
        eos = [free.token_ids[2]]  # forces an early stop on an eos token
        reqs = [
            GenerationRequest(PROMPTS_4, DOC_4, max_new_tokens=6, eos_token_ids=eos),
            GenerationRequest(
                PROMPTS_4B,
                DOC_4B,
                max_new_tokens=8,
                eos_token_ids=[],
                strategy="sample",
                temperature=0.8,
                top_p=0.9,
                generator=torch.Generator().manual_seed(7),
            ),
        ]
        want = [_solo(model, r) for r in reqs]
        reqs[1].generator = torch.Generator().manual_seed(7)  # the solo run drew from a copy: start afresh
        scheduler = make_scheduler(model_session(model))
        handles = [scheduler.submit(r) for r in reqs]
        got = [h.result(WAIT) for h in handles]
        assert got[0].token_ids[-1] == eos[0] and len(got[0].token_ids) == 3
        for g, w in zip(got, want):
            _assert_same(g, w)

    def test_beam_request_runs_solo_and_matches(self, model, make_scheduler):
        req = GenerationRequest(
            PROMPTS_4, DOC_4, max_new_tokens=5, eos_token_ids=[], strategy="beam", num_beams=3, reference_ids=[4]
        )
        want = _solo(model, req)
        scheduler = make_scheduler(model_session(model))
        greedy = scheduler.submit(GenerationRequest(PROMPTS_4B, DOC_4B, max_new_tokens=6, eos_token_ids=[]))
        _assert_same(scheduler.submit(req).result(WAIT), want)
        assert len(greedy.result(WAIT).token_ids) == 6

    def test_two_adapters_and_the_base_model_in_one_run(self, peft_model, make_scheduler):
        specs = [
            ("a", PROMPTS_4, DOC_4, 7),
            (None, PROMPTS_4B, DOC_4B, 8),
            ("b", PROMPTS_4, DOC_4, 6),
            ("a", [PROMPTS_4B[1]], torch.zeros(1), 5),
            (None, [[9, 9, 1]], torch.zeros(1), 4),
        ]
        reqs = [
            GenerationRequest(p, d, max_new_tokens=n, eos_token_ids=[], adapter=a, reference_ids=[3, 3])
            for a, p, d, n in specs
        ]
        session = model_session(peft_model)
        want = []
        for r in reqs:
            with session(r.adapter) as m:
                want.append(_solo(m, r))
        # the adapters really change the answers (else this test could not fail)
        assert want[0].logprob != pytest.approx(want[2].logprob, abs=1e-3)
        with session(None) as m:
            base_0 = _solo(m, reqs[0])
        assert base_0.logprob != pytest.approx(want[0].logprob, abs=1e-3)

        gate = _Gate(at=2)
        reqs[0].stream_callback = gate
        scheduler = make_scheduler(session)
        first = scheduler.submit(reqs[0])
        assert gate.reached.wait(WAIT)
        handles = [first] + [scheduler.submit(r) for r in reqs[1:]]
        gate.release.set()
        for handle, expected in zip(handles, want):
            _assert_same(handle.result(WAIT), expected)


class TestBatchedPrefill:
    """Requests admitted in the same step are prefilled together in one forward per adapter."""

    def test_prefill_many_equals_each_request_alone(self, model):
        cache = PrefixKVCache(1 << 20)
        head = [1, 2]
        prompts_a = [head + [5, 6, 7, 8, 9] + [20, 21], head + [3] + [22, 23, 24]]
        prompts_b = [head + [9, 10, 11, 12, 13, 14, 15, 16, 17] + [25]]
        prompts_c = [[4, 4, 4], [7], [8, 9, 10, 11]]  # no prefix reuse
        spec_a = PrefixSpec(cache, "tiny", [7, 3], [2, 2])
        spec_b = PrefixSpec(cache, "tiny", [11], [2])
        prefill(model, [prompts_a[0]], prefix=PrefixSpec(cache, "tiny", [7], [2]))  # one warm row, the rest cold
        merged = prefill_many(model, [(prompts_a, spec_a), (prompts_b, spec_b), (prompts_c, None)])
        alone = [prefill(model, prompts_a), prefill(model, prompts_b), prefill(model, prompts_c)]
        torch.testing.assert_close(merged.next_logprobs, torch.cat([a.next_logprobs for a in alone]), atol=1e-5, rtol=0)
        positions = torch.cat([a.next_positions for a in alone])
        assert torch.equal(merged.next_positions, positions)
        assert merged.attention_mask.sum(-1).tolist() == [len(p) for p in prompts_a + prompts_b + prompts_c]
        tokens = torch.tensor([3, 3, 7, 1, 1, 1])  # decoding goes on identically
        _advance(model, merged, tokens)
        for a, t in zip(alone, (tokens[:2], tokens[2:3], tokens[3:])):
            _advance(model, a, t)
        torch.testing.assert_close(merged.next_logprobs, torch.cat([a.next_logprobs for a in alone]), atol=1e-5, rtol=0)
        with pytest.raises(ValueError, match="at least one request"):
            prefill_many(model, [])

    def test_requests_admitted_together_equal_solo(self, peft_model, make_scheduler):
        """Several requests admitted in one step (different K, prompt lengths, adapters, cache hits and
        misses, a reference or not, one finishing at its first token) answer exactly as alone."""
        cache = PrefixKVCache(1 << 20)
        head = [1, 2, 3]
        chunks = [[5, 6, 7, 8, 9, 4], [3, 4], [9, 10, 11, 12, 13, 14, 15, 16], [7], [12, 13, 14]]
        questions = [[20, 21, 22], [23, 24], [25, 26, 27, 28, 29]]

        def request(adapter, chunk_ids, question, n, **kw):
            prompts = [head + chunks[c] + question for c in chunk_ids]
            lengths = [len(head) + len(chunks[c]) for c in chunk_ids]
            doc = torch.log_softmax(torch.linspace(0.5, -0.5, len(prompts)), 0)
            return GenerationRequest(
                prompts,
                doc,
                max_new_tokens=n,
                eos_token_ids=[],
                adapter=adapter,
                prefix_fn=lambda m: PrefixSpec(cache, ("tiny", adapter), lengths, [len(head)] * len(lengths)),
                **kw,
            )

        reqs = [
            request("a", [0, 1, 2, 3], questions[0], 6, reference_ids=[5, 9, 2]),
            request("a", [4], questions[1], 5, reference_ids=[5, 9, 2]),  # "stuff"-like K=1
            request("a", [2, 0], questions[2], 1, reference_ids=[3]),  # done at its first token
            request(None, [1, 3, 4], questions[1], 7),
            request(None, [0, 2], questions[0], 4, reference_ids=[8, 8]),
            request("b", [3, 1, 0], questions[2], 5, reference_ids=[5, 9, 2]),
        ]
        session = model_session(peft_model)
        want = []
        for r in reqs:
            with session(r.adapter) as m:
                want.append(_solo(m, r))
        with session("a") as m:  # warm some chunks of adapter "a": hits and misses in one batch
            prefill(m, reqs[0].prompt_ids[:2], prefix=PrefixSpec(cache, ("tiny", "a"), [9, 5], [3, 3]))

        forwards: list[tuple[int, int]] = []
        embed = peft_model.get_base_model().model.embed_tokens
        hook = embed.register_forward_hook(lambda mod, args, out: forwards.append(tuple(args[0].shape)))
        gate = _Gate(at=1)
        scheduler = make_scheduler(session, max_prefills_per_step=len(reqs) + 1)
        blocker = scheduler.submit(
            GenerationRequest([[9, 9, 1]], torch.zeros(1), max_new_tokens=3, eos_token_ids=[], stream_callback=gate)
        )
        try:
            assert gate.reached.wait(WAIT)  # the scheduler thread is held: all of reqs wait for the same step
            handles = [scheduler.submit(r) for r in reqs]
            gate.release.set()
            for handle, expected in zip(handles, want):
                _assert_same(handle.result(WAIT), expected)
            blocker.result(WAIT)
        finally:
            hook.remove()
        # one prefill forward per adapter and reference over all its requests' rows (the question suffixes, then
        # the reference but its last token, scored in the same forward); a request without a reference rides along
        assert (4 + 1, 3 + 2) in forwards  # adapter "a", reference [5, 9, 2]: 5 rows, widest suffix 3 tokens
        assert (2, 5) in forwards  # adapter "a", reference [3]: its own forward
        assert (3 + 2, 3 + 1) in forwards  # the base model: 5 rows, reference [8, 8] and none
        assert len({h.admitted_at for h in handles[:2]}) == 1  # prefilled together
        assert scheduler.stats().completed == len(reqs) + 1


class TestChunkedPrefill:
    def test_cold_prefixes_are_spread_over_steps_and_answers_stay_identical(self, model, make_scheduler):
        head = [1, 2, 3]
        chunks = [[5, 6, 7, 8, 9, 4], [3, 4, 11, 12, 13], [9, 10, 11, 12, 13, 14, 15, 16], [7, 7, 7, 7, 7]]
        question = [20, 21, 22]
        prompts = [head + c + question for c in chunks]
        lengths = [len(head) + len(c) for c in chunks]
        steps = [0]

        class Recording(PrefixKVCache):
            def __init__(self) -> None:
                super().__init__(1 << 20)
                self.put_at: list[int] = []

            def put(self, namespace, token_ids, kv) -> bool:
                self.put_at.append(steps[0])
                return super().put(namespace, token_ids, kv)

        cache = Recording()
        spec = PrefixSpec(cache, "tiny", lengths, [len(head)] * len(chunks))
        cold = GenerationRequest(
            prompts, DOC_4, max_new_tokens=5, eos_token_ids=[], reference_ids=[5, 9], prefix_fn=lambda m: spec
        )
        want = _solo(model, cold)
        reference = PrefixKVCache(1 << 20)  # the lookups one cached solo prefill counts
        prefill(model, prompts, prefix=PrefixSpec(reference, "tiny", lengths, [len(head)] * len(chunks)))

        def on_step(rows: int, seconds: float) -> None:
            steps[0] += 1

        gate = _Gate(at=1)
        scheduler = make_scheduler(model_session(model), max_prefill_tokens=9, on_step=on_step)
        busy_req = GenerationRequest(PROMPTS_4B, DOC_4B, max_new_tokens=12, eos_token_ids=[], stream_callback=gate)
        busy_want = _solo(model, GenerationRequest(PROMPTS_4B, DOC_4B, max_new_tokens=12, eos_token_ids=[]))
        busy = scheduler.submit(busy_req)
        assert gate.reached.wait(WAIT)
        handle = scheduler.submit(cold)
        gate.release.set()
        _assert_same(handle.result(WAIT), want)
        _assert_same(busy.result(WAIT), busy_want)
        # one chunk prompt (9 or 11 tokens) per step with a 9-token budget: the busy answer kept decoding
        assert len(set(cache.put_at)) >= len(chunks)
        got, expected = cache.stats(), reference.stats()
        assert (got.hits, got.misses, got.entries) == (expected.hits, expected.misses, expected.entries)
        with pytest.raises(ValueError, match="max_prefill_tokens"):
            Scheduler(model_session(model), max_prefill_tokens=0)


# --------------------------------------------------------------------------- backpressure and failures


class TestBackpressure:
    def test_cancel_frees_rows_for_the_next_request(self, model, make_scheduler):
        gate = _Gate(at=1)
        scheduler = make_scheduler(model_session(model), max_batch_rows=4)
        long = scheduler.submit(
            GenerationRequest(PROMPTS_4, DOC_4, max_new_tokens=60, eos_token_ids=[], stream_callback=gate)
        )
        assert gate.reached.wait(WAIT)
        nxt_req = GenerationRequest(PROMPTS_4B, DOC_4B, max_new_tokens=4, eos_token_ids=[])
        nxt = scheduler.submit(nxt_req)
        assert scheduler.stats().queue_depth == 1  # 4 rows busy: it waits
        long.cancel()
        gate.release.set()
        with pytest.raises(RequestCancelledError):
            long.result(WAIT)
        _assert_same(nxt.result(WAIT), _solo(model, nxt_req))
        assert len(gate.seen) < 60
        stats = scheduler.stats()
        assert stats.cancelled == 1 and stats.completed == 1 and stats.active_rows == 0

    def test_cancel_while_waiting(self, model, make_scheduler):
        gate = _Gate(at=1)
        scheduler = make_scheduler(model_session(model), max_batch_rows=4)
        busy = scheduler.submit(
            GenerationRequest(PROMPTS_4, DOC_4, max_new_tokens=3, eos_token_ids=[], stream_callback=gate)
        )
        assert gate.reached.wait(WAIT)
        queued = scheduler.submit(GenerationRequest(PROMPTS_4B, DOC_4B, max_new_tokens=3, eos_token_ids=[]))
        queued.cancel()
        gate.release.set()
        with pytest.raises(RequestCancelledError):
            queued.result(WAIT)
        assert queued.admitted_at is None
        assert len(busy.result(WAIT).token_ids) == 3

    def test_queue_full(self, model, make_scheduler):
        gate = _Gate(at=1)
        scheduler = make_scheduler(model_session(model), max_batch_rows=4, max_queue=1)
        busy = scheduler.submit(
            GenerationRequest(PROMPTS_4, DOC_4, max_new_tokens=3, eos_token_ids=[], stream_callback=gate)
        )
        assert gate.reached.wait(WAIT)
        waiting = scheduler.submit(GenerationRequest(PROMPTS_4B, DOC_4B, max_new_tokens=2, eos_token_ids=[]))
        with pytest.raises(QueueFullError, match="max_queue=1"):
            scheduler.submit(GenerationRequest([[1]], torch.zeros(1), max_new_tokens=2, eos_token_ids=[]))
        gate.release.set()
        assert len(busy.result(WAIT).token_ids) == 3
        assert len(waiting.result(WAIT).token_ids) == 2
        assert scheduler.stats().rejected == 1
        with pytest.raises(ValueError, match="max_batch_rows"):
            scheduler.submit(GenerationRequest(PROMPTS_4 + [[1]], torch.zeros(5), max_new_tokens=2))

    def test_deadline_fails_the_request_and_frees_its_rows(self, model, make_scheduler):
        def slow(token: int) -> None:  # a slow client-side stream
            time.sleep(0.05)

        scheduler = make_scheduler(model_session(model), max_batch_rows=4)
        late = scheduler.submit(
            GenerationRequest(
                PROMPTS_4, DOC_4, max_new_tokens=60, eos_token_ids=[], stream_callback=slow, deadline_s=0.2
            )
        )
        after_req = GenerationRequest(PROMPTS_4B, DOC_4B, max_new_tokens=4, eos_token_ids=[])
        after = scheduler.submit(after_req)
        with pytest.raises(DeadlineExceededError, match="deadline"):
            late.result(WAIT)
        assert late.new_tokens < 60
        _assert_same(after.result(WAIT), _solo(model, after_req))
        assert scheduler.stats().expired == 1


class TestAdmission:
    def test_at_most_max_active_requests_decode_at_once(self, model, make_scheduler):
        rows_seen: list[int] = []
        scheduler = make_scheduler(
            model_session(model), max_batch_rows=64, max_active_requests=2, on_step=lambda r, s: rows_seen.append(r)
        )
        requests = [GenerationRequest(PROMPTS_4, DOC_4, max_new_tokens=n, eos_token_ids=[]) for n in (9, 7, 3, 3, 5)]
        handles = [scheduler.submit(r) for r in requests]
        for handle, request in zip(handles, requests):
            _assert_same(handle.result(WAIT), _solo(model, request))
        assert rows_seen and max(rows_seen) <= 8  # two answers of K=4 rows, though 64 rows were free
        stats = scheduler.stats()
        assert stats.max_active_requests == 2 and stats.active_requests == 0 and stats.completed == 5

    def test_waiting_requests_are_admitted_first_come_first_served(self, model, make_scheduler):
        """One at a time: answers finish in submission order although the later ones are shorter."""
        scheduler = make_scheduler(model_session(model), max_batch_rows=64, max_active_requests=1)
        done: list[int] = []
        handles = []
        for n in (8, 6, 2, 1):
            handle = scheduler.submit(GenerationRequest(PROMPTS_4B, DOC_4B, max_new_tokens=n, eos_token_ids=[]))
            handle.add_done_callback(lambda h: done.append(h.id))
            handles.append(handle)
        assert [len(h.result(WAIT).token_ids) for h in handles] == [8, 6, 2, 1]
        assert done == [h.id for h in handles]
        admitted = [h.admitted_at for h in handles]
        assert admitted == sorted(admitted)

    @pytest.mark.parametrize("admission", [True, False])
    def test_a_request_predicted_to_miss_its_deadline_is_refused_at_once(self, model, make_scheduler, admission):
        """Known rates (1 s per step of 4 rows, nothing else measured) with the scheduler held at a first token:
        the prediction for each new 10-token answer is exact arithmetic, and it is refused at submit when the
        prediction (+20 %) passes its deadline. A cold scheduler (nothing measured) admits."""
        gate = _Gate(at=1)
        scheduler = make_scheduler(model_session(model), max_batch_rows=64, admission=admission)
        first = scheduler.submit(
            GenerationRequest(PROMPTS_4, DOC_4, max_new_tokens=10, eos_token_ids=[], stream_callback=gate)
        )
        assert gate.reached.wait(WAIT)

        def ask(deadline_s: float):
            return scheduler.submit(
                GenerationRequest(PROMPTS_4B, DOC_4B, max_new_tokens=10, eos_token_ids=[], deadline_s=deadline_s)
            )

        cold = ask(40.0)  # nothing measured yet: queued without a prediction
        assert scheduler.stats().predicted_wait_s is None
        assert scheduler.predict(GenerationRequest(PROMPTS_4B, DOC_4B, max_new_tokens=10, deadline_s=0.01)) is None
        scheduler.rates.observe_step(4, 1.0)  # known timings: a step of R rows takes R / 4 s
        # first + cold + new: 12 rows, 3 s a step, 9 steps after the prefill's token: 27 s; x 1.2 = 32.4 s
        late_deadline = 30.0
        try:
            if admission:
                with pytest.raises(PredictedLateError, match="30 s left of its deadline") as refused:
                    ask(late_deadline)
                assert isinstance(refused.value, ServerBusyError)
                assert refused.value.predicted_s == pytest.approx(27.0)
                assert refused.value.retry_after_s == pytest.approx(32.4 - 30.0)
                stats = scheduler.stats()
                assert stats.rejected == 1 and stats.refused_late == 1
                assert stats.predicted_wait_s == pytest.approx(0.0) and stats.predicted_finish_s == pytest.approx(27.0)
                admitted = [cold]
            else:
                admitted = [cold, ask(late_deadline)]  # admission off: only the queue bound refuses
                assert scheduler.stats().rejected == 0
            fits = ask(60.0)  # 16 rows, 4 s a step: 36 s, x 1.2 = 43.2 s < 60 s
        finally:
            gate.release.set()
        assert len(first.result(WAIT).token_ids) == 10
        for handle in [*admitted, fits]:
            assert len(handle.result(WAIT).token_ids) == 10

    def test_a_queued_request_that_no_longer_fits_is_refused_when_its_turn_comes(self, model, make_scheduler):
        """It fitted at submit (1 s a step); the answer ahead then proved far slower (100 s a step), so at its
        admission it is refused (PredictedLateError) instead of decoding an answer that would miss its deadline."""
        gate = _Gate(at=1)
        scheduler = make_scheduler(model_session(model), max_batch_rows=64, max_active_requests=1, admission=True)
        first = scheduler.submit(
            GenerationRequest(PROMPTS_4, DOC_4, max_new_tokens=10, eos_token_ids=[], stream_callback=gate)
        )
        assert gate.reached.wait(WAIT)
        scheduler.rates.observe_step(4, 1.0)
        queued = scheduler.submit(
            GenerationRequest(PROMPTS_4B, DOC_4B, max_new_tokens=10, eos_token_ids=[], deadline_s=50.0)
        )  # 9 steps of the first, then its own 9: 18 s, x 1.2 < 50 s
        for _ in range(50):
            scheduler.rates.observe_step(4, 100.0)
        gate.release.set()
        assert len(first.result(WAIT).token_ids) == 10
        with pytest.raises(PredictedLateError, match="left of its deadline"):
            queued.result(WAIT)
        assert queued.admitted_at is None and queued.new_tokens == 0
        stats = scheduler.stats()
        assert stats.refused_late == 1 and stats.rejected == 1 and stats.active_requests == 0

    def test_bad_admission_settings_are_refused(self, model):
        with pytest.raises(ValueError, match="max_active_requests"):
            Scheduler(model_session(model), max_active_requests=0)
        with pytest.raises(ValueError, match="admission_margin"):
            Scheduler(model_session(model), admission_margin=-0.1)


class TestFailures:
    def test_a_failing_request_does_not_affect_the_others(self, model, make_scheduler):
        def bad_stop(ids):
            if len(ids) == 2:
                raise KeyError("stop rule bug")
            return False

        def bad_prefill(m, prompts):
            raise RuntimeError("prefix cache unavailable")

        good_req = GenerationRequest(PROMPTS_4B, DOC_4B, max_new_tokens=7, eos_token_ids=[])
        want = _solo(model, good_req)
        gate = _Gate(at=1)
        good_req.stream_callback = gate
        scheduler = make_scheduler(model_session(model))
        good = scheduler.submit(good_req)
        assert gate.reached.wait(WAIT)
        bad = scheduler.submit(GenerationRequest(PROMPTS_4, DOC_4, max_new_tokens=7, eos_token_ids=[], stop=bad_stop))
        broken = scheduler.submit(GenerationRequest([[1, 2]], torch.zeros(1), max_new_tokens=3, prefill_fn=bad_prefill))
        gate.release.set()
        with pytest.raises(KeyError, match="stop rule bug"):
            bad.result(WAIT)
        with pytest.raises(RuntimeError, match="prefix cache unavailable"):
            broken.result(WAIT)
        _assert_same(good.result(WAIT), want)
        assert scheduler.running and scheduler.stats().failed == 2

    def test_a_failing_forward_fails_its_batch_and_the_loop_goes_on(self, model, make_scheduler):
        plain = model_session(model)
        broken = threading.Event()

        @contextmanager
        def session(adapter):
            with plain(adapter) as m:
                if broken.is_set():
                    broken.clear()
                    raise RuntimeError("device lost")
                yield m

        def break_next_forward(token):
            broken.set()

        scheduler = make_scheduler(session)
        victim = scheduler.submit(
            GenerationRequest(PROMPTS_4, DOC_4, max_new_tokens=5, eos_token_ids=[], stream_callback=break_next_forward)
        )
        with pytest.raises(SchedulerError, match="batched forward failed: RuntimeError: device lost"):
            victim.result(WAIT)
        req = GenerationRequest(PROMPTS_4B, DOC_4B, max_new_tokens=4, eos_token_ids=[])
        _assert_same(scheduler.submit(req).result(WAIT), _solo(model, req))

    def test_close_fails_pending_requests_and_stops_the_thread(self, model):
        gate = _Gate(at=1)
        scheduler = Scheduler(model_session(model), max_batch_rows=4)
        active = scheduler.submit(
            GenerationRequest(PROMPTS_4, DOC_4, max_new_tokens=50, eos_token_ids=[], stream_callback=gate)
        )
        assert gate.reached.wait(WAIT)
        waiting = scheduler.submit(GenerationRequest(PROMPTS_4B, DOC_4B, max_new_tokens=3, eos_token_ids=[]))
        closer = threading.Thread(target=scheduler.close)
        closer.start()
        time.sleep(0.05)
        gate.release.set()
        closer.join(WAIT)
        assert not scheduler.running
        for handle in (active, waiting):
            with pytest.raises(SchedulerClosedError):
                handle.result(WAIT)
        with pytest.raises(SchedulerClosedError):
            scheduler.submit(GenerationRequest([[1]], torch.zeros(1), max_new_tokens=1))

    def test_request_validation(self):
        with pytest.raises(ValueError, match="strategy"):
            GenerationRequest([[1]], torch.zeros(1), max_new_tokens=2, strategy="nucleus")
        with pytest.raises(ValueError, match="one log p"):
            GenerationRequest([[1], [2]], torch.zeros(1), max_new_tokens=2)
        with pytest.raises(ValueError, match="deadline_s"):
            GenerationRequest([[1]], torch.zeros(1), max_new_tokens=2, deadline_s=0)
