"""Train the shipped default reader adapter from its recipe, measure it, and ship it (``make adapter``).

The recipe (``data/adapters/reader.recipe.yaml``) names the data (articles of the public SQuAD 2.0
file ``data/benchmarks/squad2_dev_public.json``, CC BY-SA 4.0, one article held out), the
``ragqa finetune sft`` options and the evaluation. Every step is the user's own CLI command run as a
whole process, as in ``bench/finetune.py``:

1. build the SFT records of the training articles and the held-out questions;
2. ``ragqa ingest`` the SQuAD file into a collection, ``ragqa finetune sft --config <recipe sft part>``;
3. when the recipe has an ``rlhf`` part: ``ragqa finetune rlhf --reward f1 --from-adapter <the SFT adapter>
   --config <recipe rlhf part>`` on ``data.rlhf_questions`` seeded answerable training questions (RLOO with
   the verifiable F1 reward, a KL penalty to the SFT adapter and the PPO-ptx SFT loss); the result is the
   reader, one stacked LoRA over the base model;
4. with the recipe's ``save_dtype`` (bfloat16): store the adapter's weights in that type (half the file;
   :func:`finetune.lora.cast_adapter`), before it is evaluated;
5. ``ragqa eval`` the adapter (the SFT step too, paired with it, when there is an RLHF step; with
   ``--with-base``, the bare model) on the held-out article;
6. with ``--ship DIR``: replace DIR by the new adapter, its ``ragqa_adapter.json`` extended with the
   recipe (text and sha256), the data hashes, the held-out figures and the cost of the run; and
   compare with the adapter shipped before (``make adapter`` retrains within 0.02 F1 of it).

    .venv/bin/python -m bench.reader_adapter --ship data/adapters/reader
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import pathlib
import shutil
import sys
import tempfile
from typing import Any

import yaml

from bench import common

sys.path.insert(0, str(common.ROOT))  # the ragqa packages first
from bench.finetune import COLLECTION, Runner, compare, prepare_home, sample_answerable
from finetune.squad import squad_training_data

logger = logging.getLogger("bench.reader_adapter")

RECIPE = common.ROOT / "data" / "adapters" / "reader.recipe.yaml"
ADAPTER_NAME = "reader"
SFT_NAME = "reader-sft"  # the SFT step's adapter when the recipe continues it with RLHF
META = "ragqa_adapter.json"
REPRODUCE_TOLERANCE = 0.02  # held-out F1 of a retrain vs the shipped adapter
SAVE_DTYPES = ("float32", "bfloat16", "float16")  # the recipe's save_dtype: the shipped weights' stored type


def sha256(path: pathlib.Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def recipe_label(path: pathlib.Path) -> str:
    """The recipe's path relative to the repository, or as given when it lies outside (a trial recipe)."""
    path = path.resolve()
    return str(path.relative_to(common.ROOT)) if path.is_relative_to(common.ROOT) else str(path)


def load_recipe(path: pathlib.Path) -> dict[str, Any]:
    recipe = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(recipe, dict) or not isinstance(recipe.get("sft"), dict):
        raise SystemExit(f"{path}: a recipe needs an 'sft' mapping (options of `ragqa finetune sft`)")
    if recipe.get("save_dtype") not in (None, *SAVE_DTYPES):  # checked before hours of training, not after
        raise SystemExit(f"{path}: save_dtype must be one of {', '.join(SAVE_DTYPES)}, got {recipe['save_dtype']!r}")
    return recipe


