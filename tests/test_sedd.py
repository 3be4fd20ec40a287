"""Invariants of SEDD on the absorbing graph (SPEC.md §5, §6.2, §6.3), exactly in float64:
score entropy of s = r_t f is MDLM's loss of f, it is least at the true scores, the IDLM student's
gradient has the closed form, and the teacher-fake gap is KL - KL_1 on enumerated worlds."""
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
from helpers import examples, mask_patterns, seeds
from processes.registry import process_from_config
from processes.sedd import SeddProcess, log_scores, score_entropy

V, L = 5, 4
MASK = V


def random_case(seed, n=3, dtype=torch.float64):
    """z_t with some MASK, times t in (0.01, 1), and normalised f = SUBS log-probs over V real tokens."""
    g = torch.Generator().manual_seed(seed)
    z_t = torch.where(torch.rand(n, L, generator=g) < 0.6, MASK, torch.randint(0, V, (n, L), generator=g))
    t = (0.01 + 0.99 * torch.rand(n, generator=g)).to(dtype)
    log_f = (3 * torch.randn(n, L, V, generator=g, dtype=dtype)).log_softmax(-1)
    return g, z_t, t, log_f


def log_r_f(process, log_f, t):
    """log(r_t f): the scores of a normalised denoiser f."""
    return process.log_r(t)[:, None, None] + log_f


@pytest.mark.parametrize("eps", [0.0, 1e-3, 0.1])
@examples(15)
@given(seed=seeds)
def test_score_entropy_of_r_times_f_is_the_mdlm_loss_of_f_for_one_hot_x(eps, seed):
    """IDLM Prop. D.2: L_SEDD(r_t f, x) = L_MDLM(f, x), term by term."""
    g, z_t, t, log_f = random_case(seed)
    sedd, mdlm = SeddProcess(V, diffusion.LogLinear(eps)), diffusion.MaskingProcess(V, diffusion.LogLinear(eps))
    x = F.one_hot(torch.randint(0, V, z_t.shape, generator=g), V).double()
    torch.testing.assert_close(sedd.soft_loss(log_r_f(sedd, log_f, t), x, z_t, t),
                               mdlm.soft_loss(log_f, x, z_t, t), rtol=1e-12, atol=1e-12)


@examples(15)
@given(seed=seeds)
def test_score_entropy_of_r_times_f_for_soft_x_is_mdlm_loss_minus_w_times_entropy_of_x(seed):
    """For soft x the K terms leave w(t) sum_y x_y log x_y: a constant in f, so gradients in f and
    teacher-minus-fake differences are MDLM's."""
    g, z_t, t, log_f = random_case(seed)
    sedd, mdlm = SeddProcess(V), diffusion.MaskingProcess(V)
    x = torch.randn(*z_t.shape, V, generator=g, dtype=torch.float64).softmax(-1)
    neg_entropy = torch.where(z_t == MASK, (x * x.log()).sum(-1), torch.zeros(())) * mdlm.loss_weight(t)[:, None]
    torch.testing.assert_close(sedd.soft_loss(log_r_f(sedd, log_f, t), x, z_t, t),
                               mdlm.soft_loss(log_f, x, z_t, t) + neg_entropy.sum() / z_t.numel(), rtol=1e-12, atol=1e-12)


def test_score_entropy_is_non_negative_and_zero_only_at_unmasked_positions_or_true_scores():
    g, z_t, t, log_f = random_case(0)
    process = SeddProcess(V)
    x = log_f.exp()  # x = f itself: the true scores r_t x give zero loss
    log_r, rate = process.log_r(t), process.sigma_prime(t)
    assert score_entropy(log_r[:, None, None] + x.log(), x, z_t, MASK, log_r, rate).abs().max() < 1e-12
    other = score_entropy(torch.randn(*x.shape, generator=g, dtype=torch.float64), x, z_t, MASK, log_r, rate)
    assert (other[z_t == MASK] > 0).all() and (other[z_t != MASK] == 0).all()


@examples(8)
@given(world=st.tuples(st.integers(2, 3), st.integers(2, 3), seeds), t=st.floats(0.01, 0.99),
       scale=st.sampled_from([0.5, 0.9, 1.1, 1.3]))
