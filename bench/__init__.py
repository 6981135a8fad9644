"""Offload's benchmarks: each script measures one path against a baseline run beside it.

Run one with ``.venv/bin/python -m bench.<name>`` from the repository root, or all of them with
``.venv/bin/python -m bench.run_all``; see bench/README.md.
"""
