"""Do the tests catch known wrong implementations? Each mutant is a small, plausible mistake (a KL
taken the wrong way round, a teacher fed the wrong time, GenPPL as a mean of perplexities, ...) that
once passed the suite; this applies each to a copy of the repository and runs the tests that must
now fail.

    python scripts/mutants.py                          # every mutant
    python scripts/mutants.py --only sdtt-forward-kl dcd-teacher-at-t
    python scripts/mutants.py --list

For each mutant: the repository's files (git's tracked ones and the untracked ones it does not
ignore, as they are in the working tree) are copied into a temporary folder, the mutation is applied
there as an exact text replacement (an error if the text is not found exactly once: the code moved
and the mutant must be updated), and its tests run there with `pytest -x -q` (OMP_NUM_THREADS=1).
Before that the same tests run on the unmutated copy (--baseline, the default): a test that fails
anyway would make a mutant look caught. One line per mutant: its name, its tests, and "caught" (by
the first test that failed) or "SURVIVED". Exit code 1 if any survived, 2 if a baseline failed.
The working tree is never modified.
"""
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from plumbing.cli import flag, parse_config, run_command  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Mutant:
    what: str
    edits: tuple    # (file, text, replacement), each text found exactly once in its file
    tests: tuple    # the test files that must catch it


MARKOV_TESTS = ("tests/test_markov.py", "tests/test_frontier.py")
MUTANTS = {
    "sdtt-forward-kl": Mutant(
        "SDTT's divergence with its arguments swapped: KL(target || student) (SPEC.md §3.2-3.3)",
        (("sdtt.py", "DIVERGENCES[divergence](student_log[masked][:, real], target[masked][:, real])",
          "DIVERGENCES[divergence](target[masked][:, real], student_log[masked][:, real])"),),
        ("tests/test_sdtt.py",)),
    "dcd-forward-kl": Mutant(
        "DCD's KL the wrong way round: KL(teacher || student) (SPEC.md §4.6)",
        (("processes/duo.py", "return (log_student.exp() * (log_student - log_teacher)).sum(-1).mean()",
          "return (log_teacher.exp() * (log_teacher - log_student)).sum(-1).mean()"),),
        ("tests/test_dcd.py", "tests/test_duo.py")),
    "dcd-teacher-at-t": Mutant(
        "DCD's teacher given sigma(t) instead of sigma(s = t - dt) (SPEC.md §4.6)",
        (("processes/duo.py", "teacher(w_s.argmax(-1), sigma_input(alpha_s).to(x.device))",
          "teacher(w_s.argmax(-1), sigma_input(alpha_t).to(x.device))"),),
        ("tests/test_dcd.py", "tests/test_duo.py")),
    "genppl-mean-of-perplexities": Mutant(
        "GenPPL as the mean of per-sample perplexities, not exp of the mean NLL (SPEC.md §7.1)",
        (("evaluate.py", '"genppl": nll.mean().exp().item()', '"genppl": nll.exp().mean().item()'),),
        ("tests/test_evaluate.py", "tests/test_genppl_interval.py")),
    "flops-half-without-attention": Mutant(
        "forward_flops halved, its attention term dropped (SPEC.md §10)",
        (("plumbing/flops.py",
          "return 2 * matmul_params(model) * batch * seq_len + 4 * batch * seq_len ** 2 * d * n",
          "return matmul_params(model) * batch * seq_len"),),
        ("tests/test_flops.py", "tests/test_bench.py")),
    "uniform-alpha-squared": Mutant(
        "the uniform process's soft latent law with alpha_t^2 for alpha_t, in its draws and its log-prob "
        "(SPEC.md §4.1, §6.4)",
        (("processes/uniform.py", "uniform_marginal(x_probs.double(), self.alpha(t))",
          "uniform_marginal(x_probs.double(), self.alpha(t) ** 2)"),
         ("processes/uniform.py", "return (alpha * x_z + (1 - alpha) / self.vocab_size).log().sum(-1)",
          "return (alpha ** 2 * x_z + (1 - alpha ** 2) / self.vocab_size).log().sum(-1)")),
        ("tests/test_uniform.py",)),
    "markov-starts-one-late": Mutant(
        "n-gram starts counted from the second position (SPEC.md §7.5)",
        (("corpora/markov.py", "marginal, pooled = self.initial.clone(), 0",
          "marginal, pooled = self.initial @ self.transition, 0"),),
        MARKOV_TESTS),
    "markov-drops-the-last-start": Mutant(
        "the n-gram at the last start left out, and the count of starts one short (SPEC.md §7.5)",
        (("corpora/markov.py", "for _ in range(length - n + 1):", "for _ in range(length - n):"),
         ("corpora/markov.py", "return pooled / (length - n + 1)", "return pooled / (length - n)")),
        MARKOV_TESTS),
    "markov-stationary-starts": Mutant(
        "every n-gram start drawn from the chain's stationary law, not its law at that position (SPEC.md §7.5)",
        (("corpora/markov.py", "marginal, pooled = self.initial.clone(), 0",
          "marginal, pooled = torch.linalg.matrix_power(self.transition, 256)[0], 0"),),
        MARKOV_TESTS),
    "cached-head-unshaped": Mutant(
        "the shaped network's head left unshaped: the cached samplers ignore temperature and top-p "
        "(SPEC.md §2.3, §7.5)",
        (("samplers.py", "self.head = lambda hidden, c: self.shape(model.head(hidden, c))",
          "self.head = model.head"),),
        ("tests/test_samplers.py", "tests/test_frontier.py")),
}


