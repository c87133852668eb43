"""CPU threads under contention: how long ragqa's generation takes alone and beside another busy process, with
OpenMP's threads spinning while they wait (``OMP_WAIT_POLICY=ACTIVE``, GNU OpenMP's behaviour when nothing is
set) or sleeping (``PASSIVE``, what ragqa sets unless the environment says otherwise; ``ingest/__init__.py``).

    .venv/bin/python -m bench.cpu_threads [--questions 2] [--max-new-tokens 48] [--write]

Each configuration is one worker process (``--worker``): it loads the bundled models with the workspace settings,
answers the same questions over the sample documents (``data/sample``, collection ``demo``; full style, rag-token,
greedy) and reports each answer's generation seconds and tokens. "Beside a busy process": a second process runs
float32 matrix products on all cores for the whole measurement (what a second worker, a training job or another
tenant's process does to a shared CPU). Configurations alternate in one run; compare the ratios.

``--write`` replaces the "CPU threads under contention" section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

from bench import common

logger = logging.getLogger("bench.cpu_threads")
SECTION = common.Section("cpu-threads", "## CPU threads under contention")
QUESTIONS = [
    "What is the default FAISS index in ragqa?",
    "How does the collection survive a crash?",
    "What does RAG-Token marginalise over?",
]
POLICIES = ("ACTIVE", "PASSIVE")

BUSY = """
import torch, time
a = torch.randn(1024, 1024)
end = time.time() + {seconds}
while time.time() < end:
    a = (a @ a).clamp_(-1, 1)
"""


def worker(home: str, questions: list[str], max_new_tokens: int) -> dict[str, Any]:
    """Answer ``questions`` in this process; runs with the environment's OpenMP policy."""
    sys.path.insert(0, str(common.ROOT))
    import torch

    from api.factory import RagStack
    from api.settings import Settings

    stack = RagStack(Settings(home=pathlib.Path(home)))
    stack.qa.config = stack.qa.config.model_copy(update={"full_max_new_tokens": max_new_tokens})
    stack.warm_up()
    rows = []
    with stack.workspace.open("demo", readonly=True) as coll:
        stack.qa.answer(coll, questions[0], mode="rag-token", style="full")  # untimed: caches, lazy imports
        for q in questions:
            t0 = time.perf_counter()
            ans = stack.qa.answer(coll, q, mode="rag-token", style="full")
            rows.append({"seconds": time.perf_counter() - t0, "tokens": ans.generated_tokens, "answer": ans.answer})
    return {"policy": os.environ.get("OMP_WAIT_POLICY"), "threads": torch.get_num_threads(), "answers": rows}


def prepare(home: pathlib.Path) -> None:
    home.mkdir(parents=True, exist_ok=True)
    shared = pathlib.Path(os.environ.get("RAGQA_HOME", "~/.ragqa")).expanduser() / "models"
    if not (home / "models").exists() and shared.is_dir():
        (home / "models").symlink_to(shared, target_is_directory=True)
    env = common.offline_env(RAGQA_HOME=str(home))
    t = common.run_timed([common.venv_bin("ragqa"), "ingest", str(common.ROOT / "data" / "sample"), "-c", "demo"], env)
    if not t.ok:
        raise SystemExit(t.describe_failure())


def measure(args: argparse.Namespace, home: pathlib.Path, policy: str, busy: bool) -> dict[str, Any]:
    env = common.offline_env(RAGQA_HOME=str(home), OMP_WAIT_POLICY=policy)
    cmd = [sys.executable, "-m", "bench.cpu_threads", "--worker", "--home", str(home)]
    cmd += ["--questions", str(args.questions), "--max-new-tokens", str(args.max_new_tokens)]
    competitor = None
    if busy:
        competitor = subprocess.Popen([sys.executable, "-c", BUSY.format(seconds=args.timeout)], env=dict(os.environ))
    try:
        t = common.run_timed(cmd, env=env, cwd=common.ROOT, timeout=args.timeout)
    finally:
        if competitor is not None:
            competitor.kill()
            competitor.wait()
    if not t.ok:
        raise SystemExit(t.describe_failure())
    res = t.last_json()
    assert res is not None, t.stdout[-1000:]
    secs = [a["seconds"] for a in res["answers"]]
    toks = [a["tokens"] for a in res["answers"]]
    res.update(busy=busy, median_s=statistics.median(secs), tokens=sum(toks), total_s=sum(secs))
    logger.info("%s %s: %s s for %s tokens", policy, "busy" if busy else "alone", [round(s, 1) for s in secs], toks)
    return res


