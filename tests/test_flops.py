"""plumbing/flops.py against PyTorch's own count (SPEC.md §10): the FLOP formulas behind bench.py's
utilisation and roofline and train.py's MFU, checked on the micro DiT with FlopCounterMode.

FlopCounterMode counts matrix products only, 2 m n k each (mm, addmm without its bias add, bmm),
forward and backward. It has no formula for the CPU's fused attention kernel, so the tests run the
math attention backend, where QK^T and AV are bmm's it counts. The formulas
count 2 FLOPs per multiply-add of every parameter applied at every position, biases and norm gains
included, plus 4 B L^2 d per layer for QK^T and AV (x3 for a training pass), and the training formula
(Kaplan's 6N) counts the time embedding and adaLN weights, applied once per sequence, at every token.
Those two differences, computed from the model's parameters, are the tolerances: nothing else differs."""
import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

import model
from plumbing.flops import forward_flops, step_flops_per_token

V, L, B = 64, 512, 2   # a long context, so that the attention's L^2 term outweighs the tolerances


def micro_dit():
    torch.manual_seed(0)
    return model.DiT(model.config_for("micro", vocab_size=V, seq_len=L, dropout=0.0))


def per_sequence_and_vector_params(dit):
    """(weights applied once per sequence: the time embedding and adaLN; vector parameters applied per
    position: biases and norm gains, whose FLOPs FlopCounterMode does not count)."""
    per_sequence = sum(p.numel() for name, p in dit.named_parameters()
                       if "sigma_map" in name or "adaLN" in name)
    vectors = sum(p.numel() for name, p in dit.named_parameters()
                  if p.dim() == 1 and "sigma_map" not in name and "adaLN" not in name)
    return per_sequence, vectors


def counted_flops(dit, train):
    """FlopCounterMode's FLOPs of one forward pass (train: and its backward) over B x L tokens."""
    tokens = torch.randint(V, (B, L), generator=torch.Generator().manual_seed(0))
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        with torch.set_grad_enabled(train):
            logits = dit(tokens, torch.rand(B))
        if train:
            logits.logsumexp(-1).sum().backward()
    return counter.get_total_flops()


def test_forward_flops_match_pytorchs_count_of_the_micro_dits_matmuls_and_attention():
    dit = micro_dit()
    per_sequence, vectors = per_sequence_and_vector_params(dit)
    d, n = dit.config.n_embd, dit.config.n_layer
    tolerance = 2 * B * L * vectors + 2 * B * per_sequence
    assert tolerance < 4 * B * L ** 2 * d * n / 10   # small beside the attention term it must see
    assert abs(forward_flops(dit, B, L) - counted_flops(dit, train=False)) <= tolerance


@pytest.mark.parametrize("passes", [(1, 0), (1, 2), (2, 3)])   # pretraining, SDTT, IDLM
def test_step_flops_per_token_match_pytorchs_count_of_training_and_frozen_passes(passes):
    """A step of `training` forward-and-backward passes and `frozen` forward passes, per token. A
    training pass counts each per-position weight 6 times per token, a frozen one 2 times."""
    training, frozen = passes
    dit = micro_dit()
    per_sequence, vectors = per_sequence_and_vector_params(dit)
    d, n = dit.config.n_embd, dit.config.n_layer
    counted = (training * counted_flops(dit, train=True) + frozen * counted_flops(dit, train=False)) / (B * L)
    tolerance = (3 * training + frozen) * 2 * (vectors + per_sequence)
    assert tolerance < (3 * training + frozen) * 4 * L * d * n / 2   # below the attention term per token
    assert abs(step_flops_per_token(dit, L, training, frozen) - counted) <= tolerance
