"""MAUVE (Pillutla et al. 2021, mauve-text) between samples and reference text, in a judge's feature
space: our AR judge's last hidden state at the last token (offline), or a Hugging Face model that
mauve-text runs on the decoded text (online). Used by SDTT's continuation protocol
(evaluation/continuations.py) and the sweep's --mauve. mauve-text quantizes the two feature sets
together with k-means into a tenth as many clusters as the smaller set has samples."""
from pathlib import Path

import numpy as np
import torch

from data import tokenizer_from_meta
from loading.checkpoint import load_model

MAUVE_SEED = 25  # mauve-text's default k-means seed


@torch.no_grad()
def ar_features(model, tokens, bos_id, batch_size=64):
    """Our AR judge's feature of each sequence [N, T]: its final hidden state (after the last
    norm, before the output layer) at the last token, reading [BOS] + tokens as it judges text.
    Returns float32 [N, n_embd] as numpy (what mauve-text takes)."""
    if tokens.shape[1] + 1 > model.config.seq_len:
        raise ValueError(f"sequences of {tokens.shape[1]} tokens and a BOS do not fit the judge's context "
                         f"of {model.config.seq_len}")
    device, hidden = next(model.parameters()).device, []
    hook = model.norm_final.register_forward_hook(lambda module, args, output: hidden.append(output[:, -1]))
    try:
        for chunk in tokens.split(batch_size):
            model(torch.cat([torch.full_like(chunk[:, :1], bos_id), chunk], 1).to(device))
    finally:
        hook.remove()
    return torch.cat(hidden).float().cpu().numpy()


def mauve_module():
    try:
        import mauve
    except ImportError:
        raise ValueError("MAUVE needs mauve-text: pip install -r requirements-eval.txt") from None
    return mauve


def mauve_of_features(p_features, q_features, seed=MAUVE_SEED):
    """MAUVE between the texts behind two feature sets (mauve-text's defaults: buckets = n/10,
    PCA to 90% of the variance, scaling factor 5). 1 means indistinguishable."""
    return float(mauve_module().compute_mauve(p_features=np.asarray(p_features), q_features=np.asarray(q_features),
                                              seed=seed, verbose=False).mauve)


def mauve_of_texts(p_texts, q_texts, model_name, device_id=-1, seed=MAUVE_SEED):
    """MAUVE with mauve-text's own featurizer, a Hugging Face model (the papers': gpt2-large)."""
    try:
        import transformers  # noqa: F401  (mauve-text featurizes text with it)
    except ImportError:
        raise ValueError(f"MAUVE with the judge {model_name!r} needs transformers: pip install transformers") from None
    return float(mauve_module().compute_mauve(p_text=p_texts, q_text=q_texts, featurize_model_name=model_name,
                                              device_id=device_id, seed=seed, verbose=False).mauve)


# ----------------------------------------------------------------------------- judges of MAUVE

class FeatureJudge:
    """Our AR checkpoint: MAUVE on its hidden states (offline). max_tokens: the most tokens of a
    sequence it reads, its context less the BOS."""

    def __init__(self, model, bos_id):
        self.model, self.bos_id = model, bos_id
        self.max_tokens = model.config.seq_len - 1

    def mauve(self, references, samples, seed=MAUVE_SEED):
        return mauve_of_features(ar_features(self.model, references, self.bos_id),
                                 ar_features(self.model, samples, self.bos_id), seed)


class TextJudge:
    """A Hugging Face model: mauve-text featurizes the decoded texts with it (online). mauve-text
    takes only GPT-2 and BERT models, told by their names (its `get_model`); it cuts each text to
    its own maximum length (max_tokens None: we cut nothing)."""
    FEATURIZERS = ("gpt2", "bert")
    max_tokens = None

    def __init__(self, name, tokenizer, device):
        if not any(kind in str(name) for kind in self.FEATURIZERS):
            raise ValueError(f"MAUVE with the judge {name!r}: mauve-text featurizes text only with a GPT-2 or BERT "
                             "model, named so (e.g. gpt2-large)")
        self.name, self.tokenizer, device = name, tokenizer, torch.device(device)
        self.device_id = (device.index or 0) if device.type == "cuda" else -1  # mauve-text's convention

    def mauve(self, references, samples, seed=MAUVE_SEED):
        decode = lambda rows: [self.tokenizer.decode(row) for row in rows]  # noqa: E731
        return mauve_of_texts(decode(references), decode(samples), self.name, self.device_id, seed)


def load_mauve_judge(spec, data_meta, device):
    """A path to our AR checkpoint (its vocabulary must be the samples'), or a Hugging Face model (a hub
    name or a local folder), told apart as evaluate.load_judge does. Refuses, before any sampling, what
    could not be scored: no mauve-text, the exact judge (it has no features of text)."""
    mauve_module()
    if spec == "exact":
        raise ValueError("MAUVE needs a judge that reads text, our AR checkpoint or a Hugging Face GPT-2 "
                         "(--judge): the exact judge of the synthetic source has no features")
    tokenizer = tokenizer_from_meta(data_meta)
    if not (spec.endswith(".pt") or Path(spec).is_file()):
        return TextJudge(spec, tokenizer, device)
    model, ckpt = load_model(spec, kinds=("ar",), device=device)
    if ckpt["data_meta"] != data_meta:
        raise ValueError(f"judge {spec} uses a different tokenizer/vocabulary than the samples")
    if tokenizer.eos_id is None:
        raise ValueError("MAUVE needs text with a start token; the synthetic source has none")
    return FeatureJudge(model, tokenizer.eos_id)
