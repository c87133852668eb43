"""The one table from core exception types to HTTP status and code, and the handlers that use it."""

from __future__ import annotations

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from api.errors import CORE_ERRORS, CORE_ROOTS, from_core, http_mapping, install_handlers
from finetune import errors as fe
from ingest import errors as ie
from rag import errors as re_

EXPECTED = [
    # ingest
    (ie.CollectionNotFoundError, 404, "collection_not_found"),
    (ie.CollectionExistsError, 409, "collection_exists"),
    (ie.EmbedderMismatchError, 409, "embedder_mismatch"),
    (ie.CollectionBusyError, 409, "collection_busy"),
    (ie.InvalidCollectionNameError, 422, "invalid_collection_name"),
    (ie.CollectionError, 500, "ingest_error"),
    (ie.LoaderError, 422, "invalid_document"),
    (ie.UnsupportedFileError, 422, "invalid_document"),
    (ie.EmptyDocumentError, 422, "invalid_document"),
    (ie.ModelNotFoundError, 503, "model_unavailable"),
    (ie.NotFoundError, 404, "not_found"),
    (ie.InvalidInputError, 422, "invalid_input"),
    (ie.ConflictError, 409, "conflict"),
    (ie.ModelUnavailableError, 503, "model_unavailable"),
    (ie.ClusterUnavailableError, 503, "cluster_unavailable"),
    (ie.IngestError, 500, "ingest_error"),
    # rag
    (re_.AdapterNotFoundError, 404, "adapter_not_found"),
    (re_.InvalidAdapterError, 422, "invalid_adapter"),
    (re_.AdapterError, 422, "invalid_adapter"),
    (re_.QAError, 422, "invalid_question"),
    (re_.RetrieverError, 422, "invalid_question"),
    (re_.ModelNotFoundError, 503, "model_unavailable"),
    (re_.NotFoundError, 404, "not_found"),
    (re_.InvalidInputError, 422, "invalid_input"),
    (re_.ConflictError, 409, "conflict"),
    (re_.ModelUnavailableError, 503, "model_unavailable"),
    (re_.RagError, 500, "rag_error"),
    # finetune
    (fe.AdapterNotFoundError, 404, "adapter_not_found"),
    (fe.AdapterExistsError, 409, "adapter_exists"),
    (fe.InvalidAdapterError, 422, "invalid_adapter"),
    (fe.AdapterRegistryError, 500, "finetune_error"),
    (fe.ConfigError, 422, "invalid_input"),
    (fe.DataError, 422, "invalid_input"),
    (fe.FeedbackError, 422, "invalid_input"),
    (fe.LoraStackError, 422, "invalid_input"),
    (fe.SynthError, 422, "invalid_input"),
    (fe.NotFoundError, 404, "not_found"),
    (fe.InvalidInputError, 422, "invalid_input"),
    (fe.ConflictError, 409, "conflict"),
    (fe.FinetuneError, 500, "finetune_error"),
]


@pytest.mark.parametrize(
    ("cls", "status", "code"), EXPECTED, ids=[f"{c.__module__}.{c.__name__}" for c, _, _ in EXPECTED]
)
def test_each_class_maps_by_type(cls, status, code) -> None:
    err = from_core(cls("what went wrong; do this"))
    assert (err.status, err.code, err.message) == (status, code, "what went wrong; do this")


def test_every_error_class_of_the_core_packages_is_covered() -> None:
    mapped = {c for c, _, _ in EXPECTED}
    for module in (ie, re_, fe):
        for obj in vars(module).values():
            if isinstance(obj, type) and issubclass(obj, Exception) and obj.__module__ == module.__name__:
                assert obj in mapped, f"{module.__name__}.{obj.__name__} has no expected HTTP mapping in this test"
                assert http_mapping(obj("x")) is not None
    assert set(CORE_ERRORS) <= mapped


