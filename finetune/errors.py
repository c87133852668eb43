"""Exceptions of the fine-tuning layer. Every message says what went wrong and what to do.

One root, :class:`FinetuneError`, and one class per kind of failure; the concrete errors subclass
a kind, so a caller (the CLI, the REST API's error table) can act on the kind alone::

    FinetuneError
    ├── NotFoundError ─────────── AdapterNotFoundError
    ├── InvalidInputError ─────── ConfigError, DataError, FeedbackError, LoraStackError, SynthError,
    │                             InvalidAdapterError
    ├── ConflictError ─────────── AdapterExistsError
    └── AdapterRegistryError ──── AdapterNotFoundError, AdapterExistsError, InvalidAdapterError

A run that fails for another reason (too few usable rows, a model it cannot adapt) raises the
root. The ``ValueError`` bases keep ``except ValueError`` callers of the older classes working.
"""

from __future__ import annotations


class FinetuneError(Exception):
    """A fine-tune run cannot start or finish; the message says why and what to do."""


# -- kinds ------------------------------------------------------------------------------------------
class NotFoundError(FinetuneError):
    """Something named (an adapter, a file) does not exist."""


class InvalidInputError(FinetuneError, ValueError):
    """Options, data or an adapter that cannot be used as given."""


class ConflictError(FinetuneError):
    """The run clashes with the current state (its output exists already)."""


# -- concrete errors --------------------------------------------------------------------------------
class ConfigError(InvalidInputError):
    """A fine-tune configuration is invalid (the message names the field)."""


class DataError(InvalidInputError):
    """A training file is missing, malformed, or too small; the message says where and what to do."""


class FeedbackError(InvalidInputError):
    """There is no feedback to export, or none that makes a training example."""


class LoraStackError(InvalidInputError):
    """Two adapters cannot be stacked (different layers or options)."""


class SynthError(InvalidInputError):
    """Training questions cannot be synthesised as asked (unknown method, bad counts)."""


class AdapterRegistryError(FinetuneError, ValueError):
    """An adapter is missing, exists already, or is of the wrong kind."""


class AdapterNotFoundError(AdapterRegistryError, NotFoundError):
    """No adapter folder of that name."""


class AdapterExistsError(AdapterRegistryError, ConflictError):
    """An adapter of that name exists and overwriting was not asked for."""


class InvalidAdapterError(AdapterRegistryError, InvalidInputError):
    """The adapter is of the wrong kind, or the name is not a plain folder name."""
