"""evaluation/sweep.py: checkpoints x steps into a table; SDTT rounds at their own steps; the exact
denoiser as a reference; user mistakes as one error line; every combination of options finishes with
its outputs or refuses in one line before anything is sampled; self-BLEU at each row's own shaping."""
import csv
import dataclasses
import importlib.util
import json
import math

import pytest
import torch

import evaluate
from data import source_from_meta
from evaluation import self_bleu, sweep
from evaluation.self_bleu import continuation_self_bleu
from helpers import SYNTHETIC, L, V, assert_one_error_line, random_dit, run_script, save_tiny_checkpoint
from loading import checkpoint
from loading.checkpoint import load_model, process_of
from plumbing import cli
from processes.registry import PROCESSES


def assert_one_error_line_of(*args):
    return assert_one_error_line(run_script(*args))


def test_cli_without_checkpoint_is_one_error_line(tmp_path):
    assert "does not exist" in assert_one_error_line_of("-m", "evaluation.sweep", "--ckpts", str(tmp_path / "missing.pt"))


def test_cli_steps_below_one_is_one_error_line(tmp_path):
    ckpt = save_tiny_checkpoint(tmp_path / "mdlm.pt")
    assert "at least 1" in assert_one_error_line_of("-m", "evaluation.sweep", "--ckpts", str(ckpt), "--steps", "0")


def test_cli_judge_with_another_vocabulary_is_one_error_line(tmp_path):
    ckpt = save_tiny_checkpoint(tmp_path / "mdlm.pt")
    judge = save_tiny_checkpoint(tmp_path / "ar.pt", "ar", {**SYNTHETIC, "vocab_size": V + 1})
    line = assert_one_error_line_of("-m", "evaluation.sweep", "--ckpts", str(ckpt), "--judge", str(judge))
    assert "different tokenizer/vocabulary" in line


