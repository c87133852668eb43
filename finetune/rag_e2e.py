"""End-to-end RAG training (Lewis et al. 2020, section 2.4): minimise the marginal negative
log-likelihood of the answer over the top-K retrieved documents,

    RAG-Sequence:  -log sum_z p(z|x) prod_i p(y_i | x, z, y<i)
    RAG-Token:     -sum_i log sum_z p(z|x) p(y_i | x, z, y<i)

with LoRA on the generator and, optionally, the query side of the retriever trained through
p(z|x) = softmax(cos(q(x), d_z) / T) while the document vectors stay fixed (the paper's choice:
re-indexing the documents would cost a full re-embedding). The marginals are the same pure tensor
functions inference uses (:mod:`rag.marginalize`). The top-K candidates are retrieved once, before
training; the posterior over them is recomputed from the trainable query encoder at every step.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from finetune.config import RAGJob
from finetune.data import file_sha256, read_jsonl
from finetune.distributed import is_main_process
from finetune.examples import contains_answer, tokenize_pair
from finetune.losses import answer_logits
from finetune.runner import (
    FinetuneError,
    RunStats,
    TrainResult,
    Workspace,
    check_output_free,
    lora_config,
    prepare_run_dir,
    save_adapter,
    set_threads,
    trainable_parameters,
    trainer_kwargs,
)
from rag.generator import Generator
from rag.marginalize import rag_sequence_logprob, rag_token_sequence_logprob
from rag.qa import format_contexts

logger = logging.getLogger(__name__)

QUERY_ENCODER_DIR = "query_encoder"


# -- the loss (pure tensor code) ------------------------------------------------------------------
def answer_token_logprobs(
    model, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor
) -> torch.Tensor:
    """``(N, L-1)`` log p(label_t | prefix) at every labelled position (0 elsewhere), projecting only
    labelled positions through the LM head. ``input_ids``/``labels``: ``(N, L)``, labels -100 = ignore."""
    logits, target, mask = answer_logits(model, input_ids, labels, attention_mask=attention_mask)
    picked = torch.log_softmax(logits, -1).gather(-1, target.unsqueeze(-1)).squeeze(-1)
    return torch.zeros(mask.shape, dtype=picked.dtype, device=picked.device).masked_scatter(mask, picked)


def gather_answer_tokens(
    token_lp: torch.Tensor, labels: torch.Tensor, n_docs: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Regroup per-row answer log-probs into ``(B, K, T)`` plus the ``(B, T)`` answer mask.

    Row ``b*K + k`` holds question ``b`` with document ``k``; every row of a question carries the
    same answer tokens (only the prompt differs), so they align position by position.
    """
    target_mask = labels[:, 1:] != -100  # (N, L-1)
    lengths = target_mask.sum(-1)
    t_max = int(lengths.max())
    n = token_lp.size(0)
    out = token_lp.new_zeros(n, t_max)
    for row in range(n):
        vals = token_lp[row][target_mask[row]]
        out[row, : vals.numel()] = vals
    b = n // n_docs
    lengths = lengths.view(b, n_docs)
    if not bool((lengths == lengths[:, :1]).all()):
        raise FinetuneError("answer tokens differ between the documents of one question")
    ans_mask = torch.arange(t_max, device=token_lp.device).unsqueeze(0) < lengths[:, 0].unsqueeze(1)
    return out.view(b, n_docs, t_max), ans_mask


def marginal_nll(
    token_logprobs: torch.Tensor, doc_logprobs: torch.Tensor, mask: torch.Tensor, mode: str
) -> torch.Tensor:
    """Mean over the batch of -log p(y|x) under ``mode``.

    Shapes: ``token_logprobs (B,K,T)``, ``doc_logprobs (B,K)``, ``mask (B,T)``.
    """
    fn = rag_token_sequence_logprob if mode == "rag-token" else rag_sequence_logprob
    return -fn(token_logprobs, doc_logprobs, mask).mean()


# -- query encoder ---------------------------------------------------------------------------------
class QueryEncoder(torch.nn.Module):
    """The sentence-transformers query side, trainable; normalised embeddings like the index's."""

    def __init__(self, path: str) -> None:
        super().__init__()
        from sentence_transformers import SentenceTransformer

        self.st = SentenceTransformer(path, device="cpu" if not torch.cuda.is_available() else "cuda")

    def forward(self, questions: list[str]) -> torch.Tensor:
        features = self.st.tokenize(questions)
        features = {k: (v.to(self.st.device) if torch.is_tensor(v) else v) for k, v in features.items()}
        emb = self.st(features)["sentence_embedding"]
        return torch.nn.functional.normalize(emb, dim=-1)

    def save(self, path: Path) -> None:
        self.st.save(str(path))


