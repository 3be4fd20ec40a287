"""Invariants of SDTT (SPEC.md §3): Algorithm 1's targets, the divergences of appendix B,
the two teacher samplers, the step schedule, and one round of Algorithm 2. Rounds that chain
are tested through train.py in test_distill.py."""
import copy

import pytest
import torch
import torch.nn as nn
from hypothesis import given
from hypothesis import strategies as st

import data
import diffusion
import helpers
import sdtt
from helpers import examples, seeds

V, L = 6, 8
MASK = V
PROCESS = diffusion.MaskingProcess(V)


def random_dit(seed, vocab_size=V, seq_len=L):
    return helpers.random_dit(seed, vocab_size, seq_len)


def perturbed_copy(model, seed, scale=0.05):
    torch.manual_seed(seed)
    student = copy.deepcopy(model)
    with torch.no_grad():
        for p in student.parameters():
            p.add_(scale * torch.randn_like(p))
    return student


def noised_batch(seed, n=8, t_low=0.2):
    """Clean tokens x, start times t in [t_low, 1] and the mask uniforms u."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, V, (n, L), generator=g)
    t = t_low + (1 - t_low) * torch.rand(n, generator=g)
    u = torch.rand(n, L, generator=g)
    return x, t, u


class RecordingTeacher(nn.Module):
    """A stand-in teacher: fresh seeded random logits on every call, and a record of its
    inputs and outputs, so a test can replay Algorithm 1 step by step."""

    def __init__(self, seed):
        super().__init__()
        self.generator = torch.Generator().manual_seed(seed)
        self.inputs, self.outputs = [], []

    def forward(self, tokens, sigma):
        logits = 2 * torch.randn(*tokens.shape, V + 1, generator=self.generator)
        self.inputs.append(tokens.clone())
        self.outputs.append(logits.clone())
        return logits


class TableDenoiser(nn.Module):
    """Logits that ignore the tokens: one learnable row per (example, position). With it, what a
    position contributes to the loss cannot depend on the rest of the sequence."""

    def __init__(self, seed, n):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.logits = nn.Parameter(2 * torch.randn(n, L, V + 1, generator=g))

    def forward(self, tokens, sigma):
        return self.logits


# ----------------------------------------------------------------------------- teacher targets

@pytest.mark.parametrize("divergence", list(sdtt.DIVERGENCES))
@examples(4)
@given(seed=seeds)
def test_one_step_targets_are_the_teachers_log_probs_so_a_copy_of_the_teacher_has_zero_loss(divergence, seed):
    teacher = random_dit(seed % 1000)
    x, t, u = noised_batch(seed)
    x_t = PROCESS.forward_sample(x, t, u)
    masked = x_t == MASK
    assert masked.any()
    target = sdtt.teacher_targets(teacher, x_t, t, 1, 0.1, PROCESS)
    assert torch.equal(target[masked], PROCESS.denoise(teacher, x_t, t)[masked])
    loss = sdtt.distillation_loss(copy.deepcopy(teacher), teacher, x, t, u, PROCESS, 1, 0.1, divergence)
    assert loss.item() == 0.0


@examples(10)
@given(seed=seeds, sampler=st.sampled_from(list(sdtt.TEACHER_SAMPLERS)))
def test_two_step_targets_hold_the_log_probs_of_the_step_that_unmasked_each_position(seed, sampler):
    """Algorithm 1 lines 9-10 and 13, replayed: a position unmasked by step i carries step i's
    log-probs; one still MASK after the last step carries the last step's."""
    x, t, u = noised_batch(seed, n=16, t_low=0.6)
    delta = 0.2
    x_t = PROCESS.forward_sample(x, t, u)
    teacher = RecordingTeacher(seed)
    target = sdtt.teacher_targets(teacher, x_t, t, 2, delta, PROCESS, sampler=sampler,
                                  generator=torch.Generator().manual_seed(seed))

    step, g = sdtt.TEACHER_SAMPLERS[sampler], torch.Generator().manual_seed(seed)
    log_x0 = diffusion.subs_log_probs(teacher.outputs[0], x_t, MASK)
    z1 = step(log_x0, x_t, t - delta, t, PROCESS, g)
    log_x1 = diffusion.subs_log_probs(teacher.outputs[1], z1, MASK)
    z2 = step(log_x1, z1, t - delta - delta, t - delta, PROCESS, g)
    assert len(teacher.inputs) == 2
    assert torch.equal(teacher.inputs[0], x_t) and torch.equal(teacher.inputs[1], z1)

    first, second, never = z1 != x_t, z2 != z1, z2 == MASK
    assert first.any() and second.any() and never.any()  # every case is exercised
    assert torch.equal(first | second | never, x_t == MASK)
    assert torch.equal(target[first], log_x0[first])
    assert torch.equal(target[second], log_x1[second])
    assert torch.equal(target[never], log_x1[never])


