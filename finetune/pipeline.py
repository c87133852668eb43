"""``ragqa finetune pipeline``: the improvement loop as one command, its steps chosen by a recipe YAML.

Steps, in this order, each run when the recipe has its section:

``data``
    training pairs: ``synth`` from a collection (the code of ``ragqa finetune synth``), ``feedback``
    (the folder ``ragqa feedback export`` wrote) or ``file`` (a JSONL you give). ``heldout`` keeps a
    seeded share aside for the gate.
``sft`` / ``dpo`` / ``rlhf``
    the training jobs; each section holds exactly the fields of :class:`finetune.config.SFTJob`,
    :class:`~finetune.config.DPOJob` or :class:`~finetune.config.RLHFJob`. Missing links are filled
    from earlier steps: ``sft.data`` and ``rlhf.prompts`` from ``data``, ``dpo/rlhf.from_adapter`` from
    ``sft``, ``dpo.data`` from ``prefs`` (or the feedback preferences), ``sft/rlhf.collection`` from ``data``.
``prefs``
    on-policy preference pairs (``finetune.prefs.run_prefs(job, ws)`` with ``finetune.config.PrefsJob``),
    dispatched through :data:`PREFS_STEP`; skipped with a note where that module is not installed.
``gate``
    :class:`finetune.gate.GateOptions`: the last trained adapter against what answers today, on the
    held-out split (or ``gate.eval``).
``promote``
    ``collection: NAME`` or ``server: true`` (``force: true`` skips the gate's verdict).

Resumable: a training step whose output adapter exists with the same configuration hash (the job's
options, the sha256 of its data files and the hash of the adapter it continues) is skipped; the hash
is recorded in the adapter's ``ragqa_adapter.json`` under ``pipeline``. Paths in the recipe are
relative to the recipe file.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from finetune.config import BaseJob, DPOJob, RLHFJob, SFTJob
from finetune.data import file_sha256, read_jsonl, write_jsonl
from finetune.errors import ConfigError, FinetuneError
from finetune.gate import GateEvaluator, GateOptions, GateRefused, GateResult, promote, run_gate
from ingest.errors import IngestError
from rag.adapter_defaults import AdapterDefaults
from rag.errors import RagError

logger = logging.getLogger(__name__)

STEP_ORDER = ("data", "sft", "prefs", "dpo", "rlhf", "gate", "promote")
#: the training steps: job model and runner (``module:function``, imported when the step runs)
TRAINING_STEPS: dict[str, tuple[type[BaseJob], str]] = {
    "sft": (SFTJob, "finetune.sft:run_sft"),
    "dpo": (DPOJob, "finetune.dpo:run_dpo"),
    "rlhf": (RLHFJob, "finetune.rlhf:run_rlhf"),
}


@dataclass(frozen=True)
class OptionalStep:
    """A step whose code may not be installed: ``module:function`` and the job model ``module:Class``."""

    runner: str
    job: str

    def load(self) -> tuple[Callable[..., Any], type[BaseModel]] | None:
        """The runner and job model, or None when either is missing."""
        try:
            mod, _, fn = self.runner.partition(":")
            jmod, _, cls = self.job.partition(":")
            return getattr(importlib.import_module(mod), fn), getattr(importlib.import_module(jmod), cls)
        except (ImportError, AttributeError) as exc:
            logger.info("optional step not available (%s)", exc)
            return None


#: on-policy preference pairs (``ragqa finetune prefs``), wired here when ``finetune.prefs`` exists
PREFS_STEP = OptionalStep("finetune.prefs:run_prefs", "finetune.config:PrefsJob")


class PipelineError(FinetuneError):
    """A pipeline step failed; the message names the step."""


class DataStep(BaseModel):
    """Where the training pairs come from."""

    model_config = ConfigDict(extra="forbid")

    source: Literal["synth", "feedback", "file"] = Field(..., description="synth, feedback or file.")
    collection: str | None = Field(None, description="synth: the collection whose chunks become pairs.")
    path: Path | None = Field(None, description="file: a JSONL of {question, answer}; feedback: the export folder.")
    n: int | None = Field(None, ge=1, description="synth: at most this many pairs.")
    seed: int = Field(0, description="Seed of synth and of the held-out split.")
    method: str = Field("cloze", description="synth: cloze, generate or both.")
    per_chunk: int = Field(2, ge=1, description="synth: most answers chosen per chunk.")
    heldout: float = Field(0.0, ge=0, lt=1, description="Share of the pairs kept aside for the gate.")

    @model_validator(mode="after")
    def _needs(self) -> DataStep:
        if self.source == "synth" and not self.collection:
            raise ValueError("data.source synth needs data.collection")
        if self.source in ("file", "feedback") and self.path is None:
            raise ValueError(f"data.source {self.source} needs data.path")
        return self


class PromoteStep(BaseModel):
    model_config = ConfigDict(extra="forbid")

    collection: str | None = Field(None, description="Promote to this collection's default.")
    server: bool = Field(False, description="Promote to the server-wide default.")
    force: bool = Field(False, description="Promote even when the gate refuses (recorded).")

    @model_validator(mode="after")
    def _one_scope(self) -> PromoteStep:
        if (self.collection is None) == (not self.server):
            raise ValueError("promote needs exactly one of 'collection: NAME' or 'server: true'")
        return self


class Recipe(BaseModel):
    """A pipeline recipe (the YAML file)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field("pipeline", description="Names the work folder and the default adapter names.")
    workdir: Path | None = Field(None, description="Data files of the run (default: $RAGQA_HOME/pipelines/NAME).")
    data: DataStep | None = None
    sft: dict[str, Any] | None = None
    prefs: dict[str, Any] | None = None
    dpo: dict[str, Any] | None = None
    rlhf: dict[str, Any] | None = None
    gate: GateOptions | None = None
    promote: PromoteStep | None = None

    @model_validator(mode="after")
    def _consistent(self) -> Recipe:
        if self.dpo is not None and self.rlhf is not None:
            raise ValueError("choose dpo or rlhf, not both")
        if not any(getattr(self, s) is not None for s in STEP_ORDER):
            raise ValueError(f"the recipe has no step; give some of: {', '.join(STEP_ORDER)}")
        if self.promote is not None and self.gate is None and not self.promote.force:
            raise ValueError("promote needs a gate step (or promote.force: true)")
        return self

    def steps(self) -> list[str]:
        return [s for s in STEP_ORDER if getattr(self, s) is not None]