# -- data ------------------------------------------------------------------------------------------
def build_rows(
    gen: Generator, records, source, k: int, max_ctx: int, one_shot: bool, max_length: int
) -> tuple[list[dict], dict]:
    rows, report = [], {"questions": len(records), "rows": 0, "answer_in_top_k": 0, "too_long": 0}
    retriever, coll = source.retriever, source.collection
    for rec in records:
        retrieval = retriever.retrieve(coll, rec.question, k=k)
        if len(retrieval.chunks) < k:
            raise FinetuneError(f"the collection returned {len(retrieval.chunks)} chunks for k={k}; lower -k")
        contexts = format_contexts(gen.tokenizer, retrieval.chunks, max_ctx)
        vecs = retriever.chunk_vectors(coll, [c.faiss_id for c in retrieval.chunks])
        seqs = [tokenize_pair(gen, rec.question, [c], rec.answer, one_shot=one_shot) for c in contexts]
        if max(len(s["input_ids"]) for s in seqs) > max_length:
            report["too_long"] += 1
            continue
        report["answer_in_top_k"] += int(any(contains_answer(c, rec.answer) for c in contexts))
        rows.append(
            {
                "question": rec.question,
                "seqs": seqs,
                "doc_vectors": np.stack([vecs[c.faiss_id] for c in retrieval.chunks]).astype(np.float32),
                "dense_scores": np.array([c.dense_score for c in retrieval.chunks], dtype=np.float32),
            }
        )
    report["rows"] = len(rows)
    return rows, report


