"""Representation-space MMD post-training of an absorbing model (MDLM-MMD, arXiv 2610.06648, 2026).

The student starts as the model (an MDLM teacher, or an SDTT or IDLM student); a frozen copy of it
gives the representation: the hidden states after one block, on clean sequences at sigma = 0. Each
step masks real data x0 at time t, and the student's one-step distribution over x0 at the masked
positions proposes G candidates of B completions each (every masked position drawn independently,
the others kept). A candidate's reward estimates minus the squared MMD between the representations
of the real sequence's masked positions and of its completions' (an RBF kernel, the real-real
constant dropped); grouped REINFORCE, each candidate's baseline the mean reward of the other G - 1
of its sequence, raises the log-probability of the better candidates. No teacher rollouts, no fake
network. The loop is `distill`; SPEC.md §11.
"""
from dataclasses import dataclass

import torch

from training.run import distilled_for
from training.step import Env, frozen, make_ema, optimizer_step, seed_step, step_batch, trainable_copy, trained


@dataclass(frozen=True)
class Choices:
    """MDLM-MMD's choices (each a flag, SPEC.md §11): the feature block (zero-based), the kernel's
    alpha in k(a, b) = exp(-alpha ||a - b||^2), G candidates of B draws per sequence, and whether
    the within-draws term leaves out pairs at the same position; block: kernel sums in blocks of this
    many positions (0: all at once)."""
    block: int = 3
    alpha: float = 2e-5
    candidates: int = 4
    draws: int = 2
    exclude_same_position: bool = True
    chunk: int = 0


@torch.no_grad()
def kernel_sum(left, right, weight, alpha, chunk=0, exclude_same_position=False):
    """sum_{i, j} w_i w_j exp(-alpha ||left_i - right_j||^2) for each row: left, right [N, L, D],
    weight [N, L] -> [N], over blocks of `chunk` positions so that no [N, L, L] kernel is ever held
    when chunk < L. exclude_same_position leaves out the pairs i = j."""
    n, length = weight.shape
    chunk = chunk or length
    total = left.new_zeros(n)
    for i in range(0, length, chunk):
        for j in range(0, length, chunk):
            distance = torch.cdist(left[:, i:i + chunk], right[:, j:j + chunk]).square()
            kernel = torch.exp(-alpha * distance)
            if exclude_same_position and i == j:
                kernel = kernel - torch.diag_embed(torch.diagonal(kernel, dim1=1, dim2=2))
            total += torch.einsum("ni,nij,nj->n", weight[:, i:i + chunk], kernel, weight[:, j:j + chunk])
    return total


@torch.no_grad()
def feature_reward(real, fake, selected, choices):
    """Each row's reward from real features [N, L, D] and its B completions' [N, B, L, D] at the
    selected positions [N, L] (n of them): 2 cross / (B n^2) - within / (B (B - 1) pairs), where cross
    sums k over (real, completion) pairs of positions, within over ordered pairs of distinct
    completions, and pairs = n (n - 1) without same-position pairs, else n^2. Its expectation is
    minus MMD^2 between the positions' real and generated representations, plus a constant (the
    real-real term). Returns (rewards [N], active [N]: rows with enough positions for the estimate)."""
    draws = fake.shape[1]
    weight = selected.to(real.dtype)
    count = weight.sum(-1)
    cross = sum(kernel_sum(real, fake[:, b], weight, choices.alpha, choices.chunk) for b in range(draws))
    within = sum(2 * kernel_sum(fake[:, b], fake[:, c], weight, choices.alpha, choices.chunk,
                                choices.exclude_same_position)
                 for b in range(draws) for c in range(b + 1, draws))
    pairs = count * (count - 1) if choices.exclude_same_position else count.square()
    reward = 2 * cross / (draws * count.square()).clamp_min(1) - within / (draws * (draws - 1) * pairs).clamp_min(1)
    active = count >= (2 if choices.exclude_same_position else 1)
    return torch.where(active, reward, torch.zeros_like(reward)), active