def test_expected_score_entropy_is_least_at_the_true_scores_of_an_enumerated_world(world, t, scale):
    """E_{x ~ p*} over every mask pattern of l_SEDD(s(z), x): the true scores r_t p*(x^i | z) beat
    the same scores times a constant c != 1, and random perturbations of them."""
    vocab, length, seed = world
    xs, p = helpers.tiny_world(vocab, length, seed)
    process = SeddProcess(vocab)
    rows_x, rows_z, weights = [], [], []
    for x, px in zip(xs, p):
        for masked in mask_patterns(length):
            rows_x.append(x), rows_z.append(np.where(masked, vocab, x)), weights.append(px)
    x, z = torch.tensor(np.array(rows_x)), torch.tensor(np.array(rows_z))
    with np.errstate(divide="ignore"):  # one-hot rows at revealed positions, where no loss is taken
        true = torch.tensor(np.array([np.log(helpers.optimal_denoiser(xs, p, zz, vocab)) for zz in rows_z]))
    tt = torch.full((len(x),), t, dtype=torch.float64)
    log_r = process.log_r(tt)

    def expected(log_s):
        per = score_entropy(log_s, F.one_hot(x, vocab).double(), z, vocab, log_r, process.sigma_prime(tt))
        return float((torch.tensor(weights) * per.sum(-1)).sum())

    best = expected(log_r[:, None, None] + true)
    assert expected(log_r[:, None, None] + true + np.log(scale)) > best + 1e-9
    _, which_z = np.unique(np.array(rows_z), axis=0, return_inverse=True)  # a perturbation is a function of z
    noise = 0.1 * torch.randn(which_z.max() + 1, length, vocab, generator=torch.Generator().manual_seed(seed),
                              dtype=torch.float64)[torch.tensor(which_z.reshape(-1))]
    assert expected(log_r[:, None, None] + true + noise) > best + 1e-9


@examples(10)
@given(seed=seeds, t=st.floats(1e-4, 1.0))
def test_log_scores_shift_raw_output_by_log_expm1_sigma_and_log_v_and_zero_the_input_token(seed, t):
    g = torch.Generator().manual_seed(seed)
    z_t = torch.where(torch.rand(2, L, generator=g) < 0.5, MASK, torch.randint(0, V, (2, L), generator=g))
    raw = torch.randn(2, L, V + 1, generator=g, dtype=torch.float64)
    sigma = torch.full((2,), -np.log1p(-(1 - 1e-3) * t), dtype=torch.float64)
    log_s = log_scores(raw, z_t, sigma, MASK)
    assert (log_s.gather(-1, z_t[..., None]) == 0).all()
    expected = raw - torch.log(torch.expm1(sigma))[:, None, None] - np.log(V)
    keep = torch.ones_like(raw, dtype=torch.bool).scatter(-1, z_t[..., None], False)
    torch.testing.assert_close(log_s[keep], expected[keep])


def test_denoise_is_the_scores_normalised_over_real_tokens_with_carry_over():
    model = helpers.random_dit(0, V, L)
    process = SeddProcess(V)
    g, z_t, t, _ = random_case(1, dtype=torch.float32)
    log_s = process.scores(model, z_t, t)
    log_x = process.denoise(model, z_t, t)
    masked = z_t == MASK
    torch.testing.assert_close(log_x[masked][:, :V], log_s[masked][:, :V].log_softmax(-1), rtol=1e-5, atol=1e-5)
    assert (log_x[~masked].exp().max(-1).values == 1).all()


def test_process_config_round_trips_through_the_registry():
    process = SeddProcess(V, diffusion.LogLinear(0.1))
    again = process_from_config(process.config(), V)
    assert isinstance(again, SeddProcess) and again.time_conditioned and again.schedule.eps == 0.1


def test_pretraining_loss_is_finite_and_trains_the_network():
    model = helpers.random_dit(0, V, L).train()
    process = SeddProcess(V)
    x = torch.randint(0, V, (4, L), generator=torch.Generator().manual_seed(0))
    loss = process.loss(model, x, diffusion.antithetic_times(0.3, 4), torch.rand(4, L))
    loss.backward()
    assert torch.isfinite(loss) and loss > 0
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


# ----------------------------------------------------------------------------- IDLM-SEDD (SPEC.md §6.2)

