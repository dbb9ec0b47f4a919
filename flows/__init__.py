"""Prefect flows: thin wrappers that call :mod:`pipeline`."""
