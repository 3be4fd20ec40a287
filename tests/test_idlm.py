"""Invariants of IDLM (SPEC.md §6): Theorem 3.1 checked exactly in a tiny world, the student step's
gradient, the gap defined once (a process's closed form equals it), the fixed point student = fake
= teacher, the fake step, and the agreement of the soft-target MDLM loss with the hard one."""
import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

import diffusion
import helpers
import idlm
import small_world
from helpers import all_sequences, examples, mask_patterns, seeds
from processes import duo
from processes.registry import PROCESSES as REGISTERED
from processes.uniform import UniformProcess

V, L = 6, 8
MASK = V
PROCESS = diffusion.MaskingProcess(V)


# ----------------------------------------------------------------------------- Theorem 3.1, exactly
# A world of V^L sequences, small enough to enumerate. With alpha_t = 1 - t, a mask pattern
# with k of the L positions masked has weight integral_0^1 (1/t) t^k (1-t)^(L-k) dt = B(k, L-k+1),
# so the continuous-time MDLM loss of a denoiser f on a sequence x is
#     L(f, x) = sum over patterns of B(k, L-k+1) * sum over masked i of -log f(z)[i][x_i],
# z being x with the pattern's positions replaced by MASK (id V).

def pattern_weight(k, length):
    """B(k, L-k+1) = (k-1)! (L-k)! / L!."""
    return math.factorial(k - 1) * math.factorial(length - k) / math.factorial(length)


def optimal_denoiser(xs, p, vocab):
    """f_p(z)[i][v] = p(x_i = v | the revealed positions of z): [L, V] per z."""
    return lambda z: helpers.optimal_denoiser(xs, p, z, vocab)


def log_at_every_state(f, zs):
    """log f(z) [Z, L, V] at every state z of zs (a revealed position's zeros floored at 1e-300)."""
    return torch.tensor(np.log(np.maximum(np.stack([f(z.numpy()) for z in zs]), 1e-300)))


def mdlm_loss(f, x, vocab):
    """L(f, x): the continuous-time NELBO of x under denoiser f, by enumeration."""
    total = 0.0
    for masked in mask_patterns(len(x)):
        z = np.where(masked, vocab, x)
        total += pattern_weight(int(masked.sum()), len(x)) * -np.log(f(z)[masked, x[masked]]).sum()
    return total


def expected_loss(f, xs, p, vocab):
    """E_{x ~ p} L(f, x)."""
    return sum(px * mdlm_loss(f, x, vocab) for x, px in zip(xs, p))


tiny_worlds = st.tuples(st.integers(2, 3), st.integers(2, 3), seeds)


@examples(15)
@given(world=tiny_worlds, mix=st.sampled_from([0.0, 0.01, 0.3, 1.0]))
def test_teacher_loss_gap_on_student_samples_is_at_least_kl_and_zero_only_at_the_data(world, mix):
    """IDLM Theorem 3.1: E_{p_theta} L(f*) - min_f E_{p_theta} L(f) >= KL(p_theta || p*) >= 0,
    with 0 exactly when p_theta = p*. The minimum is attained by f_{p_theta}: the loss is a sum
    of cross-entropies, one per (pattern, masked position), each minimised by the conditional.
    The gap is the library's student objective (idlm.teacher_fake_gap) integrated exactly over t and
    z, and equals the difference of the hand-enumerated losses above (alpha_t = 1 - t)."""
    vocab, length, seed = world
    xs = all_sequences(vocab, length)
    rng = np.random.default_rng(seed)
    p_star = rng.dirichlet(np.ones(len(xs)))
    p_theta = (1 - mix) * p_star + mix * rng.dirichlet(np.ones(len(xs)))
    teacher, best = optimal_denoiser(xs, p_star, vocab), optimal_denoiser(xs, p_theta, vocab)
    enumerated = expected_loss(teacher, xs, p_theta, vocab) - expected_loss(best, xs, p_theta, vocab)
    forward = small_world.absorbing_forward(vocab, xs)
    log_teacher, log_best = (log_at_every_state(f, forward[0]) for f in (teacher, best))
    gap = small_world.library_gap(diffusion.MaskingProcess(vocab, diffusion.LogLinear(0.0)), forward,
                                  lambda alpha: log_teacher, lambda alpha: log_best, xs, p_theta, vocab, nodes=24)
    assert abs(gap - enumerated) < 1e-10
    kl = float((p_theta * np.log(p_theta / p_star)).sum())
    assert kl >= 0
    assert gap >= kl - 1e-10
    if mix == 0.0:
        assert abs(gap) <= 1e-10
    else:
        assert gap > 1e-10


