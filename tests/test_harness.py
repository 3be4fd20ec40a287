"""Tests of evaluation/harness.py: the local Shakespeare task runs end to end through lm_eval (command line
and library); an AR checkpoint's log-likelihoods through the harness are our AR judge's NLL;
a diffusion checkpoint's are below the exact log-likelihood of the synthetic source;
generation honours stop strings; a greedy request takes the denoiser's argmax at every reveal, a sampled
one draws at its temperature and top-p; without the extras the command fails in one line.

Needs requirements-eval.txt (skipped without it), except the missing-extras test."""
import dataclasses
import importlib.util
import json

import pytest
import torch

from corpora.gpt2 import GPT2_EOS, gpt2_encoding
from data import MarkovSource
from evaluate import ARJudge
from helpers import ROOT, SYNTHETIC, L, V, assert_one_error_line, random_dit, run_script
from loading import checkpoint
from model import GPT, DiT, ModelConfig

TASK_DIR = ROOT / "tests" / "harness"
ITEMS = [json.loads(line) for line in (TASK_DIR / "shakespeare_mc.jsonl").read_text().splitlines()]
needs_lm_eval = pytest.mark.skipif(importlib.util.find_spec("lm_eval") is None,
                                   reason="needs the extras of requirements-eval.txt")


def task_checkpoint(path, kind):
    """A random 1-layer model whose vocabulary is the GPT-2 tokens of the local task."""
    text = " ".join(item["context"] + " " + " ".join(item["choices"]) for item in ITEMS)
    gpt2_ids = sorted(set(gpt2_encoding().encode_ordinary(text)) | {GPT2_EOS})
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=len(gpt2_ids) + 1, seq_len=64, n_layer=1, n_head=2, n_embd=16, cond_dim=16,
                      dropout=0.0)
    model = GPT(cfg) if kind == "ar" else DiT(cfg)
    if kind != "ar":
        torch.nn.init.normal_(model.output_layer.linear.weight)
    checkpoint.save({"kind": kind, "model_config": dataclasses.asdict(cfg), "model": model.state_dict(),
                     "ema": model.state_dict(), "data_meta": {"kind": "gpt2", "gpt2_ids": gpt2_ids}}, path)
    return path


def request(kind, *args):
    from lm_eval.api.instance import Instance
    return Instance(request_type=kind, doc={}, arguments=args, idx=0)


