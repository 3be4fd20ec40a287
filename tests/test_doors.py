"""Every process through every door: each registered process, at each place a checkpoint is taken,
either gives a result that is checked (by value where the maths allows) or refuses in one error
naming what the process cannot do. A new process or a new door fails `test_every_door_is_decided`
until EXPECTED says what it does there."""
import dataclasses
import io
import math

import pytest
import torch

import bench
import evaluate
from data import MarkovSource, tokenizer_from_meta
from evaluation import continuations, lambada, likelihood, zeroshot
from evaluation.exact import ExactDenoiser, ExactUniformDenoiser
from evaluation.self_bleu import continuation_self_bleu
from helpers import L, SYNTHETIC, V, random_dit
from loading import checkpoint
from plumbing.prompts import template
from processes.registry import PROCESSES
from samplers import make_sampler
from training.step import Env
from watching import page, show, tracing

SOURCE = MarkovSource(SYNTHETIC["vocab_size"], SYNTHETIC["seq_len"], SYNTHETIC["branching"], SYNTHETIC["seed"])
STEPS, SEED = 4, 7
PROMPT = "a b [MASK:3] c"
NEEDS_A_FIXED_PROMPT = "keeps given tokens fixed"   # the refusal of a process that cannot hold a prompt
NEEDS_MASK = "absorbing"                            # ... of a method or sampler that needs a MASK state
NEEDS_UNIFORM = "uniform-state"                     # ... of DCD, for a process without uniform noise

# door -> process -> "works", or the words its one-line refusal must contain
EXPECTED = {
    "sample": dict.fromkeys(PROCESSES, "works"),
    "infill": {"absorbing": "works", "sedd": "works", "uniform": NEEDS_A_FIXED_PROMPT},
    "trace": dict.fromkeys(PROCESSES, "works"),
    "show": dict.fromkeys(PROCESSES, "works"),
    "sweep": dict.fromkeys(PROCESSES, "works"),
    "lambada": dict.fromkeys(PROCESSES, "works"),
    "self_bleu": {"absorbing": "works", "sedd": "works", "uniform": NEEDS_A_FIXED_PROMPT},
    "continuations": {"absorbing": "works", "sedd": "works", "uniform": NEEDS_A_FIXED_PROMPT},
    "zeroshot": dict.fromkeys(PROCESSES, "works"),
    "harness_loglikelihood": dict.fromkeys(PROCESSES, "works"),
    "harness_rolling": dict.fromkeys(PROCESSES, "works"),
    "harness_generate": {"absorbing": "works", "sedd": "works", "uniform": NEEDS_A_FIXED_PROMPT},
    "sdtt": {"absorbing": "works", "sedd": "works", "uniform": NEEDS_MASK},
    "idlm": dict.fromkeys(PROCESSES, "works"),
    "dcd": {"absorbing": NEEDS_UNIFORM, "sedd": NEEDS_UNIFORM, "uniform": "works"},
    "mmd": {"absorbing": "works", "sedd": "works", "uniform": "MMD post-trains an absorbing model"},
    "bench_latency": dict.fromkeys(PROCESSES, "works"),
    "bench_train": dict.fromkeys(PROCESSES, "works"),
}


def door_model(name, seed=0):
    """A micro DiT with live weights for the process `name`, its process and its checkpoint dict."""
    process = PROCESSES[name](V)
    model = random_dit(seed, V, L)
    model.config = dataclasses.replace(model.config, time_conditioning=process.time_conditioned)
    state = model.state_dict()
    ckpt = {"kind": "sedd" if name == "sedd" else "mdlm", "model_config": dataclasses.asdict(model.config),
            "process": process.config(), "model": state, "ema": state, "data_meta": SYNTHETIC}
    return model, process, ckpt


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    folder = tmp_path_factory.mktemp("doors")
    paths = {}
    for name in PROCESSES:
        paths[name] = folder / f"{name}.pt"
        checkpoint.save(door_model(name)[2], paths[name])
    return paths


def tokens_of(result):
    return result[0] if isinstance(result, tuple) else result