@examples(10)
@given(world=tiny_worlds, mix=st.floats(0.01, 1.0))
def test_optimal_denoiser_of_p_theta_has_the_least_expected_loss_under_p_theta(world, mix):
    """The minimiser used above: any other denoiser (here f_{p_theta} blended with another one at
    the masked positions) has a larger expected loss."""
    vocab, length, seed = world
    xs = all_sequences(vocab, length)
    rng = np.random.default_rng(seed)
    p_theta, p_other = rng.dirichlet(np.ones(len(xs))), rng.dirichlet(np.ones(len(xs)))
    best, other = optimal_denoiser(xs, p_theta, vocab), optimal_denoiser(xs, p_other, vocab)
    blend = lambda z: (1 - mix) * best(z) + mix * other(z)  # revealed positions stay one-hot
    assert expected_loss(blend, xs, p_theta, vocab) > expected_loss(best, xs, p_theta, vocab) + 1e-12


# ----------------------------------------------------------------------------- the student step (eq. 11)

@examples(15)
@given(seed=seeds, n=st.integers(1, 4))
def test_student_objective_gradient_is_w_times_log_fake_minus_log_teacher_on_masked_positions(seed, n):
    """d/d x0_soft of L(f*, x0_soft) - L(f_hat, x0_soft) = w(t) (log f_hat - log f*) / (N L) where
    z_t is MASK, and 0 elsewhere (where SUBS makes both log-probs -inf off the carried token)."""
    g = torch.Generator().manual_seed(seed)
    z_t = torch.where(torch.rand(n, L, generator=g) < 0.5, MASK, torch.randint(0, V, (n, L), generator=g))
    t = 0.05 + 0.95 * torch.rand(n, generator=g)
    log_teacher, log_fake = (diffusion.subs_log_probs(2 * torch.randn(n, L, V + 1, generator=g), z_t, MASK)[..., :V]
                             for _ in range(2))
    x0_soft = torch.randn(n, L, V, generator=g).softmax(-1).requires_grad_()
    loss = idlm.teacher_fake_gap(log_teacher, log_fake, x0_soft, z_t, t, PROCESS)
    (grad,) = torch.autograd.grad(loss, x0_soft)
    masked = (z_t == MASK).unsqueeze(-1)
    w = 1 / t  # the log-linear schedule's weight
    expected = torch.where(masked, w[:, None, None] * (log_fake - log_teacher), torch.zeros(())) / (n * L)
    assert torch.allclose(grad, expected, rtol=1e-5, atol=1e-7)
    assert (grad[~masked.expand_as(grad)] == 0).all()


def random_dit(seed, vocab_size=V, seq_len=L):
    return helpers.random_dit(seed, vocab_size, seq_len)


