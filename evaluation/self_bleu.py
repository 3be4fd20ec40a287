"""Self-BLEU (SDTT appendix A, eq. 8): how alike a model's continuations of one prompt are. 1
for identical continuations (deterministic sampling); lower is more diverse.
"""
import torch

from evaluate import generate
from plumbing import devices

CONTINUATIONS_PER_PROMPT = 5  # SDTT appendix A (as Lou et al. for MAUVE)


def self_bleu(continuations, max_n=4):
    """SDTT appendix A, eq. 8: each continuation's sentence BLEU against the others, averaged.
    1 for identical continuations (deterministic sampling); lower is more diverse.

    sacrebleu on the token ids (no re-tokenization), with Texygen's smoothing (Zhu et al. 2018):
    a zero n-gram match count counts as 0.1, and orders longer than a continuation are skipped.
    """
    if len(continuations) < 2:
        raise ValueError("self-BLEU needs at least two continuations")
    metric = sentence_bleu(max_n)
    texts = [" ".join(str(int(token)) for token in c) for c in continuations]
    return sum(metric.sentence_score(text, texts[:i] + texts[i + 1:]).score / 100
               for i, text in enumerate(texts)) / len(texts)


def sentence_bleu(max_n=4):
    """sacrebleu's sentence BLEU on token ids with Texygen's smoothing (`self_bleu`); without
    sacrebleu, one error line naming the requirements file (callers ask before they sample)."""
    try:
        from sacrebleu.metrics import BLEU
    except ImportError:
        raise ValueError("self-BLEU needs sacrebleu: pip install -r requirements-eval.txt") from None
    return BLEU(tokenize="none", smooth_method="floor", smooth_value=0.1, effective_order=True, max_ngram_order=max_n)


def continuation_self_bleu(model, process, data, seq_len, steps, prompts, seed, bos_id=None, batch_size=64,
                           sampler=None, temperature=1.0, top_p=1.0):
    """SDTT appendix A: 5 continuations of each held-out prompt (the first half of a validation
    window), drawn at `temperature` and `top_p` (SPEC.md §7.4: a row's self-BLEU is of its own
    draws), self-BLEU of the continuations of each prompt, averaged over prompts."""
    generator, device = torch.Generator().manual_seed(seed), next(model.parameters()).device
    scores = []
    for window in data.batch("val", prompts, seq_len, generator):
        prompt = window[:seq_len // 2].tolist()
        with devices.autocast(device):  # bf16 on a GPU, as in training
            tokens, _ = generate(model, process, CONTINUATIONS_PER_PROMPT, seq_len, steps, prompt=prompt,
                                 bos_id=bos_id, batch_size=batch_size, generator=generator, sampler=sampler,
                                 temperature=temperature, top_p=top_p)
        scores.append(self_bleu([row[len(prompt):].tolist() for row in tokens]))
    return sum(scores) / len(scores)
