"""Shared test code: paths to the offline assets, the tiny CLI config and script runner, oracle networks, tiny
Lightning parts, and the offline W&B reader. Imported by tests; conftest.py files only hold fixtures."""
