"""Abstention signals: how well do they tell unanswerable questions from answered ones, and what do
thresholds fitted on other questions give on a reported sample?

    .venv/bin/python bench/abstention.py [--home H] [--mode rag-token] [--adapter NAME] [--data FILE] [--write]

With the base model (defaults): the reported sample is ``sample_examples(data, 60, seed=0)`` (the
sample of bench/qa.py), the calibration set every other question of the file. With an adapter from
bench/finetune.py (``--home`` its kept home, ``--data HOME/bench-data/heldout.json``, ``--adapter
squad-sft``) both come from the held-out article, which the adapter never saw.

For each signal of ``rag.qa.Answer`` (best dense cosine of the evidence, the answer's mean per-token
marginal log-likelihood, the "I don't know" margin) it reports the ROC AUC for "unanswerable" against
all answerable questions, against those answered correctly (F1 >= 0.5; withholding these is what
costs F1) and against those answered wrongly; then the thresholds that ``rag.evaluate.calibrate`` fits
on the calibration set, applied to the reported sample. AUC 0.5 = no better than a coin.

``--write`` replaces the "Abstention signals" section of BENCHMARKS.md (between
``<!-- abstention:start -->`` and ``<!-- abstention:end -->``); several runs (base, adapter) are kept
side by side with ``--append``.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import pathlib
import sys
from typing import Any

from bench import common

common.stay_offline()


logger = logging.getLogger("bench.abstention")

SECTION = common.Section("abstention", "## Abstention signals")
SIGNALS = (  # (record field, sign: larger value * sign = more likely unanswerable, label)
    ("max_score", -1.0, "best retrieval cosine (low)"),
    ("mean_logprob", -1.0, "answer log-likelihood per token (low)"),
    ("idk_margin", 1.0, '"I don\'t know" margin (high)'),
)


def signal_aucs(records: list[Any]) -> dict[str, dict[str, float | None]]:
    from rag.evaluate import best_over_golds, f1_score, roc_auc

    unanswerable = [r for r in records if r.impossible]
    answerable = [r for r in records if not r.impossible]
    right = [r for r in answerable if best_over_golds(f1_score, r.prediction, r.golds) >= 0.5]
    wrong = [r for r in answerable if best_over_golds(f1_score, r.prediction, r.golds) < 0.5]
    out: dict[str, dict[str, float | None]] = {}
    for field, sign, _ in SIGNALS:

        def values(rs: list[Any], sign: float = sign, field: str = field) -> list[float]:
            return [sign * getattr(r, field) for r in rs if getattr(r, field) is not None]

        out[field] = {
            "vs_answerable": roc_auc(values(unanswerable), values(answerable)),
            "vs_right": roc_auc(values(unanswerable), values(right)),
            "vs_wrong": roc_auc(values(unanswerable), values(wrong)),
        }
    out["_counts"] = {"unanswerable": len(unanswerable), "right": len(right), "wrong": len(wrong)}  # type: ignore[assignment]
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    import random

    from rag.evaluate import calibrate, compute_metrics, load_squad, run_eval, sample_examples

    data = pathlib.Path(args.data)
    examples = load_squad(data)
    reported = sample_examples(examples, args.n, seed=0)
    ids = {e.qid for e in reported}
    rest = [e for e in examples if e.qid not in ids]
    if args.calibration_questions:
        rest = random.Random(0).sample(rest, min(args.calibration_questions, len(rest)))

    settings, ws, qa = common.open_pipeline(pathlib.Path(args.home).expanduser(), args.collection, data)
    with ws.open(args.collection, readonly=True) as coll:
        logger.info("reported sample: %d questions; calibration: %d", len(reported), len(rest))
        test = run_eval(qa, coll, reported, mode=args.mode, adapter=args.adapter, progress=True)
        cal = run_eval(qa, coll, rest, mode=args.mode, adapter=args.adapter, progress=True)
    fits = []
    base = compute_metrics(test)
    for drop in args.max_f1_drop:
        c = calibrate(cal, max_f1_drop=drop)
        chosen = {k: c[k] for k in ("min_score", "min_logprob", "max_idk_margin")}
        fits.append(
            {
                "max_f1_drop": drop,
                "thresholds": chosen,
                "calibration": c["metrics"],
                "reported": compute_metrics(test, **chosen).to_dict(),
            }
        )
    return {
        "data": str(data),
        "mode": args.mode or settings.qa.mode,
        "adapter": args.adapter,
        "n_reported": len(test),
        "n_calibration": len(cal),
        "aucs_reported": signal_aucs(test),
        "aucs_calibration": signal_aucs(cal),
        "base": base.to_dict(),
        "calibration_base": compute_metrics(cal).to_dict(),
        "fits": fits,
        "records": {
            "reported": [dataclasses.asdict(r) for r in test],
            "calibration": [dataclasses.asdict(r) for r in cal],
        },
    }


def _f(v: float | None, spec: str = ".2f") -> str:
    return "n/a" if v is None else format(v, spec)


def render(res: dict[str, Any], argv: list[str]) -> str:
    who = f"adapter `{res['adapter']}`" if res["adapter"] else "base model"
    lines = [f"### {res['mode']}, {who}, data `{pathlib.Path(res['data']).name}`", ""]
    lines.append(f"Command: `{common.command_line(pathlib.Path(__file__), argv)}`  ")
    lines.append(f"Date: {common.today()} · revision {common.git_revision()}  ")
    lines.append(
        f"Reported sample: {res['n_reported']} questions (seed 0); calibration set: {res['n_calibration']} other "
        f"questions of the same file. Answerable F1 on the reported sample: {res['base']['f1']:.3f}."
    )
    lines.append("")
    lines.append('ROC AUC of each signal for "unanswerable" (0.5 = a coin):')
    lines.append("")
    lines.append("| signal | set | vs all answerable | vs answered right (F1 >= 0.5) | vs answered wrong |")
    lines.append("|---|---|---|---|---|")
    for field, _, label in SIGNALS:
        for name, key in (("reported", "aucs_reported"), ("calibration", "aucs_calibration")):
            a = res[key][field]
            lines.append(f"| {label} | {name} | {_f(a['vs_answerable'])} | {_f(a['vs_right'])} | {_f(a['vs_wrong'])} |")
    c_rep, c_cal = res["aucs_reported"]["_counts"], res["aucs_calibration"]["_counts"]
    lines.append(
        f"| counts (unanswerable / right / wrong) | reported: {c_rep['unanswerable']} / {c_rep['right']} / "
        f"{c_rep['wrong']}; calibration: {c_cal['unanswerable']} / {c_cal['right']} / {c_cal['wrong']} | | | |"
    )
    lines.append("")
    lines.append(
        "Thresholds fitted on the calibration set (`rag.evaluate.calibrate`: most recall with precision above "
        "the base rate and F1 drop below the limit), applied to the reported sample:"
    )
    lines.append("")
    lines.append(
        "| F1 drop allowed | thresholds (score, log-lik, idk margin) | calibration P / R / F1 drop | "
        "reported P / R / F1 drop | target (P > base rate, R >= 0.3, drop < 10%) |"
    )
    lines.append("|---|---|---|---|---|")
    cal_f1 = res.get("calibration_base", {}).get("f1")
    for fit in res["fits"]:
        t, c, r = fit["thresholds"], fit["calibration"], fit["reported"]
        drop = 1 - r["f1"] / res["base"]["f1"] if res["base"]["f1"] else None
        cal_drop = _f(1 - c["f1"] / cal_f1, ".1%") if cal_f1 else "n/a"
        base_rate = r["n_unanswerable"] / max(r["n"] + r["n_unanswerable"], 1)
        ok = (
            (r["abstain_precision"] or 0) > base_rate
            and (r["abstain_recall"] or 0) >= 0.3
            and drop is not None
            and drop < 0.10
        )
        lines.append(
            f"| {fit['max_f1_drop']:.0%} | {t['min_score']}, {t['min_logprob']}, {t['max_idk_margin']} | "
            f"{_f(c['abstain_precision'])} / {_f(c['abstain_recall'])} / {cal_drop} | "
            f"{_f(r['abstain_precision'])} / {_f(r['abstain_recall'])} / {_f(drop, '.1%')} | "
            f"{'met' if ok else '**not met**'} |"
        )
    lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--home", default=os.environ.get("RAGQA_HOME", "~/.ragqa"), help="RAGQA_HOME holding the collection")
    p.add_argument("--collection", default="squad")
    p.add_argument("--data", default=str(common.SQUAD))
    p.add_argument("--mode", default=None, help="generation mode (default: QAConfig.mode)")
    p.add_argument("--adapter", default=None)
    p.add_argument(
        "--n", type=int, default=60, help="answerable questions of the reported sample (and as many unanswerable)"
    )
    p.add_argument("--calibration-questions", type=int, default=0, help="cap on the calibration set (0: all the rest)")
    p.add_argument("--max-f1-drop", type=float, nargs="+", default=[0.05, 0.07, 0.10])
    p.add_argument("--json", default=None)
    p.add_argument("--write", action="store_true", help="replace the Abstention signals section of BENCHMARKS.md")
    p.add_argument("--append", action="store_true", help="with --write: add this run below the section's others")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format=common.LOG_FORMAT)

    res = run(args)
    common.save_json(args.json, res)
    body = render(res, argv)
    SECTION.publish(body, write=args.write, append=args.append)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
