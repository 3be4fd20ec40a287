"""mmd.py (SPEC.md §11): the blocked kernel sum, the reward's expectation by enumeration, the grouped
REINFORCE gradient's unbiasedness (and the bias of a baseline that sees its own reward), and the
one-position optimum at the data's conditional."""
import itertools
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import mmd

V, L, D = 3, 3, 4


def explicit_features(tokens, table, context):
    """A fixed representation of whole sequences [..., L] -> [..., L, D]: each position's token
    embedding plus `context` times its left neighbour's (so a position's features depend on more than
    its own token, as a network's do)."""
    own = table[tokens]
    left = torch.cat([torch.zeros_like(own[..., :1, :]), own[..., :-1, :]], dim=-2)
    return own + context * left


def world(seed=0):
    g = torch.Generator().manual_seed(seed)
    table = torch.randn(V, D, generator=g, dtype=torch.float64)
    return table, torch.randint(V, (L,), generator=g)


def completions(x0, selected):
    """Every completion of x0 at its selected positions: [C, L]."""
    where = selected.nonzero().flatten().tolist()
    rows = []
    for tokens in itertools.product(range(V), repeat=len(where)):
        row = x0.clone()
        row[where] = torch.tensor(tokens)
        rows.append(row)
    return torch.stack(rows)


def probability(rows, probs, selected):
    """The product law of the student at the selected positions, for each row [C, L] -> [C]."""
    picked = probs.expand(len(rows), -1, -1).gather(-1, rows[..., None]).squeeze(-1)
    return torch.where(selected, picked, torch.ones_like(picked)).prod(-1)


def kernel(a, b, alpha):
    return math.exp(-alpha * float((a - b).square().sum()))


@settings(max_examples=40, deadline=None, derandomize=True)
@given(st.integers(0, 10**6), st.integers(1, 4), st.booleans())
def test_the_blocked_kernel_sum_equals_the_plain_double_sum(seed, chunk, exclude):
    g = torch.Generator().manual_seed(seed)
    left, right = torch.randn(2, 5, 3, generator=g, dtype=torch.float64), torch.randn(2, 5, 3, generator=g, dtype=torch.float64)
    weight = (torch.rand(2, 5, generator=g) < 0.6).double()
    got = mmd.kernel_sum(left, right, weight, 0.3, chunk, exclude)
    for n in range(2):
        plain = sum(weight[n, i] * weight[n, j] * kernel(left[n, i], right[n, j], 0.3)
                    for i in range(5) for j in range(5) if not (exclude and i == j))
        assert float(got[n]) == pytest.approx(float(plain), rel=1e-12, abs=1e-15)


def expected_reward(x0, probs, selected, table, choices, context=0.5):
    """E[reward] over B independent completions, by enumerating every B-tuple, through feature_reward."""
    rows = completions(x0, selected)
    p = probability(rows, probs, selected)
    real = explicit_features(x0, table, context)[None]
    total = torch.zeros((), dtype=torch.float64)
    for index in itertools.product(range(len(rows)), repeat=choices.draws):
        fake = explicit_features(rows[list(index)], table, context)[None]
        reward, _ = mmd.feature_reward(real, fake, selected[None], choices)
        total = total + p[list(index)].prod() * reward[0]
    return total


@pytest.mark.parametrize("exclude", [True, False])
def test_the_rewards_expectation_is_minus_the_squared_mmd_less_its_real_real_constant(exclude):
    """Enumerated: x0 of L = 3 over V = 3 with 2 positions masked, a random product law of the student,
    explicit features. 2 C - W, with C the mean over pairs (real position i, generated position j) of
    E k(phi_i(x0), phi_j(y)) and W the mean over pairs (i, j), i != j when excluded, of
    E k(phi_i(y), phi_j(y')) for independent completions y, y'. With same-position pairs included, it is
    -MMD^2 between the real positions' features and the generated positions' features, plus the real-real
    term E k(phi_i(x0), phi_j(x0))."""
    table, x0 = world(1)
    selected = torch.tensor([True, False, True])
    probs = torch.softmax(torch.randn(L, V, generator=torch.Generator().manual_seed(2), dtype=torch.float64), -1)
    alpha = 0.4
    choices = mmd.Choices(alpha=alpha, draws=2, exclude_same_position=exclude)
    rows = completions(x0, selected)
    p = probability(rows, probs, selected)
    phi_real, phi = explicit_features(x0, table, 0.5), explicit_features(rows, table, 0.5)
    S = selected.nonzero().flatten().tolist()
    pairs = [(i, j) for i in S for j in S if not (exclude and i == j)]
    cross = sum(p[c] * kernel(phi_real[i], phi[c, j], alpha) for i in S for j in S for c in range(len(rows))) / len(S) ** 2
    within = sum(p[c] * p[d] * kernel(phi[c, i], phi[d, j], alpha) for i, j in pairs
                 for c in range(len(rows)) for d in range(len(rows))) / len(pairs)
    got = expected_reward(x0, probs, selected, table, choices)
    assert float(got) == pytest.approx(float(2 * cross - within), rel=1e-12)
    if not exclude:
        real_real = sum(kernel(phi_real[i], phi_real[j], alpha) for i in S for j in S) / len(S) ** 2
        squared_mmd = real_real - 2 * cross + within
        assert float(got) == pytest.approx(float(real_real - squared_mmd), rel=1e-12)