@examples(10)
@given(seed=seeds)
def test_student_gradient_of_teacher_minus_fake_score_entropy_is_w_times_log_fake_minus_log_teacher(seed):
    """dJ/dG = w(t) (log s_fake - log s*) / (N L) at masked positions, 0 elsewhere, for
    unnormalised scores: through the process's own loss, and through idlm.teacher_fake_gap."""
    g, z_t, t, _ = random_case(seed)
    process = SeddProcess(V)
    log_teacher, log_fake = (torch.randn(*z_t.shape, V, generator=g, dtype=torch.float64) for _ in range(2))
    x0 = torch.randn(*z_t.shape, V, generator=g, dtype=torch.float64).softmax(-1).requires_grad_()
    n = z_t.numel()
    expected = torch.where((z_t == MASK)[..., None], process.loss_weight(t)[:, None, None] * (log_fake - log_teacher),
                           torch.zeros(())) / n
    for objective in (process.soft_loss(log_teacher, x0, z_t, t) - process.soft_loss(log_fake, x0, z_t, t),
                      idlm.teacher_fake_gap(log_teacher, log_fake, x0, z_t, t, process)):
        (grad,) = torch.autograd.grad(objective, x0)
        torch.testing.assert_close(grad, expected, rtol=1e-10, atol=1e-12)


def test_idlm_losses_run_through_the_process_interface_with_a_sedd_teacher():
    teacher = helpers.random_dit(0, V, L)
    process = SeddProcess(V)
    x = torch.randint(0, V, (4, L), generator=torch.Generator().manual_seed(0))
    t, u = diffusion.antithetic_times(0.2, 4), torch.rand(4, L)
    torch.manual_seed(0)
    loss, logs = idlm.student_loss(teacher, teacher, teacher, x, t, u, process)
    assert loss.item() == 0.0 and logs["teacher_loss"] == logs["fake_loss_on_student"] > 0
    assert torch.isfinite(idlm.fake_loss(teacher, teacher, x, t, u, process))


# ----------------------------------------------------------------------------- SPEC.md §6.3: the gap is KL - KL_1

def integrated_sedd_loss(process, xs, p, scores_of, nodes=24):
    """E_{x ~ p} integral_0^1 of the score entropy summed over positions and mask patterns, with
    scores_of(z, log_r) -> log s [L, V]; Gauss-Legendre in t is exact here (a polynomial)."""
    vocab, length = process.vocab_size, xs.shape[1]
    u, w = np.polynomial.legendre.leggauss(nodes)
    total = 0.0
    for t, wt in zip((u + 1) / 2, w / 2):
        tt = torch.tensor([t], dtype=torch.float64)
        alpha, log_r, rate = float(process.alpha(tt)), process.log_r(tt), process.sigma_prime(tt)
        for masked in mask_patterns(length):
            k = int(masked.sum())
            chance = (1 - alpha) ** k * alpha ** (length - k)
            for x, px in zip(xs, p):
                z = np.where(masked, vocab, x)
                log_s = scores_of(z, float(log_r))[None]
                per = score_entropy(log_s, F.one_hot(torch.tensor(x), vocab).double()[None],
                                    torch.tensor(z)[None], vocab, log_r, rate)
                total += wt * chance * px * float(per.sum())
    return total


def marginal_at_one(xs, p, vocab, eps):
    """p_1(z) = sum_x p(x) q_1(z | x): each position MASK with probability 1 - eps."""
    out = {}
    for masked in [np.array(b, dtype=bool) for b in np.ndindex(*(2,) * xs.shape[1])]:
        chance = (1 - eps) ** masked.sum() * eps ** (~masked).sum()
        for x, px in zip(xs, p):
            key = tuple(np.where(masked, vocab, x))
            out[key] = out.get(key, 0.0) + chance * px
    return out


def exact_log_probs(xs, p, z, vocab):
    """log p(x^i | the revealed positions of z) [L, V] (a revealed row's zeros floored at 1e-300)."""
    return torch.tensor(np.log(np.maximum(helpers.optimal_denoiser(xs, p, np.asarray(z), vocab), 1e-300)))


def exact_scores(xs, p, zs, vocab):
    """alpha -> the true log-scores log(r_t p(x^i | z)) at every state z of zs, r_t = alpha / (1 - alpha)."""
    log_probs = torch.stack([exact_log_probs(xs, p, z, vocab) for z in zs])
    return lambda alpha: (alpha / (1 - alpha)).log() + log_probs


