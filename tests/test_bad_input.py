"""Mistakes a new user makes, tried at the command line as they would: each ends in one `error:` line
naming what is wrong, with no traceback, and no file that was there is lost, changed or left
half-written (a temporary file of a failed write included). The table runs each command's main in
this process, as its command line would (`plumbing.cli.run_command`); a few of its cases also run
as true subprocesses, for the contract that stderr holds that line and nothing else."""
import dataclasses
import hashlib
import importlib
import importlib.util
import os
import shlex
import sys
from pathlib import Path

import pytest

from helpers import ROOT, L, SYNTHETIC, V, assert_one_error_line, random_dit, run_script, save_tiny_checkpoint
from loading import checkpoint
from plumbing.cli import run_command
from processes.registry import PROCESSES

MICRO = ["--data", "synthetic", "--size", "micro", "--seq-len", str(L), "--batch-size", "4", "--eval-every", "0"]


def read_only_folder(tmp_path):
    """A folder nobody may write into: a chmod 555 folder, or for root (whom chmod does not stop)
    sysfs, which refuses every new file."""
    if os.geteuid() == 0:
        return Path("/sys/kernel")
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    return folder


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """The files the mistakes are made with."""
    d = tmp_path_factory.mktemp("bad")
    files = {"mdlm": save_tiny_checkpoint(d / "mdlm.pt"), "ar": save_tiny_checkpoint(d / "ar.pt", "ar")}
    uniform = random_dit(0, V, L)
    uniform.config = dataclasses.replace(uniform.config, time_conditioning=True)
    state = uniform.state_dict()
    checkpoint.save({"kind": "mdlm", "model_config": dataclasses.asdict(uniform.config), "model": state, "ema": state,
                     "process": PROCESSES["uniform"](V).config(), "data_meta": SYNTHETIC}, d / "uniform.pt")
    files["uniform"] = d / "uniform.pt"
    files["other_vocab_ar"] = save_tiny_checkpoint(d / "judge.pt", "ar", {**SYNTHETIC, "vocab_size": 5})
    files["truncated"] = d / "truncated.pt"
    files["truncated"].write_bytes(files["mdlm"].read_bytes()[:300])
    files["text_as_ckpt"] = d / "notes.pt"
    files["text_as_ckpt"].write_text("these are my notes, not a checkpoint")
    files["empty_text"] = d / "empty.txt"
    files["empty_text"].write_text("")
    files["short_text"] = d / "short.txt"
    files["short_text"].write_text("To be, or not to be, that is the question. " * 4)
    files["gpt2_mdlm"] = save_tiny_checkpoint(d / "gpt2.pt", data_meta={"kind": "gpt2", "gpt2_ids": list(range(V - 1))})
    files["no_weights"] = d / "folder"
    (d / "folder").mkdir()
    (d / "folder" / "config.json").write_text("{}")
    files["empty_jsonl"] = d / "samples.jsonl"
    files["empty_jsonl"].write_text("")
    files["no_rounds"] = d / "no_rounds"
    (d / "no_rounds").mkdir()
    run = d / "run"
    result = run_script("train.py", *MICRO, "--iters", "1", "--out-dir", str(run), timeout=300)
    assert result.returncode == 0, result.stderr
    files["run"] = run
    return d, files


def snapshot(folder):
    return {p: hashlib.sha1(p.read_bytes()).hexdigest() for p in Path(folder).rglob("*") if p.is_file()}