@examples(12)
@given(seed=seeds, n_steps=st.sampled_from([1, 2, 4]), sampler=st.sampled_from(list(sdtt.TEACHER_SAMPLERS)))
def test_targets_at_masked_positions_are_log_distributions_with_no_mass_on_mask(seed, n_steps, sampler):
    teacher = random_dit(seed % 1000)
    x, t, u = noised_batch(seed)
    x_t = PROCESS.forward_sample(x, t, u)
    torch.manual_seed(seed)
    target = sdtt.teacher_targets(teacher, x_t, t, n_steps, 0.15, PROCESS, sampler=sampler)[x_t == MASK]
    assert target.shape[0] > 0
    assert torch.allclose(target[:, :V].logsumexp(-1), torch.zeros(target.shape[0]), atol=1e-5)
    assert (target[:, MASK] == -torch.inf).all()


@pytest.mark.parametrize("divergence", list(sdtt.DIVERGENCES))
@examples(4)
@given(seed=seeds)
def test_positions_unmasked_in_x_t_contribute_no_loss(divergence, seed):
    """Token-blind student and teacher: changing the data, or the student's output, where x_t is
    not MASK leaves the loss unchanged (the teacher's draws are re-seeded each time)."""
    x, t, u = noised_batch(seed)
    student, teacher = TableDenoiser(seed, len(x)), TableDenoiser(seed + 1, len(x))
    revealed = PROCESS.forward_sample(x, t, u) != MASK
    assert revealed.any()

    def loss(student, x):
        torch.manual_seed(seed)
        return sdtt.distillation_loss(student, teacher, x, t, u, PROCESS, 2, 0.1, divergence).item()

    other_student = copy.deepcopy(student)
    with torch.no_grad():
        other_student.logits[revealed] = 5 * torch.randn(int(revealed.sum()), V + 1)
    reference = loss(student, x)
    assert loss(student, torch.where(revealed, (x + 1) % V, x)) == reference
    assert loss(other_student, x) == reference


@pytest.mark.parametrize("divergence", list(sdtt.DIVERGENCES))
def test_loss_is_the_mean_over_masked_positions_of_each_positions_loss(divergence):
    """Token-blind models, one teacher step: the loss with many positions masked is the average
    of the losses with one of them masked at a time (no dilution by unmasked positions)."""
    x, _, u = noised_batch(0)
    t = torch.full((len(x),), 0.5)
    student, teacher = TableDenoiser(1, len(x)), TableDenoiser(2, len(x))
    masked = u < 1 - PROCESS.alpha(t)[:, None]
    assert 1 < masked.sum() < masked.numel()
    singles = []
    for n, i in masked.nonzero().tolist():
        only = torch.ones_like(u)
        only[n, i] = 0.0
        singles.append(sdtt.distillation_loss(student, teacher, x, t, only, PROCESS, 1, 0.1, divergence))
    loss = sdtt.distillation_loss(student, teacher, x, t, u, PROCESS, 1, 0.1, divergence)
    assert torch.allclose(loss, torch.stack(singles).mean(), rtol=1e-5)


