"""The samplers: invariants for every one, the exact ancestral chain, and the fast samplers'
identity with the reference (same generator, same tokens) with their forward counts."""
import itertools
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import diffusion
import samplers
from helpers import (AdversarialDenoiser, OptimalDenoiserNet, all_sequences, examples, optimal_denoiser, random_dit,
                     seeds, tiny_world)

SCHEDULES = [diffusion.LogLinear, diffusion.Cosine]
EXACT = {  # every exact sampler and cache setting: each gives the reference's tokens
    "ancestral, batch cache": lambda final: samplers.Ancestral(final),
    "ancestral, no cache": lambda final: samplers.Ancestral(final, cache=False),
    "revealed, sequence cache": lambda final: samplers.CachedAncestral(final, "sequence"),
    "revealed, batch cache": lambda final: samplers.CachedAncestral(final, "batch"),
    "revealed, no cache": lambda final: samplers.CachedAncestral(final, "none"),
}


class Recorder(torch.nn.Module):
    """A network's trunk and head, recording the tokens of every trunk call."""

    def __init__(self, net):
        super().__init__()
        self.net, self.calls = net, []
        self.config = getattr(net, "config", None)

    def trunk(self, z, sigma):
        self.calls.append(z.clone())
        return samplers.trunk_and_head(self.net).trunk(z, sigma)

    def head(self, hidden, c):
        return samplers.trunk_and_head(self.net).head(hidden, c)

    def forward(self, z, sigma):
        return self.head(*self.trunk(z, sigma))


def start(V, L, N, prompt_len, seed):
    z = torch.full((N, L), V)
    P = min(prompt_len, L)
    z[:, :P] = torch.randint(0, V, (N, P), generator=torch.Generator().manual_seed(seed))
    return z, P


class Trace:
    def __init__(self, z):
        self.states = [z.clone()]

    def __call__(self, i, z):
        self.states.append(z.clone())


# ----------------------------------------------------------------------------- invariants, every sampler

adversarial_runs = st.fixed_dictionaries(dict(
    seed=seeds, V=st.integers(1, 5), L=st.integers(1, 8), N=st.integers(1, 3), steps=st.integers(1, 12),
    prompt_len=st.integers(0, 8), scale=st.sampled_from([1.0, 50.0, 1e4, 1e30]),
    mask_logit=st.sampled_from([0.0, 1e4, 1e30]), final=st.sampled_from(["argmax", "sample"]),
    # analytic and euler need SEDD scores: tests/test_score_samplers.py
    sampler=st.sampled_from(sorted(set(samplers.SAMPLERS) - {"analytic", "euler"})), time_conditioned=st.booleans()))


