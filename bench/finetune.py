"""Fine-tuning benchmark: does a LoRA SFT adapter make the bundled model good at a domain?

SFT a LoRA adapter with ``ragqa finetune sft -c squad`` on the answerable questions of two articles
of ``data/benchmarks/squad2_dev_public.json``, evaluate with ``ragqa eval`` on the third article
(held out: its questions are never trained on, its paragraphs are in the collection as any domain
document would be) before and after, and report F1/EM, training wall time and peak memory.
Every step is the user's own CLI command run as a whole process.

``--preferences`` also runs the preference side end to end on a small set built from the training
articles (chosen: the gold span; rejected: the whole sentence around it, the long answer the base
model tends to give): ``finetune reward`` (held-out pairwise accuracy), ``finetune dpo`` and
``finetune rlhf`` from the SFT adapter (mean reward and KL before/after, held-out F1).

``--on-policy`` runs the preference side on the policy's own answers: ``finetune prefs`` samples answers
to training questions from the SFT adapter through retrieval and the RAG pipeline and pairs them by
their F1 against the gold answer; then ``finetune dpo`` (with its RPO term) on those pairs and
``finetune rlhf --reward f1`` (with its PPO-ptx term) on those questions, both from the SFT adapter.
Each is evaluated on the held-out article and compared with SFT question by question: the mean F1
difference with a paired bootstrap 95% interval (:func:`rag.evaluate.paired_bootstrap`).

``--write`` replaces the "Fine-tuning" section of BENCHMARKS.md (between ``<!-- finetune:start -->``
and ``<!-- finetune:end -->``).

    .venv/bin/python bench/finetune.py --write
"""

from __future__ import annotations

import argparse
import json
import logging
import pathlib
import shutil
import sys
import tempfile
from typing import Any

from bench import common

sys.path.insert(0, str(common.ROOT))  # the ragqa packages first: this file would shadow `finetune`
from finetune.squad import squad_training_data

logger = logging.getLogger("bench.finetune")

SECTION = common.Section("finetune", "## Fine-tuning")
COLLECTION = "squad"
SFT_NAME, RM_NAME, DPO_NAME, RLHF_NAME = "squad-sft", "squad-reward", "squad-dpo", "squad-rlhf"
OP_DPO_NAME, OP_RLHF_NAME = "squad-dpo-onpolicy", "squad-rlhf-onpolicy"


# -- steps ----------------------------------------------------------------------------------------
class Runner:
    def __init__(self, home: pathlib.Path, env: dict[str, str]) -> None:
        self.home = home
        self.env = env
        self.ragqa = common.venv_bin("ragqa")

    def run(self, *args: str, timeout: float | None = None) -> tuple[dict[str, Any], float]:
        t = common.run_timed([self.ragqa, *args], env=self.env, timeout=timeout)
        if not t.ok:
            raise SystemExit(t.describe_failure())
        js = t.last_json()
        if js is None:
            raise SystemExit(f"no JSON from {' '.join(args)}:\n{t.stdout[-1500:]}")
        return js, t.seconds

    def evaluate(self, data: pathlib.Path, mode: str, n: int, adapter: str | None) -> dict[str, Any]:
        """``ragqa eval`` metrics, plus ``question_f1``: each answerable question's F1 (for paired comparisons)."""
        from rag.evaluate import Record, question_f1s

        records = self.home / "bench-data" / f"records-{adapter or 'base'}.jsonl"
        args = ["eval", "--data", str(data), "-c", COLLECTION, "--mode", mode, "--n", str(n), "--json"]
        args += ["--records", str(records)]
        args += ["--adapter", adapter or "none"]  # "none": the bare base model, never a promoted/shipped default
        js, secs = self.run(*args)
        js["wall_s"] = secs
        rows = [Record(**json.loads(line)) for line in records.read_text(encoding="utf-8").splitlines() if line.strip()]
        js["question_f1"] = question_f1s(rows, js.get("min_score"), js.get("min_logprob"), js.get("max_idk_margin"))
        logger.info("eval %s %s: F1 %.3f EM %.3f", mode, adapter or "base", js["f1"], js["em"])
        return js


