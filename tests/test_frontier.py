"""Quality at equal diversity (SPEC.md §7.5): the tempered, nucleus categorical every sampler draws
from, the samplers under it, the n-gram divergence from the synthetic source's exact law, the
frontier's interpolation and verdicts, and the sweep's frontier."""
import csv
import json
import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import diffusion
import evaluate
import samplers
from corpora.markov import MarkovSource
from evaluation import frontier
from helpers import L, V, examples, random_dit, run_script, save_tiny_checkpoint, seeds
from model import GPT, config_for
from processes.registry import PROCESSES

temperatures = st.sampled_from([0.25, 0.5, 0.8, 1.0, 1.3, 2.0])
nuclei = st.sampled_from([0.05, 0.3, 0.5, 0.9, 0.999, 1.0])


def random_logits(seed, shape=(4, 7)):
    return 3 * torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


# ----------------------------------------------------------------------------- the categorical

@examples(40)
@given(seed=seeds, temperature=temperatures)
def test_the_tempered_categorical_is_the_normalised_power(seed, temperature):
    logits = random_logits(seed)
    p = logits.softmax(-1)
    expected = p ** (1 / temperature) / (p ** (1 / temperature)).sum(-1, keepdim=True)
    torch.testing.assert_close(diffusion.shaped_probs(logits, temperature), expected, rtol=1e-12, atol=1e-15)


@examples(60)
@given(seed=seeds, top_p=nuclei, temperature=temperatures)
def test_top_p_keeps_the_smallest_most_probable_set_with_that_mass(seed, top_p, temperature):
    logits = random_logits(seed)
    tempered = diffusion.shaped_probs(logits, temperature)
    kept = diffusion.shaped_probs(logits, temperature, top_p)
    torch.testing.assert_close(kept.sum(-1), torch.ones(4, dtype=torch.float64))
    for row, full in zip(kept, tempered):
        inside = row > 0
        mass = full[inside].sum()
        assert mass >= top_p - 1e-12                                     # the set reaches top_p ...
        assert top_p == 1.0 or mass - full[inside].min() < top_p + 1e-12  # ... and no smaller one does
        assert inside.all() or full[inside].min() >= full[~inside].max()  # the most probable ones
        torch.testing.assert_close(row[inside], full[inside] / mass)      # renormalised, ratios kept


def test_at_temperature_one_and_top_p_one_the_network_is_itself():
    model = random_dit(0, V, L)
    assert samplers.shaped(model, PROCESSES["absorbing"](V)) is model
    torch.testing.assert_close(diffusion.shaped_probs(random_logits(1)), random_logits(1).softmax(-1))


def test_a_bad_temperature_or_top_p_is_one_clear_error():
    for temperature, top_p in ((0.0, 1.0), (1.0, 1.5), (-1.0, 0.5)):
        with pytest.raises(ValueError, match="temperature must be above 0"):
            samplers.shaped(random_dit(0, V, L), PROCESSES["absorbing"](V), temperature, top_p)


def test_shaping_keeps_each_rows_total_mass_so_seddss_move_probability_stays():
    """The score samplers move a MASK with probability rate * sum_y s_y: unchanged; the token's law
    is the shaped one."""
    logits = random_logits(2, (3, 5, V + 1)).float()
    out = samplers.Shaped(random_dit(0, V, L), V, 0.5, 0.8).shape(logits)
    torch.testing.assert_close(out[..., :V].double().logsumexp(-1), logits[..., :V].double().logsumexp(-1))
    torch.testing.assert_close(out[..., V:], logits[..., V:])
    torch.testing.assert_close(out[..., :V].double().softmax(-1), diffusion.shaped_probs(logits[..., :V], 0.5, 0.8),
                               rtol=1e-5, atol=1e-7)


# ----------------------------------------------------------------------------- every sampler under it

class Constant(torch.nn.Module):
    """A denoiser that says the same logits at every position, whatever it reads."""

    def __init__(self, logits, seq_len):
        super().__init__()
        self.logits, self.config = logits, config_for("micro", vocab_size=len(logits) - 1, seq_len=seq_len)
        self.weight = torch.nn.Parameter(torch.zeros(()))

    def forward(self, z, sigma):
        return self.logits.float().expand(*z.shape, -1)