@pytest.fixture
def offline(monkeypatch):
    """The task's data file is relative to the repository root; the hub is never asked."""
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@needs_lm_eval
def test_local_task_runs_from_the_command_line(tmp_path, offline):
    ckpt = task_checkpoint(tmp_path / "mdlm.pt", "mdlm")
    result = run_script("-m", "evaluation.harness", "--model_args", f"ckpt={ckpt},time_samples=2", "--include_path",
                        str(TASK_DIR), "--tasks", "shakespeare_mc", "--output_path", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr[-2000:]
    results = json.loads(next((tmp_path / "out").rglob("results_*.json")).read_text())["results"]
    assert 0 <= results["shakespeare_mc"]["acc,none"] <= 1


@needs_lm_eval
def test_ar_log_likelihoods_through_the_harness_are_our_ar_nll(tmp_path, offline):
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    from evaluation.harness import CheckpointLM
    lm = CheckpointLM(ckpt=task_checkpoint(tmp_path / "ar.pt", "ar"), device="cpu")
    output = simple_evaluate(model=lm, tasks=["shakespeare_mc"], log_samples=True,
                             task_manager=TaskManager(include_path=str(TASK_DIR)))
    judge, tokenizer = ARJudge(lm.model, lm.tokenizer.eos_id), lm.tokenizer

    def total_nll(text):
        tokens = torch.tensor([tokenizer.encode(text)])
        return judge.nll_per_token(tokens).item() * tokens.shape[1]
    samples = output["samples"]["shakespeare_mc"]
    assert len(samples) == len(ITEMS)
    for sample in samples:
        context = sample["doc"]["context"]
        for choice, (log_likelihood, _) in zip(sample["doc"]["choices"], sample["filtered_resps"]):
            ours = total_nll(context) - total_nll(context + " " + choice)
            assert float(log_likelihood) == pytest.approx(ours, rel=1e-4, abs=1e-4)


@needs_lm_eval
def test_diffusion_log_likelihood_is_below_the_exact_one_of_the_synthetic_source(tmp_path):
    from evaluation.harness import CheckpointLM
    path = tmp_path / "mdlm.pt"
    model = random_dit(0, V, L)
    checkpoint.save({"kind": "mdlm", "model_config": dataclasses.asdict(model.config), "model": model.state_dict(),
                     "ema": None, "data_meta": SYNTHETIC}, path)
    lm = CheckpointLM(ckpt=path, device="cpu", time_samples=64)
    source = MarkovSource(V, L, 3, 0)
    x = source.sample(4, torch.Generator().manual_seed(0))
    symbols = source.tokenizer
    requests = [request("loglikelihood", symbols.decode(row[:6]), " " + symbols.decode(row[6:])) for row in x]
    for (log_likelihood, _), row in zip(lm.loglikelihood(requests), x):
        exact = source.log_prob(row[None])[0].item() - source.log_prob(row[None, :6])[0].item()
        assert log_likelihood <= exact


@needs_lm_eval
def test_rolling_log_likelihood_of_an_ar_model_is_our_judges_nll_of_the_text(tmp_path):
    from evaluation.harness import CheckpointLM
    lm = CheckpointLM(ckpt=task_checkpoint(tmp_path / "ar.pt", "ar"), device="cpu")
    text = " ".join(item["context"] for item in ITEMS[:2])
    tokens = torch.tensor([lm.tokenizer.encode(text)])
    assert tokens.shape[1] <= lm.seq_len
    expected = -ARJudge(lm.model, lm.tokenizer.eos_id).nll_per_token(tokens).item() * tokens.shape[1]
    assert lm.loglikelihood_rolling([request("loglikelihood_rolling", text)])[0] == pytest.approx(expected, rel=1e-5)
    long_text = " ".join(item["context"] for item in ITEMS)  # several windows
    assert len(lm.tokenizer.encode(long_text)) > lm.seq_len
    assert lm.loglikelihood_rolling([request("loglikelihood_rolling", long_text)])[0] < 0


@needs_lm_eval
@pytest.mark.parametrize("kind", ["ar", "mdlm"])
def test_generation_stops_at_the_stop_string_and_is_seeded(tmp_path, kind):
    from evaluation.harness import CheckpointLM
    lm = CheckpointLM(ckpt=task_checkpoint(tmp_path / f"{kind}.pt", kind), device="cpu", steps=4)
    prompt = ITEMS[0]["context"]
    free = lm.generate_until([request("generate_until", prompt, {"until": [], "max_gen_toks": 12})])[0]
    assert isinstance(free, str) and free
    stop = free.split()[len(free.split()) // 2] if free.split() else free[-1]
    cut = lm.generate_until([request("generate_until", prompt, {"until": [stop], "max_gen_toks": 12})])[0]
    assert cut == free.split(stop)[0]
    assert lm.generate_until([request("generate_until", prompt, {"until": [], "max_gen_toks": 12})])[0] == free


def test_without_the_extras_the_command_fails_in_one_line_naming_the_requirements_file():
    hide = "import sys, runpy; sys.modules['lm_eval'] = None; runpy.run_module('evaluation.harness', run_name='__main__')"
    line = assert_one_error_line(run_script("-c", hide, "--tasks", "x"))
    assert "requirements-eval.txt" in line


@needs_lm_eval
def test_a_diffusion_requests_estimate_does_not_depend_on_the_requests_around_it(tmp_path):
    from evaluation.harness import CheckpointLM
    lm = CheckpointLM(ckpt=task_checkpoint(tmp_path / "mdlm.pt", "mdlm"), device="cpu", time_samples=4)
    first, second = (request("loglikelihood", item["context"], " " + item["choices"][0]) for item in ITEMS[:2])
    assert lm.loglikelihood([first, second])[1] == lm.loglikelihood([second])[0]


@needs_lm_eval
def test_an_unknown_model_argument_is_an_error_not_ignored(tmp_path):
    from evaluation.harness import CheckpointLM
    with pytest.raises(ValueError, match="unknown model argument.*time_sample"):
        CheckpointLM(ckpt=task_checkpoint(tmp_path / "ar.pt", "ar"), time_sample=4)


# ----------------------------------------------------------------------------- greedy and sampled generation

class Recording(torch.nn.Module):
    """Wraps a denoiser and records the input of every forward."""

    def __init__(self, model):
        super().__init__()
        self.model, self.config, self.inputs = model, model.config, []

    def forward(self, z, sigma):
        self.inputs.append((z.clone(), sigma))
        return self.model(z, sigma)


def replay(lm, context, gen_kwargs):
    """One continuation of `context` through the harness, replayed: [(the denoiser's categorical over
    the tokens, the token taken from it)] for every position the sampler decided. Without time
    conditioning each forward reads the state before a step, and the tokens revealed next (by the next
    forward's input, or in the continuation) were taken from its output."""
    network = lm.model
    lm.model = Recording(network)
    try:
        text = lm.generate_until([request("generate_until", context, {"until": [], **gen_kwargs})])[0]
    finally:
        recorded, lm.model = lm.model.inputs, network
    final = torch.tensor([lm.tok_encode(context) + lm.tok_encode(text)])
    taken = []
    with torch.no_grad():
        for k, (z, sigma) in enumerate(recorded):
            after = recorded[k + 1][0] if k + 1 < len(recorded) else final
            probs = network(z, sigma)[0, :, :V].double().softmax(-1)
            for i in ((z[0] == lm.process.mask_id) & (after[0] != lm.process.mask_id)).nonzero().flatten().tolist():
                taken.append((probs[i], int(after[0, i])))
    assert len(taken) == final.shape[1] - len(lm.tok_encode(context))  # every generated position, once
    return taken


GREEDY_REQUESTS = [{}, {"do_sample": False}, {"do_sample": False, "temperature": 0.7}, {"temperature": 0.0},
                   {"do_sample": True, "temperature": 0.0}]
SAMPLED_REQUESTS = [({"do_sample": True}, 1.0, 1.0), ({"temperature": 0.8}, 0.8, 1.0),
                    ({"do_sample": True, "temperature": 1.5, "top_p": 0.9}, 1.5, 0.9)]
CONTEXTS = ["a b c", "d", "e f", "g h a b"]


@pytest.fixture(scope="module")
def synthetic_lm(tmp_path_factory):
    pytest.importorskip("lm_eval")
    from evaluation.harness import CheckpointLM
    path = tmp_path_factory.mktemp("harness") / "mdlm.pt"
    model = random_dit(0, V, L)
    checkpoint.save({"kind": "mdlm", "model_config": dataclasses.asdict(model.config), "model": model.state_dict(),
                     "ema": None, "data_meta": SYNTHETIC}, path)
    return CheckpointLM(ckpt=path, device="cpu")


@needs_lm_eval
@pytest.mark.parametrize("gen_kwargs", GREEDY_REQUESTS, ids=str)
def test_greedy_generation_of_a_diffusion_model_takes_the_denoisers_argmax_at_every_reveal(synthetic_lm, gen_kwargs):
    """lm-eval's greedy request (no do_sample, do_sample false, or temperature 0; SPEC.md §7.3): MDLM's
    own sampler, each token it reveals the most probable one of the denoiser given what is revealed so
    far (replayed over 4 contexts of 12 new tokens each)."""
    for context in CONTEXTS:
        for probs, token in replay(synthetic_lm, context, {"max_gen_toks": 12, **gen_kwargs}):
            assert token == int(probs.argmax()), (context, probs, token)


@needs_lm_eval
@pytest.mark.parametrize("gen_kwargs, temperature, top_p", SAMPLED_REQUESTS, ids=str)
def test_sampled_generation_of_a_diffusion_model_draws_at_the_requests_temperature_and_top_p(
        synthetic_lm, gen_kwargs, temperature, top_p):
    """lm-eval's sampled request (do_sample true, or a temperature above 0 without do_sample): every token
    lies in the nucleus of the denoiser's categorical at that temperature and top-p, and the draws are not
    all its argmax (over 4 contexts of 12 new tokens each)."""
    from diffusion import shaped_probs
    taken = [pair for context in CONTEXTS for pair in replay(synthetic_lm, context, {"max_gen_toks": 12, **gen_kwargs})]
    assert all(shaped_probs(probs.log(), temperature, top_p)[token] > 0 for probs, token in taken)
    assert sum(token != int(probs.argmax()) for probs, token in taken) >= 5
