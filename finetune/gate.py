"""The eval gate: promote an adapter to a default only when it answers held-out questions better.

:func:`run_gate` answers the same held-out questions with the candidate adapter and with what
answers today (the scope's current default, else the server's, else the shipped adapter, else the
bare model), through the real retrieval and generation of :func:`rag.evaluate.run_eval` — the code
``ragqa eval`` runs — and scores both with :func:`rag.evaluate.compute_metrics` (SQuAD F1/EM,
abstention precision/recall under the configured thresholds). The candidate passes when its F1 is at
least the current F1 plus ``margin``. :func:`promote` then moves the scope's pointer
(:class:`rag.adapter_defaults.AdapterDefaults`) and records the comparison in its history.

Held-out questions come from a file (SQuAD-format JSON, or JSONL of ``{question, answer | answers}``;
an answer of "I don't know." or ``"answerable": false`` marks an unanswerable question) or from the
split the pipeline kept aside at training time (the adapter's ``ragqa_adapter.json`` ``heldout``).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, Field

from finetune.errors import FinetuneError
from rag.adapter_defaults import NO_ADAPTER, AdapterDefaults, AdapterResolver, Resolved, scope_key, scope_label
from rag.evaluate import Metrics, QAExample, compute_metrics, load_squad, run_eval, sample_examples, thresholds
from rag.prompts import ABSTAIN_TEXT

if TYPE_CHECKING:
    from finetune.runner import Workspace
    from ingest.workspace import Workspace as IngestWorkspace
    from rag.qa import QAPipeline

logger = logging.getLogger(__name__)

#: the metrics the comparison table shows, in order (key, label)
COMPARED = (("f1", "F1"), ("em", "EM"), ("abstain_precision", "abstain P"), ("abstain_recall", "abstain R"))


class GateError(FinetuneError):
    """The gate cannot run (no held-out questions, unknown collection, ...)."""


class GateRefused(FinetuneError):
    """The candidate did not beat the current default by the margin; nothing was changed."""

    def __init__(self, result: GateResult) -> None:
        self.result = result
        super().__init__(result.reason)


class GateOptions(BaseModel):
    """The eval gate (``ragqa adapters promote``; the ``gate`` step of ``ragqa finetune pipeline``)."""

    eval: Path | None = Field(
        None,
        description="Held-out questions: SQuAD-format JSON or JSONL of {question, answer|answers}. "
        "Default: the split kept aside at training time (the adapter's metadata 'heldout').",
    )
    eval_collection: str | None = Field(
        None, description="Collection the questions are answered from (default: the promoted collection)."
    )
    margin: float = Field(0.01, ge=-1, le=1, description="The candidate's F1 must reach the current F1 + margin.")
    mode: str | None = Field(None, description="stuff, rag-sequence or rag-token (default from config).")
    k: int | None = Field(None, ge=1, le=64, description="Documents retrieved (default from config).")
    n: int | None = Field(
        None, ge=1, description="Answerable questions sampled (fixed seed), plus as many unanswerable."
    )
    seed: int = Field(0, description="Sampling seed of --n.")


@dataclass
class GateSide:
    """One evaluated side: the adapter (None: the bare model), how it was chosen, its metrics."""

    adapter: str | None
    source: str
    metrics: Metrics

    @property
    def label(self) -> str:
        return self.adapter or "bare model"

    def to_dict(self) -> dict[str, Any]:
        return {"adapter": self.adapter, "source": self.source, "metrics": self.metrics.to_dict()}


@dataclass
class GateResult:
    candidate: GateSide
    current: GateSide
    margin: float
    passed: bool
    eval_source: str
    collection: str

    @property
    def delta_f1(self) -> float:
        return self.candidate.metrics.f1 - self.current.metrics.f1

    @property
    def reason(self) -> str:
        c, b = self.candidate, self.current
        verdict = "reaches" if self.passed else "does not reach"
        return (
            f"candidate {c.label!r} F1 {c.metrics.f1:.3f} {verdict} the current {b.label!r} F1 "
            f"{b.metrics.f1:.3f} + margin {self.margin:.3f} on {c.metrics.n} held-out question(s) "
            f"from {self.eval_source}"
        )

    def rows(self) -> list[tuple[str, str, str, str]]:
        """The comparison table: (metric, current, candidate, delta)."""

        def fmt(v: Any) -> str:
            return "-" if v is None else f"{v:.3f}"

        out = []
        for key, label in COMPARED:
            a, b = getattr(self.current.metrics, key), getattr(self.candidate.metrics, key)
            delta = f"{b - a:+.3f}" if a is not None and b is not None else "-"
            out.append((label, fmt(a), fmt(b), delta))
        n = self.candidate.metrics
        out.append(("n (answerable / unanswerable)", f"{n.n} / {n.n_unanswerable}", f"{n.n} / {n.n_unanswerable}", ""))
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "margin": self.margin,
            "delta_f1": round(self.delta_f1, 4),
            "eval": self.eval_source,
            "collection": self.collection,
            "candidate": self.candidate.to_dict(),
            "current": self.current.to_dict(),
            "reason": self.reason,
        }

    def summary(self) -> dict[str, Any]:
        """What the defaults history records about this comparison."""
        return {
            "candidate_f1": round(self.candidate.metrics.f1, 4),
            "current_f1": round(self.current.metrics.f1, 4),
            "compared_with": self.current.adapter,
            "margin": self.margin,
            "n": self.candidate.metrics.n,
            "eval": self.eval_source,
            "eval_collection": self.collection,
        }


# -- held-out questions ---------------------------------------------------------------------
def load_eval_examples(path: Path, n: int | None = None, seed: int = 0) -> list[QAExample]:
    """Questions of a SQuAD-format JSON file or a JSONL file, sampled as ``ragqa eval --n`` does."""
    path = Path(path)
    if not path.is_file():
        raise GateError(f"held-out file {path} does not exist; give --eval FILE (SQuAD JSON or JSONL)")
    if path.suffix.lower() in (".jsonl", ".ndjson"):
        examples = _read_jsonl_examples(path)
    else:
        try:
            examples = load_squad(path)
        except ValueError as exc:
            raise GateError(f"{path}: {exc}; give SQuAD-format JSON or JSONL of {{question, answer}}") from exc
    if not examples:
        raise GateError(f"{path} holds no questions")
    return sample_examples(examples, n, seed)


def _read_jsonl_examples(path: Path) -> list[QAExample]:
    out: list[QAExample] = []
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        text = raw.strip()
        if not text or text.startswith("#"):
            continue
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as exc:
            raise GateError(f"{path}:{number}: not valid JSON ({exc.msg})") from exc
        question = obj.get("question") if isinstance(obj, dict) else None
        if not isinstance(question, str) or not question.strip():
            raise GateError(f"{path}:{number}: needs a 'question' string")
        answers = obj.get("answers", [obj["answer"]] if isinstance(obj.get("answer"), str) else [])
        answers = [a for a in answers if isinstance(a, str) and a.strip()]
        impossible = obj.get("answerable") is False or bool(obj.get("is_impossible"))
        if answers and all(a.strip() == ABSTAIN_TEXT for a in answers):
            impossible, answers = True, []
        if not answers and not impossible:
            raise GateError(f"{path}:{number}: needs 'answer' or 'answers' (or \"answerable\": false)")
        context = obj.get("context") if isinstance(obj.get("context"), str) else ""
        out.append(QAExample(str(obj.get("id", number)), question.strip(), answers, "", context, impossible))
    return out


def heldout_file(meta: dict[str, Any]) -> Path | None:
    """The held-out file an adapter's metadata records (written by ``ragqa finetune pipeline``), if it exists."""
    held = meta.get("heldout")
    path = held.get("path") if isinstance(held, dict) else held
    return Path(path) if isinstance(path, str) and Path(path).is_file() else None


