"""Our checkpoints as a model of the lm-evaluation-harness (lm-eval 0.4), and its command line.

    python -m evaluation.harness --model_args ckpt=out/mdlm/ckpt.pt --tasks arc_easy,piqa
    python -m evaluation.harness --model_args ckpt=out/sdtt/round6.pt --tasks lambada_openai
    python -m evaluation.harness --model_args ckpt=out/ar/ckpt.pt --include_path tests/harness --tasks shakespeare_mc

Every flag is lm_eval's own (`python -m evaluation.harness --help`); `--model` defaults to ours, "mdlm",
which takes any of our checkpoints (mdlm, sdtt, idlm or ar). lm-eval 0.4 finds models only in
its registry, which a process fills by importing the module that defines them, and its
`lm_eval` command imports no module of ours: so this file registers the model and then runs
lm_eval's command line in the same process. Model arguments (--model_args a=1,b=2):
ckpt (required), weights (ema or raw; default ema), time_samples (K of the NELBO; default
likelihood.DEFAULT_TIME_SAMPLES), steps (diffusion sampling steps of generate_until; default:
one per generated token), seed (default 0).

loglikelihood: exact for an AR model; for a diffusion model the NELBO bound on the
continuation given the context (likelihood.py: the context is never masked, K antithetic
times), negated, so it is a lower bound on log p. is_greedy: for a diffusion model, whether
one forward pass with the whole continuation masked decodes it (SDTT's LAMBADA protocol).

generate_until (SPEC.md §7.3): a request is sampled when its do_sample says so or, unsaid, when its
temperature is above 0 (lm-eval's rule); otherwise, and at temperature 0, it is greedy. Greedy
generation of a diffusion model is its own sampler (ancestral for MDLM) with every token it takes
the denoiser's most probable one: which positions a step reveals is still drawn (seeded by the
context), what they become is the argmax given what is revealed by then; an AR model takes the argmax
at every token. A sampled request draws from the categorical at its temperature and top_p (SPEC.md §7.5).
"""
import sys
import zlib

import torch

from data import tokenizer_from_meta
from evaluate import generate
from evaluation.likelihood import DEFAULT_TIME_SAMPLES, ar_continuation, diffusion_continuation, rolling_windows
from loading.checkpoint import load_model, process_of
from plumbing import devices

MISSING_EXTRAS = "error: the lm-evaluation-harness is not installed: pip install -r requirements-eval.txt"
try:
    from lm_eval.api.model import TemplateLM
    from lm_eval.api.registry import register_model
except ImportError:
    if __name__ == "__main__":
        sys.exit(MISSING_EXTRAS)
    raise ImportError(MISSING_EXTRAS.removeprefix("error: ")) from None

MODEL_NAME = "mdlm"
ARGMAX = 1e-12  # a top-p below the most probable token's probability (>= 1/V): the nucleus is that token alone


def decoding(gen_kwargs):
    """(temperature, top_p) of a generate_until request: sampled when do_sample says so or, unsaid,
    at a temperature above 0 (lm-eval's rule), at its temperature (1 unsaid) and top_p; otherwise
    greedy, every token the argmax (the nucleus of one token)."""
    do_sample = gen_kwargs.get("do_sample")
    temperature = float(gen_kwargs.get("temperature", 1.0 if do_sample else 0.0))
    if do_sample is False or temperature == 0:
        return 1.0, ARGMAX
    return temperature, float(gen_kwargs.get("top_p", 1.0))


def pick_device(name):
    """lm_eval's --device: auto (our default; lm_eval's own is cuda:0), cpu, cuda or cuda:N."""
    return torch.device(name) if ":" in str(name) else devices.pick(name or "auto")


