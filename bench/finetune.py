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
Each is evaluated on the held-out article and compared with SFT question by question (the answerable
questions, paired by question id): the mean F1 difference with a paired bootstrap 95% interval
(:func:`rag.evaluate.paired_bootstrap`). With ``--reward-model-eval`` it also trains ``finetune reward``
on the on-policy pairs and reports its pairwise accuracy on the pairs it held out (``--rm-eval-split``).

``--sft-from DIR`` skips SFT training: DIR (a shipped-adapter folder such as ``data/adapters/reader``,
PEFT files plus ``ragqa_adapter.json`` with its recipe) is installed into the workspace by the project's
own path, ``ragqa models prepare`` with ``RAGQA_SHIPPED_ADAPTER=DIR``, and is the SFT policy and
reference. ``--skip-base`` skips the bare model's evaluation; ``--answerable-only`` evaluates the held-out
answerable questions only (F1 is scored on those alone; it saves the unanswerable questions' time).
``--compare-n`` evaluates the DPO / RLHF adapters on a subset (paired with SFT by question id).
``--pref-split FRAC`` keeps a seeded FRAC of the answerable training questions out of SFT (trained on the
rest) and samples the on-policy pairs and RLHF prompts from them only, so preference training sees questions
the SFT adapter has not memorised. ``--reuse`` (with ``--home``) keeps the evaluations and on-policy steps
already run there with the same arguments and inputs (``bench-data/steps/``), so a long run can be resumed or extended.

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
OP_RM_NAME = "squad-reward-onpolicy"


# -- steps ----------------------------------------------------------------------------------------
class Runner:
    def __init__(self, home: pathlib.Path, env: dict[str, str], reuse: bool = False) -> None:
        self.home = home
        self.env = env
        self.ragqa = common.venv_bin("ragqa")
        self.reuse = reuse  # --reuse: steps already run in this home with the same arguments are not rerun

    def _cache(self, key: str) -> pathlib.Path:
        return self.home / "bench-data" / "steps" / f"{key}.json"

    def cached(self, key: str, stamp: list[str]) -> Any:
        """The result saved by :meth:`save` for ``key`` when ``--reuse`` is on and it was made from ``stamp``."""
        path = self._cache(key)
        if not self.reuse or not path.is_file():
            return None
        saved = json.loads(path.read_text(encoding="utf-8"))
        if saved.get("stamp") != stamp:
            return None
        logger.info("reusing %s (--reuse)", path)
        return saved["result"]

    def save(self, key: str, stamp: list[str], result: Any) -> None:
        path = self._cache(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"stamp": stamp, "result": result}), encoding="utf-8")

    def adapter_stamp(self, adapter: str | None) -> str:
        """Changes whenever the adapter is retrained (its metadata file is rewritten)."""
        if adapter is None:
            return "base"
        meta = self.home / "adapters" / adapter / "ragqa_adapter.json"
        return f"{adapter}@{meta.stat().st_mtime_ns}" if meta.is_file() else adapter

    def step(self, key: str, *args: str, inputs: tuple[str | None, ...] = ()) -> tuple[dict[str, Any], float]:
        """:meth:`run`, saved under ``key`` (and reused with ``--reuse`` when run with the same arguments and the
        ``inputs`` adapters unchanged)."""
        import hashlib

        files = [  # input files (not the one written after --output), by content: rewritten unchanged, they match
            pathlib.Path(a)
            for i, a in enumerate(args)
            if a.startswith("/") and pathlib.Path(a).is_file() and (i == 0 or args[i - 1] != "--output")
        ]
        stamp = [*args, *(self.adapter_stamp(a) for a in inputs)]
        stamp += [f"{f}@{hashlib.sha256(f.read_bytes()).hexdigest()}" for f in files]
        hit = self.cached(key, stamp)
        if hit is not None:
            return hit[0], hit[1]
        js, secs = self.run(*args)
        self.save(key, stamp, [js, secs])
        return js, secs

    def run(
        self, *args: str, timeout: float | None = None, env: dict[str, str] | None = None
    ) -> tuple[dict[str, Any], float]:
        t = common.run_timed([self.ragqa, *args], env={**self.env, **(env or {})}, timeout=timeout)
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
        stamp = [*args, self.adapter_stamp(adapter)]
        hit = self.cached(f"eval-{adapter or 'base'}", stamp)
        if hit is not None:
            return dict(hit)
        js, secs = self.run(*args)
        js["wall_s"] = secs
        rows = [Record(**json.loads(line)) for line in records.read_text(encoding="utf-8").splitlines() if line.strip()]
        js["question_f1"] = question_f1s(rows, js.get("min_score"), js.get("min_logprob"), js.get("max_idk_margin"))
        js["question_ids"] = [row.qid for row in rows if not row.impossible]  # question_f1's questions, in order
        logger.info("eval %s %s: F1 %.3f EM %.3f", mode, adapter or "base", js["f1"], js["em"])
        self.save(f"eval-{adapter or 'base'}", stamp, js)
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