def prepare_home(args: argparse.Namespace) -> pathlib.Path:
    home = pathlib.Path(args.home) if args.home else pathlib.Path(tempfile.mkdtemp(prefix="ragqa-bench-ft-"))
    home.mkdir(parents=True, exist_ok=True)
    models_from = (
        pathlib.Path(args.models_from).expanduser()
        if args.models_from
        else pathlib.Path("~/.ragqa/models").expanduser()
    )
    if not (home / "models").exists() and models_from.is_dir():
        (home / "models").symlink_to(models_from.resolve())
    return home


def run(args: argparse.Namespace) -> dict[str, Any]:
    home = prepare_home(args)
    env = common.offline_env(RAGQA_HOME=str(home))
    r = Runner(home, env)
    data = squad_training_data(
        common.SQUAD,
        home / "bench-data",
        held_out=[args.held_out],
        unanswerable=args.unanswerable,
        preferences=args.pref_n if args.preferences else 0,
        prompts=args.prompt_n,
        seed=0,
    )
    held_path = data.held_out_path
    res: dict[str, Any] = {
        "held_out_article": data.held_out_articles[0],
        "train_articles": data.train_articles,
        "train_questions": data.answerable,
        "train_unanswerable": data.unanswerable,
        "mode": args.mode,
        "n": args.n,
    }
    r.run("models", "prepare", "--json", timeout=1800)
    if COLLECTION not in json.dumps(r.run("collections", "list", "--json")[0]):
        r.run("ingest", str(common.SQUAD), "-c", COLLECTION, "--json")

    res["base"] = r.evaluate(held_path, args.mode, args.n, None)
    sft_args = [
        "finetune",
        "sft",
        "--data",
        str(data.sft_path),
        "-c",
        COLLECTION,
        "--output",
        SFT_NAME,
        "--overwrite",
        "--json",
    ]
    sft_args += args.sft_args.split() if args.sft_args else []
    sft, sft_wall = r.run(*sft_args)
    res["sft"] = {
        "wall_s": sft_wall,
        **sft["metrics"],
        "command": "ragqa " + " ".join(a if not a.startswith("/") else pathlib.Path(a).name for a in sft_args),
    }
    res["after"] = r.evaluate(held_path, args.mode, args.n, SFT_NAME)

    if args.preferences:
        prefs_path, prompts_path = data.preferences_path, data.prompts_path
        rm, rm_wall = r.run(
            "finetune",
            "reward",
            "--data",
            str(prefs_path),
            "--output",
            RM_NAME,
            "--epochs",
            "2",
            "--overwrite",
            "--json",
        )
        res["reward"] = {"wall_s": rm_wall, **rm["metrics"]}
        dpo, dpo_wall = r.run(
            "finetune",
            "dpo",
            "--data",
            str(prefs_path),
            "--from-adapter",
            SFT_NAME,
            "--epochs",
            "2",
            "--output",
            DPO_NAME,
            "--overwrite",
            "--json",
        )
        res["dpo"] = {"wall_s": dpo_wall, **dpo["metrics"]}
        res["dpo_eval"] = r.evaluate(held_path, args.mode, args.n, DPO_NAME)
        rl, rl_wall = r.run(
            "finetune",
            "rlhf",
            "--reward-model",
            RM_NAME,
            "--prompts",
            str(prompts_path),
            "--from-adapter",
            SFT_NAME,
            "--epochs",
            "1",
            "--output",
            RLHF_NAME,
            "--overwrite",
            "--json",
        )
        res["rlhf"] = {"wall_s": rl_wall, **rl["metrics"]}
        res["rlhf_eval"] = r.evaluate(held_path, args.mode, args.n, RLHF_NAME)
    if args.on_policy:
        run_on_policy(r, args, data.sft_path, held_path, res)
    if not args.home and not args.keep:
        shutil.rmtree(home, ignore_errors=True)
    return res