def reinforce_loss(probs, x0, selected, reward_of, choices, generator=None):
    """Grouped REINFORCE (MDLM-MMD): from the student's distribution probs [N, L, V] at the selected
    positions [N, L] of x0 [N, L], G x B completions; reward_of(completions [B, N, L]) -> (rewards
    [N], active [N]) scores each candidate of B; the advantage is a candidate's reward less the mean
    of the other G - 1 candidates' (independent of its own draws, so the gradient stays unbiased);
    the loss is minus the advantages times each candidate's summed log-probabilities, over the
    selected positions, G and B. Returns (loss, logs)."""
    G, B = choices.candidates, choices.draws
    with torch.no_grad():
        flat = probs.detach().reshape(-1, probs.shape[-1]).double()
        drawn = torch.multinomial(flat, G * B, replacement=True, generator=generator)
        drawn = drawn.view(*x0.shape, G * B).permute(2, 0, 1)                 # [G B, N, L]
        completions = torch.where(selected[None], drawn, x0[None])
        scored = [reward_of(completions[g * B:(g + 1) * B]) for g in range(G)]
        rewards = torch.stack([r for r, _ in scored], -1)                      # [N, G]
        active = scored[0][1]
        others = (rewards.sum(-1, keepdim=True) - rewards) / (G - 1) if G > 1 else torch.zeros_like(rewards)
        advantages = (rewards - others).masked_fill(~active[:, None], 0)
    log_probs = probs.clamp_min(1e-30).log().gather(-1, completions.permute(1, 2, 0)).permute(2, 0, 1)
    candidate_log_probs = (log_probs * selected[None]).sum(-1).view(G, B, -1).sum(1).T   # [N, G]
    loss = -(advantages * candidate_log_probs).sum() / (selected.sum().clamp_min(1) * G * B)
    logs = {"reward": rewards[active].mean().item() if active.any() else 0.0,
            "advantage_abs": advantages.abs().mean().item()}
    return loss, logs


def mmd_loss(student, features, x, t, u, process, choices):
    """One micro-batch's loss: x [N, L] masked at times t [N] with uniforms u [N, L], the student's
    one-step distribution over x0, the frozen network's features of x and of each candidate."""
    x_t = process.forward_sample(x, t, u)
    selected = process.loss_positions(x_t)
    probs = process.denoise(student, x_t, t)[..., :process.vocab_size].exp()
    with torch.no_grad():
        real = features.features(x, choices.block).double()

    def reward_of(completions):
        fake = features.features(completions.reshape(-1, x.shape[1]), choices.block).double()
        return feature_reward(real, fake.view(completions.shape[0], *x.shape, -1).transpose(0, 1), selected, choices)
    return reinforce_loss(probs, x, selected, reward_of, choices)


@torch.no_grad()
def median_alpha(features, x, block):
    """The median heuristic: alpha = 1 / the median squared distance between the representations of
    two positions of the data (the CPU preset's bandwidth; the paper's, 2e-5, is for GPT-2-sized
    representations)."""
    real = features.features(x, block).double().flatten(0, 1)
    return 1.0 / torch.cdist(real, real).square().median().clamp_min(1e-12).item()


def training_step(student, features, ema, chunks, process, choices, cfg, env):
    """One step of the grouped REINFORCE loss on a batch (micro-batches of (x, t, u)), then the EMA."""
    def loss(x, t, u):
        return mmd_loss(student.run, features, x, t, u, process, choices)
    value, logs = optimizer_step(student, chunks, loss, env, cfg.grad_clip)
    ema.update_parameters(student.module)
    return {"mmd": value, **logs}


def distill(teacher, process, run):
    """MDLM-MMD post-training: --iters steps of the grouped REINFORCE loss. Returns the final table's
    rows: (label, checkpoint, sampling steps) of the student at L/8, L/16 and L/32."""
    cfg, env = run.cfg, run.env
    student = trained(trainable_copy(teacher), cfg.lr, cfg, env)          # the student starts as the model
    features, ema = frozen(teacher), make_ema(student.module, cfg.ema)    # a frozen copy gives the representation
    _, first = run.start([student], ema, model=student.module)
    alpha = cfg.mmd_bandwidth or median_alpha(features, step_batch(run.data, cfg, Env(env.device), 0)[0], cfg.mmd_block)
    choices = Choices(cfg.mmd_block, alpha, cfg.mmd_candidates, cfg.mmd_draws, cfg.mmd_same_position == "exclude")
    steps = sorted({max(1, cfg.seq_len // d) for d in (8, 16, 32)}, reverse=True)
    recorded = {"mmd_alpha": alpha, **distilled_for(max(1, cfg.seq_len // 16), 0, cfg.seq_len)}
    depth = (cfg.mmd_block + 1) / teacher.config.n_layer                 # a feature pass runs the first blocks only
    run.begin("mmd", first, passes=(1, (1 + choices.candidates * choices.draws) * depth))
    for step in range(first, cfg.iters):
        chunks = run.batch(step)                   # x0 from the data, antithetic times t, the masks' uniforms u
        seed_step(cfg, env, step)                  # the draws of the G x B completions
        logs = training_step(student, features, ema, chunks, process, choices, cfg, env)
        run.after_step(step + 1, logs, **recorded)
    run.end_round(0, **recorded)
    return [("MMD", run.out / "ckpt.pt", s) for s in steps]
