"""Models: the registry, offline provisioning, loading, the architecture adapter, memory estimates,
the vocabulary and pair check, the model pool, the catalogue and synthetic test models.
"""