@examples(60)
@given(run=adversarial_runs)
def test_every_sampler_never_remasks_keeps_the_prompt_and_leaves_no_mask(run):
    """Fresh random logits at every call (huge ones, mass on MASK): each step only turns MASK into
    real tokens, prompt positions never change, and the output is all real tokens."""
    V = run["V"]
    z, P = start(V, run["L"], run["N"], run["prompt_len"], run["seed"])
    process = diffusion.MaskingProcess(V, time_conditioned=run["time_conditioned"])
    trace, net = Trace(z), AdversarialDenoiser(V, run["seed"], run["scale"], run["mask_logit"])
    net.config = SimpleNamespace(seq_len=max(1, run["L"] // 2))  # semi-AR: two or more windows
    out, forwards = samplers.make_sampler(run["sampler"], run["final"])(
        net, process, z.clone(), run["steps"], torch.Generator().manual_seed(run["seed"]), trace)
    states = trace.states + [out]
    for before, after in zip(states, states[1:]):
        assert torch.equal(after[before != V], before[before != V])   # carry-over: no re-masking
        assert ((after == V).sum(1) <= (before == V).sum(1)).all()
    assert torch.equal(out[:, :P], z[:, :P])
    assert ((out >= 0) & (out < V)).all()
    assert 0 <= forwards <= run["N"] * (run["steps"] + 1) * (run["L"] if run["sampler"] == "semi-ar" else 1)


def test_unknown_sampler_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown sampler"):
        samplers.make_sampler("nope")
    with pytest.raises(ValueError, match="steps"):
        samplers.make_sampler()(random_dit(0, 3, 4), diffusion.MaskingProcess(3), torch.full((1, 4), 3), 0)


def test_each_process_samples_with_its_own_sampler_unless_one_is_named():
    """MDLM: cached (exact, least work); SEDD: analytic; uniform-state: ancestral (no MASK to reveal).
    Every default applies to its process, and a named sampler always wins."""
    from processes.registry import PROCESSES
    defaults = {kind: samplers.sampler_name(process=make(5)) for kind, make in PROCESSES.items()}
    assert defaults == {"absorbing": "cached", "uniform": "ancestral", "sedd": "analytic"}
    assert samplers.sampler_name() == samplers.DEFAULT_SAMPLER
    assert all(samplers.sampler_name("topk", make(5)) == "topk" for make in PROCESSES.values())
    for kind, make in PROCESSES.items():
        process = make(5)
        z = process.prior(2, 4, "cpu") if process.mask_id is None else torch.full((2, 4), process.mask_id)
        tokens, _ = samplers.make_sampler(process=process)(random_dit(0, 5, 4), process, z, 2, torch.Generator().manual_seed(0))
        assert ((tokens >= 0) & (tokens < 5)).all(), kind


# ----------------------------------------------------------------------------- the exact chain

def exact_sampler_distribution(xs, p, V, steps, t_min, schedule):
    """Output distribution of `steps` ancestral steps plus the argmax fill, by propagating a
    distribution over all (V+1)^L states with the optimal denoiser of the tiny world."""
    L = xs.shape[1]
    states = all_sequences(V + 1, L)
    index = {tuple(z): j for j, z in enumerate(states)}
    denoised = [optimal_denoiser(xs, p, z, V) for z in states]
    times = np.linspace(1.0, t_min, steps + 1)
    dist = np.zeros(len(states))
    dist[index[(V,) * L]] = 1.0
    for t, s in zip(times[:-1], times[1:]):
        alpha_t, alpha_s = (float(schedule.alpha(torch.tensor(time, dtype=torch.float64))) for time in (t, s))
        unmask, stay_masked = (alpha_s - alpha_t) / (1 - alpha_t), (1 - alpha_s) / (1 - alpha_t)
        new = np.zeros_like(dist)
        for j, z in enumerate(states):
            if dist[j] == 0:
                continue
            per_position = [list(np.eye(V + 1)[zi]) if zi != V else list(unmask * denoised[j][i]) + [stay_masked]
                            for i, zi in enumerate(z)]
            for z_new in itertools.product(range(V + 1), repeat=L):
                new[index[z_new]] += dist[j] * np.prod([per_position[i][v] for i, v in enumerate(z_new)])
        dist = new
    out = np.zeros(len(xs))
    for j, z in enumerate(states):
        filled = np.where(z == V, denoised[j].argmax(1), z)
        out[np.flatnonzero((xs == filled).all(1))[0]] += dist[j]
    return out


@pytest.mark.parametrize("schedule", SCHEDULES)
@examples(6)
@given(world=st.tuples(st.integers(2, 3), st.integers(2, 3), seeds), steps=st.integers(1, 5),
       t_min=st.sampled_from([diffusion.T_MIN, 0.4]))
def test_default_sampler_draws_from_the_exact_ancestral_chain(schedule, world, steps, t_min):
    V, L, seed = world
    xs, p = tiny_world(V, L, seed)
    N = 20_000
    process = diffusion.MaskingProcess(V, schedule())
    sampler = samplers.CachedAncestral(t_min=t_min)
    out, _ = sampler(OptimalDenoiserNet(xs, p, V), process, torch.full((N, L), V), steps,
                     torch.Generator().manual_seed(seed))
    counts = np.bincount(out.numpy() @ V ** np.arange(L - 1, -1, -1), minlength=len(xs))  # xs's order
    expected = exact_sampler_distribution(xs, p, V, steps, t_min, process.schedule)
    # each sequence's count ~ Binomial(N, q): 6 standard deviations (+1e-6 for q = 0)
    assert (np.abs(counts - N * expected) <= 6 * np.sqrt(N * expected * (1 - expected)) + 1e-6).all()


# ----------------------------------------------------------------------------- the fast samplers are exact

identity_runs = st.fixed_dictionaries(dict(
    seed=seeds, V=st.integers(2, 6), L=st.integers(1, 12), N=st.integers(1, 4), steps=st.integers(1, 20),
    prompt_len=st.integers(0, 4), final=st.sampled_from(["argmax", "sample"]), time_conditioned=st.booleans()))


@examples(30)
@given(run=identity_runs)
def test_every_exact_sampler_gives_the_reference_tokens_on_a_dit(run):
    """A real DiT (output layer applied to selected rows, trunk run on sub-batches): with the same
    generator every exact sampler makes the tokens of the reference, prompts included."""
    V = run["V"]
    z, _ = start(V, run["L"], run["N"], run["prompt_len"], run["seed"])
    model = random_dit(run["seed"] % 1000, V, run["L"])
    process = diffusion.MaskingProcess(V, time_conditioned=run["time_conditioned"])
    outputs = {name: make(run["final"])(model, process, z.clone(), run["steps"],
                                        torch.Generator().manual_seed(run["seed"]))[0]
               for name, make in EXACT.items()}
    for name, out in outputs.items():
        assert torch.equal(out, outputs["ancestral, no cache"]), name


@pytest.mark.parametrize("final", ["argmax", "sample"])
@pytest.mark.parametrize("temperature, top_p", [(0.7, 0.9), (1.6, 0.6), (0.5, 1.0)])
def test_every_exact_sampler_gives_the_reference_tokens_when_shaped(final, temperature, top_p):
    """SPEC.md §2.3 and §7.5: the cached samplers apply the output layer to revealed rows only, so
    the shaped network must shape that head too; at a temperature and nucleus every exact sampler
    still makes the reference's tokens (the plain ancestral sampler, whole output), and those differ
    from the unshaped ones, so the shaping reaches the draws."""
    V, L, N, steps, seed = 6, 12, 4, 8, 11
    z, _ = start(V, L, N, 2, seed)
    model = random_dit(seed, V, L)
    process = diffusion.MaskingProcess(V)

    def sample(make, net):
        return make(final)(net, process, z.clone(), steps, torch.Generator().manual_seed(seed))[0]
    shaped = samplers.shaped(model, process, temperature, top_p)
    reference = sample(EXACT["ancestral, no cache"], shaped)
    assert not torch.equal(reference, sample(EXACT["ancestral, no cache"], model))
    for name, make in EXACT.items():
        assert torch.equal(sample(make, shaped), reference), name


def forwards_and_reveals(run, mode):
    """The forward count of the revealed sampler with cache `mode`, the trunk calls, and the states."""
    V = run["V"]
    z, _ = start(V, run["L"], run["N"], run["prompt_len"], run["seed"])
    net = Recorder(random_dit(run["seed"] % 1000, V, run["L"]))
    trace = Trace(z)
    out, forwards = samplers.CachedAncestral("argmax", mode)(net, diffusion.MaskingProcess(V), z, run["steps"],
                                                      torch.Generator().manual_seed(run["seed"]), trace)
    return forwards, net.calls, trace.states + [out]


@examples(30)
@given(run=identity_runs)
def test_sequence_cache_runs_each_sequence_once_per_step_that_reveals_in_it(run):
    """Per-sequence caching: a sequence goes through the trunk exactly at the steps that reveal
    one of its positions (each such step changed it since its last forward), plus once for the
    final fill if MASK is left. The batch cache never does less work."""
    forwards, calls, states = forwards_and_reveals(run, "sequence")
    V = run["V"]
    steps = states[:-1]
    reveals = sum(((after != before).any(1) for before, after in zip(steps, steps[1:])), torch.zeros(run["N"]))
    final_fill = (steps[-1] == V).any(1)
    assert forwards == int((reveals + final_fill).sum()) == sum(len(c) for c in calls)
    batch_forwards, _, _ = forwards_and_reveals(run, "batch")
    assert batch_forwards >= forwards


class ConstantNet(torch.nn.Module):
    """Uniform logits at no cost: forward counts do not depend on the network's values."""

    def __init__(self, V, L):
        super().__init__()
        self.V = V

    def forward(self, z, sigma):
        return torch.zeros(*z.shape, self.V + 1)


@pytest.mark.parametrize("cache", ["sequence", "batch"])
def test_mean_forward_count_matches_its_formula(cache):
    """Over 400 sequences (batches of 4) of 32 positions at 32 steps, the mean sequence-forwards
    is the formula's, within 6 standard errors (each run's count lies in 0..33)."""
    V, L, steps, batch, runs = 3, 32, 32, 4, 100
    g = torch.Generator().manual_seed(0)
    counts = torch.tensor([samplers.CachedAncestral("argmax", cache)(ConstantNet(V, L), diffusion.MaskingProcess(V),
                                                                torch.full((batch, L), V), steps, g)[1] / batch
                           for _ in range(runs)], dtype=torch.float64)
    expected = samplers.expected_forwards(steps, L, batch, cache)
    assert abs(counts.mean() - expected) <= 6 * counts.std() / runs ** 0.5 + 1e-9


def test_sequence_cache_needs_fewer_forwards_than_the_batch_cache_at_l_steps():
    """Teachers sample at L steps: there, most steps reveal a token in SOME sequence of a batch
    of 8, while each sequence sees a reveal in only about (1 - 1/e) of the steps."""
    sequence, batch = (samplers.expected_forwards(1024, 1024, 8, cache) for cache in ("sequence", "batch"))
    assert 1024 * (1 - 1 / np.e) - 2 <= sequence <= 1024 * (1 - 1 / np.e) + 2
    assert batch > 1.5 * sequence


# ----------------------------------------------------------------------------- confidence decoding

@examples(25)
@given(seed=seeds, V=st.integers(2, 6), L=st.integers(1, 12), N=st.integers(1, 3), steps=st.integers(1, 12),
       prompt_len=st.integers(0, 4))
def test_confidence_reveals_its_quota_of_the_most_confident_positions(seed, V, L, N, steps, prompt_len):
    """At temperature 0 every step reveals, in each sequence, exactly its quota of positions, and
    they are the MASK positions where the model's top probability is highest."""
    z, _ = start(V, L, N, prompt_len, seed)
    model, process = random_dit(seed % 1000, V, L), diffusion.MaskingProcess(V)
    sampler, trace = samplers.Confidence(temperature=0), Trace(z)
    sampler(model, process, z, steps, torch.Generator().manual_seed(seed), trace)
    times = diffusion.time_grid(steps)
    for i, (before, after) in enumerate(zip(trace.states, trace.states[1:])):
        masked = before == V
        quota = sampler.quotas(process, masked.sum(1), times[i + 1], times[i], i == steps - 1)
        changed = after != before
        assert torch.equal(changed.sum(1), quota)
        top = model(before, torch.zeros(N)).double()[..., :V].softmax(-1).max(-1).values
        for n in range(N):
            if quota[n] > 0:
                kept = top[n][changed[n]].min()
                assert (top[n][masked[n] & ~changed[n]] <= kept + 1e-6).all()  # float32 logits
    assert not (trace.states[-1] == V).any()


# ----------------------------------------------------------------------------- semi-autoregressive

@examples(10)
@given(seed=seeds, extra=st.integers(1, 20), block=st.integers(1, 8), prompt_len=st.integers(0, 3))
def test_semi_ar_extends_the_context_window_by_window(seed, extra, block, prompt_len):
    """Past the context (8 here): the first window is the inner sampler's own sample, every later
    window's tokens are made with the last 8 - block tokens fixed, and nothing is left MASK."""
    V, context = 4, 8
    model = random_dit(seed % 1000, V, context)
    z, _ = start(V, context + extra, 2, prompt_len, seed)
    process, inner = diffusion.MaskingProcess(V), samplers.CachedAncestral()
    out, forwards = samplers.SemiAR(inner, block)(model, process, z, 4, torch.Generator().manual_seed(seed))
    alone, _ = inner(model, process, z[:, :context], 4, torch.Generator().manual_seed(seed))
    assert torch.equal(out[:, :context], alone)
    assert torch.equal(out[:, :prompt_len], z[:, :prompt_len])
    assert ((out >= 0) & (out < V)).all() and forwards > 0
    with pytest.raises(ValueError, match="block"):
        samplers.SemiAR(inner, context + 1)(model, process, z, 4)
