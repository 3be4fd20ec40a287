"""The house's layout: each top-level file imports only files of its own layer or below (no
upward arrow, no cycle), and files and functions stay short enough to read in one go."""
import ast

import pytest

from helpers import ROOT

# Bottom to top. A file may import files of its own layer or of layers below it.
LAYERS = [
    ["cli", "devices"],                                     # plumbing with no project imports
    ["diffusion", "uniform", "duo", "sedd", "processes", "model", "corpus", "data", "exact", "flops", "prompts"],  # maths, networks, data
    ["sdtt", "idlm", "dcd", "samplers", "score_samplers", "tracing"],  # methods and samplers (and a sampler's trace)
    ["lightning", "hub", "checkpoint", "evaluate", "likelihood", "show", "page"],  # plumbing on the maths
    ["train"],                                              # the loop
    ["distill"],                                            # orchestration on the loop
    ["bench", "sweep", "reproduce", "sample", "harness", "continuations", "zeroshot"],  # entry points
]
LAYER = {name: depth for depth, names in enumerate(LAYERS) for name in names}
SOURCES = sorted(ROOT.glob("*.py")) + sorted((ROOT / "scripts").glob("*.py"))


def project_imports(path):
    """The top-level project modules a file imports, anywhere in it (functions included)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names.add(node.module.split(".")[0])
    return {n for n in names if (ROOT / f"{n}.py").exists()}


def test_every_top_level_file_has_a_layer():
    files = {p.stem for p in ROOT.glob("*.py")} - {"conftest"}
    assert files == set(LAYER), "a new file needs a place in LAYERS"


@pytest.mark.parametrize("path", [p for p in SOURCES if p.stem in LAYER], ids=lambda p: p.name)
def test_no_file_imports_a_file_above_its_layer(path):
    upward = {n for n in project_imports(path) if LAYER[n] > LAYER[path.stem]}
    assert not upward, f"{path.name} (layer {LAYER[path.stem]}) imports {upward} from above"


def test_the_import_graph_has_no_cycle():
    graph = {p.stem: project_imports(p) - {p.stem} for p in ROOT.glob("*.py")}
    done, active = set(), []

    def visit(node):
        assert node not in active, f"import cycle: {' -> '.join(active[active.index(node):] + [node])}"
        if node not in done:
            active.append(node)
            for child in graph.get(node, ()):
                visit(child)
            active.pop()
            done.add(node)
    for node in graph:
        visit(node)


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_files_stay_under_450_lines_and_functions_under_60(path):
    source = path.read_text()
    assert source.count("\n") <= 450, f"{path.name}: {source.count(chr(10))} lines: probably two concepts"
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            length = node.end_lineno - node.lineno + 1
            assert length <= 60, f"{path.name}: {node.name} has {length} lines"