def test_distillation_loss_is_the_reverse_kl_of_the_student_from_the_one_step_targets():
    """SDTT Alg. 2 line 11 with appendix B.1's default: one teacher step makes the targets the
    teacher's own distribution at each MASK (Alg. 1 line 13), so the loss is the mean over the masked
    positions of KL(student || teacher), written out here from the two tables' logits in float64."""
    x, _, u = noised_batch(0)
    t = torch.full((len(x),), 0.5)
    student, teacher = TableDenoiser(1, len(x)), TableDenoiser(2, len(x))
    masked = u < 1 - PROCESS.alpha(t)[:, None]   # forward_mask's rule: MASK with chance 1 - alpha_t
    assert 1 < masked.sum() < masked.numel()
    p = student.logits.detach()[masked][:, :V].double().softmax(-1)   # SUBS: no mass on MASK
    q = teacher.logits.detach()[masked][:, :V].double().softmax(-1)
    reverse, forward = (p * (p / q).log()).sum(-1).mean(), (q * (q / p).log()).sum(-1).mean()
    assert (reverse - forward).abs() > 0.1       # the direction matters on these tables
    loss = sdtt.distillation_loss(student, teacher, x, t, u, PROCESS, 1, 0.1)
    assert torch.allclose(loss.double(), reverse, rtol=1e-5)  # float32 log-softmax against float64


# ----------------------------------------------------------------------------- divergences

@examples(40)
@given(seed=seeds, scale=st.sampled_from([0.1, 1.0, 10.0, 100.0]), name=st.sampled_from(list(sdtt.DIVERGENCES)))
def test_divergences_are_nonnegative_and_zero_exactly_when_the_distributions_agree(seed, scale, name):
    divergence = sdtt.DIVERGENCES[name]
    g = torch.Generator().manual_seed(seed)
    logits_p, logits_q = (scale * torch.randn(32, 7, generator=g, dtype=torch.float64) for _ in range(2))
    p, q = logits_p.log_softmax(-1), logits_q.log_softmax(-1)
    assert (divergence(p, q) >= -1e-12).all()  # float64 rounding of near-one-hot rows
    # strictly positive wherever the two differ measurably (at scale 100 both may round to one-hot)
    differ = (p.exp() - q.exp()).abs().amax(-1) > 1e-6
    assert (divergence(p, q)[differ] > 0).all()
    assert (divergence(p, p) == 0).all()
    same_distribution = (logits_p + 3.0).log_softmax(-1)  # other logits, same probabilities
    assert torch.allclose(divergence(p, same_distribution), torch.zeros(32, dtype=torch.float64), atol=1e-12)


@examples(20)
@given(seed=seeds, scale=st.sampled_from([0.1, 1.0, 10.0, 1e3]))
def test_total_variation_is_at_most_one(seed, scale):
    g = torch.Generator().manual_seed(seed)
    p, q = ((scale * torch.randn(32, 7, generator=g, dtype=torch.float64)).log_softmax(-1) for _ in range(2))
    assert (sdtt.total_variation(p, q) <= 1).all()
    disjoint = torch.log(torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64))
    assert sdtt.total_variation(disjoint[:1], disjoint[1:]).item() == 1.0


@examples(20)
@given(seed=seeds, draws=st.integers(2, 6), scale=st.sampled_from([0.3, 3.0]))
def test_reverse_kl_to_random_targets_is_least_at_their_normalised_geometric_mean(seed, draws, scale):
    """E_k KL(s || T_k) = KL(s || g) + const with g = softmax(mean_k log T_k): the identity
    behind scripts/sdtt_target_entropy.py and the CPU presets' choice of the MSE."""
    g = torch.Generator().manual_seed(seed)
    targets = (scale * torch.randn(draws, 5, 7, generator=g, dtype=torch.float64)).log_softmax(-1)
    geometric = targets.mean(0).log_softmax(-1)
    students = (scale * torch.randn(3, 5, 7, generator=g, dtype=torch.float64)).log_softmax(-1)
    expected = sdtt.reverse_kl(geometric.expand_as(targets), targets).mean(0)
    for s in students:
        excess = sdtt.reverse_kl(s.expand_as(targets), targets).mean(0) - expected
        assert torch.allclose(excess, sdtt.reverse_kl(s, geometric), atol=1e-10)


# ----------------------------------------------------------------------------- teacher samplers

