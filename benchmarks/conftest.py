"""Collect the benchmark files (bench_*.py) when pytest is pointed at this folder.

They run on CPU under pytest-benchmark: the torch path of each op and its peers on small shapes.
GPU numbers come from running each file as a script (`python -m benchmarks.bench_X`)."""
import pytest


def pytest_collect_file(file_path, parent):
    # Files named on the command line are collected by pytest itself; don't collect them twice.
    if file_path.suffix == ".py" and file_path.name.startswith("bench_") and not parent.session.isinitpath(file_path):
        return pytest.Module.from_parent(parent, path=file_path)