def render(runs: list[dict[str, Any]], args: argparse.Namespace, argv: list[str]) -> str:
    by = {(r["policy"], r["busy"]): r for r in runs}
    lines = [
        f"Command: `{common.command_line(pathlib.Path(__file__), argv)}`  ",
        f"Date: {common.today()} · revision {common.git_revision()} · {common.machine_summary()}  ",
        f"Load average before the run: {args.load_before}",
        "",
        f"{args.questions} questions over `data/sample` (collection `demo`), full style, rag-token, greedy, "
        f"`full_max_new_tokens` {args.max_new_tokens}, bundled SmolLM2-135M (float32 on this CPU), one worker process "
        "per row; seconds per answer (retrieval + generation), the same answers in every row.",
        "",
        "| OpenMP wait policy | alone: median s per answer | beside a busy process: median s | busy / alone |",
        "|---|---|---|---|",
    ]
    for policy in POLICIES:
        alone, busy = by.get((policy, False)), by.get((policy, True))
        a, b = (alone or {}).get("median_s"), (busy or {}).get("median_s")
        r = common.ratio(b, a)
        name = f"`{policy}`" + (" (ragqa's default)" if policy == "PASSIVE" else " (GNU OpenMP's default)")
        lines.append(f"| {name} | {common.fmt(a, '.2f')} | {common.fmt(b, '.2f')} | {common.fmt(r, '.1f')}x |")
    act, pas = by.get(("ACTIVE", True)), by.get(("PASSIVE", True))
    qa, qp = by.get(("ACTIVE", False)), by.get(("PASSIVE", False))
    lines.append("")
    if act and pas:
        lines.append(
            f"- Beside a busy process, PASSIVE / ACTIVE: "
            f"{common.fmt(common.ratio(pas['median_s'], act['median_s']), '.2f')}x."
        )
    if qa and qp:
        lines.append(
            f"- Alone, PASSIVE / ACTIVE: {common.fmt(common.ratio(qp['median_s'], qa['median_s']), '.2f')}x "
            "(the cost of sleeping threads when the cores are free)."
        )
    same = len({tuple(a["answer"] for a in r["answers"]) for r in runs}) == 1
    lines.append(f"- Answers identical in every row: {'yes' if same else 'no'}.")
    return "\n".join(lines)


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--questions", type=int, default=2, help=f"questions asked per row (at most {len(QUESTIONS)})")
    p.add_argument("--max-new-tokens", type=int, default=48, help="full-style token budget")
    p.add_argument("--home", default=None, help="RAGQA_HOME (default: a temporary one)")
    p.add_argument("--timeout", type=float, default=900, help="seconds a row may take")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--write", action="store_true", help="update the section of BENCHMARKS.md")
    p.add_argument("--json", default=None, help="also write the raw results to this file")
    p.add_argument("-v", "--verbose", action="store_true")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    questions = QUESTIONS[: max(1, min(args.questions, len(QUESTIONS)))]
    if args.worker:
        print(json.dumps(worker(args.home, questions, args.max_new_tokens)))
        return 0
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(asctime)s %(message)s")
    args.load_before = " / ".join(f"{x:.2f}" for x in os.getloadavg())
    home = pathlib.Path(args.home) if args.home else pathlib.Path(tempfile.mkdtemp(prefix="ragqa-bench-threads-"))
    prepare(home)
    runs = [measure(args, home, policy, busy) for busy in (False, True) for policy in POLICIES]
    common.save_json(args.json, {"runs": runs})
    SECTION.publish(render(runs, args, argv), write=args.write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
