"""Conclave's benchmark suite: ``python -m bench run --profile smoke|quick|full``."""