# -- evaluation -------------------------------------------------------------------------------
class GateEvaluator:
    """Answers held-out questions with one adapter at a time (one loaded generator for both sides)."""

    def __init__(self, qa: QAPipeline, collections: IngestWorkspace) -> None:
        self.qa = qa
        self.collections = collections

    @classmethod
    def from_workspace(cls, ws: Workspace) -> GateEvaluator:
        """The evaluator of a fine-tune workspace: its retriever, generator and QA settings."""
        from ingest.workspace import Workspace as IngestWorkspace
        from rag.generator import Generator
        from rag.models import canonical_name
        from rag.qa import QAPipeline
        from rag.retriever import Retriever

        iws = IngestWorkspace(ws.home, ws.ingest)
        adapters_dir = ws.home / "adapters"
        qa = QAPipeline(
            Retriever(iws.embedder, ws.retriever),
            Generator(ws.generator, ws.models_dir, adapters_dir),
            ws.qa,
            adapter_resolver=AdapterResolver(ws.home, adapters_dir, canonical_name(ws.generator.model)),
        )
        return cls(qa, iws)

    @property
    def resolver(self) -> AdapterResolver:
        if self.qa.adapter_resolver is None:
            raise GateError("the QA pipeline has no adapter resolver; build it with RagStack or from_workspace")
        return self.qa.adapter_resolver

    def evaluate(
        self,
        collection: str,
        examples: list[QAExample],
        adapter: str | None,
        *,
        mode: str | None = None,
        k: int | None = None,
        progress: bool = False,
    ) -> Metrics:
        """Metrics of ``adapter`` (None: the bare model) on ``examples`` answered from ``collection``."""
        with self.collections.open(collection, readonly=True) as coll:
            records = run_eval(
                self.qa, coll, examples, mode=mode, k=k, adapter=adapter or NO_ADAPTER, progress=progress
            )
        return compute_metrics(records, **thresholds(self.qa.config))