def samples(model, process, n=4, **kwargs):
    return evaluate.generate(model, process, n, L, STEPS, generator=torch.Generator().manual_seed(SEED), **kwargs)


# ----------------------------------------------------------------------------- the doors

def door_sample(name, path):
    model, ckpt = checkpoint.load_model(path)
    process = checkpoint.process_of(ckpt)
    first, second = samples(model, process), samples(model, process)
    assert torch.equal(first[0], second[0]) and first[1] == second[1]  # seeded: the same tokens and NFE
    assert first[0].shape == (4, L) and first[0].min() >= 0 and first[0].max() < process.tokens
    assert first[1] == STEPS + 1 or (process.has_mask and first[1] <= STEPS + 1)  # NFE: K steps and the final pass


def door_infill(name, path):
    model, ckpt = checkpoint.load_model(path)
    process = checkpoint.process_of(ckpt)
    prompt = template(PROMPT, tokenizer_from_meta(SYNTHETIC).encode, 8, L)
    tokens, _ = samples(model, process, prompt=prompt)
    fixed = [i for i, token in enumerate(prompt) if token is not None]
    assert (tokens[:, fixed] == torch.tensor([prompt[i] for i in fixed])).all()


def door_trace(name, path):
    model, ckpt = checkpoint.load_model(path)
    process = checkpoint.process_of(ckpt)
    traced = tracing.Traced(make_sampler(process=process))
    tokens, _ = samples(model, process, sampler=traced)
    trace = traced.trace()
    assert torch.equal(trace.tokens(), tokens) and trace.steps >= STEPS
    panel = page.panel("doors", trace, tokenizer_from_meta(SYNTHETIC))
    assert len(panel["samples"]) == 4


def door_show(name, path):
    model, ckpt = checkpoint.load_model(path)
    process = checkpoint.process_of(ckpt)
    out = io.StringIO()
    animation = show.Animation(tokenizer_from_meta(SYNTHETIC), process.mask_id, STEPS, 0.0, out=out)
    samples(model, process, n=2, sampler=tracing.Traced(make_sampler(process=process), animation))
    assert f"step {STEPS}" in out.getvalue() or f"step {STEPS + 1}" in out.getvalue()


def door_sweep(name, path):
    model, ckpt = checkpoint.load_model(path)
    process = checkpoint.process_of(ckpt)
    rows = evaluate.quality_rows([("m", model, process, STEPS)], evaluate.ExactJudge(SOURCE), 8, 4, L, SEED, "cpu")
    assert math.isfinite(rows[0]["genppl"]) and 0 <= rows[0]["entropy"] <= math.log(L)


def door_lambada(name, path):
    model, ckpt = checkpoint.load_model(path)
    process = checkpoint.process_of(ckpt)
    examples = lambada.lambada_examples("local", SOURCE, 6, seed=SEED)
    first = lambada.lambada(model, process, examples, SOURCE.tokenizer, "cpu", nelbo_samples=4, seed=SEED)
    again = lambada.lambada(model, process, examples, SOURCE.tokenizer, "cpu", nelbo_samples=4, seed=SEED)
    assert first == again and 0 <= first["accuracy"] <= 1 and 1 < first["ppl_bound"] < math.inf


def door_self_bleu(name, path):
    pytest.importorskip("sacrebleu")
    model, ckpt = checkpoint.load_model(path)
    process = checkpoint.process_of(ckpt)
    value = continuation_self_bleu(model, process, SOURCE, L, STEPS, 2, SEED)
    assert 0 <= value <= 1


def door_continuations(name, path):
    model, ckpt = checkpoint.load_model(path)
    process = checkpoint.process_of(ckpt)
    prompts = SOURCE.sample(2, torch.Generator().manual_seed(SEED))[:, :4]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(continuations, "CONTINUATION_TOKENS", L - 4)
        rows = continuations.continue_prompts(model, process, prompts, STEPS, SEED, per_prompt=2)
    assert rows.shape == (2, 2, L - 4) and rows.max() < process.tokens


