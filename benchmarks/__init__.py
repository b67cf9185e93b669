"""Benchmark suite for mtasklite against the stdlib and peer libraries.

Run it from the repository root with ``python -m benchmarks --quick`` (see ``README.md`` in
this directory).  Every measurement runs in a fresh subprocess (``python -m
benchmarks.worker``), implementations alternate, and the report compares each one with the
stdlib baseline measured in the same run.
"""
