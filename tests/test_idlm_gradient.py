"""IDLM's student gradient on an enumerated world (SPEC.md §6.4), for every registered process.

The student's objective at its output G is J(G) = sum over z of q(z | G) gap(G, z): the loss latent's
law depends on G, and the networks' outputs on z. Networks here are tables over every z of the world,
so J and its exact gradient (autograd through the enumerated sum, float64) are known. The estimator
`idlm.relaxed_gap` with the score term is unbiased: its mean over many independent draws lies within
a few standard errors of the exact gradient, element by element. Without the term (holding the law of
z fixed) it is biased: on the same world it misses by tens of standard errors.

The draws: N rows, each a copy of the same logits, give N independent estimates of the gradient; their
mean's standard error per element is their standard deviation / sqrt(N). A normal mean lies beyond 5
standard errors with probability 6e-7 per element.
"""
import itertools

import pytest
import torch

import idlm
from processes.registry import PROCESSES

ROWS = 100_000
TIME = 0.4  # alpha_t = 0.6: about half of the positions noised


def world_states(process, length):
    """Every z of the world, [S, L]: [V]^L for the uniform process, [V+1]^L with MASK = V for the others."""
    states = process.vocab_size + (1 if process.has_mask else 0)
    return torch.tensor(list(itertools.product(range(states), repeat=length)))


def network_table(process, states, seed):
    """A network as a table: log-outputs [S, L, V] per z, as soft_loss scores them (log-probs over the
    V tokens; for SEDD unnormalised log-scores), each depending on the whole of z."""
    g = torch.Generator().manual_seed(seed)
    raw = 2 * torch.randn(len(states), states.shape[1], process.vocab_size, generator=g, dtype=torch.float64)
    return raw if process.has_scores else raw.log_softmax(-1)


def lookup(table, process, length):
    """log_outputs(z, t) of one network table: the row of each z."""
    base = process.vocab_size + (1 if process.has_mask else 0)
    powers = base ** torch.arange(length - 1, -1, -1)
    return lambda z: table[(z * powers).sum(-1)]


def exact_gradient(process, logits, teacher, fake, states):
    """dJ/d logits by autograd through J = sum_z q(z | G) gap(G, z), G = softmax(logits)."""
    logits = logits.clone().requires_grad_()
    G = logits.softmax(-1)[None]
    t = torch.tensor([TIME], dtype=torch.float64)
    J = 0.0
    for index, z in enumerate(states):
        law = process.latent_log_prob(G, z[None], t).exp()
        J = J + law * idlm.teacher_fake_gap(teacher[index][None], fake[index][None], G, z[None], t, process)
    return torch.autograd.grad(J.sum(), logits)[0]


def estimates(process, logits, teacher, fake, length, choices, seed):
    """ROWS independent estimates of dJ/d logits [ROWS, L, V] from `idlm.relaxed_gap`."""
    torch.manual_seed(seed)
    rows = logits.expand(ROWS, -1, -1).clone().requires_grad_()
    t = torch.full((ROWS,), TIME, dtype=torch.float64)
    look_teacher, look_fake = lookup(teacher, process, length), lookup(fake, process, length)
    loss, _ = idlm.relaxed_gap(rows.softmax(-1), t, process, lambda z, t: (look_teacher(z), look_fake(z)), choices)
    return torch.autograd.grad(loss, rows)[0] * ROWS  # the loss is a mean over the rows


def standard_errors(process_name, vocab, length, choices, seed=0):
    """(mean estimate - exact gradient) / its standard error, per element."""
    process = PROCESSES[process_name](vocab)
    states = world_states(process, length)
    teacher, fake = network_table(process, states, 1), network_table(process, states, 2)
    logits = torch.randn(length, vocab, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    exact = exact_gradient(process, logits, teacher, fake, states)
    draws = estimates(process, logits, teacher, fake, length, choices, seed)
    return (draws.mean(0) - exact) / (draws.std(0) / ROWS ** 0.5)


WORLDS = [(3, 2), (4, 3)]


@pytest.mark.parametrize("name", sorted(PROCESSES))
@pytest.mark.parametrize("vocab,length", WORLDS)
@pytest.mark.parametrize("draws", [1, 2])
def test_the_estimate_with_the_score_term_is_unbiased(name, vocab, length, draws):
    """With one draw the control variate is 0; with two, each draw's is the other's gap."""
    z = standard_errors(name, vocab, length, idlm.Choices(score=True, draws=draws))
    assert z.abs().max() < 5, z


@pytest.mark.parametrize("name", sorted(PROCESSES))
@pytest.mark.parametrize("vocab,length", WORLDS)
def test_the_estimate_that_holds_the_latents_law_fixed_is_biased(name, vocab, length):
    """The gradient before the score term (IDLM's form for MDLM, this project's before it): biased."""
    z = standard_errors(name, vocab, length, idlm.Choices(score=False, draws=1))
    assert z.abs().max() > 20, z


@pytest.mark.parametrize("name", sorted(PROCESSES))
def test_the_score_term_adds_nothing_to_the_value(name):
    """The term enters as s - stop_gradient(s): the loss's value is the gap of the same draws."""
    process = PROCESSES[name](3)
    states = world_states(process, 2)
    teacher, fake = lookup(network_table(process, states, 1), process, 2), lookup(network_table(process, states, 2), process, 2)
    G = torch.randn(50, 2, 3, dtype=torch.float64).softmax(-1)
    t = torch.full((50,), TIME, dtype=torch.float64)
    values = []
    for score in (True, False):
        torch.manual_seed(0)
        loss, _ = idlm.relaxed_gap(G, t, process, lambda z, t: (teacher(z), fake(z)), idlm.Choices(score=score, draws=2))
        values.append(loss.item())
    assert values[0] == pytest.approx(values[1], rel=1e-12, abs=1e-15)