def door_zeroshot(name, path):
    model, ckpt = checkpoint.load_model(path)
    process = checkpoint.process_of(ckpt)
    documents = SOURCE.sample(3, torch.Generator().manual_seed(SEED)).tolist()
    blocks, lengths = zeroshot.blocks_of([d[:L - 3] for d in documents], L, "pad", pad_id=0)
    total, tokens = zeroshot.zero_shot_nll(model, process, blocks, lengths, time_samples=4, seed=SEED)
    assert tokens == 3 * (L - 3) and math.isfinite(total) and total > 0
    assert zeroshot.zero_shot_nll(model, process, blocks, lengths, time_samples=4, seed=SEED)[0] == total


def harness(path):
    pytest.importorskip("lm_eval")
    from evaluation.harness import CheckpointLM
    return CheckpointLM(ckpt=str(path), time_samples=4, steps=STEPS, seed=SEED, device="cpu")


def request(kind, *args):
    from lm_eval.api.instance import Instance
    return Instance(request_type=kind, doc={}, arguments=args, idx=0)


def door_harness_loglikelihood(name, path):
    lm = harness(path)
    asked = [request("loglikelihood", "a b c", " d e")] * 2
    first, second = lm.loglikelihood(asked)
    assert first == second and math.isfinite(first[0]) and first[0] < 0 and isinstance(first[1], bool)


def door_harness_rolling(name, path):
    lm = harness(path)
    text = SOURCE.tokenizer.decode(SOURCE.sample(1, torch.Generator().manual_seed(SEED))[0])
    first, second = lm.loglikelihood_rolling([request("loglikelihood_rolling", text)] * 2)
    assert first == second and math.isfinite(first) and first < 0


def door_harness_generate(name, path):
    lm = harness(path)
    asked = [request("generate_until", "a b c", {"until": [], "max_gen_toks": 4})] * 2
    first, second = lm.generate_until(asked)
    assert first == second and len(first.split()) == 4


def door_method(method, name, path):
    model, ckpt = checkpoint.load_model(path)
    step, phases = bench.method_step(method, model.train(), checkpoint.process_of(ckpt), Env(torch.device("cpu")),
                                     SOURCE.sample(4, torch.Generator().manual_seed(SEED)), seq_len=L, batch_size=4)
    logs = step()
    assert len(logs) >= phases and all(math.isfinite(v) for v in logs.values())


def door_bench_latency(name, path):
    forwards = bench.diffusion_sample(random_dit(0, V, L), 2, L, STEPS, "default", name)
    assert 0 < forwards <= STEPS + 1


def door_bench_train(name, path):
    methods = ("mdlm", "sdtt", "idlm", "mmd") if PROCESSES[name].has_mask else ("mdlm", "idlm", "dcd")
    for method in methods:
        step, _ = bench.training_step(method, "micro", V, L, 2, torch.device("cpu"), name)
        assert all(math.isfinite(v) for v in step().values())


DOORS = {"sample": door_sample, "infill": door_infill, "trace": door_trace, "show": door_show, "sweep": door_sweep,
         "lambada": door_lambada, "self_bleu": door_self_bleu, "continuations": door_continuations,
         "zeroshot": door_zeroshot, "harness_loglikelihood": door_harness_loglikelihood,
         "harness_rolling": door_harness_rolling, "harness_generate": door_harness_generate,
         "sdtt": lambda name, path: door_method("sdtt", name, path),
         "idlm": lambda name, path: door_method("idlm", name, path),
         "dcd": lambda name, path: door_method("dcd", name, path),
         "mmd": lambda name, path: door_method("mmd", name, path),
         "bench_latency": door_bench_latency, "bench_train": door_bench_train}


def test_every_door_is_decided_for_every_process():
    assert set(EXPECTED) == set(DOORS), "a new door needs its line in EXPECTED"
    for door, decided in EXPECTED.items():
        assert set(decided) == set(PROCESSES), f"{door}: say what each process does there (a new process?)"


