"""pytest-benchmark suite configuration: bench/ is not collected by the default `pytest` (testpaths=tests)."""