@pytest.mark.parametrize("vocab,length,eps", [(3, 2, 0.0), (3, 2, 0.1), (4, 3, 0.0), (4, 3, 0.1)])
def test_teacher_minus_fake_gap_of_sedd_is_kl_minus_kl_at_time_one(vocab, length, eps):
    """SPEC.md §6.3: E_{p_theta} L_SEDD(s*) - E_{p_theta} L_SEDD(s_theta) = KL(p_theta||p*) - KL(p_theta,1||p*_1),
    with s = r_t p(x^i | z) exact networks; at eps = 0 this is KL itself (IDLM Thm 3.1). The gap is the
    library's student objective (idlm.teacher_fake_gap: the difference of SeddProcess.soft_loss)
    integrated exactly over t and z, and equals the enumerated difference of the two score entropies."""
    xs, p_star = helpers.tiny_world(vocab, length, 7)
    p_theta = 0.6 * p_star + 0.4 * np.random.default_rng(8).dirichlet(np.ones(len(xs)))
    process = SeddProcess(vocab, diffusion.LogLinear(eps))
    exact = lambda p: lambda z, log_r: log_r + exact_log_probs(xs, p, z, vocab)
    difference = (integrated_sedd_loss(process, xs, p_theta, exact(p_star))
                  - integrated_sedd_loss(process, xs, p_theta, exact(p_theta)))
    forward = small_world.absorbing_forward(vocab, xs)
    gap = small_world.library_gap(process, forward, exact_scores(xs, p_star, forward[0], vocab),
                                  exact_scores(xs, p_theta, forward[0], vocab), xs, p_theta, vocab, eps, nodes=24)
    kl = float((p_theta * np.log(p_theta / p_star)).sum())
    one_theta, one_star = marginal_at_one(xs, p_theta, vocab, eps), marginal_at_one(xs, p_star, vocab, eps)
    kl_1 = sum(q * np.log(q / one_star[z]) for z, q in one_theta.items() if q > 0)
    assert abs(gap - (kl - kl_1)) < 1e-9
    assert abs(difference - gap) < 1e-9
    if eps == 0:
        assert abs(gap - kl) < 1e-9


# ----------------------------------------------------------------------------- louaaron/sedd-small's layout

def test_a_folder_in_sedd_smalls_layout_loads_as_a_sedd_teacher_with_its_process(tmp_path):
    """Unprefixed keys in pytorch_model.bin and SEDD's Hydra config.json (SPEC.md §9): the same network,
    recorded as kind and process "sedd", time-conditioned."""
    import json

    from loading import checkpoint
    from model import DiT, ModelConfig, load_mdlm_state_dict
    cfg = ModelConfig(vocab_size=11, seq_len=12, n_layer=1, n_head=2, n_embd=32, cond_dim=16, dropout=0.1,
                      time_conditioning=True)
    state_dict = {k: v for k, v in helpers.mdlm_state_dict(cfg, seed=1, prefix="").items() if k != "noise.sigma_min"}
    (tmp_path / "config.json").write_text(json.dumps(
        {"tokens": 11, "graph": {"type": "absorb"}, "noise": {"type": "loglinear"},
         "model": {"name": "small", "type": "ddit", "hidden_size": 32, "cond_dim": 16, "length": 12,
                   "n_blocks": 1, "n_heads": 2, "scale_by_sigma": True, "dropout": 0.1}}))
    torch.save(state_dict, tmp_path / "pytorch_model.bin")
    model, ckpt = checkpoint.load_model(tmp_path, kinds=checkpoint.DIFFUSION_KINDS)
    reference = load_mdlm_state_dict(DiT(cfg), state_dict).eval()
    tokens, sigma = torch.randint(0, 12, (2, 12), generator=torch.Generator().manual_seed(0)), torch.rand(2)
    with torch.no_grad():
        assert torch.equal(model(tokens, sigma), reference(tokens, sigma))
    assert ckpt["kind"] == "sedd" and isinstance(checkpoint.process_of(ckpt), SeddProcess)
    assert ckpt["model_config"]["time_conditioning"] is True
    config = json.loads((tmp_path / "config.json").read_text())
    config["graph"]["type"] = "uniform"
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="only the absorbing graph"):
        checkpoint.load_model(tmp_path)