def grouped_gradient(logits, x0, selected, table, choices, seed, own_baseline=False):
    """One draw of the grouped REINFORCE estimate's gradient w.r.t. the student's logits [L, V]; with
    own_baseline, the same estimate with each candidate's baseline the mean of all G rewards, its own
    included (written out here as the counter-example)."""
    logits = logits.detach().requires_grad_(True)
    probs = torch.softmax(logits, -1)[None]
    real = explicit_features(x0, table, 0.5)[None]

    def reward_of(drawn):
        return mmd.feature_reward(real, explicit_features(drawn, table, 0.5).transpose(0, 1), selected[None], choices)
    generator = torch.Generator().manual_seed(seed)
    if not own_baseline:
        loss, _ = mmd.reinforce_loss(probs, x0[None], selected[None], reward_of, choices, generator)
    else:
        G, B = choices.candidates, choices.draws
        drawn = torch.multinomial(probs.detach().reshape(-1, V).double(), G * B, replacement=True, generator=generator)
        drawn = torch.where(selected[None, None], drawn.view(1, L, G * B).permute(2, 0, 1), x0[None, None])
        rewards = torch.stack([reward_of(drawn[g * B:(g + 1) * B])[0] for g in range(G)], -1)
        advantages = rewards - rewards.mean(-1, keepdim=True)
        log_probs = probs.log().gather(-1, drawn.permute(1, 2, 0)).permute(2, 0, 1)
        per_candidate = (log_probs * selected).sum(-1).view(G, B, -1).sum(1).T
        loss = -(advantages * per_candidate).sum() / (selected.sum() * G * B)
    loss.backward()
    return logits.grad


def test_the_grouped_reinforce_gradient_is_unbiased_and_an_own_reward_baseline_is_not():
    """E[gradient of the loss] = -grad J / (n B), J the expected reward of one candidate (enumerated, its
    gradient by autograd). Checked per element within 5 standard errors of the mean of 3000 seeded draws;
    a baseline that includes the candidate's own reward shrinks the gradient by (G - 1) / G: biased."""
    table, x0 = world(3)
    selected = torch.tensor([True, True, False])
    choices = mmd.Choices(alpha=0.4, candidates=3, draws=2)
    logits = torch.randn(L, V, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    theta = logits.clone().requires_grad_(True)
    J = expected_reward(x0, torch.softmax(theta, -1), selected, table, choices)
    (grad_J,) = torch.autograd.grad(J, theta)
    expected = -grad_J / (selected.sum() * choices.draws)
    for own, unbiased in ((False, True), (True, False)):
        draws = torch.stack([grouped_gradient(logits, x0, selected, table, choices, seed, own) for seed in range(3000)])
        mean, se = draws.mean(0), draws.std(0) / math.sqrt(len(draws))
        z = ((mean - expected).abs() / se.clamp_min(1e-12))[selected]
        if unbiased:
            assert z.max() < 5, z
            assert (draws[:, ~selected] == 0).all()   # a kept position's law never gets a gradient
        else:
            assert z.max() > 8, z


def test_with_one_masked_position_the_expected_reward_is_greatest_with_zero_gradient_at_the_datas_conditional():
    """Data over two tokens (a 3 x 3 joint law), the second masked: for each first token c the student's
    law p_c of the second. The expected reward over the data and the completions is
    sum_c q(c) (const_c - MMD^2(q(.|c), p_c)): at p_c = q(.|c) its gradient is zero and every other law
    scores less."""
    g = torch.Generator().manual_seed(5)
    joint = torch.rand(V, V, generator=g, dtype=torch.float64) + 0.2
    joint /= joint.sum()
    table = torch.randn(V, D, generator=g, dtype=torch.float64)
    choices = mmd.Choices(alpha=0.4, draws=2, exclude_same_position=False)
    selected = torch.tensor([False, True])

    def objective(logits):
        total = torch.zeros((), dtype=torch.float64)
        for c, v in itertools.product(range(V), repeat=2):
            probs = torch.stack([torch.nn.functional.one_hot(torch.tensor(c), V).double(), torch.softmax(logits[c], -1)])
            total = total + joint[c, v] * expected_reward(torch.tensor([c, v]), probs, selected, table, choices)
        return total
    conditional = (joint / joint.sum(1, keepdim=True)).log().requires_grad_(True)
    best = objective(conditional)
    (gradient,) = torch.autograd.grad(best, conditional)
    assert gradient.abs().max() < 1e-12
    for seed in range(5):
        other = conditional.detach() + 0.3 * torch.randn(V, V, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        assert objective(other) < best
