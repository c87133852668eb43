"""Exceptions of the ingestion layer. Every message says what went wrong and what to do."""


class IngestError(Exception):
    """Base class for ingestion errors."""


class LoaderError(IngestError):
    """A single file could not be loaded (corrupt, empty, unsupported, too large)."""


class UnsupportedFileError(LoaderError):
    """No loader handles this file type."""


class EmptyDocumentError(LoaderError):
    """The file holds no text."""


class CollectionError(IngestError):
    """A collection is missing, already exists, or is unusable."""


class CollectionNotFoundError(CollectionError):
    pass


class CollectionExistsError(CollectionError):
    pass


class EmbedderMismatchError(CollectionError):
    """The collection was built with another embedder than the one configured."""


class ModelNotFoundError(IngestError):
    """A configured model cannot be found locally."""