def run_on_policy(
    r: Runner, args: argparse.Namespace, sft_path: pathlib.Path, held_path: pathlib.Path, res: dict[str, Any]
) -> None:
    """SFT -> on-policy prefs -> DPO, and SFT -> RLHF (F1 reward), each compared with SFT on the held-out questions."""
    import random

    from finetune.data import read_jsonl, write_jsonl
    from rag.evaluate import paired_bootstrap

    records = read_jsonl(sft_path, "sft")
    answerable = [x for x in records if x.answer and x.answer.strip() != "I don't know."]
    chosen = random.Random(0).sample(answerable, min(args.onpolicy_n, len(answerable)))
    questions = sft_path.with_name("onpolicy-questions.jsonl")
    write_jsonl(questions, [x.to_json() for x in chosen])
    pairs = sft_path.with_name("onpolicy-pairs.jsonl")
    prefs, prefs_wall = r.run(
        "finetune", "prefs", "--data", str(questions), "-c", COLLECTION, "--adapter", SFT_NAME,
        "--samples", str(args.samples), "--mode", args.mode, "--output", str(pairs), "--json",
    )  # fmt: skip
    res["onpolicy_prefs"] = {"wall_s": prefs_wall, **prefs["metrics"]}
    dpo, dpo_wall = r.run(
        "finetune", "dpo", "--data", str(pairs), "--from-adapter", SFT_NAME, "--output", OP_DPO_NAME,
        "--overwrite", "--json", *args.dpo_args.split(),
    )  # fmt: skip
    res["onpolicy_dpo"] = {"wall_s": dpo_wall, **dpo["metrics"]}
    res["onpolicy_dpo_eval"] = r.evaluate(held_path, args.mode, args.n, OP_DPO_NAME)
    rl, rl_wall = r.run(
        "finetune", "rlhf", "--prompts", str(questions), "--reward", "f1", "--from-adapter", SFT_NAME,
        "--output", OP_RLHF_NAME, "--overwrite", "--json", *args.rlhf_args.split(),
    )  # fmt: skip
    res["onpolicy_rlhf"] = {"wall_s": rl_wall, **rl["metrics"]}
    res["onpolicy_rlhf_eval"] = r.evaluate(held_path, args.mode, args.n, OP_RLHF_NAME)
    sft_f1 = res["after"]["question_f1"]
    for key in ("onpolicy_dpo_eval", "onpolicy_rlhf_eval"):
        res[key]["vs_sft"] = paired_bootstrap(sft_f1, res[key]["question_f1"], n=1000, seed=0)


# -- report ---------------------------------------------------------------------------------------
def _f(v: Any, spec: str = ".3f") -> str:
    return "n/a" if v is None else format(v, spec)


