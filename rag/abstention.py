"""The abstention rule: when the system withholds an answer, from the signals of one question.

Signals (see :class:`rag.qa.Answer` and :class:`rag.evaluate.Record`):

* ``max_score``: the best dense cosine of the retrieved evidence;
* ``mean_logprob``: the answer's mean per-token marginal log-likelihood;
* ``idk_margin``: mean per-token log p("I don't know.") minus the answer's, under the same marginal;
* ``model_abstained``: the model itself answered "I don't know" (or there was no evidence).

A threshold left at None is off. By default (``QAConfig.auto_abstain``) the evidence threshold comes from
the collection's own calibration (:mod:`rag.calibration`, :meth:`AbstentionRule.for_collection`) unless
``abstain_min_score`` is set. :class:`rag.qa.QAPipeline` applies the rule while answering (the
evidence check before generating, the answer checks after); :func:`rag.evaluate.compute_metrics`
applies it afterwards to records answered with thresholds off, so one pass serves many thresholds.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Protocol

__all__ = ["AbstentionRule", "CalibratedThreshold"]


class CalibratedThreshold(Protocol):
    """What the rule needs of a collection's calibration (:class:`rag.calibration.Calibration` has it)."""

    @property
    def min_score(self) -> float | None: ...


@dataclass(frozen=True)
class AbstentionRule:
    """Abstention thresholds; each one is off when None.

    Attributes:
        min_score: abstain when the best evidence cosine is below this (before generating).
        min_logprob: abstain when the answer's mean per-token log-likelihood is below this.
        max_idk_margin: abstain when "I don't know." beats the answer per token by more than this.
    """

    min_score: float | None = None
    min_logprob: float | None = None
    max_idk_margin: float | None = None

    @classmethod
    def from_config(cls, config: Any) -> AbstentionRule:
        """The thresholds of a :class:`rag.config.QAConfig`."""
        return cls(
            min_score=config.abstain_min_score,
            min_logprob=config.abstain_min_logprob,
            max_idk_margin=getattr(config, "abstain_max_idk_margin", None),
        )

    @classmethod
    def for_collection(cls, config: Any, calibration: CalibratedThreshold | None) -> AbstentionRule:
        """The thresholds of ``config``, with the collection's calibrated evidence threshold filling in
        ``abstain_min_score`` when the config leaves it unset and ``auto_abstain`` is on (explicit settings win)."""
        rule = cls.from_config(config)
        if (
            rule.min_score is None
            and getattr(config, "auto_abstain", True)
            and calibration is not None
            and calibration.min_score is not None
        ):
            rule = replace(rule, min_score=float(calibration.min_score))
        return rule

    def as_kwargs(self) -> dict[str, float | None]:
        """The thresholds as keyword arguments of :func:`rag.evaluate.compute_metrics`."""
        return {"min_score": self.min_score, "min_logprob": self.min_logprob, "max_idk_margin": self.max_idk_margin}

    # -- the three checks ------------------------------------------------------------------------
    def evidence_too_weak(self, max_score: float | None) -> bool:
        return self.min_score is not None and max_score is not None and max_score < self.min_score

    def answer_too_unlikely(self, mean_logprob: float | None) -> bool:
        return self.min_logprob is not None and mean_logprob is not None and mean_logprob < self.min_logprob

    def idk_preferred(self, idk_margin: float | None) -> bool:
        return self.max_idk_margin is not None and idk_margin is not None and idk_margin > self.max_idk_margin

    # -- decisions -------------------------------------------------------------------------------
    def abstains(
        self,
        *,
        model_abstained: bool,
        max_score: float | None,
        mean_logprob: float | None,
        idk_margin: float | None,
    ) -> bool:
        """Whether a question with these signals is (or would have been) abstained on."""
        return (
            model_abstained
            or self.evidence_too_weak(max_score)
            or self.answer_too_unlikely(mean_logprob)
            or self.idk_preferred(idk_margin)
        )

    def evidence_reason(self, max_score: float | None) -> str | None:
        """Why the evidence is too weak to generate from, or None when it is not."""
        if not self.evidence_too_weak(max_score):
            return None
        return f"best evidence score {max_score:.3f} < {self.min_score:.3f}"

    def answer_reason(self, mean_logprob: float | None, idk_margin: float | None) -> str | None:
        """Why a generated answer is withheld (likelihood first, then the "I don't know" margin), or None."""
        if self.answer_too_unlikely(mean_logprob):
            return f"answer likelihood {mean_logprob:.3f} < {self.min_logprob:.3f} per token"
        if self.idk_preferred(idk_margin):
            return (
                f'the model finds "I don\'t know" likelier than its answer (margin {idk_margin:.3f} '
                f"> {self.max_idk_margin:.3f} per token)"
            )
        return None