def run_gate(
    evaluator: GateEvaluator,
    candidate: str,
    scope: str | None,
    options: GateOptions,
    *,
    meta: dict[str, Any] | None = None,
    progress: bool = False,
) -> GateResult:
    """Compare ``candidate`` with what answers ``scope`` (a collection, or None: server-wide) today.

    ``meta``: the candidate's ``ragqa_adapter.json`` (its held-out split and training collection are
    the defaults of ``options.eval`` and ``options.eval_collection``).
    """
    meta = meta or {}
    path = options.eval or heldout_file(meta)
    if path is None:
        raise GateError(
            f"no held-out questions for {candidate!r}: give --eval FILE (SQuAD JSON or JSONL of question/answer); "
            "adapters trained by `ragqa finetune pipeline` with a held-out share record theirs"
        )
    collection = options.eval_collection or scope or _training_collection(meta)
    if not collection:
        raise GateError("say which collection answers the held-out questions: --eval-collection NAME")
    examples = load_eval_examples(path, options.n, options.seed)
    current = evaluator.resolver.resolve(scope, None, "short")  # the held-out evaluation answers short
    if current.adapter == candidate:
        raise GateError(f"{candidate!r} already answers the {scope_label(scope_key(scope))} ({current.source} default)")
    sides = []
    for resolved in (current, Resolved(candidate, "candidate")):
        logger.info("gate: evaluating %s on %d question(s)", resolved.adapter or "the bare model", len(examples))
        metrics = evaluator.evaluate(
            collection, examples, resolved.adapter, mode=options.mode, k=options.k, progress=progress
        )
        sides.append(GateSide(resolved.adapter, resolved.source, metrics))
    current_side, candidate_side = sides
    passed = candidate_side.metrics.f1 >= current_side.metrics.f1 + options.margin - 1e-12
    return GateResult(candidate_side, current_side, options.margin, passed, str(path), collection)


def promote(
    defaults: AdapterDefaults, candidate: str, scope: str | None, result: GateResult | None, *, force: bool = False
) -> dict[str, Any]:
    """Make ``candidate`` the default of ``scope`` when ``result`` passed (or ``force``); returns the history entry.

    Raises :class:`GateRefused` (changing nothing) when the gate did not pass and ``force`` is off."""
    if result is not None and not result.passed and not force:
        raise GateRefused(result)
    if result is None and not force:
        raise GateError("promotion without an evaluation needs force=True (--force)")
    details: dict[str, Any] = {"gate": result.summary()} if result is not None else {}
    if force:
        details["forced"] = True
    return defaults.set(scope, candidate, action="force" if force else "promote", details=details)


def _training_collection(meta: dict[str, Any]) -> str | None:
    options = meta.get("options")
    coll = options.get("collection") if isinstance(options, dict) else None
    return coll if isinstance(coll, str) and coll else None
