"""DCD (dcd.py, processes/duo.py, SPEC.md §4.6): the coupled times, the round gaps, and the loss's fixed point."""
import copy

import pytest
import torch

import config
import helpers
from diffusion import MaskingProcess
from processes import duo as dcd
from processes.uniform import UniformProcess


def test_round_gaps_double_and_the_times_stay_ordered_in_zero_one():
    assert [dcd.round_gap(j, 64) for j in range(3)] == [1 / 64, 2 / 64, 4 / 64]
    t, s = dcd.coupled_times(torch.tensor([0.0, 0.5, 0.99]), 0.1)
    assert torch.allclose(t - s, torch.full((3,), 0.1, dtype=torch.float64))
    assert (s >= 0).all() and (t <= 1).all()


def test_loss_is_zero_for_one_network_at_zero_gap_and_positive_otherwise():
    """With dt = 0 student and teacher see the same argmax(w) at the same sigma: KL = 0. With a
    gap the teacher sees a cleaner latent: KL > 0, and only the student gets a gradient."""
    process = UniformProcess(6)
    student = helpers.random_dit(0, 6, 5)
    teacher = copy.deepcopy(student).requires_grad_(False)
    schedule = dcd.GaussianSchedule(6, *dcd.DCD_GAMMA_RANGE)
    x, t = torch.randint(6, (4, 5)), torch.rand(4)
    torch.manual_seed(0)
    assert abs(dcd.dcd_loss(student, teacher, process, schedule, x, t, 0.0).item()) < 1e-6
    torch.manual_seed(0)
    value = dcd.dcd_loss(student, teacher, process, schedule, x, t, dcd.round_gap(1, 4))
    value.backward()
    assert value.item() > 0
    assert any(p.grad is not None for p in student.parameters())
    assert all(p.grad is None for p in teacher.parameters())


def test_dcd_refuses_an_absorbing_teacher_in_one_line():
    with pytest.raises(ValueError, match="uniform-state"):
        config.check_method("dcd", MaskingProcess(6))
