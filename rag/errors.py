"""Exceptions of the retrieval and answering layer. Every message says what went wrong and what to do.

One root, :class:`RagError`, and one class per kind of failure; the concrete errors subclass a
kind, so a caller (the REST API's error table) can act on the kind alone::

    RagError
    ├── NotFoundError ─────────── AdapterNotFoundError
    ├── InvalidInputError ─────── QAError, RetrieverError, InvalidAdapterError
    ├── ConflictError
    ├── ModelUnavailableError ─── ModelNotFoundError
    └── AdapterError ──────────── AdapterNotFoundError, InvalidAdapterError

The ``ValueError`` bases keep ``except ValueError`` callers of the older classes working.
"""

from __future__ import annotations

from ingest import errors as ingest_errors


class RagError(Exception):
    """Base class for the errors of :mod:`rag`."""


# -- kinds ------------------------------------------------------------------------------------------
class NotFoundError(RagError):
    """Something named (an adapter) does not exist."""


class InvalidInputError(RagError, ValueError):
    """A request cannot run as asked (bad mode, empty question, bad k, an adapter that does not fit)."""


class ConflictError(RagError):
    """The request clashes with the current state."""


class ModelUnavailableError(RagError):
    """A model the work needs cannot be loaded."""


# -- concrete errors --------------------------------------------------------------------------------
class QAError(InvalidInputError):
    """A question cannot be answered as asked (bad mode, empty question, ...)."""


class RetrieverError(InvalidInputError):
    """Retrieval cannot run as asked (wrong embedder for the collection, bad arguments)."""


class AdapterError(RagError, ValueError):
    """An adapter is missing or does not fit the base model."""


class AdapterNotFoundError(AdapterError, NotFoundError):
    """No adapter folder of that name (the message lists the known ones)."""


class InvalidAdapterError(AdapterError, InvalidInputError):
    """The adapter exists but cannot serve as asked (a reward model, another base model, a bad name)."""


class ModelNotFoundError(ModelUnavailableError, ingest_errors.ModelNotFoundError):
    """The generator model cannot be found or loaded.

    Also an :class:`ingest.errors.ModelNotFoundError` (hence an ``IngestError``) so callers that
    caught the ingest class, which rag raised before, keep working; new code catches :class:`RagError`.
    """