@pytest.mark.parametrize("top_p", [0.85, 1.0])  # top-p 1: Shaped's log-space path
@pytest.mark.parametrize("name", sorted(PROCESSES))
def test_one_step_draws_follow_the_shaped_categorical(name, top_p):
    """From the prior, one step then the final pass: each position's token follows the shaped
    categorical p of the denoiser's logits. Uniform: the step from t = 1 to T_MIN is the posterior
    q(z_s | z_1, x = p) averaged over the uniform z_1 (the removal pass after it, at alpha within 1e-5
    of 1, moves a token with probability below 1e-4). 4096 positions, each frequency within 5 binomial
    standard errors of its probability (plus 1e-3 for the removal pass)."""
    process = PROCESSES[name](V)
    logits = torch.cat([random_logits(3, (V,)), torch.zeros(1, dtype=torch.float64)])
    sampler = samplers.make_sampler("ancestral", "sample", process) if process.has_mask else \
        samplers.make_sampler("ancestral", process=process)
    if process.has_scores:
        sampler = samplers.make_sampler("analytic", process=process)
    n = 4096 // L
    tokens, _ = evaluate.generate(Constant(logits, L), process, n, L, 1, sampler=sampler, batch_size=n,
                                  generator=torch.Generator().manual_seed(0), temperature=0.6, top_p=top_p)
    p = law = diffusion.shaped_probs(logits[:V], 0.6, top_p)
    if process.family == "uniform":
        start = torch.arange(V)[None]
        law = process.posterior(start, p.expand(1, V, V), diffusion.T_MIN, 1.0)[0].mean(0)
    frequency = torch.bincount(tokens.reshape(-1), minlength=V).double() / tokens.numel()
    error = (law * (1 - law) / tokens.numel()).sqrt()
    assert ((frequency - law).abs() <= 5 * error + (1e-3 if process.family == "uniform" else 1e-12)).all()
    if process.has_mask:
        assert (frequency[p == 0] == 0).all()  # outside the nucleus: never drawn


def assert_tokens_are_valid(tokens, process):
    assert tokens.min() >= 0 and tokens.max() < process.tokens


SAMPLER_RUNS = [(sampler, name) for sampler in samplers.SAMPLERS for name in sorted(PROCESSES)
                if (PROCESSES[name](V).has_scores) == (sampler in ("analytic", "euler"))
                and (PROCESSES[name](V).has_mask or sampler in ("ancestral", "greedy-tail"))]


@pytest.mark.parametrize("sampler, name", SAMPLER_RUNS)
def test_every_sampler_keeps_its_invariants_when_shaped_and_one_seed_gives_one_sample(sampler, name, monkeypatch):
    """Shaped (T 0.7, top-p 0.9): fixed tokens stay, no MASK is left, no id outside the tokens, the
    same seed gives the same samples and they are not the unshaped ones (the shaping reaches every draw,
    the cached samplers' head included); at T 1 and top-p 1 the samples are those of the network itself."""
    process = PROCESSES[name](V)
    model = random_dit(1, V, L)
    if process.time_conditioned:
        model.config.time_conditioning = True
    prompt = [0, 1, None, 2] if process.takes_prompt and sampler != "semi-ar" else []

    def draw(**shape):
        return evaluate.generate(model, process, 6, L, 4, sampler=samplers.make_sampler(sampler, process=process),
                                 prompt=prompt, batch_size=3, generator=torch.Generator().manual_seed(5), **shape)[0]
    shaped = draw(temperature=0.7, top_p=0.9)
    assert torch.equal(shaped, draw(temperature=0.7, top_p=0.9))
    assert_tokens_are_valid(shaped, process)
    if prompt:
        assert (shaped[:, [0, 1, 3]] == torch.tensor([0, 1, 2])).all()
    unshaped = draw(temperature=1.0, top_p=1.0)
    assert not torch.equal(shaped, unshaped)
    monkeypatch.setattr(evaluate, "shaped", lambda model, process, temperature, top_p: model)  # no wrapper at all
    assert torch.equal(unshaped, draw(temperature=1.0, top_p=1.0))


def test_the_ar_baseline_draws_from_the_same_categorical():
    """GPT.generate at (T, top-p) draws token i from shaped_probs of its logits: replayed by hand."""
    torch.manual_seed(0)
    model = GPT(config_for("micro", vocab_size=V, seq_len=L)).eval()
    prompt = torch.zeros(2, 1, dtype=torch.long)
    tokens, logits = model.generate(prompt, 5, temperature=0.7, top_p=0.8, generator=torch.Generator().manual_seed(3),
                                    return_logits=True)
    generator = torch.Generator().manual_seed(3)
    for i in range(5):
        expected = diffusion.sample_categorical(diffusion.shaped_probs(logits[:, i], 0.7, 0.8), generator)
        assert torch.equal(tokens[:, 1 + i], expected)


# ----------------------------------------------------------------------------- the exact n-gram divergence

SOURCE = MarkovSource(vocab_size=16, seq_len=64)