@pytest.mark.parametrize("door", sorted(DOORS))
@pytest.mark.parametrize("name", sorted(PROCESSES))
def test_each_process_works_at_each_door_or_refuses_in_one_line(door, name, checkpoints):
    expected = EXPECTED[door][name]
    if expected == "works":
        DOORS[door](name, checkpoints[name])
        return
    with pytest.raises(ValueError) as refusal:
        DOORS[door](name, checkpoints[name])
    message = str(refusal.value)
    assert expected in message and "\n" not in message


# ----------------------------------------------------------------------------- the likelihood door, by value

def exact_model(name):
    """The perfect teacher of the synthetic source for each process: MDLM's posterior, SEDD's scores of it
    (raw outputs such that the log-scores are log r_t + log p), the uniform process's leave-one-out posterior."""
    if name == "uniform":
        return ExactUniformDenoiser(SOURCE, PROCESSES[name](V))
    exact = ExactDenoiser(SOURCE)
    if name == "absorbing":
        return exact

    class ExactScores(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.exact, self.config = exact, exact.config

        def forward(self, z, sigma):
            return self.exact(z, sigma) + math.log(V)  # log_scores subtracts log V and log expm1(sigma)
    return ExactScores()


def conditional_nll(x, context):
    """Exact -log p(x[context:] | x[:context]) of the Markov source."""
    return -(SOURCE.log_prob(x[None])[0] - SOURCE.log_prob(x[None, :context])[0]
             if context == SOURCE.seq_len else SOURCE.log_prob(x[None])[0] - prefix_log_prob(x[:context]))


def prefix_log_prob(prefix):
    log_p = SOURCE.initial[prefix[0]].log()
    return log_p + SOURCE.transition[prefix[:-1], prefix[1:]].log().sum()


@pytest.mark.parametrize("name", sorted(PROCESSES))
@pytest.mark.parametrize("which", ["trained-like", "exact"])
def test_the_conditional_bound_of_every_process_is_at_least_the_exact_nll_of_the_continuation(name, which):
    """On the synthetic source, in expectation over its sequences, a model's NELBO of a continuation
    given its context is at least the exact -log p(continuation | context) (cross-entropy >= entropy),
    within three standard errors of the mean over 48 sequences; the perfect teacher of the absorbing
    process (and SEDD's scores of it) attains it."""
    model = exact_model(name) if which == "exact" else random_dit(3, V, L)
    if which != "exact":
        model.config = dataclasses.replace(model.config, time_conditioning=PROCESSES[name](V).time_conditioned)
    process = PROCESSES[name](V)
    g = torch.Generator().manual_seed(11)
    xs, context = SOURCE.sample(48, g), L - 5
    scored = torch.arange(L) >= context
    gaps = torch.tensor([likelihood.nelbo(model, process, x, scored, 32, g) - conditional_nll(x, context).item()
                         for x in xs], dtype=torch.float64)
    error = 3 * gaps.std() / math.sqrt(len(gaps))
    assert gaps.mean() >= -error
    if which == "exact" and name != "uniform":
        assert abs(gaps.mean()) <= error + 1e-6


class JunkOutsideScored(torch.nn.Module):
    """A network's outputs with junk (a huge logit on token 0) at the rows outside `scored`."""

    def __init__(self, model, scored):
        super().__init__()
        self.model, self.scored, self.config = model, scored, model.config

    def forward(self, z, sigma):
        logits = self.model(z, sigma).clone()
        logits[:, ~self.scored, 0] = 50.0
        return logits


@pytest.mark.parametrize("name", sorted(PROCESSES))
def test_the_conditional_bound_counts_only_the_scored_positions(name):
    """What the network says at the context (and padding) positions does not change the bound: the
    context is never noised and carries no term, for every process."""
    process = PROCESSES[name](V)
    model = random_dit(4, V, L)
    model.config = dataclasses.replace(model.config, time_conditioning=process.time_conditioned)
    x, scored = SOURCE.sample(1, torch.Generator().manual_seed(5))[0], torch.arange(L) >= L - 4
    bounds = [likelihood.nelbo(m, process, x, scored, 8, torch.Generator().manual_seed(6))
              for m in (model, JunkOutsideScored(model, scored))]
    assert bounds[0] == pytest.approx(bounds[1], rel=1e-6)
