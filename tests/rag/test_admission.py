"""rag.admission: service rates from known timings and the finish-time prediction of a queued answer."""

from __future__ import annotations

import pytest

from rag.admission import Prediction, ServiceRates, Work, predict

pytestmark = pytest.mark.unit


def flat_rates(step_s: float = 0.1) -> ServiceRates:
    """Rates whose decode step costs ``step_s`` whatever its rows (measured at 1 and 10 rows)."""
    rates = ServiceRates()
    for rows in (1, 10, 1, 10):
        rates.observe_step(rows, step_s)
    return rates


class TestServiceRates:
    def test_cold_rates_predict_nothing(self):
        rates = ServiceRates()
        assert not rates.measured
        assert rates.step_seconds(4) is None
        assert rates.prefill_seconds(100) == 0.0
        assert rates.expected_tokens(12) == 12.0  # the budget until an answer of it finished
        assert predict([], [], Work(4, 11), rates=rates, max_active=None, max_rows=64) is None

    def test_step_seconds_fit_a_line_over_rows(self):
        rates = ServiceRates()
        for rows in (4, 16, 8, 32, 4, 16):
            rates.observe_step(rows, 0.1 + 0.01 * rows)
        assert rates.measured
        assert rates.step_seconds(8) == pytest.approx(0.18)
        assert rates.step_seconds(64) == pytest.approx(0.74)

    def test_one_row_count_scales_up_proportionally_and_never_down(self):
        rates = ServiceRates()
        rates.observe_step(4, 0.2)
        assert rates.step_seconds(8) == pytest.approx(0.4)
        assert rates.step_seconds(4) == pytest.approx(0.2)
        assert rates.step_seconds(1) == pytest.approx(0.2)

    def test_recent_steps_weigh_more(self):
        rates = ServiceRates(decay=0.5)
        for _ in range(20):
            rates.observe_step(4, 1.0)
        for _ in range(20):
            rates.observe_step(4, 0.1)
        assert rates.step_seconds(4) == pytest.approx(0.1, rel=1e-3)

    def test_prefill_seconds_per_token_and_tokens_per_answer(self):
        rates = ServiceRates()
        rates.observe_prefill(100, 1.0)
        rates.observe_prefill(300, 3.0)
        assert rates.prefill_seconds(50) == pytest.approx(0.5)
        for tokens in (6, 6, 6):
            rates.observe_answer(12, tokens)
        assert rates.expected_tokens(12) == pytest.approx(6.0)
        assert rates.expected_tokens(200) == 200.0  # another budget (the full style) is not mixed in

    def test_bad_decay_is_refused(self):
        with pytest.raises(ValueError, match="decay"):
            ServiceRates(decay=1.0)


class TestPredict:
    def test_fifo_queue_behind_a_bound_on_active_answers(self):
        """Active: 10 steps left; queued ahead: 5 steps; new: 3 steps; 0.1 s per step whatever the rows."""
        rates = flat_rates(0.1)
        active, ahead, new = [Work(4, 10)], [Work(4, 5)], Work(4, 3)
        # two at once: the queued one starts now, the new one when it leaves (0.5 s), then runs 3 steps
        got = predict(active, ahead, new, rates=rates, max_active=2, max_rows=64)
        assert got == Prediction(wait_s=pytest.approx(0.5), finish_s=pytest.approx(0.8))
        # one at once: it waits for both (10 + 5 steps)
        got = predict(active, ahead, new, rates=rates, max_active=1, max_rows=64)
        assert got == Prediction(wait_s=pytest.approx(1.5), finish_s=pytest.approx(1.8))
        # no bound: all three decode together from now
        got = predict(active, ahead, new, rates=rates, max_active=None, max_rows=64)
        assert got == Prediction(wait_s=pytest.approx(0.0), finish_s=pytest.approx(0.3))

    def test_rows_bound_admission_too(self):
        rates = flat_rates(0.1)
        got = predict([Work(4, 10)], [], Work(4, 2), rates=rates, max_active=None, max_rows=6)
        assert got == Prediction(wait_s=pytest.approx(1.0), finish_s=pytest.approx(1.2))
        # more rows than a batch holds: never
        got = predict([], [], Work(8, 2), rates=rates, max_active=None, max_rows=6)
        assert got is not None and got.finish_s == float("inf")

    def test_prefills_pause_everyone_and_steps_cost_more_with_more_rows(self):
        rates = ServiceRates()
        rates.observe_step(4, 0.1)  # one row count seen: 8 rows cost 0.2 s a step
        rates.observe_prefill(10, 1.0)  # 0.1 s per prompt token
        # the active answer is not prefilled yet (5 tokens), the new one has 3 prompt tokens
        got = predict([Work(4, 4, 5)], [], Work(4, 2, 3), rates=rates, max_active=None, max_rows=64)
        assert got == Prediction(wait_s=pytest.approx(0.8), finish_s=pytest.approx(0.8 + 2 * 0.2))