def train(args: argparse.Namespace) -> dict[str, Any]:
    recipe_path = pathlib.Path(args.recipe)
    recipe = load_recipe(recipe_path)
    data_opts, eval_opts = recipe.get("data", {}), recipe.get("eval", {})
    held_out = [] if args.all_articles else list(data_opts.get("held_out", [2]))
    home = prepare_home(args)
    env = common.offline_env(RAGQA_HOME=str(home))
    r = Runner(home, env)
    data = squad_training_data(
        common.SQUAD,
        home / "bench-data",
        held_out=held_out or list(data_opts.get("held_out", [2])),
        unanswerable=float(data_opts.get("unanswerable", 0.0)),
        seed=int(data_opts.get("seed", 0)),
    )
    sft_path, counts = data.sft_path, data
    if args.all_articles:  # train on every article; the "held-out" questions are then seen in training
        sft_path = home / "bench-data" / "sft-all.jsonl"
        rows = squad_training_data(
            common.SQUAD,
            home / "bench-data-all",
            held_out=[],
            unanswerable=float(data_opts.get("unanswerable", 0.0)),
            seed=int(data_opts.get("seed", 0)),
        )
        shutil.copyfile(rows.sft_path, sft_path)
        counts = rows
    r.run("models", "prepare", "--json", timeout=1800)
    if COLLECTION not in json.dumps(r.run("collections", "list", "--json")[0]):
        r.run("ingest", str(common.SQUAD), "-c", COLLECTION, "--json")
    rlhf_opts = recipe.get("rlhf")
    sft_name = SFT_NAME if rlhf_opts else ADAPTER_NAME
    sft_config = home / "reader-sft.yaml"
    sft_config.write_text(yaml.safe_dump(recipe["sft"], sort_keys=True), encoding="utf-8")
    sft, wall = r.run(
        "finetune", "sft", "--data", str(sft_path), "-c", COLLECTION, "--output", sft_name, "--config",
        str(sft_config), "--overwrite", "--json", timeout=4 * 3600,
    )  # fmt: skip
    mode, n = str(eval_opts.get("mode", "rag-token")), int(args.n or eval_opts.get("n", 200))
    res: dict[str, Any] = {
        "home": str(home),
        "recipe": {"path": recipe_label(recipe_path), "sha256": sha256(recipe_path)},
        "data": {
            "squad_file": common.SQUAD.name,
            "squad_sha256": sha256(common.SQUAD),
            "sft_records_sha256": sha256(sft_path),
            "train_articles": data.train_articles if not args.all_articles else "all",
            "held_out_article": data.held_out_articles[0],
            "train_questions": counts.answerable,
            "train_unanswerable": counts.unanswerable,
            "license": "CC BY-SA 4.0 (SQuAD 2.0, Rajpurkar et al. 2018)",
        },
        "sft": {"wall_s": round(wall, 1), **sft["metrics"]},
        "eval": {"mode": mode, "n": n},
        "cpu_bf16": os.environ.get("RAGQA_CPU_BF16", "auto"),
        "machine": common.machine_summary(),
        "commit": common.git_revision(),
        "date": common.today(),
    }
    if rlhf_opts:
        n_questions, seed = int(data_opts.get("rlhf_questions", 160)), int(data_opts.get("seed", 0))
        questions = sample_answerable(sft_path, n_questions, seed, "rlhf-questions.jsonl")
        rlhf_config = home / "reader-rlhf.yaml"
        rlhf_config.write_text(yaml.safe_dump(rlhf_opts, sort_keys=True), encoding="utf-8")
        rl, rl_wall = r.run(
            "finetune", "rlhf", "--prompts", str(questions), "--from-adapter", sft_name, "--output", ADAPTER_NAME,
            "--config", str(rlhf_config), "--overwrite", "--json", timeout=4 * 3600,
        )  # fmt: skip
        res["data"]["rlhf_prompts_sha256"] = sha256(questions)
        res["rlhf"] = {"wall_s": round(rl_wall, 1), **rl["metrics"]}
        res["eval"]["sft"] = r.evaluate(data.held_out_path, mode, n, sft_name)
    save_dtype = recipe.get("save_dtype")
    if save_dtype:  # stored smaller before it is evaluated, so the figures are those of the shipped weights
        import torch

        from finetune.lora import cast_adapter

        res["weights_dtype"] = save_dtype
        res["weights_bytes"] = cast_adapter(home / "adapters" / ADAPTER_NAME, getattr(torch, save_dtype))
    res["eval"]["adapter"] = r.evaluate(data.held_out_path, mode, n, ADAPTER_NAME)
    if rlhf_opts:
        res["eval"]["vs_sft"] = compare(res["eval"]["sft"], res["eval"]["adapter"])
    if args.with_base:
        res["eval"]["base"] = r.evaluate(data.held_out_path, mode, n, None)
    return res


def _rlhf_evaluation(res: dict[str, Any]) -> dict[str, Any]:
    """The RLHF step's cost and its held-out gain over its SFT adapter (nothing for an SFT-only recipe)."""
    if "rlhf" not in res:
        return {}
    vs = res["eval"]["vs_sft"]
    return {
        "sft_heldout_f1": res["eval"]["sft"]["f1"],
        "rlhf_vs_sft_f1": {k: vs[k] for k in ("diff", "low", "high", "better", "worse", "questions")},
        "rlhf_wall_s": res["rlhf"]["wall_s"],
        "rlhf_peak_rss_mb": res["rlhf"].get("peak_rss_mb"),
        "rlhf_kl": res["rlhf"].get("kl_after"),
    }


