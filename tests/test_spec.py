"""SPEC.md, the repository's own spec: every section the code cites exists, every file, function and
test it names exists, and no file cites a document that is not in the repository."""
import ast
import re
import subprocess

import pytest

from helpers import ROOT

SPEC = (ROOT / "SPEC.md").read_text()
SECTIONS = set(re.findall(r"^#{2,3} §(\d+(?:\.\d+)?) ", SPEC, flags=re.M))
NAMED = sorted(set(re.findall(r"`([\w/]+\.py)::([\w.]+)`", SPEC)))
CITATION = re.compile(r"SPEC\.md §(\d+(?:\.\d+)?)(?:-(\d+(?:\.\d+)?))?")
# the older schemes, each spelled in two parts so that this file does not match itself
OUTSIDE = [re.compile(p) for p in (r"\.\./" + "shared", "SPEC" + "-teachers", r"pitfall " + r"A\d", r"SPEC " + r"A\d",
                                   r"SPEC " + r"section", r"\bA[1-5]\." + r"\d+\b")]


def tracked_files():
    listed = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True).stdout.split()
    new = subprocess.run(["git", "ls-files", "--others", "--exclude-standard"], cwd=ROOT, capture_output=True,
                         text=True).stdout.split()
    return sorted(p for p in {*listed, *new} if (ROOT / p).is_file() and p.endswith((".py", ".md", ".sh", ".yaml")))


def definitions(path):
    """Every name a file defines: functions and classes at the top, and Class.member."""
    names = set()
    for node in ast.parse((ROOT / path).read_text()).body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.add(node.name)
        if isinstance(node, ast.ClassDef):
            names |= {f"{node.name}.{item.name}" for item in node.body if isinstance(item, ast.FunctionDef)}
    return names


def test_the_spec_has_numbered_sections():
    assert {"1", "1.1", "4.3", "6.2"} <= SECTIONS


@pytest.mark.parametrize("path, name", NAMED, ids=[f"{p}::{n}" for p, n in NAMED])
def test_every_file_function_and_test_the_spec_names_exists(path, name):
    assert (ROOT / path).is_file(), f"SPEC.md names {path}, which does not exist"
    assert name in definitions(path), f"SPEC.md names {path}::{name}, which is not defined there"


def test_every_section_cited_in_the_code_tests_and_docs_exists():
    missing = []
    for path in tracked_files():
        for match in CITATION.finditer((ROOT / path).read_text(errors="replace")):
            missing += [f"{path}: §{s}" for s in match.groups() if s and s not in SECTIONS]
    assert not missing, f"citations of sections SPEC.md does not have: {missing}"


def test_no_file_cites_a_document_outside_the_repository():
    found = [f"{path}: {m.group(0)!r}" for path in tracked_files() for pattern in OUTSIDE
             for m in pattern.finditer((ROOT / path).read_text(errors="replace"))]
    assert not found, f"cite SPEC.md's sections or the papers instead: {found[:20]}"
