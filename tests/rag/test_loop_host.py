"""rag.loop_host: the scheduler's loop run in the thread that serves the host (``ragqa serve``: the main thread)."""

from __future__ import annotations

import threading

import pytest
import torch

from rag.decoding import rag_token_generate
from rag.loop_host import MainThreadHost, single_threaded_elsewhere, thread_start
from rag.scheduler import GenerationRequest, Scheduler, model_session
from tests.rag.tiny_llama import tiny_llama

pytestmark = pytest.mark.unit

PROMPTS = [[1, 5, 6, 7, 8, 9, 4], [3, 4], [9, 10, 11, 12], [7]]
DOC = torch.log_softmax(torch.tensor([0.9, 0.1, -0.4, 0.3]), dim=0)


def test_a_hosted_loop_runs_in_the_serving_thread_and_reports_its_end():
    host = MainThreadHost()
    ran_in: list[int] = []
    handle = host.start(lambda: ran_in.append(threading.get_ident()), "probe")
    assert handle.is_alive() and handle.ident is None  # queued, not started
    host.serve(until=lambda: not handle.is_alive(), poll_s=0.01)
    assert ran_in == [threading.get_ident()] == [handle.ident] and not handle.is_alive()
    # The default start: a thread of its own.
    other = thread_start(lambda: ran_in.append(threading.get_ident()), "probe")
    other.join(5)
    assert not other.is_alive() and ran_in[-1] == other.ident != threading.get_ident()


def test_a_failing_loop_ends_its_handle_and_the_host_goes_on():
    host = MainThreadHost()
    bad = host.start(lambda: 1 / 0, "bad")
    good = host.start(lambda: None, "good")
    host.serve(until=lambda: not good.is_alive(), poll_s=0.01)
    assert not bad.is_alive() and not good.is_alive()


def test_the_scheduler_answers_from_the_hosting_thread_as_from_its_own():
    """Requests submitted from other threads are answered by a loop running in this thread; the answer is the solo
    one, and close() from another thread ends the loop (and the host's serve)."""
    torch.manual_seed(0)
    model = tiny_llama(32, 0, max_positions=128)
    request = GenerationRequest(prompt_ids=PROMPTS, doc_logprobs=DOC, max_new_tokens=6, eos_token_ids=[2])
    want = rag_token_generate(model, PROMPTS, DOC, max_new_tokens=6, eos_token_ids=[2])
    host = MainThreadHost()
    scheduler = Scheduler(model_session(model), start=host.start)
    got: list = []

    def client() -> None:
        got.append(scheduler.submit(request).result(timeout=20))
        scheduler.close()

    threading.Thread(target=client).start()
    host.serve(until=lambda: not scheduler.running, poll_s=0.01)
    assert not scheduler.running and got[0].token_ids == want.token_ids


def test_other_threads_compute_with_one_thread_after_single_threaded_elsewhere():
    previous = torch.get_num_threads()
    seen: list[int] = []
    try:
        assert single_threaded_elsewhere(2) == 2 == torch.get_num_threads()
        worker = threading.Thread(target=lambda: seen.append(torch.get_num_threads()))
        worker.start()
        worker.join()
        assert seen == [1]
    finally:
        torch.set_num_threads(previous)  # this thread and the threads started later