def ship(res: dict[str, Any], dest: pathlib.Path, recipe_path: pathlib.Path) -> dict[str, Any]:
    """Replace ``dest`` by the trained adapter (atomically: staged beside it, then renamed)."""
    src = pathlib.Path(res["home"]) / "adapters" / ADAPTER_NAME
    previous = None
    if (dest / META).is_file():
        previous = json.loads((dest / META).read_text(encoding="utf-8")).get("evaluation", {}).get("heldout_f1")
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = pathlib.Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    for name in ("adapter_config.json", "adapter_model.safetensors", META):
        shutil.copyfile(src / name, staging / name)
    meta = json.loads((staging / META).read_text(encoding="utf-8"))
    meta["data"] = res["data"]  # the training run's own record pointed at a temporary file
    meta["recipe"] = {**res["recipe"], "text": recipe_path.read_text(encoding="utf-8")}
    if "rlhf" in res:  # the SFT step it continues (its own adapter is not shipped: the reader stacks both)
        meta["sft"] = {k: res["sft"].get(k) for k in ("wall_s", "steps", "train_loss", "peak_rss_mb")}
        meta["from_adapter"] = f"{SFT_NAME} (SFT step of the recipe, stacked into this adapter)"
    if res.get("weights_dtype"):
        meta["weights_dtype"] = res["weights_dtype"]
    styles = load_recipe(recipe_path).get("default_styles")
    if styles:  # the answer styles it is the shipped default for (rag.adapter_defaults.AdapterResolver.shipped)
        meta["default_styles"] = list(styles)
    ev = res["eval"]["adapter"]
    meta["evaluation"] = {
        "heldout_f1": ev["f1"],
        "heldout_em": ev["em"],
        "heldout_article": res["data"]["held_out_article"],
        "eval_mode": res["eval"]["mode"],
        "eval_n": ev.get("n"),
        "sft_wall_s": res["sft"]["wall_s"],
        "peak_rss_mb": res["sft"].get("peak_rss_mb"),
        **_rlhf_evaluation(res),
        "cpu_bf16": res["cpu_bf16"],
        "machine": res["machine"],
        "commit": res["commit"],
        "date": res["date"],
    }
    (staging / META).write_text(json.dumps(meta, indent=2, default=str) + "\n", encoding="utf-8")
    old = dest.with_name(f".{dest.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if dest.exists():
        dest.rename(old)
    staging.rename(dest)
    shutil.rmtree(old, ignore_errors=True)
    out = {"shipped": str(dest), "heldout_f1": ev["f1"], "previous_heldout_f1": previous}
    if previous is not None:
        out["reproduced"] = abs(ev["f1"] - previous) <= REPRODUCE_TOLERANCE
    return out


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--recipe", default=str(RECIPE), help="recipe YAML (default: the shipped adapter's)")
    p.add_argument("--ship", default=None, help="replace this adapter folder by the result (data/adapters/reader)")
    p.add_argument("--all-articles", action="store_true", help="train on every article (no held-out figure)")
    p.add_argument("--with-base", action="store_true", help="also evaluate the bare model")
    p.add_argument("--n", type=int, default=None, help="held-out answerable questions (default: the recipe's)")
    p.add_argument("--home", default=None, help="RAGQA_HOME (default: a temporary one)")
    p.add_argument("--models-from", default=None, help="prepared models folder to link (default ~/.ragqa/models)")
    p.add_argument("--json", default=None, help="also write the raw results to this file")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(list(sys.argv[1:] if argv is None else argv))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    res = train(args)
    if args.ship:
        if args.all_articles:
            raise SystemExit("--ship needs the held-out figure: train without --all-articles")
        res["ship"] = ship(res, pathlib.Path(args.ship), pathlib.Path(args.recipe))
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(res, indent=1, default=str))
    ev = res["eval"]["adapter"]
    print(
        f"reader adapter: held-out F1 {ev['f1']:.3f} EM {ev['em']:.3f} on {res['data']['held_out_article']} "
        f"({res['eval']['mode']}, n={ev.get('n')}); SFT {res['sft']['wall_s'] / 60:.1f} min, "
        f"peak RSS {res['sft'].get('peak_rss_mb', 0) / 1024:.2f} GiB"
    )
    if "rlhf" in res:
        vs = res["eval"]["vs_sft"]
        print(
            f"  SFT step alone: F1 {res['eval']['sft']['f1']:.3f}; RLHF {vs['diff']:+.3f} [{vs['low']:+.3f}, "
            f"{vs['high']:+.3f}] ({vs['better']} better / {vs['worse']} worse); RLHF {res['rlhf']['wall_s'] / 60:.1f} "
            f"min, peak RSS {res['rlhf'].get('peak_rss_mb', 0) / 1024:.2f} GiB, KL {res['rlhf'].get('kl_after')}"
        )
    if "base" in res["eval"]:
        print(f"bare model: held-out F1 {res['eval']['base']['f1']:.3f}")
    shipped = res.get("ship")
    if shipped and shipped.get("previous_heldout_f1") is not None:
        verdict = "within" if shipped["reproduced"] else "NOT within"
        print(
            f"previous shipped adapter: F1 {shipped['previous_heldout_f1']:.3f}; the retrain is {verdict} "
            f"{REPRODUCE_TOLERANCE} of it"
        )
        return 0 if shipped["reproduced"] else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