def answerable_only(held_path: pathlib.Path) -> pathlib.Path:
    """A copy of the held-out SQuAD file without its unanswerable questions (``ragqa eval`` then samples the
    same answerable questions in the same order: :func:`rag.evaluate.sample_examples` draws them first)."""
    squad = json.loads(held_path.read_text(encoding="utf-8"))
    for article in squad["data"]:
        for para in article["paragraphs"]:
            para["qas"] = [q for q in para["qas"] if not q.get("is_impossible")]
    out = held_path.with_name(held_path.stem + "-answerable.json")
    write_if_changed(out, json.dumps(squad))
    return out


def write_if_changed(path: pathlib.Path, text: str) -> None:
    """Leave a file that already holds ``text`` alone (another run sharing the home may be reading it)."""
    if not path.is_file() or path.read_text(encoding="utf-8") != text:
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)


def install_sft(folder: str, prepared: dict[str, Any], wall: float, res: dict[str, Any]) -> str:
    """The adapter ``ragqa models prepare`` installed from ``folder`` (``RAGQA_SHIPPED_ADAPTER``): its name."""
    shipped = prepared.get("shipped_adapter") or {}
    if shipped.get("status") not in ("installed", "up-to-date"):
        raise SystemExit(
            f"--sft-from {folder}: `ragqa models prepare` did not install it ({shipped.get('status')}: "
            f"{shipped.get('reason')}); give a shipped-adapter folder (PEFT files and a ragqa_adapter.json with "
            "its base_model, recipe and data) for the bundled model"
        )
    meta = json.loads((pathlib.Path(folder) / "ragqa_adapter.json").read_text(encoding="utf-8"))
    res["sft"] = {
        "from": folder,
        "installed_as": shipped["adapter"],
        "prepare_wall_s": wall,
        "recipe": (meta.get("recipe") or {}).get("path"),
        "shipped_evaluation": meta.get("evaluation"),
        "train_seconds": (meta.get("metrics") or {}).get("train_seconds"),
    }
    logger.info("SFT policy: %s installed as %r (%s)", folder, shipped["adapter"], shipped["status"])
    return str(shipped["adapter"])