def test_sweep_rounds_samples_each_sdtt_student_only_with_its_own_steps(tmp_path):
    """--rounds DIR: one line, round j's student at the steps it was distilled for (the SDTT
    paper's Figure 4), whatever --steps says; --steps applies to --ckpts only."""
    run = tmp_path / "sdtt"
    run.mkdir()
    for j, steps in enumerate((8, 4, 2)):
        save_tiny_checkpoint(run / f"round{j}.pt", "sdtt", sampling_steps=steps)
    teacher = save_tiny_checkpoint(tmp_path / "mdlm.pt")
    result = run_script("-m", "evaluation.sweep", "--ckpts", str(teacher), "--rounds", str(run), "--steps", "16", "3",
                        "--num-samples", "4", "--out-dir", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr
    with open(tmp_path / "out" / "sweep.csv") as f:
        rows = [(row["label"], int(row["steps"])) for row in csv.DictReader(f)]
    series = str(run / "round*.pt")
    assert rows == [(str(teacher), 16), (str(teacher), 3), (series, 2), (series, 4), (series, 8)]
    samples = [json.loads(line) for line in (tmp_path / "out" / "samples.jsonl").read_text().splitlines()]
    assert [(s["checkpoint"], s["steps"]) for s in samples[::4]] == [
        (str(teacher), 16), (str(teacher), 3), (str(run / "round2.pt"), 2), (str(run / "round1.pt"), 4),
        (str(run / "round0.pt"), 8)]
    assert all(s["seed"] == 0 and s["sampler"] == "cached" and len(s["tokens"]) == L for s in samples)
    assert [s["index"] for s in samples[:4]] == [0, 1, 2, 3]


def test_sweep_rounds_of_a_folder_without_rounds_is_one_error_line(tmp_path):
    assert "no SDTT round" in assert_one_error_line_of("-m", "evaluation.sweep", "--rounds", str(tmp_path))


# ----------------------------------------------------------------------------- the exact denoiser

def test_sweep_ranks_the_exact_denoiser_above_a_random_model(tmp_path):
    """evaluation.sweep --ckpts exact PATH: the perfect teacher, sampled in L steps, has a far lower
    GenPPL than an untrained model on the same source."""
    ckpt = save_tiny_checkpoint(tmp_path / "mdlm.pt")
    result = run_script("-m", "evaluation.sweep", "--ckpts", "exact", str(ckpt), "--steps", str(L), "--num-samples", "16",
                        "--out-dir", str(tmp_path / "sweep"))
    assert result.returncode == 0, result.stderr
    with open(tmp_path / "sweep" / "sweep.csv") as f:
        genppl = {row["label"]: float(row["genppl"]) for row in csv.DictReader(f)}
    assert list(genppl) == ["exact", str(ckpt)]
    assert genppl["exact"] < genppl[str(ckpt)] / 2


def test_sweep_of_the_exact_denoiser_alone_or_on_text_is_one_error_line(tmp_path):
    assert "needs a checkpoint" in assert_one_error_line(run_script("-m", "evaluation.sweep", "--ckpts", "exact"))
    text = save_tiny_checkpoint(tmp_path / "mdlm.pt", data_meta={"kind": "gpt2", "gpt2_ids": list(range(V))})
    line = assert_one_error_line(run_script("-m", "evaluation.sweep", "--ckpts", "exact", str(text), "--judge", str(text)))
    assert "only for the synthetic source" in line


def test_a_checkpoint_with_gpt2s_full_vocabulary_is_judged_by_gpt2_large_by_default(tmp_path):
    import pytest
    import torch
    pytest.importorskip("transformers")
    from helpers import mdlm_state_dict
    from model import ModelConfig
    torch.save(mdlm_state_dict(ModelConfig(vocab_size=50257, n_layer=1, n_head=2, n_embd=8, cond_dim=8), 0),
               tmp_path / "owt.pt")
    result = run_script("-m", "evaluation.sweep", "--ckpts", str(tmp_path / "owt.pt"), "--steps", "1", "--num-samples", "1",
                        "--seq-len", "4", "--out-dir", str(tmp_path / "out"), env={"HF_HUB_OFFLINE": "1"})
    assert "could not load judge 'gpt2-large'" in assert_one_error_line(result)


# ----------------------------------------------------------------------------- every option combination

def sweep_world(folder):
    """Micro checkpoints of the synthetic source, one of each process, an SDTT round, an AR model (which
    has no start token to sample from there) and two tiny Hugging Face judges (mauve-text featurizes
    only GPT-2 and BERT models, by name)."""
    files = {"mdlm": save_tiny_checkpoint(folder / "mdlm.pt"), "ar": save_tiny_checkpoint(folder / "ar.pt", "ar")}
    for name in ("uniform", "sedd"):
        process, model = PROCESSES[name](V), random_dit(0, V, L)
        model.config = dataclasses.replace(model.config, time_conditioning=process.time_conditioned)
        state = model.state_dict()
        files[name] = folder / f"{name}.pt"
        checkpoint.save({"kind": "sedd" if name == "sedd" else "mdlm", "model_config": dataclasses.asdict(model.config),
                         "process": process.config(), "model": state, "ema": state, "data_meta": SYNTHETIC},
                        files[name])
    (folder / "sdtt").mkdir()
    save_tiny_checkpoint(folder / "sdtt" / "round0.pt", "sdtt", sampling_steps=2)
    files["rounds"] = folder / "sdtt"
    if importlib.util.find_spec("transformers") is not None:
        from helpers import tiny_gpt2_folder
        files["gpt2_judge"] = tiny_gpt2_folder(folder / "tiny-gpt2")
        files["other_judge"] = folder / "tiny-judge"  # the same model, by a name that does not say GPT-2
        files["other_judge"].symlink_to(files["gpt2_judge"], target_is_directory=True)
    files["a_file"] = folder / "a-file"
    files["a_file"].write_text("not a folder")
    return {name: str(path) for name, path in files.items()}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return sweep_world(tmp_path_factory.mktemp("world"))


@pytest.fixture
def sampled(monkeypatch):
    """Every call of evaluate.generate, from the rows and from self-BLEU's continuations."""
    calls, generate = [], evaluate.generate

    def counted(*args, **kwargs):
        calls.append(kwargs)
        return generate(*args, **kwargs)
    monkeypatch.setattr(evaluate, "generate", counted)
    monkeypatch.setattr(self_bleu, "generate", counted)
    return calls


def run_sweep(argv):
    """evaluation.sweep's main in this process, as its command runs it: None when it finishes, else its line."""
    try:
        cli.run_command(lambda: sweep.main(argv))
    except SystemExit as e:
        return str(e.code)
    return None


def read_rows(out):
    with open(out / "sweep.csv") as f:
        return list(csv.DictReader(f))


BASE = ["--steps", "2", "--num-samples", "4", "--batch-size", "4", "--bleu-prompts", "2", "--lambada-examples", "4"]
MAUVE_JUDGE = ["--mauve", "--judge", "{gpt2_judge}"]

# (name, options, whether the data's own row and frontier.png come too); each finishes with its outputs
FINISHES = [
    ("one checkpoint", ["--ckpts", "{mdlm}"], False),
    ("a frontier with self-BLEU", ["--ckpts", "{mdlm}", "--frontier", "--self-bleu"], True),
    ("temperatures with self-BLEU", ["--ckpts", "{mdlm}", "--temperatures", "0.5", "2", "--self-bleu"], True),
    ("top-p values with self-BLEU and LAMBADA", ["--ckpts", "{mdlm}", "--top-p", "0.5", "1", "--self-bleu",
                                                 "--lambada"], True),
    ("MAUVE on a Hugging Face judge", ["--ckpts", "{mdlm}", *MAUVE_JUDGE], False),
    ("a frontier with MAUVE and self-BLEU", ["--ckpts", "{mdlm}", "--frontier", "--self-bleu", *MAUVE_JUDGE], True),
    ("temperatures with MAUVE", ["--ckpts", "{mdlm}", "--temperatures", "0.8", "1", *MAUVE_JUDGE], True),
    ("a shorter --seq-len with a frontier and self-BLEU", ["--ckpts", "{mdlm}", "--seq-len", "8", "--frontier",
                                                          "--self-bleu"], True),
    ("a longer --seq-len, semi-AR, with a frontier", ["--ckpts", "{mdlm}", "--seq-len", "24", "--sampler", "semi-ar",
                                                      "--frontier", "--self-bleu"], True),
    ("the exact denoiser, SDTT rounds, every extra", ["--ckpts", "exact", "{mdlm}", "--rounds", "{rounds}",
                                                      "--temperatures", "0.8", "--top-p", "0.9", "1", "--self-bleu",
                                                      "--lambada", *MAUVE_JUDGE], True),
    ("every process with LAMBADA and a frontier", ["--ckpts", "{mdlm}", "{uniform}", "{sedd}", "--lambada",
                                                   "--frontier"], True),
    ("greedy-tail on every process, raw weights", ["--ckpts", "{uniform}", "{mdlm}", "--sampler", "greedy-tail",
                                                   "--weights", "raw", "--temperatures", "0.7"], False),
    ("a score sampler with self-BLEU", ["--ckpts", "{sedd}", "--sampler", "euler", "--self-bleu", "--frontier"], True),
]

# (name, options, words of the one error line; each refuses before anything is sampled)
REFUSES = [
    ("MAUVE on the exact judge", ["--ckpts", "{mdlm}", "--mauve"], "MAUVE needs a judge that reads text"),
    ("MAUVE on a judge mauve-text cannot featurize", ["--ckpts", "{mdlm}", "--mauve", "--judge", "{other_judge}"],
     "mauve-text featurizes"),
    ("self-BLEU of a uniform-state model", ["--ckpts", "{mdlm}", "{uniform}", "--self-bleu"],
     "keeps given tokens fixed"),
    ("a --seq-len past the context", ["--ckpts", "{mdlm}", "--seq-len", "24"], "do not fit the model's context"),
    ("an AR model without a start token", ["--ckpts", "{mdlm}", "{ar}"], "no start token"),
    ("a MASK sampler for a uniform-state model", ["--ckpts", "{mdlm}", "{uniform}", "--sampler", "cached"],
     "needs an absorbing process"),
    ("a score sampler for MDLM", ["--ckpts", "{sedd}", "{mdlm}", "--sampler", "analytic"], "needs a score model"),
    ("LAMBADA from the hub on the synthetic source", ["--ckpts", "{mdlm}", "--lambada", "--lambada-source", "hf"],
     "English text"),
    ("samples too short for the trigram divergence", ["--ckpts", "{mdlm}", "--seq-len", "2"], "at least 3 tokens"),
    ("an output folder that is a file", ["--ckpts", "{mdlm}", "--out-dir", "{a_file}"], "File exists|Not a directory"),
    ("an output folder inside a file", ["--ckpts", "{mdlm}", "--out-dir", "{a_file}/sweep"], "Not a directory"),
]


def needs(argv):
    for judge in ("gpt2_judge", "other_judge"):
        if f"{{{judge}}}" in argv:
            pytest.importorskip("transformers")
            pytest.importorskip("mauve")
    if "--self-bleu" in argv:
        pytest.importorskip("sacrebleu")


@pytest.mark.parametrize("name, options, frontier", FINISHES, ids=[case[0] for case in FINISHES])
def test_every_option_combination_of_the_sweep_finishes_with_its_outputs(name, options, frontier, world, tmp_path):
    needs(options)
    out = tmp_path / "out"
    assert run_sweep([*BASE, *(o.format(**world) for o in options), "--out-dir", str(out)]) is None
    rows = read_rows(out)
    assert (rows[-1]["label"] == "data") == frontier and (out / "frontier.png").exists() == frontier
    model_rows = [row for row in rows if row["label"] != "data"]
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 4 * len(model_rows) and (out / "sweep.md").exists() and (out / "genppl.png").exists()
    length = int(options[options.index("--seq-len") + 1]) if "--seq-len" in options else L
    assert {len(s["tokens"]) for s in samples} == {length}
    for column, flag in (("self_bleu", "--self-bleu"), ("mauve", "--mauve")):
        assert (column in rows[0]) == (flag in options)
        assert flag not in options or all(0 <= float(row[column]) <= 1 + 1e-9 for row in model_rows)
    assert (out / "lambada.csv").exists() == ("--lambada" in options)


@pytest.mark.parametrize("name, options, words", REFUSES, ids=[case[0] for case in REFUSES])
def test_every_option_combination_of_the_sweep_that_cannot_finish_refuses_in_one_line_before_sampling(
        name, options, words, world, tmp_path, sampled):
    needs(options)
    out = tmp_path / "out"
    argv = [*BASE, *(o.format(**world) for o in options)]
    line = run_sweep(argv + ([] if "--out-dir" in options else ["--out-dir", str(out)]))
    assert line is not None and line.startswith("error:") and "\n" not in line, line
    assert any(w in line for w in words.split("|")), line
    assert sampled == [], "it sampled before refusing"
    assert not out.exists() and open(world["a_file"]).read() == "not a folder"


def test_the_data_row_of_the_synthetic_source_has_the_samples_length(world, tmp_path):
    """--seq-len 8 with a frontier: the data's own point is judged on 8 tokens of the source, as the rows are."""
    out = tmp_path / "out"
    assert run_sweep([*BASE, "--ckpts", world["mdlm"], "--seq-len", "8", "--frontier", "--out-dir", str(out)]) is None
    data = read_rows(out)[-1]
    source = source_from_meta(SYNTHETIC)
    x = source.sample(4, torch.Generator().manual_seed(0))[:, :8]  # a chain's draws of 8 tokens begin those of 16
    assert data["label"] == "data"
    assert float(data["genppl"]) == pytest.approx(math.exp((-source.log_prob(x) / 8).mean().item()), rel=1e-9)


@pytest.mark.parametrize("shaping", [["--temperatures", "0.25", "4"], ["--temperatures", "0.25", "--top-p", "0.5"]],
                         ids=" ".join)
def test_self_bleu_of_each_row_is_of_continuations_drawn_at_the_rows_own_temperature_and_top_p(shaping, world,
                                                                                                tmp_path):
    """A row labelled T = 0.25 (or top-p 0.5) has the self-BLEU of continuations drawn at T = 0.25 (top-p
    0.5), not at T = 1."""
    pytest.importorskip("sacrebleu")
    out = tmp_path / "out"
    assert run_sweep([*BASE, "--ckpts", world["mdlm"], *shaping, "--self-bleu", "--out-dir", str(out)]) is None
    model, ckpt = load_model(world["mdlm"])
    rows = [row for row in read_rows(out) if row["label"] != "data"]
    for row in rows:
        expected = continuation_self_bleu(model, process_of(ckpt), source_from_meta(SYNTHETIC), L, 2, 2, 0,
                                          batch_size=4, temperature=float(row["temperature"]),
                                          top_p=float(row["top_p"]))
        assert float(row["self_bleu"]) == pytest.approx(expected, rel=1e-12), row
    at_one = continuation_self_bleu(model, process_of(ckpt), source_from_meta(SYNTHETIC), L, 2, 2, 0, batch_size=4)
    assert all(float(row["self_bleu"]) != at_one for row in rows if float(row["temperature"]) != 1)