# (name, command line with {placeholders} for the world's files, words of its one error line; a | separates
# alternatives: sysfs refuses root with EPERM, a chmod'ed folder others with EACCES)
CASES = [
    ("unknown size", "train.py --size huge", "unknown model size"),
    ("zero iterations", "train.py --iters 0", "--iters must be at least 1"),
    ("negative learning rate", "train.py --lr -1", "--lr must be above 0"),
    ("sequence of one token", "train.py --seq-len 1", "--seq-len must be at least 2"),
    ("EMA decay of 1.5", "train.py " + " ".join(MICRO) + " --ema 1.5", "--ema must lie in [0, 1)"),
    ("micro-batch that does not divide", "train.py " + " ".join(MICRO) + " --micro-batch-size 3", "must divide"),
    ("SEDD on the uniform process", "train.py --model sedd --process uniform", "drop --process uniform"),
    ("a data file that does not exist", "train.py --data missing.txt", "missing.txt not found"),
    ("an empty text file", "train.py --data {empty_text} --size micro --iters 1", "is empty"),
    ("a text file shorter than L", "train.py --data {short_text} --size micro --iters 1", "too few for L = 128"),
    ("a text file as the teacher", "train.py --distill sdtt --teacher {text_as_ckpt}", "truncated or corrupt"),
    ("a truncated checkpoint", "train.py --distill sdtt --teacher {truncated}", "truncated or corrupt"),
    ("an AR model as the teacher", "train.py --distill sdtt --teacher {ar}", "holds a ar model"),
    ("SDTT of a uniform-state teacher", "train.py --distill sdtt --teacher {uniform} --data synthetic",
     "SDTT distills an absorbing teacher"),
    ("DCD of an absorbing teacher", "train.py --distill dcd --teacher {mdlm} --data synthetic",
     "DCD distills a uniform-state"),
    ("--tau for an absorbing teacher", "train.py --distill idlm --tau 0.1 --teacher {mdlm} --data synthetic",
     "--tau (Duo's Gaussian soft inputs) applies"),
    ("IDLM-code's recipe for an absorbing teacher",
     "train.py --distill idlm --recipe idlm-code --teacher {mdlm} --data synthetic", "uniform-state (Duo) teachers"),
    ("an IDLM flag for SDTT", "train.py --distill sdtt --fake-steps 2 --teacher {mdlm} --data synthetic",
     "--fake-steps applies to --distill idlm only"),
    ("the exact gradient with Gaussian latents",
     "train.py --distill idlm --tau 0.1 --idlm-gradient exact --teacher {uniform} --data synthetic", "drop one of"),
    ("a noise window of three alphas",
     "train.py --distill idlm --noise-window 0.9 0.5 0.1 --teacher {uniform} --data synthetic", "two different alphas"),
    ("--teacher-weights when pretraining", "train.py --teacher-weights raw", "applies to a distillation"),
    ("a longer L than the teacher's", "train.py --distill sdtt --teacher {mdlm} --data synthetic --seq-len 64",
     "longer than the teacher's L"),
    ("a judge of another vocabulary", "train.py --distill sdtt --teacher {run}/ckpt.pt " + " ".join(MICRO)
     + " --judge {other_vocab_ar} --out-dir {tmp}/sdtt", "different tokenizer/vocabulary"),
    ("a run folder taken without --resume", "train.py " + " ".join(MICRO) + " --iters 2 --out-dir {run}",
     "already exists: pass --resume"),
    ("--resume with a changed config", "train.py " + " ".join(MICRO).replace("micro", "tiny")
     + " --iters 2 --resume --out-dir {run}", "was trained with --size micro, not tiny"),
    ("--resume with another seed", "train.py " + " ".join(MICRO) + " --iters 2 --seed 3 --resume --out-dir {run}",
     "was trained with --seed 0, not 3"),
    ("a read-only output folder", "train.py " + " ".join(MICRO) + " --iters 1 --out-dir {read_only}/out",
     "Permission denied|Operation not permitted"),
    ("a checkpoint that does not exist", "sample.py --ckpt missing.pt", "does not exist"),
    ("zero sampling steps", "sample.py --ckpt {mdlm} --steps 0", "--steps must be at least 1"),
    ("two step counts for one checkpoint", "sample.py --ckpt {mdlm} --steps 3 4", "one per checkpoint"),
    ("a prompt longer than L", "sample.py --ckpt {mdlm} --prompt '" + "a " * 20 + "'", "must leave a token"),
    ("a gap of zero tokens", "sample.py --ckpt {mdlm} --prompt 'a [MASK:0] b'", "at least one token"),
    ("a malformed gap marker", "sample.py --ckpt {mdlm} --prompt 'a [MASK: b'", "malformed gap marker"),
    ("a prompt for a uniform-state model", "sample.py --ckpt {uniform} --prompt 'a b'", "keeps given tokens fixed"),
    ("SEDD's sampler for an MDLM model", "sample.py --ckpt {mdlm} --sampler analytic", "needs a score model"),
    ("a MASK sampler for a uniform model", "sample.py --ckpt {uniform} --sampler cached", "needs an absorbing process"),
    ("--show for an AR model", "sample.py --ckpt {ar} --show", "follow the denoising of a diffusion model"),
    ("a trace into a missing folder", "sample.py --ckpt {mdlm} --trace {tmp}/no/trace.html", "cannot write the trace"),
    ("samples into a read-only folder", "sample.py --ckpt {mdlm} --jsonl {read_only}/s.jsonl",
     "Permission denied|Operation not permitted"),
    ("a model folder without weights", "sample.py --ckpt {no_weights}", "needs config.json and"),
    ("a sweep of nothing but the exact denoiser", "-m evaluation.sweep --ckpts exact", "needs a checkpoint"),
    ("a sweep judged in another vocabulary", "-m evaluation.sweep --ckpts {mdlm} --judge {other_vocab_ar}",
     "different tokenizer/vocabulary"),
    ("SDTT rounds of a folder without any", "-m evaluation.sweep --rounds {no_rounds}", "no SDTT round"),
    ("a sweep into a read-only folder", "-m evaluation.sweep --ckpts {mdlm} --steps 2 --num-samples 2 --out-dir "
     "{read_only}/sweep", "Permission denied|Operation not permitted"),
    ("zero-shot of a model without an EOS token", "-m evaluation.zeroshot --ckpt {mdlm} --data {empty_text}",
     "needs a tokenizer with an EOS token"),
    ("zero-shot on a corpus that is neither", "-m evaluation.zeroshot --ckpt {gpt2_mdlm} --data nope",
     "not text file(s)"),
    ("re-scoring an empty samples file", "scripts/genppl_interval.py --samples {empty_jsonl}", "no samples"),
    ("an unknown bench section", "bench.py --only nope", "sections are"),
]


