"""Errors the library raises on bad input: each says what was wrong and what to do."""


class PktError(Exception):
    """Base class: a user-facing error whose message is meant to be shown as is."""


class UnknownModelError(PktError):
    """A model reference is neither a registered name, a local path, nor a reachable hub id."""


class ModelNotCachedError(PktError):
    """A registered model has not been provisioned into the cache yet."""


class ProvisioningError(PktError):
    """Fetching or converting a model failed (hub and mirror both unusable, bad hash, ...)."""


class HashMismatchError(ProvisioningError):
    """A downloaded file does not have the SHA-256 the registry pins."""


class MemoryBudgetError(PktError):
    """A model would not fit in the memory of the requested device."""


class UnsupportedArchitectureError(PktError):
    """The architecture adapter does not know where this model keeps its layers."""


class VocabularyMismatchError(PktError):
    """Two models do not share a vocabulary and the user did not opt into the shared subset."""


class CaptureError(PktError):
    """Activation capture could not produce valid activations (NaN, bad options, ...)."""


class ActivationStoreError(PktError):
    """A folder of captured activations is missing, incomplete or corrupt."""


class SimilarityInputError(PktError):
    """Arrays given to a representation-similarity measure are unusable (shape, NaN, too few rows, ...)."""