def test_old_import_paths_are_the_new_classes() -> None:
    from finetune.adapters import AdapterRegistryError
    from finetune.config import ConfigError
    from finetune.data import DataError
    from finetune.feedback import FeedbackError
    from finetune.lora import LoraStackError
    from finetune.runner import FinetuneError
    from rag.generator import AdapterError
    from rag.qa import QAError
    from rag.retriever import RetrieverError

    assert (AdapterRegistryError, ConfigError, DataError, FeedbackError, LoraStackError, FinetuneError) == (
        fe.AdapterRegistryError,
        fe.ConfigError,
        fe.DataError,
        fe.FeedbackError,
        fe.LoraStackError,
        fe.FinetuneError,
    )
    assert (AdapterError, QAError, RetrieverError) == (re_.AdapterError, re_.QAError, re_.RetrieverError)
    # one root per package; the ValueError bases of the older classes stay
    for cls in (fe.ConfigError, fe.DataError, fe.AdapterRegistryError, re_.QAError, re_.AdapterError):
        assert issubclass(cls, ValueError)
    assert issubclass(re_.ModelNotFoundError, re_.RagError) and issubclass(re_.ModelNotFoundError, ie.IngestError)


def test_not_found_hides_the_known_names_and_unknown_errors_hide_everything() -> None:
    err = from_core(ie.CollectionNotFoundError("collection 'x' not found (known: a, b); create it"))
    assert err.message == "collection 'x' not found"
    err = from_core(re_.AdapterNotFoundError("adapter 'y' not found in /h/adapters (known: z)"))
    assert err.message == "adapter 'y' not found in /h/adapters"
    err = from_core(KeyError("secret internals"))
    assert (err.status, err.code) == (500, "internal_error") and "secret" not in err.message


def test_handlers_answer_every_root_in_the_json_shape() -> None:
    app = FastAPI()
    install_handlers(app)
    raised = {
        "ingest": ie.CollectionExistsError("collection 'c' already exists; choose another name"),
        "rag": re_.AdapterNotFoundError("adapter 'a' not found in /x (known: b)"),
        "finetune": fe.DataError("train.jsonl:2: not valid JSON"),
        "model": re_.ModelNotFoundError("cannot load the generator; run `ragqa models prepare`"),
        "other": RuntimeError("boom"),
    }

    @app.get("/raise/{what}")
    def _raise(what: str):
        raise raised[what]

    assert len(CORE_ROOTS) == 3
    with TestClient(app, raise_server_exceptions=False) as client:
        want = {
            "ingest": (409, "collection_exists"),
            "rag": (404, "adapter_not_found"),
            "finetune": (422, "invalid_input"),
            "model": (503, "model_unavailable"),
            "other": (500, "internal_error"),
        }
        for what, (status, code) in want.items():
            r = client.get(f"/raise/{what}")
            assert r.status_code == status, (what, r.text)
            assert set(r.json()) == {"error"} and r.json()["error"]["code"] == code
        assert r.json()["error"]["message"] == "internal error; see the server log"
        assert client.get("/raise/rag").json()["error"]["message"] == "adapter 'a' not found in /x"


def test_a_hostile_value_in_an_error_is_cut_and_the_advice_stays() -> None:
    """A 600 KB collection name or field name is not echoed back whole (issue 18: hostile payload suite)."""
    from pydantic import BaseModel, ConfigDict

    from api.errors import MAX_MESSAGE_CHARS, error_body

    huge = "é" * 300_000
    body = error_body("collection_not_found", f"collection {huge!r} not found; list yours with GET /v1/collections")
    message = body["error"]["message"]
    assert len(message) <= MAX_MESSAGE_CHARS and message.endswith("list yours with GET /v1/collections")
    assert message.startswith("collection 'éé") and " ... " in message
    assert error_body("c", "short")["error"]["message"] == "short"

    class Strict(BaseModel):
        model_config = ConfigDict(extra="forbid")
        name: str

    app = FastAPI()
    install_handlers(app)

    @app.post("/strict")
    def _strict(body: Strict) -> dict:
        return {}

    with TestClient(app) as client:
        r = client.post("/strict", json={"name": "x", huge: 1})
    assert r.status_code == 422 and len(r.content) < 4000, len(r.content)
    assert r.json()["error"]["code"] == "validation_error"
