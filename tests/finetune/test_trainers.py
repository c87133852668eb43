"""Each fine-tune command on tiny data for a few steps, on tiny in-process models: the loss goes down,
LoRA weights change, the adapter saves, reloads and changes the generator's output."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from finetune.adapters import AdapterRegistry
from finetune.config import ConfigError, DPOJob, RewardJob, RLHFJob, SFTJob, load_job
from finetune.data import DataError
from finetune.runner import FinetuneError, Workspace
from ingest.workspace import Workspace as IngestWorkspace
from rag.generator import AdapterError, Generator
from tests.finetune.conftest import FACTS as PREFERENCE_FACTS
from tests.finetune.conftest import PARIS_DOC, ROME_DOC, write_jsonl

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]  # trains tiny models for a few steps

OSLO_DOC = "Oslo is the capital of Norway. It lies at the head of the Oslofjord."
FACTS = [
    *PREFERENCE_FACTS[:2],
    ("What is the capital of Norway?", "Oslo", OSLO_DOC),
    ("When was the Eiffel Tower finished?", "1889", PARIS_DOC),
    ("How many people did the Colosseum hold?", "fifty thousand", ROME_DOC),
    ("Where does Oslo lie?", "the head of the Oslofjord", OSLO_DOC),
]
TRAIN = {
    "epochs": 1,
    "max_steps": 4,
    "grad_accum": 1,  # the tests set their own loop (the default accumulates 2)
    "batch_size": 3,
    "learning_rate": 5e-3,
    "eval_split": 0.0,
    "logging_steps": 1,
    "save_steps": 2,
    "max_length": 256,
}


@pytest.fixture(scope="module")
def env(training_env):
    ws, root = training_env("ft", sorted({f[2] for f in FACTS}))
    sft = write_jsonl(root / "sft.jsonl", [{"question": q, "answer": a, "context": c} for q, a, c in FACTS] * 2)
    prefs = write_jsonl(
        root / "prefs.jsonl",
        [
            {
                "question": q,
                "chosen": a,
                "rejected": "I think it might be something else entirely, hard to say.",
                "context": c,
            }
            for q, a, c in FACTS
        ]
        * 2,
    )
    prompts = write_jsonl(root / "prompts.jsonl", [{"question": q, "context": c} for q, _, c in FACTS])
    return ws, {"sft": sft, "prefs": prefs, "prompts": prompts, "root": root}


@pytest.fixture(scope="module")
def sft_adapter(env):
    """'sft-a': SFT with prompts retrieved from the collection (trained once per module)."""
    from finetune.sft import run_sft

    ws, files = env
    job = SFTJob(data=files["sft"], output="sft-a", collection="facts", k=2, train={**TRAIN, "max_steps": 6})
    return run_sft(job, ws).metrics


@pytest.fixture(scope="module")
def reward_model(env):
    """'rm': a reward model on the preference file (trained once per module)."""
    from finetune.reward import run_reward

    ws, files = env
    return run_reward(
        RewardJob(data=files["prefs"], output="rm", train={**TRAIN, "max_steps": 8, "eval_split": 0.25}), ws
    ).metrics


def answer_logits(ws: Workspace, adapter: str | None) -> torch.Tensor:
    gen = Generator(ws.generator, ws.models_dir, ws.home / "adapters")
    ids = torch.tensor([gen.prompt_ids(FACTS[0][0], [FACTS[0][2]], one_shot=False)])
    with gen.session(adapter) as model, torch.no_grad():
        return model(input_ids=ids).logits[0, -1]


def test_sft_with_collection_trains_saves_and_changes_output(env, sft_adapter):
    ws, files = env
    m = sft_adapter
    assert m["steps"] == 6 and m["last_loss"] < m["first_loss"]
    assert m["examples"]["examples"] == len(FACTS) * 2 and m["prompt_style"] == "per-document"
    info = AdapterRegistry(ws.home / "adapters").get("sft-a")
    assert info.kind == "sft" and info.base_model == str(ws.generator.model)
    assert info.meta["data"]["sha256"] and info.meta["options"]["collection"] == "facts"
    # LoRA B matrices start at zero: a changed output proves trained, saved and reloaded weights.
    assert not torch.allclose(answer_logits(ws, None), answer_logits(ws, "sft-a"), atol=1e-4)


def test_sft_answer_only_loss_matches_full_logits_loss(env, tiny_llm):
    from transformers import AutoModelForCausalLM

    from finetune.sft import answer_only_loss

    model = AutoModelForCausalLM.from_pretrained(tiny_llm)
    ids = torch.randint(5, 200, (2, 12))
    labels = ids.clone()
    labels[:, :8] = -100
    labels[1, 11] = -100
    fast, _ = answer_only_loss(model, {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels})
    ref = model(input_ids=ids, labels=labels).loss
    assert fast.item() == pytest.approx(ref.item(), rel=1e-5)


def test_sft_resume_from_checkpoint(env):
    from finetune.sft import run_sft

    ws, files = env
    job = SFTJob(data=files["sft"], output="sft-r", train={**TRAIN, "max_steps": 2, "save_steps": 2})
    run_sft(job, ws)
    assert list(ws.run_dir("sft", "sft-r").glob("checkpoint-2"))
    # A longer run with --resume continues from step 2 instead of starting over.
    res = run_sft(
        job.model_copy(
            update={"resume": True, "overwrite": True, "train": job.train.model_copy(update={"max_steps": 4})}
        ),
        ws,
    )
    assert res.metrics["steps"] == 4


def test_sft_bad_input_is_a_clear_error(env, sft_adapter, tmp_path):
    from finetune.sft import run_sft

    ws, files = env
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "q", "answer": "a"}\nnot json\n{"question": "q2"}\n')
    with pytest.raises(DataError, match=r"bad.jsonl:2: not valid JSON[\s\S]*bad.jsonl:3: missing"):
        run_sft(SFTJob(data=bad, output="x"), ws)
    with pytest.raises(FinetuneError, match="exists"):
        run_sft(SFTJob(data=files["sft"], output="sft-a"), ws)
    from ingest.errors import IngestError

    with pytest.raises(IngestError):
        run_sft(SFTJob(data=files["sft"], output="y", collection="nope"), ws)
    with pytest.raises(ConfigError, match="lora.r"):
        load_job(SFTJob, None, {"data": "x", "output": "z", "lora.r": 0})
    with pytest.raises(FinetuneError, match="target modules"):
        run_sft(SFTJob(data=files["sft"], output="t", lora={"target_modules": ["nope_proj"]}, train=TRAIN), ws)


def test_reward_model_learns_preferences(env, reward_model):
    from finetune.reward import RewardScorer

    ws, files = env
    m = reward_model
    assert m["steps"] == 8 and m["eval_pairs"] >= 1 and 0.0 <= m["eval_accuracy"] <= 1.0
    assert AdapterRegistry(ws.home / "adapters").get("rm").kind == "reward"
    gen = ws.base_generator()
    assert gen.int8_layers == 0  # training differentiates through the weights: never the int8 decode copy
    scorer = RewardScorer(ws, "rm", gen)
    q, a, c = FACTS[0]
    good, bad = scorer.score(q, [c], [a, "I think it might be something else entirely, hard to say."])
    assert good > bad
    # A reward model is not a generator adapter.
    with pytest.raises(AdapterError, match="reward model"):
        with gen.session("rm"):
            pass


def test_dpo_from_sft_adapter_stacks_into_one_adapter(env, sft_adapter):
    from finetune.dpo import run_dpo

    ws, files = env
    res = run_dpo(
        DPOJob(data=files["prefs"], output="dpo-a", from_adapter="sft-a", train={**TRAIN, "max_steps": 4}), ws
    )
    m = res.metrics
    assert m["steps"] == 4 and m["from_adapter"] == "sft-a"
    cfg = json.loads((ws.home / "adapters" / "dpo-a" / "adapter_config.json").read_text())
    assert cfg["r"] == 32  # the SFT adapter's 16 + DPO's 16, stacked
    assert not torch.allclose(answer_logits(ws, "sft-a"), answer_logits(ws, "dpo-a"), atol=1e-5)


def test_rlhf_rloo_against_reward_model(env, sft_adapter, reward_model):
    from finetune.rlhf import run_rlhf

    ws, files = env
    job = RLHFJob(
        prompts=files["prompts"],
        reward_model="rm",
        output="rl-a",
        from_adapter="sft-a",
        num_generations=2,
        max_completion_length=4,
        train={**TRAIN, "max_steps": 2, "batch_size": 4},
    )
    m = run_rlhf(job, ws).metrics
    assert m["steps"] == 2 and m["kl_before"] == pytest.approx(0.0, abs=1e-4)
    for key in ("reward_before", "reward_after", "kl_after", "length_after"):
        assert isinstance(m[key], float)
    assert AdapterRegistry(ws.home / "adapters").get("rl-a").kind == "rlhf"
    with pytest.raises(FinetuneError, match="not a reward model"):
        run_rlhf(job.model_copy(update={"reward_model": "sft-a", "output": "rl-b"}), ws)


def test_adapter_of_another_base_model_is_refused(env, sft_adapter):
    ws, _ = env
    meta_path = ws.home / "adapters" / "sft-a" / "ragqa_adapter.json"
    meta = json.loads(meta_path.read_text())
    other = dict(meta, base_model="SomeOtherModel-7B")
    (ws.home / "adapters" / "sft-other").mkdir()
    for f in (ws.home / "adapters" / "sft-a").iterdir():
        (ws.home / "adapters" / "sft-other" / f.name).write_bytes(f.read_bytes())
    (ws.home / "adapters" / "sft-other" / "ragqa_adapter.json").write_text(json.dumps(other))
    gen = Generator(ws.generator, ws.models_dir, ws.home / "adapters")
    with pytest.raises(AdapterError, match="SomeOtherModel-7B"):
        with gen.session("sft-other"):
            pass


@pytest.mark.parametrize("mode", ["rag-token", "rag-sequence"])
def test_marginal_nll_matches_brute_force_on_tiny_model(env, tiny_llm, mode):
    """The batched training loss equals -log p(y|x) computed document by document with plain forwards."""
    import itertools
    import math

    from transformers import AutoModelForCausalLM

    from finetune.examples import tokenize_pair
    from finetune.rag_e2e import answer_token_logprobs, collate, gather_answer_tokens, marginal_nll

    ws, _ = env
    gen = Generator(ws.generator, ws.models_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_llm).eval()
    questions = [
        (FACTS[0][0], "Paris", [FACTS[0][2], FACTS[1][2], FACTS[2][2]]),
        (FACTS[4][0], "fifty thousand", [FACTS[4][2], FACTS[0][2], FACTS[5][2]]),
    ]
    rows, doc_lp = [], []
    torch.manual_seed(0)
    for q, a, ctxs in questions:
        rows.append(
            {
                "question": q,
                "seqs": [tokenize_pair(gen, q, [c], a, one_shot=False) for c in ctxs],
                "doc_vectors": torch.zeros(3, 4).numpy(),
                "dense_scores": torch.zeros(3).numpy(),
            }
        )
        doc_lp.append(torch.log_softmax(torch.randn(3), -1))
    doc_lp = torch.stack(doc_lp)
    batch = collate(rows, gen.tokenizer.pad_token_id)
    with torch.no_grad():
        tok, mask = gather_answer_tokens(
            answer_token_logprobs(model, batch["input_ids"], batch["attention_mask"], batch["labels"]),
            batch["labels"],
            3,
        )
        fast = marginal_nll(tok, doc_lp, mask, mode).item()
        # Brute force: each (question, document) alone, full logits, explicit sums over documents.
        total = 0.0
        for b, row in enumerate(rows):
            per_doc_tokens = []
            for s in row["seqs"]:
                ids = torch.tensor([s["input_ids"]])
                lp = torch.log_softmax(model(input_ids=ids).logits[0].double(), -1)
                n_prompt = s["completion_mask"].index(1)
                per_doc_tokens.append(
                    [lp[t - 1, s["input_ids"][t]].item() for t in range(n_prompt, len(s["input_ids"]))]
                )
            prior = doc_lp[b].double().exp().tolist()
            if mode == "rag-sequence":
                p = sum(prior[z] * math.exp(sum(per_doc_tokens[z])) for z in range(3))
                total += -math.log(p)
            else:
                # Enumerate every assignment of documents to tokens: prod_i sum_z == sum over paths of prod_i.
                n_tok = len(per_doc_tokens[0])
                if n_tok <= 6:
                    p = sum(
                        math.prod(prior[z[i]] * math.exp(per_doc_tokens[z[i]][i]) for i in range(n_tok))
                        for z in itertools.product(range(3), repeat=n_tok)
                    )
                else:
                    p = math.prod(
                        sum(prior[z] * math.exp(per_doc_tokens[z][i]) for z in range(3)) for i in range(n_tok)
                    )
                total += -math.log(p)
        brute = total / len(rows)
    assert fast == pytest.approx(brute, rel=1e-4)


def test_rag_training_with_query_encoder(env):
    from finetune.config import RAGJob
    from finetune.rag_e2e import QUERY_ENCODER_DIR, run_rag

    ws, files = env
    job = RAGJob(
        data=files["sft"],
        output="rag-a",
        collection="facts",
        k=2,
        mode="rag-token",
        train_query_encoder=True,
        train={**TRAIN, "max_steps": 4, "batch_size": 2},
    )
    m = run_rag(job, ws).metrics
    assert m["steps"] == 4 and m["marginal_nll_after"] < m["marginal_nll_before"]
    info = AdapterRegistry(ws.home / "adapters").get("rag-a")
    assert info.kind == "rag" and (info.path / QUERY_ENCODER_DIR).is_dir()
    assert not torch.allclose(answer_logits(ws, None), answer_logits(ws, "rag-a"), atol=1e-4)

    # Asking with the adapter retrieves with its trained query encoder (the documents stay as indexed).
    from rag.qa import QAPipeline
    from rag.retriever import Retriever

    iws = IngestWorkspace(ws.home, ws.ingest)
    gen = Generator(ws.generator, ws.models_dir, ws.home / "adapters")
    qa = QAPipeline(Retriever(iws.embedder, ws.retriever), gen, ws.qa)
    assert qa.query_embedder(None) is None and qa.query_embedder("sft-missing") is None
    trained = qa.query_embedder("rag-a")
    assert trained is not None and qa.query_embedder("rag-a") is trained  # loaded once
    question = FACTS[0][0]
    assert not np.allclose(trained.embed_query(question), iws.embedder.embed_query(question), atol=1e-5)
    with iws.open("facts", readonly=True) as coll:
        plain = qa.answer(coll, question, adapter=None, abstain=False)
        tuned = qa.answer(coll, question, adapter="rag-a", abstain=False)
        expected = qa.retriever.retrieve(coll, question, query_embedder=trained)
        base = qa.retriever.retrieve(coll, question)
    assert tuned.adapter == "rag-a" and plain.adapter is None
    assert [c.posterior for c in tuned.citations] == pytest.approx([c.posterior for c in expected.chunks])
    assert [c.posterior for c in plain.citations] == pytest.approx([c.posterior for c in base.chunks])
    assert [c.score for c in tuned.citations] != pytest.approx([c.score for c in plain.citations], abs=1e-6)
