"""Shared by every test: one thread, and the --slow switch. The repository root is on sys.path
(pyproject.toml's pythonpath). Tests marked slow (minutes-long end-to-end runs) are skipped unless
pytest is given --slow."""
import pytest
import torch

# Tiny models are fastest on one thread, and two OpenMP threads collapse when another
# process shares the two cores: pin one for the whole suite.
torch.set_num_threads(1)


def pytest_addoption(parser):
    parser.addoption("--slow", action="store_true", help="also run the tests marked slow (minutes each)")


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: minutes-long end-to-end runs, skipped unless --slow is given")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--slow"):
        return
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(pytest.mark.skip(reason="slow: run with --slow"))
