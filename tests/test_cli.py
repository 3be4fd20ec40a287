"""plumbing/cli.py: flags from a dataclass with one "unset" convention (None) and bounds checked where
they are declared; every user mistake ends in one error line."""
import subprocess
import sys
from dataclasses import dataclass
from typing import Optional

import pytest

from helpers import ROOT, assert_one_error_line
from plumbing import cli


@dataclass
class Config:
    steps: int = cli.flag(4, "steps", at_least=1)
    lr: Optional[float] = cli.flag(None, "learning rate", above=0, at_most=1)
    sizes: Optional[list[int]] = cli.flag(None, "sizes", at_least=2)
    names: list[str] = cli.flag(["a"], "names", choices=["a", "b"])
    fast: bool = cli.flag(False, "go fast")


def test_flags_take_their_defaults_and_none_means_unset():
    cfg = cli.parse_config(Config, "", [])
    assert cfg == Config(steps=4, lr=None, sizes=None, names=["a"], fast=False)
    assert cli.parse_config(Config, "", []).names is not cli.parse_config(Config, "", []).names  # no shared list


def test_flags_parse_types_lists_and_booleans():
    cfg = cli.parse_config(Config, "", ["--steps", "7", "--lr", "0.5", "--sizes", "2", "3", "--names", "b", "a",
                                        "--fast"])
    assert cfg == Config(steps=7, lr=0.5, sizes=[2, 3], names=["b", "a"], fast=True)
    assert cli.parse_config(Config, "", ["--no-fast"]).fast is False


@pytest.mark.parametrize("argv, message", [
    (["--steps", "0"], "--steps must be at least 1, got 0"),
    (["--lr", "0"], "--lr must be above 0, got 0.0"),
    (["--lr", "1.5"], "--lr must be at most 1, got 1.5"),
    (["--sizes", "3", "1"], "--sizes must be at least 2, got 1"),
])
def test_bounds_are_checked_where_the_flag_is_declared(argv, message):
    with pytest.raises(ValueError, match=message):
        cli.parse_config(Config, "", argv)


def test_check_bounds_serves_configs_built_in_code_too():
    with pytest.raises(ValueError, match="--steps must be at least 1"):
        cli.check_bounds(Config(steps=-1))
    assert cli.check_bounds(Config()) == Config()


def run_snippet(code, *args):
    return subprocess.run([sys.executable, "-c", code, *args], cwd=ROOT, capture_output=True, text=True, timeout=60)


SCRIPT = """
import sys
from dataclasses import dataclass
from plumbing import cli

@dataclass
class Config:
    steps: int = cli.flag(4, "steps", at_least=1)
    mode: str = cli.flag("a", "mode", choices=["a", "b"])

def main():
    cfg = cli.parse_config(Config, "")
    raise {error}
cli.run_command(main)
"""


@pytest.mark.parametrize("args, error, expected", [
    (["--steps", "0"], "SystemExit(0)", "--steps must be at least 1"),
    (["--mode", "c"], "SystemExit(0)", "invalid choice"),
    (["--nope"], "SystemExit(0)", "unrecognized arguments"),
    ([], "ValueError('the teacher is missing')", "the teacher is missing"),
    ([], "FileNotFoundError(2, 'gone', 'x.txt')", "file not found: x.txt"),
])
def test_every_user_mistake_is_one_error_line_without_traceback(args, error, expected):
    line = assert_one_error_line(run_snippet(SCRIPT.format(error=error), *args))
    assert expected in line


def test_traceback_env_shows_the_whole_traceback_for_debugging():
    result = subprocess.run([sys.executable, "-c", SCRIPT.format(error="ValueError('boom')")], cwd=ROOT,
                            capture_output=True, text=True, timeout=60, env={"TRACEBACK": "1", "PATH": ""})
    assert result.returncode != 0 and "Traceback" in result.stderr and "boom" in result.stderr
