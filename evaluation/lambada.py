"""SDTT's LAMBADA protocol (section 4; SPEC.md §7.3): mask every token of each text's last word,
decode them all in ONE forward pass with the argmax of x_theta, and count the text as correct only
if every token is right; beside it, the NELBO bound on the word's perplexity given its context.
"""
import math

import torch

from data import MarkovSource
from evaluation.likelihood import diffusion_continuation
from plumbing import devices


def lambada_split(text, tokenizer):
    """(context tokens, last-word tokens): the word's tokens are those of the text beyond the
    tokens of the text without its last word."""
    words = text.strip().rsplit(maxsplit=1)
    if len(words) < 2:
        return [], []
    ids, prefix = tokenizer.encode(text.strip()), tokenizer.encode(words[0])
    return ids[:len(prefix)], ids[len(prefix):]


@torch.no_grad()
def lambada(model, process, examples, tokenizer, device, nelbo_samples=16, seed=0):
    """One-pass accuracy and ppl_bound, the NELBO bound on the perplexity per token of the last
    word given its context (likelihood.diffusion_continuation: only the word is ever noised), a
    fixed-seed Monte-Carlo estimate with nelbo_samples antithetic times per text."""
    seq_len = model.config.seq_len
    generator = torch.Generator().manual_seed(seed)
    correct = n = word_tokens = 0
    nelbo_nats = 0.0
    with devices.eval_mode(model), devices.autocast(device):  # bf16 on a GPU, as in training
        for text in examples:
            context, word = lambada_split(text, tokenizer)
            if not context or not word or len(word) >= seq_len:
                continue
            nats, greedy = diffusion_continuation(model, process, context, word, nelbo_samples, generator)
            correct += greedy
            nelbo_nats += nats
            word_tokens += len(word)
            n += 1
    if n == 0:
        raise ValueError("no usable LAMBADA examples (each needs a context and a last word)")
    return {"accuracy": correct / n, "ppl_bound": math.exp(nelbo_nats / word_tokens),
            "forward_passes": n, "n": n}


def lambada_examples(source, data, limit, seed=0):
    """LAMBADA texts: the Hugging Face test set (source "hf", or "auto" when reachable), else
    held-out lines of the local corpus; for the synthetic source, sampled sequences."""
    if isinstance(data, MarkovSource):
        if source == "hf":
            raise ValueError("LAMBADA from the hub is English text; these models saw the synthetic source")
        sequences = data.sample(limit, torch.Generator().manual_seed(seed))
        return [data.tokenizer.decode(row) for row in sequences]
    if source in ("auto", "hf"):
        try:
            import datasets
            return datasets.load_dataset("EleutherAI/lambada_openai", "en", split="test")["text"][:limit]
        except Exception as e:  # no package, no network, hub down: all mean "not available"
            if source == "hf":
                raise ValueError("could not load LAMBADA from the Hugging Face hub (needs the "
                                 f"datasets package and a network): {type(e).__name__}") from None
            print("LAMBADA is not available from the hub: using held-out lines of the local corpus")
    return data.val_texts()[:limit]