def collate(rows: list[dict], pad_id: int) -> dict[str, Any]:
    seqs = [s for r in rows for s in r["seqs"]]
    width = max(len(s["input_ids"]) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    att = torch.zeros((len(seqs), width), dtype=torch.long)
    labels = torch.full((len(seqs), width), -100, dtype=torch.long)
    for i, s in enumerate(seqs):
        n = len(s["input_ids"])
        ids[i, :n] = torch.tensor(s["input_ids"])
        att[i, :n] = 1
        lab = torch.tensor(s["input_ids"])
        lab[torch.tensor(s["completion_mask"]) == 0] = -100
        labels[i, :n] = lab
    return {
        "input_ids": ids,
        "attention_mask": att,
        "labels": labels,
        "doc_vectors": torch.from_numpy(np.stack([r["doc_vectors"] for r in rows])),
        "dense_scores": torch.from_numpy(np.stack([r["dense_scores"] for r in rows])),
        "questions": [r["question"] for r in rows],
    }


class RAGLoss(torch.nn.Module):
    """Generator (PEFT) + optional query encoder; ``forward(batch)`` is the marginal NLL."""

    def __init__(
        self, generator_model, query_encoder: QueryEncoder | None, mode: str, temperature: float, n_docs: int
    ) -> None:
        super().__init__()
        self.generator = generator_model
        self.query_encoder = query_encoder
        self.mode = mode
        self.temperature = temperature
        self.n_docs = n_docs

    def doc_logprobs(self, batch: dict[str, Any]) -> torch.Tensor:
        if self.query_encoder is None:
            scores = batch["dense_scores"]
        else:
            q = self.query_encoder(batch["questions"])  # (B, D)
            scores = torch.einsum("bd,bkd->bk", q, batch["doc_vectors"].to(q.device))
        return torch.log_softmax(scores.float() / self.temperature, dim=-1)

    def forward(self, input_ids, attention_mask, labels, doc_vectors, dense_scores, questions):
        batch = {"doc_vectors": doc_vectors, "dense_scores": dense_scores, "questions": questions}
        token_lp = answer_token_logprobs(self.generator, input_ids, attention_mask, labels)
        tok, mask = gather_answer_tokens(token_lp, labels, self.n_docs)
        doc_lp = self.doc_logprobs(batch).to(tok.device)
        return {"loss": marginal_nll(tok, doc_lp, mask, self.mode)}


def run_rag(job: RAGJob, ws: Workspace) -> TrainResult:
    from transformers import Trainer, TrainingArguments

    check_output_free(ws, job)
    records = read_jsonl(job.data, "sft", min_examples=2)
    set_threads()
    gen = ws.base_generator()
    source = ws.context_source(job.collection, job.k, job.max_context_tokens, gen.tokenizer)
    max_ctx = job.max_context_tokens or ws.qa.max_context_tokens
    rows, report = build_rows(gen, records, source, job.k, max_ctx, ws.qa.one_shot, job.train.max_length)
    if len(rows) < 2:
        raise FinetuneError(f"only {len(rows)} usable questions ({report}); raise train.max_length or lower -k")
    from peft import get_peft_model

    model = gen.model
    model.train()
    peft_model = get_peft_model(model, lora_config(job.lora, model))
    qenc = None
    if job.train_query_encoder:
        from ingest.embedder import resolve_embedder_path

        qenc = QueryEncoder(resolve_embedder_path(ws.ingest.embedder.model))
    temperature = job.temperature or ws.retriever.temperature
    module = RAGLoss(peft_model, qenc, job.mode, temperature, job.k)
    run_dir = ws.run_dir("rag", job.output)
    resume = prepare_run_dir(run_dir, job.resume)
    kw = trainer_kwargs(job, run_dir, has_eval=False)
    kw.pop("eval_strategy")
    args = TrainingArguments(**kw, eval_strategy="no", label_names=["labels"])
    pad = gen.tokenizer.pad_token_id

    class RAGTrainer(Trainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            out = model(**inputs)
            return (out["loss"], out) if return_outputs else out["loss"]

        def create_optimizer(self, model=None):
            if self.optimizer is None:
                groups = [
                    {"params": [p for p in peft_model.parameters() if p.requires_grad], "lr": job.train.learning_rate}
                ]
                if qenc is not None:
                    groups.append({"params": list(qenc.parameters()), "lr": job.query_learning_rate})
                self.optimizer = torch.optim.AdamW(groups, weight_decay=job.train.weight_decay)
            return self.optimizer

        def _save(self, output_dir=None, state_dict=None):  # checkpoints: the adapter (+ query encoder)
            out = Path(output_dir or self.args.output_dir)
            out.mkdir(parents=True, exist_ok=True)
            peft_model.save_pretrained(str(out))
            if qenc is not None:
                qenc.save(out / QUERY_ENCODER_DIR)

        def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
            from peft import set_peft_model_state_dict
            from safetensors.torch import load_file

            set_peft_model_state_dict(
                peft_model, load_file(str(Path(resume_from_checkpoint) / "adapter_model.safetensors"))
            )
            if qenc is not None and (Path(resume_from_checkpoint) / QUERY_ENCODER_DIR).exists():
                from sentence_transformers import SentenceTransformer

                loaded = SentenceTransformer(
                    str(Path(resume_from_checkpoint) / QUERY_ENCODER_DIR), device=qenc.st.device
                )
                qenc.st.load_state_dict(loaded.state_dict())

    stats = RunStats()
    trainer = RAGTrainer(model=module, args=args, train_dataset=rows, data_collator=lambda b: collate(b, pad))
    before = _mean_nll(module, rows, pad)
    out = trainer.train(resume_from_checkpoint=resume)
    after = _mean_nll(module, rows, pad)
    stats.stop()
    trainable, total = trainable_parameters(peft_model)
    metrics = {
        "mode": job.mode,
        "k": job.k,
        "train_query_encoder": job.train_query_encoder,
        "temperature": temperature,
        "steps": int(out.global_step),
        "train_loss": round(float(out.training_loss), 4),
        "marginal_nll_before": round(before, 4),
        "marginal_nll_after": round(after, 4),
        "data": report,
        "trainable_params": trainable,
        "total_params": total,
        **stats.to_dict(),
    }
    peft_model.eval()
    info = save_adapter(
        ws,
        peft_model,
        job,
        kind="rag",
        base=gen,
        meta={
            "data": {"path": str(job.data), "sha256": file_sha256(job.data), "records": len(records)},
            "metrics": metrics,
            "query_encoder": QUERY_ENCODER_DIR if qenc is not None else None,
        },
    )
    if qenc is not None and is_main_process():  # under accelerate, rank 0 alone writes the adapter's files
        qenc.save(info.path / QUERY_ENCODER_DIR)
    return TrainResult(info, metrics)


@torch.no_grad()
def _mean_nll(module: RAGLoss, rows: list[dict], pad: int, batch: int = 4, limit: int = 32) -> float:
    was = module.training
    module.eval()
    vals = []
    for i in range(0, min(len(rows), limit), batch):
        b = collate(rows[i : i + batch], pad)
        vals.append(float(module(**b)["loss"]) * len(rows[i : i + batch]))
    module.train(was)
    return sum(vals) / min(len(rows), limit)