def batch(seed, n=8):
    """Clean tokens x, times t~ and mask uniforms u, as train.py hands them to the losses."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, V, (n, L), generator=g)
    t = diffusion.antithetic_times(torch.rand((), generator=g).item(), n)
    return x, t, torch.rand(n, L, generator=g)


@examples(5)
@given(seed=seeds)
def test_student_loss_is_zero_when_student_fake_and_teacher_are_one_network(seed):
    teacher = random_dit(seed % 1000)
    student, fake = copy.deepcopy(teacher), copy.deepcopy(teacher)
    torch.manual_seed(seed)
    loss, logs = idlm.student_loss(student, teacher, fake, *batch(seed), PROCESS)
    assert loss.item() == 0.0
    assert logs["teacher_loss"] == logs["fake_loss_on_student"] > 0


PROCESSES = {"absorbing": lambda: PROCESS, "uniform": lambda: UniformProcess(V),
             "uniform-gaussian": lambda: duo.Curriculum(UniformProcess(V), tau=0.1)}


@pytest.mark.parametrize("name", PROCESSES)
def test_alternating_steps_train_only_their_own_network_and_never_the_teacher(name):
    """Three copies of one network; three rounds of fake step then student step with AdamW.
    The teacher (requires_grad left on) gets no gradient and keeps its weights; the fake step
    gives the student no gradient, and the student step gives the fake none, also when the
    student step differentiates both through their soft inputs (the Gaussian IDLM-Duo)."""
    process = PROCESSES[name]()
    teacher = random_dit(0)
    before = copy.deepcopy(teacher.state_dict())
    fake, student = copy.deepcopy(teacher), copy.deepcopy(teacher)
    fake_optimizer = torch.optim.AdamW(fake.parameters(), lr=1e-3)
    student_optimizer = torch.optim.AdamW(student.parameters(), lr=1e-3)
    for step in range(3):
        torch.manual_seed(step)
        fake_optimizer.zero_grad(set_to_none=True)
        student_optimizer.zero_grad(set_to_none=True)
        idlm.fake_loss(fake, student, *batch(step), process).backward()
        assert all(p.grad is None for p in student.parameters())
        fake_optimizer.step()
        fake_optimizer.zero_grad(set_to_none=True)
        idlm.student_loss(student, teacher, fake, *batch(100 + step), process)[0].backward()
        assert all(p.grad is None for p in fake.parameters())
        student_optimizer.step()
    assert all(p.grad is None for p in teacher.parameters())
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())
    for trained in (fake, student):
        assert any(not torch.equal(before[k], v) for k, v in trained.state_dict().items())


@pytest.mark.parametrize("process", [PROCESS, UniformProcess(V)], ids=["absorbing", "uniform"])
def test_the_no_score_student_step_is_the_discrete_relaxation_with_constant_network_outputs(process):
    """Without --tau and without the score term (idlm.Choices(); --idlm-gradient no-score, MDLM's default)
    the student step is discrete z_t drawn from the detached student output, teacher and fake evaluated
    without a graph, `process.loss_gap`. Same seed, so the same numbers, bit for bit: the loss and the
    student's gradient."""
    teacher, fake, student = random_dit(0), random_dit(1), random_dit(2)
    x, t, u = batch(3)
    torch.manual_seed(4)
    loss, _ = idlm.student_loss(student, teacher, fake, x, t, u, process)
    got = torch.autograd.grad(loss, list(student.parameters()), allow_unused=True)
    torch.manual_seed(4)
    x0 = process.denoise(student, process.forward_sample(x, t, u), t)[..., :V].exp()
    t_loss = diffusion.SAMPLING_EPS + (1 - diffusion.SAMPLING_EPS) * torch.rand(x.shape[0])
    z_t = process.forward_sample_soft(x0.detach(), t_loss)
    with torch.no_grad():
        log_teacher, log_fake = (process.loss_log_outputs(m, z_t, t_loss) for m in (teacher, fake))
    expected = process.loss_gap(log_teacher, log_fake, x0, z_t, t_loss)
    assert torch.equal(loss, expected)
    for a, b in zip(got, torch.autograd.grad(expected, list(student.parameters()), allow_unused=True)):
        assert (a is None and b is None) or torch.equal(a, b)


def random_outputs(process, z_t, generator):
    """Log-outputs a network could give for soft_loss, over the V real tokens, float64: SUBS log-probs
    (absorbing), unnormalised log-scores (SEDD), log-softmax over the states (uniform)."""
    raw = 2 * torch.randn(*z_t.shape, V + 1, generator=generator, dtype=torch.float64)
    if process.has_scores:
        return raw[..., :V]
    if process.has_mask:
        return diffusion.subs_log_probs(raw, z_t, MASK).double()[..., :V]
    return raw[..., :V].log_softmax(-1)


@pytest.mark.parametrize("name", sorted(REGISTERED))
@examples(8)
@given(seed=seeds)
def test_the_gap_is_the_teacher_soft_loss_minus_the_fakes_in_value_and_gradient(name, seed):
    """IDLM eq. 11's objective is defined once, in idlm.teacher_fake_gap: soft_loss(teacher) -
    soft_loss(fake) on the same z_t. A process's closed form (process.loss_gap, one sum) equals that
    difference in value and in its gradient w.r.t. the student's output x0, to float64 rounding of
    the terms compared (each element's tolerance scales with the two losses' own terms there)."""
    process, g = REGISTERED[name](V), torch.Generator().manual_seed(seed)
    n = 3
    t = 0.05 + 0.95 * torch.rand(n, generator=g, dtype=torch.float64)
    x0 = torch.randn(n, L, V, generator=g, dtype=torch.float64).softmax(-1).requires_grad_()
    z_t = process.forward_sample_soft(x0.detach(), t, g)
    log_teacher, log_fake = (random_outputs(process, z_t, g) for _ in range(2))
    losses = [process.soft_loss(log_f, x0, z_t, t) for log_f in (log_teacher, log_fake)]
    grads = [torch.autograd.grad(loss, x0)[0] for loss in losses]
    gap = idlm.teacher_fake_gap(log_teacher, log_fake, x0, z_t, t, process)
    (gap_grad,) = torch.autograd.grad(gap, x0)
    assert abs(gap.item() - (losses[0] - losses[1]).item()) <= 1e-12 * sum(abs(loss.item()) for loss in losses)
    tolerance = 1e-12 * (grads[0].abs() + grads[1].abs()) + 1e-300
    assert ((gap_grad - (grads[0] - grads[1])).abs() <= tolerance).all()


@pytest.mark.parametrize("name", sorted(REGISTERED))
def test_the_logged_student_loss_is_the_true_difference_of_the_logged_losses(name):
    """The student step's loss is what its logs say: teacher_loss - fake_loss_on_student (for SEDD
    too, whose gap is the difference of two score entropies, not MDLM's closed form)."""
    process = REGISTERED[name](V)
    teacher, fake, student = random_dit(0), random_dit(1), random_dit(2)
    x, t, u = batch(3)
    torch.manual_seed(4)
    loss, logs = idlm.student_loss(student, teacher, fake, x, t, u, process)
    assert loss.item() == pytest.approx(logs["teacher_loss"] - logs["fake_loss_on_student"], rel=1e-5, abs=1e-6)
    assert logs["teacher_loss"] != logs["fake_loss_on_student"]


# ----------------------------------------------------------------------------- the fake step (eq. 10)

def test_fake_steps_on_the_student_samples_lower_the_fake_loss():
    """The student fixed, 20 AdamW steps of the fake on one batch (same seed, so the same z_t):
    the fake loss on that batch goes down."""
    student, fake = random_dit(0), random_dit(1)
    x, t, u = batch(0)

    def loss():
        torch.manual_seed(0)
        return idlm.fake_loss(fake, student, x, t, u, PROCESS)

    before = loss().item()
    optimizer = torch.optim.AdamW(fake.parameters(), lr=3e-3)
    for _ in range(20):
        optimizer.zero_grad()
        loss().backward()
        optimizer.step()
    assert loss().item() < 0.9 * before


# ----------------------------------------------------------------------------- soft and hard losses

@examples(10)
@given(seed=seeds)
def test_soft_mdlm_loss_of_a_one_hot_target_equals_the_hard_mdlm_loss(seed):
    model = random_dit(seed % 1000)
    x, t, u = batch(seed)
    z_t = PROCESS.forward_sample(x, t, u)
    log_x = PROCESS.denoise(model, z_t, t)
    hard = (PROCESS.loss_weight(t)[:, None] * diffusion.masked_nll(log_x, x, z_t, MASK)).sum() / x.numel()
    soft = PROCESS.soft_loss(log_x[..., :V], F.one_hot(x, V).float(), z_t, t)
    assert torch.allclose(soft, hard, rtol=1e-6)
    assert torch.allclose(soft, PROCESS.loss(model, x, t, u), rtol=1e-6)