def render(res: dict[str, Any], argv: list[str]) -> str:
    base, after, sft = res["base"], res["after"], res["sft"]
    f1_ok = after["f1"] >= 0.45 and after["f1"] >= 2 * base["f1"]
    time_ok = sft["wall_s"] < 30 * 60
    lines = [
        f"Run {common.today()} on {common.machine_summary()}, commit `{common.git_revision()}`.",
        "",
        f"Command: `{common.command_line(pathlib.Path(__file__), argv)}`",
        "",
        f"SFT on the {res['train_questions']} answerable questions of {', '.join(res['train_articles'])}"
        + (
            f' plus {res["train_unanswerable"]} of their unanswerable ones answered "I don\'t know."; '
            if res.get("train_unanswerable")
            else "; "
        )
        + f"evaluated with `ragqa eval --mode {res['mode']} --n {res['n']}` on the held-out article "
        f"**{res['held_out_article']}** ({base['n']} answerable + "
        f"{base.get('n_unanswerable', 0)} unanswerable questions, "
        "fixed seed). The collection holds all three articles; training prompts are built from its retrieval "
        "exactly as at inference.",
        "",
        "| model | F1 | EM | recall@k | abstain P / R | p50 s |",
        "|---|---|---|---|---|---|",
    ]

    def row(name: str, m: dict[str, Any]) -> str:
        return (
            f"| {name} | {_f(m['f1'])} | {_f(m['em'])} | {_f(m.get('recall_at_k'))} | "
            f"{_f(m.get('abstain_precision'), '.2f')} / {_f(m.get('abstain_recall'), '.2f')} | "
            f"{_f(m.get('p50_s'), '.2f')} |"
        )

    lines.append(row("SmolLM2-135M-Instruct (base)", base))
    lines.append(row(f"+ LoRA SFT `{SFT_NAME}`", after))
    if "dpo_eval" in res:
        lines.append(row(f"+ SFT then DPO `{DPO_NAME}`", res["dpo_eval"]))
    if "rlhf_eval" in res:
        lines.append(row(f"+ SFT then RLHF `{RLHF_NAME}`", res["rlhf_eval"]))
    ex = sft.get("examples", {})
    lines += [
        "",
        f"- Target held-out F1 >= 0.45 and >= 2x base: **{'met' if f1_ok else 'not met'}** "
        f"({_f(after['f1'])} vs {_f(base['f1'])}, x{_f(after['f1'] / base['f1'] if base['f1'] else None, '.1f')}).",
        f"- SFT wall time (whole `ragqa finetune sft` process) **{sft['wall_s'] / 60:.1f} min** "
        f"(target < 30 min: **{'met' if time_ok else 'not met'}**); "
        f"in the trainer {sft.get('train_seconds', 0) / 60:.1f} min, "
        f"{sft.get('steps')} steps; peak RSS {sft.get('peak_rss_mb', 0) / 1024:.2f} GiB.",
        f"- Recipe: `{sft['command']}`; {ex.get('examples')} examples ("
        f"{ex.get('positives_from_retrieval')} with the answer "
        f"in a retrieved chunk, {ex.get('gold_fallback')} on the record's own paragraph), "
        f"median {ex.get('median_length')} "
        f"tokens, {ex.get('tokens')} tokens per epoch; LoRA {sft.get('trainable_params')} trainable of "
        f"{sft.get('total_params')} parameters; loss {sft.get('first_loss')} -> {sft.get('last_loss')}.",
    ]
    if "reward" in res:
        rm, dpo, rl = res["reward"], res["dpo"], res["rlhf"]
        lines += [
            "",
            "Preference side, end to end on a small set built from the training articles (chosen: the gold span; "
            "rejected: the whole sentence around it):",
            "",
            f"- `finetune reward`: held-out pairwise accuracy {_f(rm.get('eval_accuracy'), '.2f')} "
            f"(before training {_f(rm.get('eval_accuracy_before'), '.2f')}), {rm['wall_s']:.0f} s.",
            f"- `finetune dpo --from-adapter {SFT_NAME}`: reward margin {_f(dpo.get('rewards_margin_before'))} -> "
            f"{_f(dpo.get('rewards_margin_after'))}, preference accuracy {_f(dpo.get('accuracy_before'), '.2f')} -> "
            f"{_f(dpo.get('accuracy_after'), '.2f')}, held-out F1 {_f(res['dpo_eval']['f1'])}, {dpo['wall_s']:.0f} s.",
            f"- `finetune rlhf --from-adapter {SFT_NAME}` ({rl.get('algorithm', '').upper()}): mean reward "
            f"{_f(rl.get('reward_before'))} -> {_f(rl.get('reward_after'))}, KL to the SFT reference "
            f"{_f(rl.get('kl_before'))} -> {_f(rl.get('kl_after'))}, mean completion length "
            f"{_f(rl.get('length_before'), '.1f')} -> {_f(rl.get('length_after'), '.1f')} tokens, "
            f"held-out F1 {_f(res['rlhf_eval']['f1'])}, {rl['wall_s']:.0f} s.",
        ]
    if "onpolicy_prefs" in res:
        lines += render_on_policy(res)
    return "\n".join(lines) + "\n"


