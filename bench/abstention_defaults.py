"""Abstention with default settings: does ragqa say "I don't know" to questions its collection cannot answer,
out of the box, while answering the ones it can?

    .venv/bin/python -m bench.abstention_defaults [--home H] [--limit N] [--sections tutorial faq howto reference]
        [--write]

Two collections, built (when missing) and calibrated exactly as ``ragqa ingest`` does (the automatic
per-collection calibration of :mod:`rag.calibration`; nothing is calibrated by hand, no threshold is set):

* ``pydocs``: the Python documentation of the Debian package ``python3.11-doc`` (``--sections``; the
  ``library`` section is 28 MB of HTML, too slow to ingest for this benchmark on a 2-core CPU, see the
  measured ingest time in the results);
* ``squad``: the three SQuAD 2.0 articles of ``data/benchmarks/squad2_dev_public.json``.

Question sets, each asked with ragqa's default settings (``QAConfig()``; the collection's calibrated
threshold is the only evidence threshold):

* out of collection (target: abstain on >= 90%): the FAQ questions (the question-form headings of
  ``faq/*.html``) against ``squad``; the SQuAD answerable questions against ``pydocs``; and the held-out
  ``[bench]`` split of the probe set (never used to calibrate) against both;
* in collection (target: answer >= 90%): the FAQ questions against ``pydocs``; the SQuAD answerable
  questions against ``squad``;
* measured, not a target: SQuAD 2.0's adversarial unanswerable questions against ``squad`` (written to be
  close to their paragraph; retrieval scores cannot tell them apart, see issue 3's analysis).

Two figures per set: the evidence gate alone on every question (the calibrated threshold against the
retriever's best dense cosine; no generation), and the whole pipeline (retrieval, the gate, generation,
the model's own "I don't know") on ``--limit`` questions per set sampled with seed 0.

``--write`` replaces the "Abstention with default settings" section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import logging
import os
import pathlib
import random
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from bench import common

common.stay_offline()

logger = logging.getLogger("bench.abstention_defaults")

SECTION = common.Section("abstention-defaults", "## Abstention with default settings")
TARGET = 0.9


@dataclass
class QuestionSet:
    name: str
    collection: str
    questions: list[str]
    expect: str  # "abstain" | "answer" | "measured"
    gate_abstained: int = 0
    scores: list[float] = field(default_factory=list)
    pipeline_n: int = 0
    pipeline_abstained: int = 0
    pipeline_model_idk: int = 0
    samples: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0

    def rate(self, abstained: int, n: int) -> float | None:
        if not n:
            return None
        return abstained / n if self.expect != "answer" else 1 - abstained / n


def faq_questions(faq_dir: pathlib.Path) -> list[str]:
    """The question-form headings (h2-h4 ending in "?") of the FAQ pages, in page order, without repeats."""
    from bs4 import BeautifulSoup

    out: list[str] = []
    for page in sorted(faq_dir.glob("*.html")):
        soup = BeautifulSoup(page.read_text(encoding="utf-8"), "lxml")
        for h in soup.find_all(["h2", "h3", "h4"]):
            text = h.get_text(" ", strip=True).rstrip("¶").strip()
            if text.endswith("?") and text not in out:
                out.append(text)
    return out


def squad_questions(path: pathlib.Path, answerable: bool) -> list[str]:
    from ingest.squad import iter_questions, read_squad

    return [q.question for _, _, q in iter_questions(read_squad(path).articles, answerable=answerable)]


def ensure_collection(ws: Any, name: str, paths: list[pathlib.Path]) -> dict[str, Any]:
    """Ingest ``paths`` into ``name`` when missing and calibrate it as ``ragqa ingest`` does; timings."""
    from rag.calibration import read_calibration, recalibrate

    out: dict[str, Any] = {"paths": [str(p) for p in paths]}
    if name not in ws.list_collections():
        t0 = time.perf_counter()
        report = ws.ingest(paths, name)
        out["ingest_s"] = round(time.perf_counter() - t0, 1)
        out["chunks"] = report.chunks
        logger.info("ingested %s: %d chunks in %.0f s", name, report.chunks, out["ingest_s"])
    recalibrate(ws, name)  # what `ragqa ingest` runs after the files (no-op when current)
    with ws.open(name, readonly=True) as coll:
        cal = read_calibration(coll)
        out["calibration"] = cal.to_dict() if cal else None
        out["chunks"] = coll.store.count_chunks()
        out["documents"] = coll.store.count_documents()
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    from api.factory import RagStack
    from api.settings import Settings
    from rag.abstention import AbstentionRule
    from rag.calibration import load_probes, read_calibration

    stack = RagStack(Settings(home=pathlib.Path(args.home).expanduser()))
    ws = stack.workspace
    docs = pathlib.Path(args.docs)
    collections = {
        "pydocs": ensure_collection(ws, "pydocs", [docs / s for s in args.sections]),
        "squad": ensure_collection(ws, "squad", [pathlib.Path(args.data)]),
    }
    faq = faq_questions(docs / "faq")
    squad_ok = squad_questions(pathlib.Path(args.data), answerable=True)
    squad_adv = squad_questions(pathlib.Path(args.data), answerable=False)
    probes = load_probes("bench")
    sets = [
        QuestionSet("FAQ questions -> SQuAD articles", "squad", faq, "abstain"),
        QuestionSet("SQuAD questions -> Python docs", "pydocs", squad_ok, "abstain"),
        QuestionSet("held-out probe questions -> Python docs", "pydocs", probes, "abstain"),
        QuestionSet("held-out probe questions -> SQuAD articles", "squad", probes, "abstain"),
        QuestionSet("FAQ questions -> Python docs", "pydocs", faq, "answer"),
        QuestionSet("SQuAD answerable questions -> SQuAD articles", "squad", squad_ok, "answer"),
        QuestionSet("SQuAD 2.0 adversarial unanswerable -> SQuAD articles", "squad", squad_adv, "measured"),
    ]
    if args.limit:
        stack.warm_up()
    qa, retriever = stack.qa, stack.retriever
    cfg = qa.config
    for qs in sets:
        t0 = time.perf_counter()
        with ws.open(qs.collection, readonly=True) as coll:
            rule = AbstentionRule.for_collection(cfg, read_calibration(coll))
            for q in qs.questions:  # the evidence gate on every question
                score = retriever.retrieve(coll, q).max_dense_score
                qs.scores.append(float(score) if score is not None else float("nan"))
                qs.gate_abstained += score is None or rule.evidence_too_weak(score)
            sample = list(qs.questions)
            if len(sample) > args.limit:
                sample = random.Random(0).sample(sample, args.limit)
            for q in sample:  # the whole pipeline, default settings
                ans = qa.answer(coll, q)
                qs.pipeline_n += 1
                qs.pipeline_abstained += ans.abstained
                qs.pipeline_model_idk += ans.abstained and "best evidence" not in (ans.abstain_reason or "")
                if len(qs.samples) < 3:
                    qs.samples.append({"question": q, "answer": ans.answer, "score": ans.max_retrieval_score})
        qs.seconds = round(time.perf_counter() - t0, 1)
        logger.info(
            "%s: gate %d/%d abstained; pipeline %d/%d abstained (%.0f s)",
            qs.name,
            qs.gate_abstained,
            len(qs.questions),
            qs.pipeline_abstained,
            qs.pipeline_n,
            qs.seconds,
        )
    return {
        "config": {"mode": cfg.mode, "auto_abstain": cfg.auto_abstain, "abstain_min_score": cfg.abstain_min_score},
        "collections": collections,
        "sections": list(args.sections),
        "limit": args.limit,
        "sets": [
            {
                "name": s.name,
                "collection": s.collection,
                "expect": s.expect,
                "n": len(s.questions),
                "gate_abstained": s.gate_abstained,
                "gate_rate": s.rate(s.gate_abstained, len(s.questions)),
                "median_score": round(statistics.median(s.scores), 3) if s.scores else None,
                "pipeline_n": s.pipeline_n,
                "pipeline_abstained": s.pipeline_abstained,
                "pipeline_model_idk": s.pipeline_model_idk,
                "pipeline_rate": s.rate(s.pipeline_abstained, s.pipeline_n),
                "samples": s.samples,
                "seconds": s.seconds,
            }
            for s in sets
        ],
        "machine": common.machine_summary(),
    }


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.0%}"


def render(res: dict[str, Any], argv: list[str]) -> str:
    lines = [f"Command: `{common.command_line(pathlib.Path(__file__), argv)}`  "]
    lines.append(f"Date: {common.today()} · revision {common.git_revision()} · {res['machine']}  ")
    lines.append(
        f"Default settings (mode {res['config']['mode']}, `auto_abstain` on, no `abstain_min_score`); each "
        "collection calibrated itself when it was ingested (`rag/calibration.py`: threshold = min(probe scores' "
        "97.5th percentile, answerable scores' 25th percentile))."
    )
    lines.append("")
    lines.append(
        "| collection | documents / chunks | ingest s | calibrated abstain_min_score "
        "| probe q97.5 / answerable q25 | answerable / probe queries | calibration s |"
    )
    lines.append("|---|---|---|---|---|---|---|")
    for name, c in res["collections"].items():
        cal = c.get("calibration") or {}
        lines.append(
            f"| {name} | {c.get('documents')} / {c.get('chunks')} | {c.get('ingest_s', 'existing')} | "
            f"{cal.get('min_score')} | {cal.get('probe_score')} / {cal.get('cap_score')} | "
            f"{cal.get('n_answerable')} / {cal.get('n_unanswerable')} | {cal.get('seconds')} |"
        )
    lines.append("")
    lines.append(
        f"Python docs sections: {', '.join(res['sections'])}. Evidence gate = the calibrated threshold alone, "
        f"every question; pipeline = `QAPipeline.answer` with defaults on up to {res['limit']} "
        "questions per set (seed 0), counting the model's own \"I don't know\" too."
    )
    lines.append("")
    lines.append(
        "| questions -> collection | n | median best cosine | wanted | evidence gate | pipeline (n) | target |"
    )
    lines.append("|---|---|---|---|---|---|---|")
    for s in res["sets"]:
        wanted = {"abstain": "abstain", "answer": "answer", "measured": "abstain (measured)"}[s["expect"]]
        target = "n/a" if s["expect"] == "measured" else f">= {TARGET:.0%}"
        met = ""
        if s["expect"] != "measured":
            rate = s["pipeline_rate"] if s["pipeline_rate"] is not None else s["gate_rate"]
            met = " met" if rate is not None and rate >= TARGET else " **not met**"
        lines.append(
            f"| {s['name']} | {s['n']} | {s['median_score']} | {wanted} | {_pct(s['gate_rate'])} | "
            f"{_pct(s['pipeline_rate'])} ({s['pipeline_n']}) | {target}{met} |"
        )
    lines.append("")
    if any(s["samples"] for s in res["sets"]):
        lines.append("Sample answers (pipeline, default settings):")
        lines.append("")
    for s in res["sets"]:
        for smp in s["samples"][:1]:
            score = "n/a" if smp["score"] is None else f"{smp['score']:.2f}"
            lines.append(f'- {s["name"]}: "{smp["question"]}" -> "{smp["answer"]}" (best cosine {score})')
    lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--home", default=os.environ.get("RAGQA_HOME", "~/.ragqa"), help="RAGQA_HOME for the collections")
    p.add_argument("--docs", default=str(common.PY_DOCS), help="the python3.11-doc HTML folder")
    p.add_argument("--sections", nargs="+", default=list(common.PY_DOCS_SECTIONS), help="Python docs sections")
    p.add_argument("--data", default=str(common.SQUAD), help="SQuAD JSON of the squad collection and its questions")
    p.add_argument(
        "--limit", type=int, default=40, help="questions per set through the whole pipeline (0: the evidence gate only)"
    )
    p.add_argument("--json", default=None)
    p.add_argument("--write", action="store_true", help="replace the section of BENCHMARKS.md")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format=common.LOG_FORMAT)
    res = run(args)
    common.save_json(args.json, res)
    body = render(res, argv)
    SECTION.publish(body, write=args.write)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