def entry_point(args):
    """(the main function, the program's name, its arguments) of a command line: a script of the
    project, `-m package.module`, or a file under scripts/."""
    if args[0] == "-m":
        return importlib.import_module(args[1]).main, args[1], args[2:]
    if args[0].startswith("scripts/"):
        spec = importlib.util.spec_from_file_location(Path(args[0]).stem, ROOT / args[0])
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module.main, args[0], args[1:]
    return importlib.import_module(args[0].removesuffix(".py")).main, args[0], args[1:]


def error_line_in_process(args, monkeypatch, capsys):
    """Run a command's main here, from the repository's root, as `run_command` runs it at the command
    line; return its one error line (no exception but the exit escapes it, no traceback printed)."""
    main, program, argv = entry_point(args)
    monkeypatch.setattr(sys, "argv", [program, *argv])
    monkeypatch.chdir(ROOT)
    with pytest.raises(SystemExit) as exit_:
        run_command(main)
    line = str(exit_.value.code)
    assert "Traceback" not in capsys.readouterr().err
    assert line.startswith("error:") and "\n" not in line, line
    return line


@pytest.mark.parametrize("name, command, words", CASES, ids=[c[0] for c in CASES])
def test_a_mistake_is_one_error_line_and_loses_no_file(name, command, words, world, tmp_path, monkeypatch, capsys):
    folder, files = world
    paths = {**{k: str(v) for k, v in files.items()}, "tmp": str(tmp_path), "read_only": str(read_only_folder(tmp_path))}
    before = snapshot(folder)
    line = error_line_in_process(shlex.split(command.format(**paths)), monkeypatch, capsys)
    assert any(alternative in line for alternative in words.split("|")), line
    print(f"{name}: {line}")  # pytest -rP lists every mistake with the line it prints
    assert snapshot(folder) == before, "a file that was there changed"
    assert not [p for p in Path(folder).rglob("*") if p.suffix == ".tmp" or p.name.startswith(".partial-")]


def test_there_are_at_least_thirty_mistakes():
    assert len(CASES) >= 30


SUBPROCESS_CASES = ["unknown size", "a truncated checkpoint", "a prompt for a uniform-state model",
                    "a sweep of nothing but the exact denoiser"]


@pytest.mark.parametrize("name", SUBPROCESS_CASES)
def test_at_the_command_line_stderr_holds_the_one_error_line_and_nothing_else(name, world, tmp_path):
    folder, files = world
    _, command, words = next(case for case in CASES if case[0] == name)
    paths = {**{k: str(v) for k, v in files.items()}, "tmp": str(tmp_path)}
    line = assert_one_error_line(run_script(*shlex.split(command.format(**paths)), timeout=300))
    assert any(alternative in line for alternative in words.split("|")), line