def load_recipe(path: Path) -> tuple[Recipe, str]:
    """The recipe in ``path`` with its relative paths made absolute, and the file's text."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"recipe {path} does not exist")
    text = path.read_text(encoding="utf-8")
    try:
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{path} must hold a mapping of steps ({', '.join(STEP_ORDER)})")
    base = path.resolve().parent
    try:
        recipe = Recipe.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(x) for x in e['loc'])}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"invalid recipe {path}: {problems}") from exc
    for step in ("sft", "prefs", "dpo", "rlhf"):
        section = getattr(recipe, step)
        if section is not None:
            for key in ("data", "prompts", "questions", "output_file"):
                if isinstance(section.get(key), str):
                    section[key] = str(_absolute(Path(section[key]), base))
    for step, model in (("sft", SFTJob), ("dpo", DPOJob), ("rlhf", RLHFJob)):
        section = getattr(recipe, step)
        unknown = sorted(set(section or {}) - set(model.model_fields))
        if unknown:
            raise ConfigError(
                f"{path}: unknown field(s) of {step}: {', '.join(unknown)} (see `ragqa finetune {step} --help`)"
            )
    if recipe.data is not None and recipe.data.path is not None:
        recipe.data.path = _absolute(recipe.data.path, base)
    if recipe.gate is not None and recipe.gate.eval is not None:
        recipe.gate.eval = _absolute(recipe.gate.eval, base)
    if recipe.workdir is not None:
        recipe.workdir = _absolute(recipe.workdir, base)
    return recipe, text


def _absolute(p: Path, base: Path) -> Path:
    p = Path(p).expanduser()
    return p if p.is_absolute() else base / p


@dataclass
class StepReport:
    step: str
    status: str  #: done, skipped, refused, failed
    seconds: float = 0.0
    output: str | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "status": self.status,
            "seconds": round(self.seconds, 2),
            "output": self.output,
            **self.details,
        }


@dataclass
class PipelineReport:
    recipe: str
    steps: list[StepReport] = field(default_factory=list)
    adapter: str | None = None
    promoted: bool = False
    gate: GateResult | None = None

    @property
    def ok(self) -> bool:
        return all(s.status in ("done", "skipped") for s in self.steps)

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "recipe": self.recipe,
            "adapter": self.adapter,
            "promoted": self.promoted,
            "steps": [s.to_dict() for s in self.steps],
            "gate": self.gate.to_dict() if self.gate else None,
        }


#: receives one line per step as it starts and ends
Progress = Callable[[str], None]


@dataclass
class _State:
    """What earlier steps produced for later ones."""

    train: Path | None = None
    heldout: Path | None = None
    preferences: Path | None = None
    collection: str | None = None
    adapter: str | None = None  #: the last trained generator adapter
    sft_adapter: str | None = None
    gate: GateResult | None = None


class Pipeline:
    """Runs a :class:`Recipe` against a fine-tune workspace (:class:`finetune.runner.Workspace`)."""

    def __init__(
        self,
        recipe: Recipe,
        ws: Any,
        *,
        recipe_path: Path | None = None,
        recipe_text: str = "",
        evaluator: GateEvaluator | None = None,
        progress: Progress | None = None,
        show_bars: bool = False,
    ) -> None:
        self.recipe = recipe
        self.ws = ws
        self.recipe_path = recipe_path
        self.recipe_text = recipe_text
        self._evaluator = evaluator
        self.progress = progress or (lambda line: logger.info("%s", line))
        self.show_bars = show_bars
        self.state = _State()
        self.workdir = recipe.workdir or Path(ws.home) / "pipelines" / recipe.name

    @property
    def evaluator(self) -> GateEvaluator:
        if self._evaluator is None:
            self._evaluator = GateEvaluator.from_workspace(self.ws)
        return self._evaluator

    def run(self) -> PipelineReport:
        report = PipelineReport(str(self.recipe_path) if self.recipe_path else self.recipe.name)
        steps = self.recipe.steps()
        t_all = time.perf_counter()
        for i, step in enumerate(steps, start=1):
            self.progress(f"[{i}/{len(steps)}] {step}: started")
            t0 = time.perf_counter()
            try:
                result = getattr(self, f"_step_{step}")()
            except GateRefused as exc:
                result = StepReport(step, "refused", details={"reason": str(exc)})
            except (FinetuneError, IngestError, RagError) as exc:  # every known failure: the step fails, said why
                result = StepReport(step, "failed", details={"error": str(exc)})
            result.seconds = time.perf_counter() - t0
            report.steps.append(result)
            note = result.details.get("reason") or result.details.get("error") or ""
            self.progress(
                f"[{i}/{len(steps)}] {step}: {result.status} in {result.seconds:.1f} s"
                + (f" -> {result.output}" if result.output else "")
                + (f" ({note})" if note else "")
                + f"  [{time.perf_counter() - t_all:.1f} s total]"
            )
            if result.status in ("failed", "refused"):
                break
        report.adapter = self.state.adapter
        report.gate = self.state.gate
        report.promoted = any(s.step == "promote" and s.status == "done" for s in report.steps)
        return report

    # -- data -------------------------------------------------------------------------------------
    def _step_data(self) -> StepReport:
        d = self.recipe.data
        if d is None:
            raise PipelineError("data: the recipe has no data section")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.state.collection = d.collection
        if d.source == "synth":
            pairs_file = self.workdir / "synth.jsonl"
            stamp = _sha({"data": d.model_dump(mode="json")})
            if not _fresh(self.workdir / "synth.stamp", stamp, pairs_file):
                rows = self._synth(d)
                write_jsonl(pairs_file, rows)
                (self.workdir / "synth.stamp").write_text(stamp)
            source = pairs_file
        elif d.source == "feedback":
            folder = Path(d.path) if d.path else Path()
            source = folder / "sft.jsonl" if folder.is_dir() else folder
            prefs = (folder if folder.is_dir() else folder.parent) / "preferences.jsonl"
            if prefs.is_file() and prefs.stat().st_size > 0:
                self.state.preferences = prefs
        else:
            source = Path(d.path) if d.path else Path()
        records = [r.to_json() for r in read_jsonl(source, "sft", min_examples=2)]
        train, held = _split(records, d.heldout, d.seed)
        self.state.train = self.workdir / "train.jsonl"
        write_jsonl(self.state.train, train)
        if held:
            self.state.heldout = self.workdir / "heldout.jsonl"
            write_jsonl(self.state.heldout, held)
        return StepReport(
            "data",
            "done",
            output=str(self.state.train),
            details={"source": d.source, "train": len(train), "heldout": len(held)},
        )

    def _synth(self, d: DataStep) -> list[dict[str, Any]]:
        from finetune.synth import SynthError, generator_question_writer, synthesize
        from ingest.errors import IngestError
        from ingest.workspace import Workspace as IngestWorkspace

        try:
            with IngestWorkspace(self.ws.home, self.ws.ingest).open(
                str(d.collection), readonly=True, check_embedder=False
            ) as coll:
                chunks = list(coll.store.iter_chunks())
        except IngestError as exc:
            raise PipelineError(f"data: {exc}") from exc
        writer = generator_question_writer(self.ws.base_generator()) if d.method in ("generate", "both") else None
        try:
            result = synthesize(
                chunks,
                n=d.n,
                seed=d.seed,
                method=d.method,
                per_chunk=d.per_chunk,
                write_question=writer,
                progress=self.show_bars,
            )
        except SynthError as exc:
            raise PipelineError(f"data: {exc}") from exc
        if not result.pairs:
            raise PipelineError(f"data: no question/answer pairs could be made from collection {d.collection!r}")
        return [p.to_json() for p in result.pairs]

    # -- training -----------------------------------------------------------------------------------
    def _step_sft(self) -> StepReport:
        section = dict(self.recipe.sft or {})
        if "data" not in section:
            if self.state.train is None:
                raise PipelineError("sft: give sft.data or a data step")
            section["data"] = str(self.state.train)
        section.setdefault("output", f"{self.recipe.name}-sft")
        if self.state.collection and "collection" not in section:
            section["collection"] = self.state.collection
        out = self._train("sft", section)
        self.state.sft_adapter = self.state.adapter
        return out

    def _step_prefs(self) -> StepReport:
        loaded = PREFS_STEP.load()
        if loaded is None:
            return StepReport("prefs", "skipped", details={"reason": "finetune.prefs is not installed here"})
        runner, job_model = loaded
        section = dict(self.recipe.prefs or {})
        fields = job_model.model_fields
        for key, value in (
            ("adapter", self.state.adapter),
            ("from_adapter", self.state.adapter),
            ("data", str(self.state.train) if self.state.train else None),
            ("collection", self.state.collection),
        ):
            if key in fields and key not in section and value is not None:
                section[key] = value
        if "output" in fields and "output" not in section:
            section["output"] = str(self.workdir / "prefs.jsonl")
        try:
            job = job_model.model_validate(section)
        except ValidationError as exc:
            raise PipelineError(f"prefs: {exc}") from exc
        result = runner(job, self.ws)
        produced = _produced_file(result, job)
        if produced is not None:
            self.state.preferences = produced
        return StepReport("prefs", "done", output=str(produced) if produced else None)

    def _step_dpo(self) -> StepReport:
        section = dict(self.recipe.dpo or {})
        if "data" not in section:
            if self.state.preferences is None:
                raise PipelineError("dpo: give dpo.data, a prefs step or feedback data with preferences")
            section["data"] = str(self.state.preferences)
        section.setdefault("output", f"{self.recipe.name}-dpo")
        if self.state.sft_adapter and "from_adapter" not in section:
            section["from_adapter"] = self.state.sft_adapter
        return self._train("dpo", section)

    def _step_rlhf(self) -> StepReport:
        section = dict(self.recipe.rlhf or {})
        if "prompts" not in section:  # the data step's questions, with their gold answers for the F1 reward
            if self.state.train is None:
                raise PipelineError("rlhf: give rlhf.prompts or a data step")
            section["prompts"] = str(self.state.train)
        section.setdefault("output", f"{self.recipe.name}-rlhf")
        if self.state.sft_adapter and "from_adapter" not in section:
            section["from_adapter"] = self.state.sft_adapter
        if self.state.collection and "collection" not in section:  # prompts in the form inference reads them
            section["collection"] = self.state.collection
        return self._train("rlhf", section)

    def _train(self, step: str, section: dict[str, Any]) -> StepReport:
        model, runner = TRAINING_STEPS[step]
        try:
            job = model.model_validate(section)
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(str(x) for x in e['loc'])}: {e['msg']}" for e in exc.errors())
            raise PipelineError(f"{step}: invalid options: {problems}") from exc
        config_hash = self._config_hash(job)
        registry = self.ws.adapters
        name = job.output
        if registry.exists(name):
            meta = registry.store.meta(name)
            recorded = (meta.get("pipeline") or {}).get("config_sha256")
            if recorded == config_hash:
                self.state.adapter = name
                self._record_heldout(name)
                return StepReport(step, "skipped", output=name, details={"reason": "same config, already trained"})
            if recorded is None and not job.overwrite:
                raise PipelineError(
                    f"{step}: adapter {name!r} exists and was not made by a pipeline; "
                    f"set {step}.overwrite: true or choose another {step}.output"
                )
            job = job.model_copy(update={"overwrite": True})
        mod, _, fn = runner.partition(":")
        result = getattr(importlib.import_module(mod), fn)(job, self.ws)
        self.state.adapter = result.adapter.name
        meta = registry.store.meta(name)
        meta["pipeline"] = {"config_sha256": config_hash, "recipe": self._recipe_record(), "step": step}
        registry.store.write_meta(registry.path(name), meta)
        self._record_heldout(name)
        metrics = {k: v for k, v in result.metrics.items() if k in ("train_loss", "eval_loss", "train_seconds")}
        return StepReport(step, "done", output=name, details=metrics)

    def _config_hash(self, job: BaseModel) -> str:
        options = job.model_dump(mode="json", exclude={"overwrite", "resume"})
        files = {}
        for key in ("data", "prompts"):
            p = getattr(job, key, None)
            if p is not None and Path(p).is_file():
                files[key] = file_sha256(Path(p))
        parent = getattr(job, "from_adapter", None)
        parent_hash = None
        if parent and self.ws.adapters.exists(parent):
            parent_meta = self.ws.adapters.store.meta(parent)
            parent_hash = (parent_meta.get("pipeline") or {}).get("config_sha256") or parent_meta.get("created_at")
        return _sha({"options": options, "files": files, "parent": parent_hash})

    def _recipe_record(self) -> dict[str, Any]:
        return {
            "path": str(self.recipe_path) if self.recipe_path else None,
            "sha256": hashlib.sha256(self.recipe_text.encode("utf-8")).hexdigest(),
        }

    def _record_heldout(self, name: str) -> None:
        """Write the held-out split into the adapter's metadata, so `ragqa adapters promote` finds it later."""
        if self.state.heldout is None:
            return
        store = self.ws.adapters.store
        meta = store.meta(name)
        meta["heldout"] = {"path": str(self.state.heldout), "sha256": file_sha256(self.state.heldout)}
        store.write_meta(store.path(name), meta)

    # -- gate and promote ---------------------------------------------------------------------------------
    def _scope(self) -> str | None:
        p = self.recipe.promote
        if p is not None:
            return None if p.server else p.collection
        return (self.recipe.gate.eval_collection if self.recipe.gate else None) or self.state.collection

    def _step_gate(self) -> StepReport:
        options = (self.recipe.gate or GateOptions()).model_copy()
        candidate = self.state.adapter
        if candidate is None:
            raise PipelineError("gate: no adapter was trained in this pipeline")
        if options.eval is None:
            options.eval = self.state.heldout
        if options.eval is None:
            raise PipelineError("gate: give gate.eval (held-out questions) or data.heldout > 0")
        if options.eval_collection is None:
            options.eval_collection = self.state.collection or (self.recipe.sft or {}).get("collection")
        scope = self._scope()
        current = self.evaluator.resolver.resolve(scope, None)
        if current.adapter == candidate:
            return StepReport("gate", "skipped", output=candidate, details={"reason": f"{candidate!r} already answers"})
        meta = self.ws.adapters.store.meta(candidate)
        result = run_gate(self.evaluator, candidate, scope, options, meta=meta, progress=self.show_bars)
        self.state.gate = result
        details = {
            "candidate_f1": round(result.candidate.metrics.f1, 4),
            "current_f1": round(result.current.metrics.f1, 4),
            "current": result.current.adapter,
            "reason": result.reason,
        }
        if not result.passed and not (self.recipe.promote and self.recipe.promote.force):
            return StepReport("gate", "refused", output=candidate, details=details)
        return StepReport("gate", "done", output=candidate, details=details)

    def _step_promote(self) -> StepReport:
        p = self.recipe.promote
        if p is None:
            raise PipelineError("promote: the recipe has no promote section")
        candidate = self.state.adapter
        if candidate is None:
            raise PipelineError("promote: no adapter was trained in this pipeline")
        scope = None if p.server else p.collection
        if self.evaluator.resolver.resolve(scope, None).adapter == candidate:
            return StepReport("promote", "skipped", output=candidate, details={"reason": "already the default"})
        entry = promote(AdapterDefaults(self.ws.home), candidate, scope, self.state.gate, force=p.force)
        entry_pipeline = {"scope": "server" if scope is None else scope, "action": entry["action"]}
        return StepReport("promote", "done", output=candidate, details=entry_pipeline)


def _split(records: list[dict[str, Any]], share: float, seed: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    if share <= 0:
        return records, []
    order = list(range(len(records)))
    random.Random(seed).shuffle(order)
    n_held = max(1, int(round(len(records) * share)))
    if len(records) - n_held < 2:
        raise PipelineError(f"data: {len(records)} pairs are too few to keep {share:.0%} aside; lower data.heldout")
    held = set(order[:n_held])
    return [r for i, r in enumerate(records) if i not in held], [r for i, r in enumerate(records) if i in held]


def _sha(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode("utf-8")).hexdigest()


def _fresh(stamp: Path, value: str, output: Path) -> bool:
    return output.is_file() and stamp.is_file() and stamp.read_text() == value


def _produced_file(result: Any, job: BaseModel) -> Path | None:
    """The preference file a prefs run wrote: ``result.output``/``result.path`` or the job's ``output``."""
    for obj, key in ((result, "output"), (result, "path"), (job, "output")):
        value = getattr(obj, key, None)
        if value is None and isinstance(obj, dict):
            value = obj.get(key)
        if isinstance(value, (str, Path)) and Path(value).is_file():
            return Path(value)
    return None