def run(args: argparse.Namespace) -> dict[str, Any]:
    home = prepare_home(args)
    env = common.offline_env(RAGQA_HOME=str(home))
    r = Runner(home, env, reuse=args.reuse)
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
    sft_path, aside_path = split_for_preferences(data.sft_path, args.pref_split)
    res: dict[str, Any] = {
        "held_out_article": data.held_out_articles[0],
        "train_articles": data.train_articles,
        "train_questions": data.answerable,
        "train_unanswerable": data.unanswerable,
        "pref_split": args.pref_split,
        "mode": args.mode,
        "n": args.n,
    }
    prepare_env = {"RAGQA_SHIPPED_ADAPTER": str(pathlib.Path(args.sft_from).resolve())} if args.sft_from else None
    prepared, prepare_wall = r.run("models", "prepare", "--json", timeout=1800, env=prepare_env)
    if COLLECTION not in json.dumps(r.run("collections", "list", "--json")[0]):
        r.run("ingest", str(common.SQUAD), "-c", COLLECTION, "--json")
    if args.answerable_only:
        held_path = answerable_only(held_path)

    if not args.skip_base:
        res["base"] = r.evaluate(held_path, args.mode, args.n, None)
    if args.sft_from:
        res["sft_name"] = sft_name = install_sft(args.sft_from, prepared, prepare_wall, res)
    else:
        res["sft_name"] = sft_name = SFT_NAME
        sft_args = [
            "finetune",
            "sft",
            "--data",
            str(sft_path),
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
    res["after"] = r.evaluate(held_path, args.mode, args.n, sft_name)

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
            sft_name,
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
            sft_name,
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
        run_on_policy(r, args, aside_path or sft_path, held_path, res)
    if not args.home and not args.keep:
        shutil.rmtree(home, ignore_errors=True)
    return res


def run_on_policy(
    r: Runner, args: argparse.Namespace, sft_path: pathlib.Path, held_path: pathlib.Path, res: dict[str, Any]
) -> None:
    """SFT -> on-policy prefs -> DPO, and SFT -> RLHF (F1 reward), each compared with SFT on the held-out questions;
    with ``--reward-model-eval`` also a reward model trained on the pairs, scored on the pairs it held out."""
    sft_name = res["sft_name"]
    if args.onpolicy_synth:
        questions = synth_domain_questions(r, args, held_path, sft_path)
        res["onpolicy_source"] = "synth-heldout"
    else:
        questions = onpolicy_questions(args, sft_path)
    pairs = sft_path.with_name("onpolicy-pairs.jsonl")
    prefs_mode = args.prefs_mode or args.mode
    if args.skip_dpo and not args.reward_model_eval:  # RLHF alone needs the questions, not the pairs
        run_on_policy_rlhf(r, args, questions, held_path, res)
        return
    if args.dpo_rounds > 1 and not args.skip_dpo:
        run_iterated_dpo(r, args, questions, held_path, res)
        return
    prefs, prefs_wall = sample_prefs(r, args, questions, pairs, sft_name)
    res["onpolicy_prefs"] = {"wall_s": prefs_wall, "mode": prefs_mode, "samples": args.samples, **prefs["metrics"]}
    common.save_json(args.json, res)
    if not args.skip_dpo:
        dpo, dpo_wall = r.step(
            "dpo", "finetune", "dpo", "--data", str(pairs), "--from-adapter", sft_name, "--output", OP_DPO_NAME,
            "--overwrite", "--json", *args.dpo_args.split(), inputs=(sft_name,),
        )  # fmt: skip
        res["onpolicy_dpo"] = {"wall_s": dpo_wall, "args": args.dpo_args, **dpo["metrics"]}
        res["onpolicy_dpo_eval"] = r.evaluate(held_path, args.mode, args.compare_n or args.n, OP_DPO_NAME)
        res["onpolicy_dpo_eval"]["vs_sft"] = compare(res["after"], res["onpolicy_dpo_eval"])
        common.save_json(args.json, res)  # partial results survive a later failure
    if not args.skip_rlhf:
        run_on_policy_rlhf(r, args, questions, held_path, res)
    if args.reward_model_eval:
        rm, rm_wall = r.step(
            "reward", "finetune", "reward", "--data", str(pairs), "--output", OP_RM_NAME, "--eval-split",
            str(args.rm_eval_split), "--overwrite", "--json", *args.rm_args.split(),
        )  # fmt: skip
        res["onpolicy_reward"] = {"wall_s": rm_wall, **rm["metrics"]}
        logger.info("reward model: held-out pairwise accuracy %s", rm["metrics"].get("eval_accuracy"))


def run_iterated_dpo(
    r: Runner, args: argparse.Namespace, questions: pathlib.Path, held_path: pathlib.Path, res: dict[str, Any]
) -> None:
    """Iterated (online) DPO: the on-policy questions are cut into ``--dpo-rounds`` disjoint parts; round k samples
    pairs on part k from round k-1's policy (round 1: SFT) and trains DPO from that policy, which is also the
    round's frozen reference. Each round's policy is compared with SFT on the held-out questions."""
    from finetune.data import read_jsonl

    lines = questions.read_text(encoding="utf-8").splitlines(keepends=True)
    n_rounds = args.dpo_rounds
    if len(read_jsonl(questions, "sft")) < 2 * n_rounds:
        raise SystemExit(f"--dpo-rounds {n_rounds} needs at least {2 * n_rounds} on-policy questions")
    policy = res["sft_name"]
    res["onpolicy_rounds"] = []
    for k in range(1, n_rounds + 1):
        part = questions.with_name(f"onpolicy-questions-r{k}.jsonl")
        write_if_changed(part, "".join(lines[k - 1 :: n_rounds]))
        pairs = questions.with_name(f"onpolicy-pairs-r{k}.jsonl")
        prefs, prefs_wall = r.step(
            f"prefs-r{k}", "finetune", "prefs", "--data", str(part), "-c", COLLECTION, "--adapter", policy,
            "--samples", str(args.samples), "--mode", args.prefs_mode or args.mode, "--output", str(pairs), "--json",
            inputs=(policy,),
        )  # fmt: skip
        out = OP_DPO_NAME if k == n_rounds else f"{OP_DPO_NAME}-r{k}"
        dpo, dpo_wall = r.step(
            f"dpo-r{k}", "finetune", "dpo", "--data", str(pairs), "--from-adapter", policy, "--output", out,
            "--overwrite", "--json", *args.dpo_args.split(), inputs=(policy,),
        )  # fmt: skip
        entry: dict[str, Any] = {
            "round": k,
            "policy": policy,
            "adapter": out,
            "prefs": {"wall_s": prefs_wall, "samples": args.samples, **prefs["metrics"]},
            "dpo": {"wall_s": dpo_wall, "args": args.dpo_args, **dpo["metrics"]},
        }
        if k == n_rounds or args.eval_every_round:
            entry["eval"] = r.evaluate(held_path, args.mode, args.compare_n or args.n, out)
            entry["eval"]["vs_sft"] = compare(res["after"], entry["eval"])
        res["onpolicy_rounds"].append(entry)
        common.save_json(args.json, res)  # partial results survive a later failure
        policy = out
    last = res["onpolicy_rounds"][-1]
    res["onpolicy_prefs"] = last["prefs"] | {"mode": args.prefs_mode or args.mode}
    res["onpolicy_dpo"] = last["dpo"] | {"rounds": n_rounds}
    res["onpolicy_dpo_eval"] = last["eval"]
    common.save_json(args.json, res)


def split_for_preferences(sft_path: pathlib.Path, share: float) -> tuple[pathlib.Path, pathlib.Path | None]:
    """With ``share`` > 0: the SFT records minus a seeded ``share`` of the answerable ones, and those kept aside
    (for on-policy pairs and RLHF prompts), as two files beside ``sft_path``; else ``sft_path`` and None."""
    import random

    from finetune.data import read_jsonl

    if share <= 0:
        return sft_path, None
    if share >= 1:
        raise SystemExit(f"--pref-split must be a share in [0, 1), got {share}")
    records = read_jsonl(sft_path, "sft")
    answerable = [i for i, x in enumerate(records) if x.answer and x.answer.strip() != "I don't know."]
    aside = set(random.Random(0).sample(answerable, round(share * len(answerable))))
    train_path, aside_path = sft_path.with_name("sft-minus-aside.jsonl"), sft_path.with_name("pref-aside.jsonl")
    lines = [json.dumps(x.to_json(), ensure_ascii=False) + "\n" for x in records]
    write_if_changed(train_path, "".join(line for i, line in enumerate(lines) if i not in aside))
    write_if_changed(aside_path, "".join(lines[i] for i in sorted(aside)))
    logger.info(
        "--pref-split %.2f: SFT on %d records, %d questions kept aside", share, len(records) - len(aside), len(aside)
    )
    return train_path, aside_path


def onpolicy_questions(args: argparse.Namespace, sft_path: pathlib.Path) -> pathlib.Path:
    """``--onpolicy-n`` answerable training questions (seeded), written beside the SFT records."""
    return sample_answerable(sft_path, args.onpolicy_n, 0, "onpolicy-questions.jsonl")


def synth_domain_questions(
    r: Runner, args: argparse.Namespace, held_path: pathlib.Path, sft_path: pathlib.Path
) -> pathlib.Path:
    """``--onpolicy-n`` seeded pairs that ``ragqa finetune synth`` makes from the held-out article's chunks: the user's
    domain as a new user has it (the documents, none of their questions). The held-out questions are never used;
    the synthetic questions are cloze / wh-forms of the chunks' own sentences, answered by the copied span."""
    import random

    from finetune.data import read_jsonl
    from ingest.squad import read_squad

    synth = sft_path.with_name("synth-all.jsonl")
    r.step("synth", "finetune", "synth", "-c", COLLECTION, "--per-chunk", "4", "--output", str(synth), "--json")
    paragraphs = [" ".join(p.context.split()) for a in read_squad(held_path).articles for p in a.paragraphs]
    domain = [
        x
        for x in read_jsonl(synth, "sft")
        if x.contexts and any(" ".join(x.contexts[0].split())[:80] in p for p in paragraphs)
    ]
    chosen = random.Random(0).sample(domain, min(args.onpolicy_n, len(domain)))
    logger.info(
        "--onpolicy-synth: %d of the synthetic pairs come from the held-out article; %d used", len(domain), len(chosen)
    )
    out = sft_path.with_name("onpolicy-synth-questions.jsonl")
    write_if_changed(out, "".join(json.dumps(x.to_json(), ensure_ascii=False) + "\n" for x in chosen))
    return out


def sample_answerable(sft_path: pathlib.Path, n: int, seed: int, name: str) -> pathlib.Path:
    """``n`` seeded answerable SFT records (not the "I don't know." ones; their gold answers give the F1
    reward), written as ``name`` beside ``sft_path``."""
    import random

    from finetune.data import read_jsonl
    from rag.prompts import ABSTAIN_TEXT

    records = read_jsonl(sft_path, "sft")
    answerable = [x for x in records if x.answer and x.answer.strip() != ABSTAIN_TEXT]
    chosen = random.Random(seed).sample(answerable, min(n, len(answerable)))
    out = sft_path.with_name(name)
    write_if_changed(out, "".join(json.dumps(x.to_json(), ensure_ascii=False) + "\n" for x in chosen))
    return out


def sample_prefs(
    r: Runner, args: argparse.Namespace, questions: pathlib.Path, pairs: pathlib.Path, sft_name: str
) -> tuple[Any, float]:
    """``ragqa finetune prefs``: the SFT adapter's sampled answers to the questions, paired by F1 (a cached step)."""
    return r.step(
        "prefs", "finetune", "prefs", "--data", str(questions), "-c", COLLECTION, "--adapter", sft_name,
        "--samples", str(args.samples), "--mode", args.prefs_mode or args.mode, "--output", str(pairs), "--json",
        inputs=(sft_name,),
    )  # fmt: skip


def train_rlhf(r: Runner, args: argparse.Namespace, questions: pathlib.Path, sft_name: str) -> tuple[Any, float]:
    """``ragqa finetune rlhf --reward f1`` from the SFT adapter on the on-policy questions (a cached step)."""
    return r.step(
        "rlhf", "finetune", "rlhf", "--prompts", str(questions), "--reward", "f1", "--from-adapter", sft_name,
        "--output", OP_RLHF_NAME, "--overwrite", "--json", *args.rlhf_args.split(), inputs=(sft_name,),
    )  # fmt: skip


def run_on_policy_rlhf(
    r: Runner, args: argparse.Namespace, questions: pathlib.Path, held_path: pathlib.Path, res: dict[str, Any]
) -> None:
    """SFT -> RLHF with the verifiable F1 reward on the on-policy questions, compared with SFT."""
    rl, rl_wall = train_rlhf(r, args, questions, res["sft_name"])
    res["onpolicy_rlhf"] = {"wall_s": rl_wall, "args": args.rlhf_args, **rl["metrics"]}
    res["onpolicy_rlhf_eval"] = r.evaluate(held_path, args.mode, args.compare_n or args.n, OP_RLHF_NAME)
    res["onpolicy_rlhf_eval"]["vs_sft"] = compare(res["after"], res["onpolicy_rlhf_eval"])
    common.save_json(args.json, res)  # partial results survive a later failure


def compare(sft: dict[str, Any], other: dict[str, Any]) -> dict[str, Any]:
    """``other`` - ``sft`` F1 on the answerable questions both answered, paired by question id (paired bootstrap)."""
    from rag.evaluate import paired_bootstrap

    theirs = dict(zip(other["question_ids"], other["question_f1"], strict=True))
    ids = [q for q in sft["question_ids"] if q in theirs]
    ours = dict(zip(sft["question_ids"], sft["question_f1"], strict=True))
    out: dict[str, Any] = paired_bootstrap([ours[q] for q in ids], [theirs[q] for q in ids], n=1000, seed=0)
    out["questions"] = len(ids)
    out["sft_f1"] = sum(ours[q] for q in ids) / len(ids)  # SFT on the paired questions (all of them with --compare-n)
    out["f1"] = sum(theirs[q] for q in ids) / len(ids)
    out["better"] = sum(theirs[q] > ours[q] for q in ids)
    out["worse"] = sum(theirs[q] < ours[q] for q in ids)
    return out


# -- report ---------------------------------------------------------------------------------------
def _f(v: Any, spec: str = ".3f") -> str:
    return "n/a" if v is None else format(v, spec)


def render(res: dict[str, Any], argv: list[str]) -> str:
    if "base" not in res or "from" in res["sft"]:
        return render_from_adapter(res, argv)
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
    lines.append(row(f"+ LoRA SFT `{res.get('sft_name', SFT_NAME)}`", after))
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
        sft_name = res.get("sft_name", SFT_NAME)
        lines += [
            "",
            "Preference side, end to end on a small set built from the training articles (chosen: the gold span; "
            "rejected: the whole sentence around it):",
            "",
            f"- `finetune reward`: held-out pairwise accuracy {_f(rm.get('eval_accuracy'), '.2f')} "
            f"(before training {_f(rm.get('eval_accuracy_before'), '.2f')}), {rm['wall_s']:.0f} s.",
            f"- `finetune dpo --from-adapter {sft_name}`: reward margin {_f(dpo.get('rewards_margin_before'))} -> "
            f"{_f(dpo.get('rewards_margin_after'))}, preference accuracy {_f(dpo.get('accuracy_before'), '.2f')} -> "
            f"{_f(dpo.get('accuracy_after'), '.2f')}, held-out F1 {_f(res['dpo_eval']['f1'])}, {dpo['wall_s']:.0f} s.",
            f"- `finetune rlhf --from-adapter {sft_name}` ({rl.get('algorithm', '').upper()}): mean reward "
            f"{_f(rl.get('reward_before'))} -> {_f(rl.get('reward_after'))}, KL to the SFT reference "
            f"{_f(rl.get('kl_before'))} -> {_f(rl.get('kl_after'))}, mean completion length "
            f"{_f(rl.get('length_before'), '.1f')} -> {_f(rl.get('length_after'), '.1f')} tokens, "
            f"held-out F1 {_f(res['rlhf_eval']['f1'])}, {rl['wall_s']:.0f} s.",
        ]
    if "onpolicy_prefs" in res or "onpolicy_rlhf" in res:
        lines += render_on_policy(res)
    return "\n".join(lines) + "\n"


def render_from_adapter(res: dict[str, Any], argv: list[str]) -> str:
    """The report of a run from an installed SFT adapter (``--sft-from``) and/or without the base model."""
    after, sft = res["after"], res["sft"]
    sft_name = res.get("sft_name", SFT_NAME)
    origin = (
        f"`{sft['from']}` installed as `{sft_name}` by `ragqa models prepare` (recipe `{sft.get('recipe')}`)"
        if "from" in sft
        else f"trained here with `{sft.get('command')}` in {sft['wall_s'] / 60:.1f} min"
    )
    unans = after.get("n_unanswerable", 0)
    lines = [
        f"Run {common.today()} on {common.machine_summary()}, commit `{common.git_revision()}`.",
        "",
        f"Command: `{common.command_line(pathlib.Path(__file__), argv)}`",
        "",
        f"SFT policy and reference: {origin}. Evaluated with `ragqa eval --mode {res['mode']} --n {res['n']}` on "
        f"the held-out article **{res['held_out_article']}** ({after['n']} answerable"
        + (f" + {unans} unanswerable" if unans else " questions only")
        + f"); SFT F1 {_f(after['f1'])}, EM {_f(after['em'])}, {after['wall_s'] / 60:.1f} min.",
    ]
    if "base" in res:
        lines.append(f"Bare model: F1 {_f(res['base']['f1'])}, EM {_f(res['base']['em'])}.")
    if "onpolicy_prefs" in res or "onpolicy_rlhf" in res:
        lines += render_on_policy(res)
    return "\n".join(lines) + "\n"


def render_on_policy(res: dict[str, Any]) -> list[str]:
    """The on-policy side: the sampled pairs (when DPO ran) and every preference model against SFT."""
    pf = res.get("onpolicy_prefs")
    sft_name = res.get("sft_name", SFT_NAME)
    after = res["after"]
    lines = []
    if res.get("onpolicy_source") == "synth-heldout":
        lines += [
            "",
            "Preference questions: `finetune synth` pairs from the held-out article's chunks (its text, none of its "
            "questions; the gold answer of a pair is the span it copied).",
        ]
    if pf is not None:
        lines += [
            "",
            f"On-policy pairs (`finetune prefs --adapter {sft_name} --mode {pf.get('mode')} --samples "
            f"{pf.get('samples')}`): {pf['questions']} training questions, {pf['pairs']} pairs (best against worst "
            f"answer by F1 against the gold answer; {pf.get('skipped_tied')} questions skipped, all samples tied), "
            f"{pf.get('distinct_answers_per_question')} distinct answers per question, mean margin "
            f"{_f(pf.get('mean_margin'))}, mean sampled F1 {_f(pf.get('mean_score'))}; {pf['wall_s'] / 60:.1f} min.",
        ]
    lines += [
        "",
        f"Held-out F1 against SFT's {_f(after['f1'])}: mean difference over the answerable questions paired by "
        "question id, paired bootstrap 95% CI (1000 resamples; target: >= +0.03):",
        "",
        "| model | F1 | EM | F1 - SFT [95% CI] | better / worse / same | target | train / eval min |",
        "|---|---|---|---|---|---|---|",
        f"| SFT `{sft_name}` | {_f(after['f1'])} | {_f(after['em'])} | | | | - / {after['wall_s'] / 60:.1f} |",
    ]
    online = res.get("onpolicy_rlhf", {}).get("algorithm") == "online-dpo"
    rl_label = "online DPO (resampled every step)" if online else "RLHF"
    for name, key, train in (
        (f"SFT then on-policy DPO `{OP_DPO_NAME}`", "onpolicy_dpo_eval", "onpolicy_dpo"),
        (f"SFT then {rl_label}, F1 reward `{OP_RLHF_NAME}`", "onpolicy_rlhf_eval", "onpolicy_rlhf"),
    ):
        if key not in res:
            continue
        m, b = res[key], res[key]["vs_sft"]
        ok = b["diff"] >= 0.03 and b["low"] > 0
        same = b["questions"] - b["better"] - b["worse"]
        lines.append(
            f"| {name} | {_f(b['f1'])} (SFT {_f(b['sft_f1'])} on the same {b['questions']}) | {_f(m['em'])} | "
            f"{b['diff']:+.3f} [{b['low']:+.3f}, {b['high']:+.3f}] | "
            f"{b['better']} / {b['worse']} / {same} | {'met' if ok else 'not met'} | "
            f"{res[train]['wall_s'] / 60:.1f} / {m['wall_s'] / 60:.1f} |"
        )
    lines.append("")
    if "onpolicy_reward" in res:
        rm = res["onpolicy_reward"]
        acc = rm.get("eval_accuracy")
        lines.append(
            f"- `finetune reward` on the on-policy pairs: pairwise accuracy on {rm.get('eval_pairs')} held-out pairs "
            f"**{_f(acc, '.2f')}** (before training {_f(rm.get('eval_accuracy_before'), '.2f')}; trained on "
            f"{rm.get('train_pairs')}, {rm.get('steps')} steps; target >= 0.75: "
            f"**{'met' if acc is not None and acc >= 0.75 else 'not met'}**), {rm['wall_s'] / 60:.1f} min."
        )
    if "onpolicy_dpo" in res:
        dpo = res["onpolicy_dpo"]
        lines.append(
            f"- `finetune dpo --from-adapter {sft_name}` (beta {dpo.get('beta')}, RPO alpha {dpo.get('rpo_alpha')}, "
            f"lr {dpo.get('learning_rate')}, {dpo.get('steps')} steps on {dpo.get('train_pairs')} pairs): reward "
            f"margin on {dpo.get('eval_pairs')} held-out pairs {_f(dpo.get('rewards_margin_before'))} -> "
            f"{_f(dpo.get('rewards_margin_after'))}, preference accuracy {_f(dpo.get('accuracy_before'), '.2f')} -> "
            f"{_f(dpo.get('accuracy_after'), '.2f')}, peak RSS {dpo.get('peak_rss_mb', 0) / 1024:.2f} GiB."
        )
    for rnd in res.get("onpolicy_rounds", []):  # iterated DPO (--dpo-rounds): the table's DPO row is the last round
        pf, dpo, ev = rnd["prefs"], rnd["dpo"], rnd.get("eval")
        held = (
            ""
            if ev is None
            else (
                f"; held-out F1 {_f(ev['vs_sft']['f1'])}, {ev['vs_sft']['diff']:+.3f} "
                f"[{ev['vs_sft']['low']:+.3f}, {ev['vs_sft']['high']:+.3f}] against SFT"
            )
        )
        lines.append(
            f"- Iterated DPO round {rnd['round']}: pairs sampled from `{rnd['policy']}` on {pf['questions']} new "
            f"questions ({pf['pairs']} pairs, {pf.get('skipped_tied')} tied, "
            f"mean sampled F1 {_f(pf.get('mean_score'))}), "
            f"DPO from `{rnd['policy']}` -> `{rnd['adapter']}`: {dpo.get('steps')} steps, held-out pairs' margin "
            f"{_f(dpo.get('rewards_margin_after'))}, accuracy {_f(dpo.get('accuracy_after'), '.2f')}{held}."
        )
    if "onpolicy_rlhf" in res:
        rl = res["onpolicy_rlhf"]
        lines.append(
            f"- `finetune rlhf --reward f1 --from-adapter {sft_name}` ({str(rl.get('algorithm', '')).upper()}, "
            f"beta {rl.get('beta')}, ptx {rl.get('ptx_coef')}, {rl.get('steps')} steps): mean F1 reward "
            f"{_f(rl.get('reward_before'))} -> {_f(rl.get('reward_after'))}, KL to the SFT reference "
            f"{_f(rl.get('kl_before'))} -> {_f(rl.get('kl_after'))} (mean in training {_f(rl.get('train_kl'))}), "
            f"peak RSS {rl.get('peak_rss_mb', 0) / 1024:.2f} GiB."
            + (
                f" Online DPO: {_f(rl.get('train_pairs_per_step'), '.2f')} pairs a step (the rest of the prompts' "
                f"answers tied), pair accuracy in training {_f(rl.get('train_pair_accuracy'), '.2f')}, implicit reward "
                f"margin {_f(rl.get('train_dpo_margin'))}."
                if rl.get("algorithm") == "online-dpo"
                else ""
            )
        )
    return lines


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--held-out", type=int, default=2, help="index of the held-out article (default: the third)")
    p.add_argument("--mode", default="rag-token", help="generation mode evaluated (the reader recipe's)")
    p.add_argument(
        "--n", type=int, default=200, help="answerable held-out questions (plus as many unanswerable; the recipe's)"
    )
    p.add_argument(
        "--sft-from",
        default=None,
        metavar="DIR",
        help="skip SFT training: install this shipped-adapter folder (e.g. data/adapters/reader) with "
        "`ragqa models prepare` and use it as the SFT policy and reference",
    )
    p.add_argument("--skip-base", action="store_true", help="skip the bare model's evaluation")
    p.add_argument(
        "--answerable-only",
        action="store_true",
        help="evaluate the held-out answerable questions only (F1 is scored on them alone)",
    )
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
    p.add_argument(
        "--pref-split",
        type=float,
        default=0.0,
        help="keep this seeded share of the answerable training questions out of SFT; on-policy pairs and RLHF "
        "prompts come from them only (not with --sft-from)",
    )
    p.add_argument("--onpolicy-n", type=int, default=128, help="training questions sampled for on-policy training")
    p.add_argument(
        "--onpolicy-synth",
        action="store_true",
        help="on-policy questions from `ragqa finetune synth` over the held-out article's chunks (its text, never its "
        "questions): preference training on the user's domain",
    )
    p.add_argument("--samples", type=int, default=4, help="answers sampled per question (finetune prefs)")
    p.add_argument("--prefs-mode", default=None, help="RAG mode the on-policy answers are sampled in (default: --mode)")
    p.add_argument("--dpo-args", default="", help="extra options for the on-policy `ragqa finetune dpo`")
    p.add_argument(
        "--dpo-rounds",
        type=int,
        default=1,
        help="iterated DPO: rounds over disjoint parts of the on-policy questions, each sampling from the last policy",
    )
    p.add_argument("--eval-every-round", action="store_true", help="with --dpo-rounds: evaluate every round's policy")
    p.add_argument("--rlhf-args", default="", help="extra options for the on-policy `ragqa finetune rlhf`")
    p.add_argument(
        "--compare-n",
        type=int,
        default=None,
        help="answerable held-out questions the DPO / RLHF adapters are evaluated on (default --n); they are "
        "compared with SFT on those questions (SFT's own evaluation covers --n)",
    )
    p.add_argument("--skip-dpo", action="store_true", help="on-policy side without DPO")
    p.add_argument("--skip-rlhf", action="store_true", help="on-policy side without RLHF")
    p.add_argument(
        "--reward-model-eval",
        action="store_true",
        help="also train `finetune reward` on the on-policy pairs and report its held-out pairwise accuracy",
    )
    p.add_argument("--rm-eval-split", type=float, default=0.25, help="share of the on-policy pairs held out")
    p.add_argument("--rm-args", default="", help="extra options for the on-policy `ragqa finetune reward`")
    p.add_argument("--home", default=None, help="RAGQA_HOME (default: a temporary one)")
    p.add_argument("--models-from", default=None, help="prepared models folder to link (default ~/.ragqa/models)")
    p.add_argument("--keep", action="store_true", help="keep the temporary home")
    p.add_argument(
        "--reuse",
        action="store_true",
        help="with --home: reuse the evaluations and on-policy steps already run there with the same arguments",
    )
    p.add_argument("--write", action="store_true", help="update the Fine-tuning section of BENCHMARKS.md")
    p.add_argument("--json", default=None, help="also write the raw results to this file")
    p.add_argument("-v", "--verbose", action="store_true")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.pref_split and args.sft_from:
        raise SystemExit("--pref-split trains SFT without the kept-aside questions; it cannot be used with --sft-from")
    logging.basicConfig(level=logging.INFO, format=common.LOG_FORMAT)
    res = run(args)
    common.save_json(args.json, res)
    body = render(res, argv)
    SECTION.publish(body, write=args.write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