@dataclass
class MutantsConfig:
    only: Optional[List[str]] = flag(None, "run only these mutants, by name (default: all; --list names them)")
    list: bool = flag(False, "list the mutants and their tests, and run nothing")
    baseline: bool = flag(True, "first run each mutant's tests on the unmutated copy (they must pass)")


def repository_files():
    """The working tree's copy of every file git tracks or would track (untracked but not ignored)."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            check=True, capture_output=True, text=True).stdout.split("\0")
    return [name for name in listed if name and (ROOT / name).is_file()]  # a deleted file is still in the index


def copy_repository(files, folder):
    for name in files:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, folder / name)


def mutate(folder, edits):
    """Apply each (file, text, replacement) in the copy; the text must occur exactly once."""
    for name, text, replacement in edits:
        path = folder / name
        source = path.read_text()
        if source.count(text) != 1:
            raise ValueError(f"{name}: the text to replace occurs {source.count(text)} times, not once: {text!r}")
        path.write_text(source.replace(text, replacement))


def failing_test(folder, tests):
    """Run pytest on `tests` in the copy (its files first on the import path): None if all pass,
    else the id of the test that failed first (pytest's summary line)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(folder), "PYTHONDONTWRITEBYTECODE": "1"}
    command = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests]
    result = subprocess.run(command, cwd=folder, env=env, capture_output=True, text=True)
    if result.returncode == 0:
        return None
    failed = [line.split()[1] for line in result.stdout.splitlines() if line.startswith(("FAILED ", "ERROR "))]
    return failed[0] if failed else f"pytest exit code {result.returncode}"


def verdict(name, mutant, files, baseline):
    """'caught by <test>', 'SURVIVED' or 'BASELINE FAILS (<test>)' for one mutant, in a fresh copy."""
    with tempfile.TemporaryDirectory(prefix=f"mutant-{name}-") as tmp:
        folder = Path(tmp)
        copy_repository(files, folder)
        broken = failing_test(folder, mutant.tests) if baseline else None
        if broken:
            return f"BASELINE FAILS ({broken})"
        mutate(folder, mutant.edits)
        failed = failing_test(folder, mutant.tests)
        return f"caught by {failed}" if failed else "SURVIVED"


def main():
    cfg = parse_config(MutantsConfig, __doc__.split("\n\n")[0])
    names = cfg.only or list(MUTANTS)
    unknown = sorted(set(names) - set(MUTANTS))
    if unknown:
        raise ValueError(f"unknown mutant(s) {', '.join(unknown)}; choose from {', '.join(MUTANTS)}")
    if cfg.list:
        for name in names:
            print(f"{name}: {MUTANTS[name].what}; tests {' '.join(MUTANTS[name].tests)}")
        return
    files, results = repository_files(), []
    for name in names:
        results.append(verdict(name, MUTANTS[name], files, cfg.baseline))
        print(f"{name}: {' '.join(MUTANTS[name].tests)}: {results[-1]}", flush=True)
    sys.exit(2 if any(r.startswith("BASELINE") for r in results) else 1 if "SURVIVED" in results else 0)


if __name__ == "__main__":
    run_command(main)
