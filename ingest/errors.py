"""Exceptions of the ingestion layer. Every message says what went wrong and what to do.

One root, :class:`IngestError`, and one class per kind of failure (:class:`NotFoundError`,
:class:`InvalidInputError`, :class:`ConflictError`, :class:`ModelUnavailableError`). The concrete
errors subclass a kind, so a caller (the REST API's error table) can act on the kind alone::

    IngestError
    ├── NotFoundError ─────────── CollectionNotFoundError
    ├── InvalidInputError ─────── LoaderError (UnsupportedFileError, EmptyDocumentError),
    │                             InvalidCollectionNameError
    ├── ConflictError ─────────── CollectionExistsError, CollectionBusyError, EmbedderMismatchError
    ├── ModelUnavailableError ─── ModelNotFoundError
    ├── ClusterUnavailableError   (ingestion on a Ray cluster)
    └── CollectionError ───────── every collection error above, and a collection used wrongly
                                  (opened read-only, query of the wrong dimension)
"""


class IngestError(Exception):
    """Base class for ingestion errors."""


# -- kinds ------------------------------------------------------------------------------------------
class NotFoundError(IngestError):
    """Something named (a collection, a file) does not exist."""


class InvalidInputError(IngestError):
    """The input is malformed or unusable (a bad file, a bad name)."""


class ConflictError(IngestError):
    """The request clashes with the current state (exists already, being written, other embedder)."""


class ModelUnavailableError(IngestError):
    """A model the work needs cannot be loaded."""


class ClusterUnavailableError(IngestError):
    """The Ray cluster asked for cannot be used (Ray not installed, no cluster at the address, workers
    that cannot start)."""


# -- files ------------------------------------------------------------------------------------------
class LoaderError(InvalidInputError):
    """A single file could not be loaded (corrupt, empty, unsupported, too large)."""


class UnsupportedFileError(LoaderError):
    """No loader handles this file type."""


class EmptyDocumentError(LoaderError):
    """The file holds no text."""


# -- collections ------------------------------------------------------------------------------------
class CollectionError(IngestError):
    """A collection is missing, already exists, or is unusable."""


class CollectionNotFoundError(CollectionError, NotFoundError):
    pass


class CollectionExistsError(CollectionError, ConflictError):
    pass


class CollectionBusyError(CollectionError, ConflictError):
    """Another process or the server's ingestion worker is writing the collection; try again later."""


class InvalidCollectionNameError(CollectionError, InvalidInputError):
    """A collection name that is not 1-64 letters, digits, '.', '_' or '-'."""


class EmbedderMismatchError(CollectionError, ConflictError):
    """The collection was built with another embedder than the one configured."""


# -- models -----------------------------------------------------------------------------------------
class ModelNotFoundError(ModelUnavailableError):
    """A configured model cannot be found locally."""
