"""Nothing in tests/conformance is a pytest test: run_stdlib_suite.py runs the stdlib suite."""

collect_ignore_glob = ["*"]