def test_the_ngram_marginals_are_the_pooled_laws_of_the_chain():
    """Summing the trigram law over its last token gives the bigram law of the first L - 1 starts."""
    for n in (1, 2, 3):
        assert SOURCE.ngram_marginal(n).sum().item() == pytest.approx(1.0, abs=1e-12)
    torch.testing.assert_close(SOURCE.ngram_marginal(3).sum(-1), SOURCE.ngram_marginal(2, 63))


def js(tokens):
    return evaluate.ExactJudge(SOURCE).divergences(tokens)


def test_the_source_own_samples_score_only_their_sampling_error():
    """Samples of the source: each divergence lies within the spread of 20 other sets of the same
    size (their mean + 4 standard deviations), and that floor is small (below 0.02 nats)."""
    null = [js(SOURCE.sample(128, torch.Generator().manual_seed(100 + i))) for i in range(20)]
    tested = js(SOURCE.sample(128, torch.Generator().manual_seed(0)))
    for key in ("js1", "js2", "js3"):
        values = torch.tensor([d[key] for d in null])
        assert tested[key] <= values.mean() + 4 * values.std(), key
        assert values.mean() < 0.02, key


def test_collapse_and_junk_score_far_above_that():
    collapsed = SOURCE.sample(1, torch.Generator().manual_seed(0)).expand(128, -1)  # one sequence, 128 times
    junk = torch.randint(0, 16, (128, 64), generator=torch.Generator().manual_seed(0))
    floor = js(SOURCE.sample(128, torch.Generator().manual_seed(0)))
    for bad in (collapsed, junk):
        found = js(bad)
        assert all(found[k] > 10 * floor[k] and found[k] > 0.05 for k in ("js2", "js3")), found


# ----------------------------------------------------------------------------- the frontier

def point(entropy, genppl, half=0.05):
    return {"entropy": entropy, "genppl": genppl, "genppl_low": genppl * math.exp(-half),
            "genppl_high": genppl * math.exp(half), "entropy_half": 0.01}


def test_the_frontier_is_log_linear_between_its_nearest_points():
    curve = [point(2.0, 10.0), point(3.0, 40.0), point(2.5, 20.0)]
    assert frontier.at_entropy(curve, 2.25)[0] == pytest.approx(math.sqrt(10.0 * 20.0))
    assert frontier.at_entropy(curve, 3.0)[0] == pytest.approx(40.0)
    assert frontier.at_entropy(curve, 3.5) is None


def test_verdicts_are_judged_at_the_rows_own_entropy_with_both_intervals():
    curve = [point(2.0, 10.0), point(3.0, 40.0)]
    assert frontier.verdict(point(2.5, 15.0), curve)[0] == "better"   # 20 on the curve
    assert frontier.verdict(point(2.5, 20.5), curve)[0] == "equal"
    assert frontier.verdict(point(2.5, 30.0), curve)[0] == "worse"
    assert frontier.verdict(point(1.5, 5.0), curve)[0].startswith("no verdict")  # low GenPPL bought with entropy


def test_the_sweep_draws_a_frontier_and_records_temperature_and_top_p(tmp_path):
    ckpt = save_tiny_checkpoint(tmp_path / "mdlm.pt")
    out = tmp_path / "out"
    result = run_script("-m", "evaluation.sweep", "--ckpts", str(ckpt), "--steps", "4", "--temperatures", "0.8", "1",
                        "--top-p", "0.9", "1", "--num-samples", "8", "--out-dir", str(out), timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    with open(out / "sweep.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["temperature"], r["top_p"]) for r in rows[:-1]] == [("0.8", "0.9"), ("1.0", "0.9"), ("0.8", "1.0"),
                                                                  ("1.0", "1.0")]
    assert rows[-1]["label"] == "data" and all(r["js3"] for r in rows)
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert {(s["temperature"], s["top_p"]) for s in samples} == {(0.8, 0.9), (1.0, 0.9), (0.8, 1.0), (1.0, 1.0)}
    assert (out / "frontier.png").stat().st_size > 0
    judged = run_script("-m", "evaluation.frontier", "--sweep", str(out / "sweep.csv"), "--reference",
                        f"{ckpt}@4", "--rows", f"{ckpt}@4")
    verdicts = [line.split("|")[-2].strip() for line in judged.stdout.splitlines() if line.startswith(f"| {ckpt}@4 |")]
    assert judged.returncode == 0 and len(verdicts) == 4, judged.stdout + judged.stderr  # every temperature and top-p
    # each row lies on the frontier it is judged against; its entropy interval reaches past the frontier's ends at the
    # extreme temperatures (no verdict there), and inside it no interval can lie wholly above or below itself
    assert all(v == "equal" or v.startswith("no verdict") for v in verdicts), verdicts