@register_model(MODEL_NAME)
class CheckpointLM(TemplateLM):
    """One of our checkpoints behind lm-eval's interface; requests are scored one at a time
    (a diffusion request's K time samples share one batch)."""

    def __init__(self, ckpt=None, weights="ema", time_samples=DEFAULT_TIME_SAMPLES, steps=None, seed=0,
                 device="auto", batch_size=None, max_batch_size=None, **unknown):
        super().__init__()
        if unknown:
            raise ValueError(f"unknown model argument(s) {', '.join(unknown)}: ours are ckpt, weights, "
                             "time_samples, steps and seed")
        if ckpt is None:
            raise ValueError("give the checkpoint: --model_args ckpt=PATH")
        if weights not in ("ema", "raw"):
            raise ValueError(f"weights must be ema or raw, got {weights!r}")
        self.model, record = load_model(str(ckpt), weights=weights, device=pick_device(device))
        self.process = process_of(record)
        self.tokenizer = tokenizer_from_meta(record["data_meta"])
        self.time_samples, self.seed = int(time_samples), int(seed)
        self.steps = None if steps is None else int(steps)
        self.seq_len = self.model.config.seq_len

    @property
    def eot_token_id(self):
        if self.tokenizer.eos_id is None:
            raise ValueError("this vocabulary has no end-of-text token: every request needs a context")
        return self.tokenizer.eos_id

    def tok_encode(self, string, add_special_tokens=None, **kwargs):
        return self.tokenizer.encode(string)

    def tok_decode(self, tokens):
        return self.tokenizer.decode(tokens)

    def generator(self, context):
        """A generator seeded by the context: a request's result does not depend on the order or
        company lm-eval runs it in, and the choices of one question share their time samples
        (common random numbers, so the comparison between choices is less noisy)."""
        return torch.Generator().manual_seed(zlib.crc32(repr((self.seed, list(context))).encode()))

    def score(self, context, continuation):
        """(log p or its NELBO bound, is_greedy) of one continuation token list."""
        if self.process is None:
            nll, greedy = ar_continuation(self.model, context, continuation)
        else:
            nll, greedy = diffusion_continuation(self.model, self.process, context, continuation,
                                                 self.time_samples, self.generator(context))
        return -nll, greedy

    def with_start(self, context):
        """An AR model reads the start token (the tokenizer's EOS) before every context, as our AR
        judge does (lm-eval adds it only to an empty context); a diffusion model reads the context."""
        start = self.tokenizer.eos_id
        if self.process is not None or start is None or context[:1] == [start]:
            return list(context)
        return [start, *context]

    def _loglikelihood_tokens(self, requests, disable_tqdm=False, **kwargs):
        return [self.score(self.with_start(context), continuation) for _, context, continuation in requests]

    def loglikelihood_rolling(self, requests, disable_tqdm=False):
        """log p of whole texts, in disjoint windows of seq_len tokens (likelihood.rolling_windows):
        an AR model predicts each window after one token of context (the start token before the
        first); a diffusion model scores each window on its own (MDLM's wrapped blocks)."""
        results = []
        for request in requests:
            tokens = self.tok_encode(request.args[0])
            results.append(sum(self.score(self.with_start(context), window)[0]
                               for context, window in rolling_windows(tokens, self.seq_len)))
        return results

    def generate_until(self, requests, disable_tqdm=False):
        """Continue each context with our sampler (evaluate.generate) by max_gen_toks tokens, cut
        at the first stop string; greedy or sampled as the request says (`decoding`; module
        docstring). Diffusion: `steps` steps of the process's own sampler (default: one per new
        token), seeded by the context."""
        results = []
        for request in requests:
            context, gen_kwargs = request.args
            until = gen_kwargs.get("until", [])
            until = [until] if isinstance(until, str) else list(until)
            new_tokens = min(int(gen_kwargs.get("max_gen_toks", 64)), self.seq_len - 1)
            prompt = self.tok_encode(context)
            prompt = prompt[max(0, len(prompt) - (self.seq_len - new_tokens)):]  # the context is cut on the left
            temperature, top_p = decoding(gen_kwargs)
            tokens, _ = generate(self.model, self.process, 1, len(prompt) + new_tokens, self.steps or new_tokens,
                                 prompt=prompt, bos_id=self.tokenizer.eos_id, generator=self.generator(prompt),
                                 temperature=temperature, top_p=top_p)
            text = self.tok_decode(tokens[0, len(prompt):])
            for stop in until:
                text = text.split(stop)[0]
            results.append(text)
        return results


def main(argv=None):
    """lm_eval's command line, with our model registered; --model defaults to ours, --device to auto."""
    from lm_eval.__main__ import cli_evaluate
    argv = sys.argv[1:] if argv is None else argv
    for name, default in (("--model", MODEL_NAME), ("--device", "auto")):
        if not any(arg == name or arg.startswith(name + "=") for arg in argv):
            argv = [name, default, *argv]
    sys.argv = [sys.argv[0], *argv]
    cli_evaluate()


if __name__ == "__main__":
    from plumbing import cli
    cli.run_command(main)
