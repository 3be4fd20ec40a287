"""A trace of the denoising: the tokens after each step of a sampler, for watching a masked
diffusion model unmask (sample.py --show in the terminal, --trace as an HTML page).

`Traced(sampler)` is itself a sampler (the interface of samplers.py): it runs the sampler it
wraps, records z before the first step and after every step through `on_step`, and counts the
sequence-forwards the network made up to each frame. Frame k holds the tokens after k steps;
the last frame is the returned tokens, since the last step ends with the fill of positions still
MASK (MDLM's noise removal). A sampler of `steps` steps thus gives steps + 1 frames (semi-ar:
one frame per step of every window, plus the start).
"""
from dataclasses import dataclass

import torch


class Counted(torch.nn.Module):
    """A denoiser that counts its sequence-forwards: each sequence that goes through the whole
    network, or through the trunk of a network split into trunk and head (samplers.py)."""

    def __init__(self, model):
        super().__init__()
        self.model, self.config, self.forwards = model, getattr(model, "config", None), 0
        if hasattr(model, "trunk"):  # the fast samplers then run trunk and head themselves
            self.trunk, self.head = self.counted_trunk, model.head

    def forward(self, z, sigma=None):
        self.forwards += z.shape[0]
        return self.model(z, sigma)

    def counted_trunk(self, z, sigma):
        self.forwards += z.shape[0]
        return self.model.trunk(z, sigma)


@dataclass
class Trace:
    """frames [F, N, L]: the tokens of N samples after 0..F-1 steps (the last: the returned
    tokens); forwards [F, N]: sequence-forwards per sequence made up to each frame (a batch's
    count shared by its rows); mask_id: the placeholder token."""
    frames: torch.Tensor
    forwards: torch.Tensor
    mask_id: int

    @property
    def steps(self):
        return self.frames.shape[0] - 1

    def tokens(self):
        return self.frames[-1]

    def changed_at(self):
        """[N, L]: the frame at which each position took its final token (0: fixed from the start)."""
        same_as_final = self.frames == self.frames[-1]
        # the last frame from which the token stays the final one: after the last change
        stays = same_as_final.flip(0).long().cumprod(0).sum(0)
        return self.frames.shape[0] - stays


class Traced:
    """A sampler that records what the sampler it wraps does, batch by batch (`traces`).
    on_frame(k, tokens [N, L], forwards per sequence), if given, sees each frame as it is made;
    the last frame is reported twice: after the last step, then with the final fill."""

    def __init__(self, sampler, on_frame=None):
        self.sampler, self.on_frame, self.traces = sampler, on_frame, []
        self.extends_context = sampler.extends_context

    def __call__(self, model, process, z, steps, generator=None, on_step=None):
        counted = Counted(model)
        frames, forwards = [], []

        def record(i, tokens, reported=None):
            """A frame; `reported`: the count of the start (0) and of the end (the sampler's own),
            else (a step, passed on to on_step) the counter's."""
            frames.append(tokens.detach().cpu().clone())
            forwards.append((counted.forwards if reported is None else reported) / tokens.shape[0])
            if self.on_frame is not None:
                self.on_frame(len(frames) - 1, frames[-1], forwards[-1])
            if on_step is not None and reported is None:
                on_step(i, tokens)

        record(None, z, 0)
        tokens, done = self.sampler(counted, process, z, steps, generator, record)
        if len(frames) > 1:  # the last step's frame becomes the returned tokens
            frames.pop(), forwards.pop()
        record(None, tokens, done)
        n = tokens.shape[0]
        self.traces.append(Trace(torch.stack(frames), torch.tensor(forwards)[:, None].expand(-1, n),
                                 process.mask_id))
        return tokens, done

    def trace(self):
        """One Trace of every sample made so far (batches concatenated)."""
        if not self.traces:
            raise ValueError("nothing was traced: an AR model has no denoising steps to show")
        return Trace(torch.cat([t.frames for t in self.traces], 1), torch.cat([t.forwards for t in self.traces], 1),
                     self.traces[0].mask_id)