@examples(25)
@given(seed=seeds, last_step=st.booleans())
def test_analytic_and_ancestral_teacher_steps_make_the_same_draws_for_the_same_seed(seed, last_step):
    """For the absorbing process the tau-leaping update is algebraically the exact posterior."""
    g = torch.Generator().manual_seed(seed)
    n = 16
    z_t = torch.where(torch.rand(n, L, generator=g) < 0.7, MASK, torch.randint(0, V, (n, L), generator=g))
    log_x = diffusion.subs_log_probs(2 * torch.randn(n, L, V + 1, generator=g), z_t, MASK)
    t_t = 0.01 + 0.99 * torch.rand(n, generator=g)
    t_s = torch.zeros(n) if last_step else t_t * torch.rand(n, generator=g)
    ancestral = sdtt.ancestral_step(log_x, z_t, t_s, t_t, PROCESS, torch.Generator().manual_seed(seed))
    analytic = sdtt.analytic_step(log_x, z_t, t_s, t_t, PROCESS, torch.Generator().manual_seed(seed))
    assert torch.equal(ancestral, analytic)


# ----------------------------------------------------------------------------- step schedule

def test_step_schedule_halves_each_round_for_two_teacher_steps_and_quarters_for_four():
    assert sdtt.step_schedule(1024, 2, 7) == [1024, 512, 256, 128, 64, 32, 16, 8]
    assert sdtt.step_schedule(1024, 4, 5) == [1024, 256, 64, 16, 4, 1]


@examples(20)
@given(start=st.integers(1, 4096), n=st.sampled_from([2, 4, 8]), rounds=st.integers(1, 8))
def test_step_schedule_divides_by_n_each_round_or_raises_value_error(start, n, rounds):
    if all(start % n ** (j + 1) == 0 for j in range(rounds)):
        schedule = sdtt.step_schedule(start, n, rounds)
        assert len(schedule) == rounds + 1 and schedule[0] == start
        assert all(a == b * n for a, b in zip(schedule, schedule[1:]))
    else:
        with pytest.raises(ValueError):
            sdtt.step_schedule(start, n, rounds)


# ----------------------------------------------------------------------------- one round (Algorithm 2)

def test_teacher_gets_no_gradient_and_keeps_its_weights_during_a_round():
    teacher = random_dit(0)  # requires_grad left on: the loss itself must not reach the teacher
    before = copy.deepcopy(teacher.state_dict())
    student = perturbed_copy(teacher, 1)
    optimizer = torch.optim.AdamW(student.parameters(), lr=1e-3)
    for step in range(3):
        x, t, u = noised_batch(step)
        optimizer.zero_grad()
        sdtt.distillation_loss(student, teacher, x, t, u, PROCESS, 2, 0.1).backward()
        optimizer.step()
    assert all(p.grad is None for p in teacher.parameters())
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())
    assert any(not torch.equal(before[k], v) for k, v in student.state_dict().items())


def test_a_short_round_lowers_the_distillation_loss():
    """A perturbed copy of a (random) micro teacher, 30 AdamW steps on Markov-chain data: the
    loss on a fixed batch, with the teacher's draws fixed by a seed, goes down."""
    source = data.MarkovSource(vocab_size=8, seq_len=8)
    process = diffusion.MaskingProcess(8)
    teacher = random_dit(0, vocab_size=8, seq_len=8)
    student = perturbed_copy(teacher, 1)
    g = torch.Generator().manual_seed(0)

    def batch(n):
        x = source.sample(n, g)
        return x, diffusion.antithetic_times(torch.rand((), generator=g).item(), n), torch.rand(x.shape, generator=g)

    fixed = batch(64)

    @torch.no_grad()
    def fixed_loss():
        torch.manual_seed(0)
        return sdtt.distillation_loss(student, teacher, *fixed, process, 2, 0.05).item()

    before = fixed_loss()
    assert before > 0
    optimizer = torch.optim.AdamW(student.parameters(), lr=3e-3)
    for _ in range(30):
        optimizer.zero_grad()
        sdtt.distillation_loss(student, teacher, *batch(32), process, 2, 0.05).backward()
        optimizer.step()
    assert fixed_loss() < 0.8 * before
