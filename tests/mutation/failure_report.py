"""pytest plugin for run.py: write each failed test's node id and whether it is marked
``cuda`` to the JSON file named by MUTATION_FAILURES (one line per failure)."""

import json
import os

import pytest


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    path = os.environ.get("MUTATION_FAILURES")
    if path and report.failed:
        entry = {"nodeid": item.nodeid, "cuda": item.get_closest_marker("cuda") is not None}
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(entry) + "\n")
