"""The house's layout: the tutorial spine at the root, every other concern in a folder; each
top-level file or folder imports only from its own layer or below (no upward arrow, no cycle),
and files and functions stay short enough to read in one go."""
import ast

import pytest

from helpers import ROOT

# Bottom to top: the order of README.md's layout. A file or folder may import from its own layer or
# from the layers below it.
LAYERS = [
    ["plumbing"],                          # flags, devices, FLOP counts: nothing of ours
    ["diffusion", "model"],                # the maths and the networks
    ["corpora"],                           # tokenizers, corpora on disk, the synthetic source, prompts
    ["data"],                              # what a batch is made of
    ["processes"],                         # the uniform-state process (Duo, DCD), SEDD, the registry
    ["loading"],                           # checkpoints, ours and the hub's
    ["samplers"],                          # the samplers
    ["evaluate"],                          # the final table: judges, GenPPL, entropy
    ["training"],                          # what every loop calls: a step, checkpoints, the log, validation
    ["sdtt", "idlm", "dcd", "mmd"],        # the methods, each with its loop
    ["config"],                            # train.py's flags and defaults
    ["train"],                             # the spine: pretraining and the hand-off to a method
    ["watching"],                          # the denoising, traced and shown
    ["evaluation"],                        # evaluation commands
    ["sample", "bench"],                   # entry points
    ["scripts"],                           # one-off diagnostics and checks
]
LAYER = {name: depth for depth, names in enumerate(LAYERS) for name in names}
FOLDERS = sorted(p.name for p in ROOT.iterdir() if (p / "__init__.py").exists())
NODES = sorted({p.stem for p in ROOT.glob("*.py")} | set(FOLDERS) | {"scripts"})
# 60 arrows before each method's loop moved into its own file; each loop now imports training/ itself
MAX_ROOT_FILES, MAX_ARROWS = 13, 78  # 13: the four methods' files beside the spine


def node_files(node):
    """The Python files of a top-level file or folder."""
    return sorted((ROOT / node).rglob("*.py")) if node in FOLDERS or node == "scripts" else [ROOT / f"{node}.py"]


def imported_modules(path):
    """The dotted module names a file imports, anywhere in it (functions included); `from pkg
    import name` counts as pkg.name when that is a module of the project."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names.add(node.module)
            names |= {f"{node.module}.{alias.name}" for alias in node.names
                      if (ROOT / node.module.replace(".", "/") / f"{alias.name}.py").exists()}
    return names


def node_of(module):
    """The top-level file or folder of the project that a module lives in, or None."""
    top = module.split(".")[0]
    return top if top in NODES else None


def module_of(path):
    return ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")


def node_graph():
    return {node: {node_of(m) for f in node_files(node) for m in imported_modules(f)} - {None, node} for node in NODES}


def find_cycle(graph):
    """A cycle of the directed graph {node: successors}, as a list, or None."""
    done, active = set(), []

    def visit(node):
        if node in active:
            return active[active.index(node):] + [node]
        if node in done:
            return None
        active.append(node)
        for child in sorted(graph.get(node, ())):
            cycle = visit(child)
            if cycle:
                return cycle
        active.pop()
        done.add(node)
        return None
    return next((c for c in map(visit, sorted(graph)) if c), None)


def test_every_top_level_file_and_folder_has_a_layer_and_the_root_holds_the_spine_only():
    assert set(NODES) == set(LAYER), "a new file or folder needs a place in LAYERS (and in README.md's layout)"
    root_files = sorted(p.name for p in ROOT.glob("*.py"))
    assert len(root_files) <= MAX_ROOT_FILES, f"the root is the tutorial spine: {root_files}"


@pytest.mark.parametrize("folder", FOLDERS)
def test_each_folder_says_what_lives_there_and_what_it_may_import(folder):
    doc = ast.get_docstring(ast.parse((ROOT / folder / "__init__.py").read_text()))
    assert doc and "import" in doc, f"{folder}/__init__.py: one paragraph on what lives there and what it may import"


@pytest.mark.parametrize("node", sorted(set(NODES) & set(LAYER)))
def test_nothing_imports_from_a_layer_above_its_own(node):
    upward = {n for n in node_graph()[node] if LAYER[n] > LAYER[node]}
    assert not upward, f"{node} (layer {LAYER[node]}) imports {upward} from above"


def test_the_import_graph_has_no_cycle_between_top_level_parts_nor_between_modules():
    assert find_cycle(node_graph()) is None
    modules = {module_of(p): imported_modules(p) for node in NODES for p in node_files(node)}
    assert find_cycle({m: {n for n in imports if n in modules} for m, imports in modules.items()}) is None


def test_the_top_level_parts_have_few_import_arrows():
    arrows = sum(len(targets) for targets in node_graph().values())
    assert arrows <= MAX_ARROWS, f"{arrows} import arrows between top-level files and folders"


@pytest.mark.parametrize("path", [f for node in NODES for f in node_files(node)], ids=lambda p: str(p.relative_to(ROOT)))
def test_files_stay_under_450_lines_and_functions_under_60(path):
    source = path.read_text()
    assert source.count("\n") <= 450, f"{path.name}: {source.count(chr(10))} lines: probably two concepts"
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            length = node.end_lineno - node.lineno + 1
            assert length <= 60, f"{path.name}: {node.name} has {length} lines"
