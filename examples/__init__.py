"""Example user code: Flax models to pass as ``--config.model=examples.flax_models:NAME``."""
