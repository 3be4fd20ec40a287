"""watching/tracing.py: a trace has steps + 1 frames, never re-masks, ends on the returned tokens, counts
the forward passes the sampler reports, and tracing changes no draw."""
import pytest
import torch
from hypothesis import given

from diffusion import MaskingProcess
from evaluate import generate
from helpers import L, V, examples, process_for, seeds, tiny_model
from samplers import SAMPLERS, make_sampler
from watching.tracing import Trace, Traced

PROCESS = MaskingProcess(V)


def traced_run(name, seed, steps=6, n=3, seq_len=L, prompt=(0, None, 2)):
    traced = Traced(make_sampler(name))
    tokens, nfe = generate(tiny_model("mdlm"), process_for(name, V), n, seq_len, steps, prompt=list(prompt), sampler=traced,
                           batch_size=2, generator=torch.Generator().manual_seed(seed))
    return traced, tokens, nfe


@pytest.mark.parametrize("name", [n for n in SAMPLERS if not SAMPLERS[n]("argmax").extends_context])
@examples(4)
@given(seed=seeds)
def test_a_trace_has_steps_plus_one_frames_never_remasks_and_ends_on_the_returned_tokens(name, seed):
    traced, tokens, nfe = traced_run(name, seed)
    trace = traced.trace()
    assert trace.frames.shape == (6 + 1, 3, L) and trace.steps == 6
    revealed = trace.frames != V
    assert (revealed[1:] >= revealed[:-1]).all()  # each frame's revealed set contains the previous one
    final = trace.frames[-1]
    assert ((trace.frames == final) | ~revealed).all()  # a revealed token is never changed
    assert torch.equal(final, tokens) and not revealed[-1].logical_not().any()
    assert (trace.frames[0][:, [0, 2]] == torch.tensor([0, 2])).all() and (trace.frames[0][:, 3:] == V).all()
    assert (trace.forwards[1:] >= trace.forwards[:-1]).all() and trace.forwards[0].eq(0).all()
    assert trace.forwards[-1].mean().item() == pytest.approx(nfe)  # the count the sampler reports


@examples(3)
@given(seed=seeds)
def test_tracing_semi_ar_records_every_step_of_every_window(seed):
    traced, tokens, _ = traced_run("semi-ar", seed, steps=3, seq_len=L + L // 2)
    trace = traced.trace()
    windows = 2  # the context, then one block of L/2
    assert trace.frames.shape[0] == windows * 3 + 1 and torch.equal(trace.tokens(), tokens)
    revealed = trace.frames != V
    assert (revealed[1:] >= revealed[:-1]).all()


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_tracing_changes_no_draw(name):
    seq_len = L + 4 if SAMPLERS[name]("argmax").extends_context else L
    plain, _ = generate(tiny_model("mdlm"), process_for(name, V), 3, seq_len, 5, sampler=make_sampler(name),
                        generator=torch.Generator().manual_seed(7))
    traced, _ = generate(tiny_model("mdlm"), process_for(name, V), 3, seq_len, 5, sampler=Traced(make_sampler(name)),
                         generator=torch.Generator().manual_seed(7))
    assert torch.equal(plain, traced)


def test_on_frame_sees_every_frame_as_it_is_made_and_the_last_one_again_filled():
    seen = []
    traced = Traced(make_sampler("ancestral"), on_frame=lambda k, tokens, forwards: seen.append((k, tokens)))
    generate(tiny_model("mdlm"), PROCESS, 2, L, 4, sampler=traced, generator=torch.Generator().manual_seed(0))
    assert [k for k, _ in seen] == [0, 1, 2, 3, 4, 4]
    assert torch.equal(seen[-1][1], traced.trace().tokens())


def test_changed_at_is_the_frame_of_each_positions_last_change():
    M = 9
    frames = torch.tensor([[[1, M, M, M]], [[1, 4, M, M]], [[1, 4, M, 3]], [[1, 4, 5, 3]]])
    trace = Trace(frames, torch.zeros(4, 1), M)
    assert trace.changed_at().tolist() == [[0, 1, 3, 2]]


def test_an_ar_model_has_nothing_to_trace():
    with pytest.raises(ValueError, match="AR model"):
        Traced(make_sampler()).trace()