def render_on_policy(res: dict[str, Any]) -> list[str]:
    pf, dpo, rl = res["onpolicy_prefs"], res["onpolicy_dpo"], res["onpolicy_rlhf"]
    sft_f1 = res["after"]["f1"]
    lines = [
        "",
        f"On-policy preference side (`finetune prefs --adapter {SFT_NAME}`: {pf['questions']} training questions, "
        f"{pf['pairs']} pairs by F1 against the gold answer, mean margin {_f(pf.get('mean_margin'))}, "
        f"{pf['wall_s']:.0f} s); held-out F1 against SFT's {_f(sft_f1)}, difference with a paired bootstrap 95% CI "
        f"over {len(res['after']['question_f1'])} questions (target: >= +0.03):",
        "",
        "| model | F1 | F1 - SFT [95% CI] | target |",
        "|---|---|---|---|",
    ]
    for name, key in ((f"SFT then on-policy DPO `{OP_DPO_NAME}`", "onpolicy_dpo_eval"),
                      (f"SFT then RLHF, F1 reward `{OP_RLHF_NAME}`", "onpolicy_rlhf_eval")):  # fmt: skip
        m, b = res[key], res[key]["vs_sft"]
        ok = m["f1"] >= sft_f1 + 0.03 and b["low"] > 0
        lines.append(
            f"| {name} | {_f(m['f1'])} | {b['diff']:+.3f} [{b['low']:+.3f}, {b['high']:+.3f}] | "
            f"{'met' if ok else 'not met'} |"
        )
    lines += [
        "",
        f"- `finetune dpo` (RPO alpha {dpo.get('rpo_alpha')}, lr {dpo.get('learning_rate')}): margin "
        f"{_f(dpo.get('rewards_margin_before'))} -> {_f(dpo.get('rewards_margin_after'))}, preference accuracy "
        f"{_f(dpo.get('accuracy_before'), '.2f')} -> {_f(dpo.get('accuracy_after'), '.2f')}, {dpo['wall_s']:.0f} s.",
        f"- `finetune rlhf --reward f1` ({str(rl.get('algorithm', '')).upper()}, ptx {rl.get('ptx_coef')}): mean F1 "
        f"reward {_f(rl.get('reward_before'))} -> {_f(rl.get('reward_after'))}, KL to the SFT reference "
        f"{_f(rl.get('kl_before'))} -> {_f(rl.get('kl_after'))} (per step in training {_f(rl.get('train_kl'))}), "
        f"{rl['wall_s']:.0f} s.",
    ]
    return lines


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--held-out", type=int, default=2, help="index of the held-out article (default: the third)")
    p.add_argument("--mode", default="rag-token", help="generation mode evaluated")
    p.add_argument("--n", type=int, default=60, help="answerable held-out questions (plus as many unanswerable)")
    p.add_argument(
        "--unanswerable",
        type=float,
        default=0.0,
        help="also train on this share (x answerable count) of the training articles' unanswerable questions, "
        'answered "I don\'t know."',
    )
    p.add_argument("--sft-args", default="", help="extra options for `ragqa finetune sft` (default: its own recipe)")
    p.add_argument("--preferences", action="store_true", help="also run reward -> rlhf and dpo")
    p.add_argument("--pref-n", type=int, default=48, help="preference pairs")
    p.add_argument("--prompt-n", type=int, default=16, help="RLHF prompts")
    p.add_argument("--on-policy", action="store_true", help="also run prefs -> dpo and rlhf (F1 reward) from SFT")
    p.add_argument("--onpolicy-n", type=int, default=128, help="training questions sampled for on-policy training")
    p.add_argument("--samples", type=int, default=4, help="answers sampled per question (finetune prefs)")
    p.add_argument("--dpo-args", default="", help="extra options for the on-policy `ragqa finetune dpo`")
    p.add_argument("--rlhf-args", default="", help="extra options for the on-policy `ragqa finetune rlhf`")
    p.add_argument("--home", default=None, help="RAGQA_HOME (default: a temporary one)")
    p.add_argument("--models-from", default=None, help="prepared models folder to link (default ~/.ragqa/models)")
    p.add_argument("--keep", action="store_true", help="keep the temporary home")
    p.add_argument("--write", action="store_true", help="update the Fine-tuning section of BENCHMARKS.md")
    p.add_argument("--json", default=None, help="also write the raw results to this file")
    p.add_argument("-v", "--verbose", action="store_true")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format=common.LOG_FORMAT)
    res = run(args)
    common.save_json(args.json, res)
    body = render(res, argv)
    SECTION.publish(body, write=args.write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
