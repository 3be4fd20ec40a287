"""Metrics for masked diffusion language models, and a sweep over checkpoints x sampling steps.

SPEC section 5. Generative perplexity (GenPPL) is the mean per-token NLL of unconditional
samples under a judge, exponentiated, always reported with the samples' token entropy (the
guard against repetitive text, IDLM/Duo protocol) and the number of steps. Also: self-BLEU
of continuations of one prompt (SDTT appendix A), LAMBADA last-word accuracy decoded in one
forward pass and its NELBO perplexity bound (SDTT section 4).

    python evaluate.py --ckpts out/mdlm/ckpt.pt out/sdtt/ckpt.pt --steps 8 16 32 64
"""
import collections
import contextlib
import csv
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

import cli
from checkpoint import DIFFUSION_KINDS, load_model
from data import MarkovSource, load_data, source_from_meta, tokenizer_from_meta
from diffusion import antithetic_times, denoise, nelbo_loss, sample

DEFAULT_AR_JUDGE = "out/ar/ckpt.pt"
CONTINUATIONS_PER_PROMPT = 5  # SDTT appendix A (as Lou et al. for MAUVE)


# ----------------------------------------------------------------------------- judges

class ARJudge:
    """Our autoregressive model as the judge (offline GenPPL): scores x_1..x_L after a BOS."""

    def __init__(self, model, bos_id, batch_size=32):
        self.model, self.bos_id, self.batch_size = model.eval(), bos_id, batch_size

    @torch.no_grad()
    def nll_per_token(self, tokens):
        """Mean NLL (nats) per token of each sequence of tokens [N, L] -> [N]."""
        context = self.model.config.seq_len
        if tokens.shape[1] > context:
            raise cli.UserError(f"samples of {tokens.shape[1]} tokens are longer than the judge's "
                                f"context of {context}")
        device = next(self.model.parameters()).device
        nll = []
        for chunk in tokens.to(device).split(self.batch_size):
            inputs = torch.cat([torch.full_like(chunk[:, :1], self.bos_id), chunk[:, :-1]], dim=1)
            logits = self.model(inputs).float()
            nll.append(F.cross_entropy(logits.transpose(1, 2), chunk, reduction="none").mean(1))
        return torch.cat(nll).cpu()


class ExactJudge:
    """The synthetic source itself: exact GenPPL from its likelihood, -log p(x) / L."""

    def __init__(self, source):
        self.source = source

    def nll_per_token(self, tokens):
        return -self.source.log_prob(tokens) / tokens.shape[1]


class HFJudge:
    """A Hugging Face causal LM (the papers use gpt2-large). Our tokens are decoded to text and
    re-tokenized with the judge's tokenizer, so the NLL is per judge token (as in MDLM)."""

    def __init__(self, name, tokenizer, device):
        try:
            import transformers
        except ImportError:
            raise cli.UserError(f"judge {name!r} is not 'exact' or a checkpoint file; a Hugging Face "
                                "judge needs `pip install transformers`") from None
        try:
            self.hf_tokenizer = transformers.AutoTokenizer.from_pretrained(name)
            self.model = transformers.AutoModelForCausalLM.from_pretrained(name).to(device).eval()
        except (OSError, ValueError):  # what from_pretrained raises for an unknown name or no network
            raise cli.UserError(f"could not load judge {name!r} from the Hugging Face hub") from None
        self.tokenizer, self.device = tokenizer, device
        bos_id = self.hf_tokenizer.bos_token_id
        self.bos_id = self.hf_tokenizer.eos_token_id if bos_id is None else bos_id
        self.max_len = self.model.config.max_position_embeddings

    @torch.no_grad()
    def nll_per_token(self, tokens):
        nll = []
        for row in tokens:  # one at a time: re-tokenized lengths differ
            text_ids = self.hf_tokenizer.encode(self.tokenizer.decode(row))[:self.max_len - 1]
            ids = torch.tensor([self.bos_id] + text_ids, device=self.device)
            nll.append(F.cross_entropy(self.model(ids[None]).logits[0, :-1].float(), ids[1:]).item())
        return torch.tensor(nll)


def load_judge(spec, data_meta, device):
    """'exact' (synthetic source only), a path to our AR checkpoint, or a Hugging Face name."""
    if spec == "exact":
        source = source_from_meta(data_meta)
        if source is None:
            raise cli.UserError("the exact judge needs the synthetic source; these models saw text")
        return ExactJudge(source)
    if spec.endswith(".pt") or Path(spec).exists():
        model, ckpt = load_model(spec, kinds=("ar",), device=device)
        if ckpt["data_meta"] != data_meta:
            raise cli.UserError(f"judge {spec} uses a different tokenizer/vocabulary than the samples")
        bos_id = tokenizer_from_meta(data_meta).eos_id
        if bos_id is None:
            raise cli.UserError("an AR judge needs a start token; for the synthetic source use --judge exact")
        return ARJudge(model, bos_id)
    return HFJudge(spec, tokenizer_from_meta(data_meta), device)


# ----------------------------------------------------------------------------- sample metrics

def token_entropy(tokens):
    """Entropy (nats) of each sample's token histogram, tokens [N, L] -> [N] (IDLM/Duo)."""
    entropies = []
    for row in tokens:
        p = row.unique(return_counts=True)[1].double() / row.numel()
        entropies.append(-(p * p.log()).sum())
    return torch.stack(entropies)


def ngrams(tokens, n):
    return collections.Counter(tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1))


def bleu(hypothesis, references, max_n=4):
    """Sentence BLEU (Papineni et al. 2002): brevity penalty times the geometric mean of the
    modified n-gram precisions, n = 1..max_n (orders longer than the hypothesis are skipped).
    A zero match count is smoothed to 0.1, as in Texygen's self-BLEU (Zhu et al. 2018)."""
    orders = range(1, min(max_n, len(hypothesis)) + 1)
    if not orders:
        return 0.0
    log_precision = 0.0
    for n in orders:
        counts, clip = ngrams(hypothesis, n), collections.Counter()
        for reference in references:
            clip |= ngrams(reference, n)  # each n-gram counts at most as often as in one reference
        matches = sum((counts & clip).values())
        log_precision += math.log(max(matches, 0.1) / sum(counts.values())) / len(orders)
    closest = min(references, key=lambda r: (abs(len(r) - len(hypothesis)), len(r)))
    brevity = min(1.0, math.exp(1 - len(closest) / len(hypothesis)))
    return brevity * math.exp(log_precision)


def self_bleu(continuations, max_n=4):
    """SDTT appendix A, eq. 8: each continuation's BLEU against the others, averaged.
    1 for identical continuations (deterministic sampling); lower is more diverse."""
    if len(continuations) < 2:
        raise ValueError("self-BLEU needs at least two continuations")
    return sum(bleu(c, continuations[:i] + continuations[i + 1:], max_n)
               for i, c in enumerate(continuations)) / len(continuations)


# ----------------------------------------------------------------------------- sampling

@contextlib.contextmanager
def eval_mode(model):
    """Dropout off while evaluating; the mode is restored after (train.py evaluates mid-run)."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


@torch.no_grad()
def generate(model, kind, n, seq_len, steps, *, prompt=(), bos_id=None, batch_size=64, generator=None,
             final="argmax", cache=True, top_p=1.0, temperature=1.0, progress=None):
    """n samples of seq_len tokens that start with `prompt` (kept fixed), made in batches.

    Diffusion kinds: ancestral sampling in `steps` steps from all-MASK after the prompt
    (diffusion.sample). "ar": the GPT continues [BOS] + prompt with its KV cache, one forward
    pass per new token (`steps` unused). Returns (tokens [n, seq_len] on the CPU, forward
    passes per batch, averaged over the batches).
    """
    context = model.config.seq_len
    if seq_len > context:
        raise cli.UserError(f"samples of {seq_len} tokens do not fit the model's context of {context}")
    if len(prompt) >= seq_len:
        raise cli.UserError(f"the prompt has {len(prompt)} tokens: it must be shorter than the "
                            f"{seq_len} tokens of a sample")
    if kind != "ar" and steps < 1:
        raise cli.UserError(f"steps must be at least 1, got {steps}")
    device = next(model.parameters()).device
    prompt = torch.tensor(list(prompt), dtype=torch.long, device=device)
    if kind == "ar":
        start = prompt if bos_id is None else torch.cat([prompt.new_tensor([bos_id]), prompt])
        if len(start) == 0:
            raise cli.UserError("this AR model's vocabulary has no start token: give a prompt")
    samples, passes = [], []
    with eval_mode(model):
        for first in range(0, n, batch_size):
            size = min(batch_size, n - first)
            if kind == "ar":
                try:
                    tokens = model.generate(start.expand(size, -1), seq_len - len(prompt), top_p=top_p,
                                            temperature=temperature, generator=generator)[:, -seq_len:]
                except ValueError as e:  # prompt and new tokens overflow the context
                    raise cli.UserError(str(e)) from None
                nfe = seq_len - len(prompt)
            else:
                z = torch.full((size, seq_len), model.mask_id, device=device)
                z[:, :len(prompt)] = prompt
                tokens, nfe = sample(model, z, steps, model.mask_id, final=final, cache=cache,
                                     time_conditioned=model.config.time_conditioning,
                                     generator=generator, progress=progress)
            samples.append(tokens.cpu())
            passes.append(nfe)
    return torch.cat(samples), sum(passes) / len(passes)


def quality_rows(entries, judge, num_samples, batch_size, seq_len, seed, device, bos_id=None):
    """GenPPL, entropy and forward passes of unconditional samples, one row per entry
    (label, model, kind, steps). Every entry samples with the same seed. bos_id: the AR
    models' start token (the tokenizer's EOS)."""
    rows = []
    for label, model, kind, steps in entries:
        start = time.perf_counter()
        tokens, nfe = generate(model.to(device), kind, num_samples, seq_len, steps, bos_id=bos_id,
                               batch_size=batch_size, generator=torch.Generator().manual_seed(seed))
        seconds = time.perf_counter() - start
        nll = judge.nll_per_token(tokens).double()
        rows.append({"label": label, "steps": steps, "genppl": nll.mean().exp().item(),
                     "entropy": token_entropy(tokens).mean().item(), "nfe": nfe, "seconds": seconds})
    return rows


def continuation_self_bleu(model, kind, data, seq_len, steps, prompts, seed, bos_id=None, batch_size=64):
    """SDTT appendix A: 5 continuations of each held-out prompt (the first half of a validation
    window), self-BLEU of the continuations of each prompt, averaged over prompts."""
    generator = torch.Generator().manual_seed(seed)
    scores = []
    for window in data.batch("val", prompts, seq_len, generator):
        prompt = window[:seq_len // 2].tolist()
        tokens, _ = generate(model, kind, CONTINUATIONS_PER_PROMPT, seq_len, steps, prompt=prompt,
                             bos_id=bos_id, batch_size=batch_size, generator=generator)
        scores.append(self_bleu([row[len(prompt):].tolist() for row in tokens]))
    return sum(scores) / len(scores)


# ----------------------------------------------------------------------------- likelihood metrics

def lambada_split(text, tokenizer):
    """(context tokens, last-word tokens): the word's tokens are those of the text beyond the
    tokens of the text without its last word."""
    words = text.strip().rsplit(maxsplit=1)
    if len(words) < 2:
        return [], []
    ids, prefix = tokenizer.encode(text.strip()), tokenizer.encode(words[0])
    return ids[:len(prefix)], ids[len(prefix):]


@torch.no_grad()
def lambada(model, examples, tokenizer, mask_id, device, nelbo_samples=16, seed=0):
    """LAMBADA protocol (SDTT section 4): mask every token of each text's last word, decode
    them all in ONE forward pass with the argmax of x_theta; correct only if all are right.

    ppl_bound: the NELBO (SDTT eq. 3) bound on the perplexity per token of the last word given
    its context, a fixed-seed Monte-Carlo estimate in which only the word is ever masked.
    """
    seq_len, time_conditioned = model.config.seq_len, model.config.time_conditioning
    generator = torch.Generator().manual_seed(seed)
    correct = n = word_tokens = 0
    nelbo_nats = 0.0
    with eval_mode(model):
        for text in examples:
            context, word = lambada_split(text, tokenizer)
            if not context or not word or len(word) >= seq_len:
                continue
            x = torch.tensor(context[len(word) - seq_len:] + word, device=device)[None]
            is_word = torch.arange(x.shape[1], device=device) >= x.shape[1] - len(word)
            t = torch.full((1,), len(word) / x.shape[1], device=device)  # used if time-conditioned
            prediction = denoise(model, torch.where(is_word, mask_id, x), t, mask_id, time_conditioned)
            correct += bool((prediction.argmax(-1)[0, is_word] == x[0, is_word]).all())
            # a uniform of 1 is never below the move chance, so the context is never masked
            copies = x.expand(nelbo_samples, -1)
            t = antithetic_times(torch.rand((), generator=generator), nelbo_samples).to(device)
            u = torch.where(is_word, torch.rand(copies.shape, generator=generator).to(device), 1.0)
            nelbo_nats += nelbo_loss(model, copies, t, u, mask_id, time_conditioned).item() * x.shape[1]
            word_tokens += len(word)
            n += 1
    if n == 0:
        raise cli.UserError("no usable LAMBADA examples (each needs a context and a last word)")
    return {"accuracy": correct / n, "ppl_bound": math.exp(nelbo_nats / word_tokens),
            "forward_passes": n, "n": n}


def lambada_examples(source, data, limit, seed=0):
    """LAMBADA texts: the Hugging Face test set (source "hf", or "auto" when reachable), else
    held-out lines of the local corpus; for the synthetic source, sampled sequences."""
    if isinstance(data, MarkovSource):
        if source == "hf":
            raise cli.UserError("LAMBADA from the hub is English text; these models saw the synthetic source")
        sequences = data.sample(limit, torch.Generator().manual_seed(seed))
        return [data.tokenizer.decode(row) for row in sequences]
    if source in ("auto", "hf"):
        try:
            import datasets
            return datasets.load_dataset("EleutherAI/lambada_openai", "en", split="test")["text"][:limit]
        except Exception as e:  # no package, no network, hub down: all mean "not available"
            if source == "hf":
                raise cli.UserError("could not load LAMBADA from the Hugging Face hub (needs the "
                                    f"datasets package and a network): {type(e).__name__}") from None
            print("LAMBADA is not available from the hub: using held-out lines of the local corpus")
    return data.val_texts()[:limit]


@torch.no_grad()
def validation_nelbo(model, data, seq_len, batches, batch_size, seed, device):
    """Per-token NELBO (SDTT eq. 3, nats) on the validation split, with fixed-seed noise."""
    generator = torch.Generator().manual_seed(seed)
    total = 0.0
    with eval_mode(model):
        for _ in range(batches):
            x = data.batch("val", batch_size, seq_len, generator).to(device)
            t = antithetic_times(torch.rand((), generator=generator), batch_size).to(device)
            u = torch.rand(x.shape, generator=generator).to(device)
            total += nelbo_loss(model, x, t, u, model.mask_id, model.config.time_conditioning).item()
    return total / batches


@torch.no_grad()
def validation_ppl(model, data, seq_len, batches, batch_size, seed, device):
    """Perplexity of the AR model on the validation split (next-token NLL within each window)."""
    generator = torch.Generator().manual_seed(seed)
    total = 0.0
    with eval_mode(model):
        for _ in range(batches):
            x = data.batch("val", batch_size, seq_len, generator).to(device)
            total += F.cross_entropy(model(x[:, :-1]).float().transpose(1, 2), x[:, 1:]).item()
    return math.exp(total / batches)


# ----------------------------------------------------------------------------- reporting

def markdown_table(rows, columns):
    def cell(value):
        return f"{value:.2f}" if isinstance(value, float) else str(value)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    return "\n".join(lines + ["| " + " | ".join(cell(row[c]) for c in columns) + " |" for row in rows])


def write_tables(rows, columns, out, name):
    """Write rows as out/name.csv and out/name.md; return the markdown table."""
    with open(out / f"{name}.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    table = markdown_table(rows, columns)
    (out / f"{name}.md").write_text(table + "\n")
    return table


def plot_sweep(rows, ar_labels, path):
    """GenPPL and entropy against steps (log2 axis), one line per checkpoint, as in the papers'
    figures; an AR model is a dashed horizontal reference. Infinite GenPPL (a sample the exact
    judge deems impossible) is left out of the plot."""
    import matplotlib  # only the CLI plots: importing evaluate from train.py stays light
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for label in dict.fromkeys(row["label"] for row in rows):
        for ax, key in zip(axes, ("genppl", "entropy")):
            points = [(row["steps"], row[key]) for row in rows
                      if row["label"] == label and math.isfinite(row[key])]
            if points and label in ar_labels:
                ax.axhline(points[0][1], linestyle="--", color="gray", label=f"{label} (AR)")
            elif points:
                ax.plot(*zip(*points), marker="o", label=label)
    for ax, name in zip(axes, ("GenPPL", "entropy (nats)")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("sampling steps")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
    if any(math.isfinite(row["genppl"]) for row in rows):
        axes[0].set_yscale("log")
    axes[1].legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ----------------------------------------------------------------------------- command line

@dataclass
class EvalConfig:
    ckpts: list[str] = field(default_factory=list, metadata={"help": "checkpoints to compare: diffusion "
                             "(mdlm, sdtt, idlm) and AR ones (evaluated once, at steps = sample length)"})
    steps: list[int] = field(default_factory=lambda: [4, 8, 16, 32, 64, 128],
                             metadata={"help": "sampling steps of the diffusion checkpoints"})
    judge: str = field(default="", metadata={"help": "GenPPL judge: 'exact' (synthetic source), our AR "
                       "checkpoint, or a Hugging Face name such as gpt2-large (needs transformers and a "
                       f"network); default: exact for synthetic data, else {DEFAULT_AR_JUDGE}"})
    num_samples: int = field(default=64, metadata={"help": "unconditional samples per row"})
    batch_size: int = field(default=16, metadata={"help": "samples generated together"})
    seq_len: int = field(default=0, metadata={"help": "sample length; 0: the shortest checkpoint context"})
    seed: int = field(default=0, metadata={"help": "every row samples with this seed"})
    weights: str = field(default="ema", metadata={"help": "weights to load", "choices": ["ema", "raw"]})
    out_dir: str = field(default="results/sweep", metadata={"help": "where the CSV, tables and plot go"})
    lambada: bool = field(default=False, metadata={"help": "also run LAMBADA on the diffusion checkpoints"})
    lambada_source: str = field(default="auto", metadata={"choices": ["auto", "hf", "local"], "help":
                                "LAMBADA texts: the Hugging Face test set (auto: when reachable) or local text"})
    lambada_examples: int = field(default=256, metadata={"help": "number of LAMBADA texts"})
    self_bleu: bool = field(default=False, metadata={"help": "also compute self-BLEU of "
                            f"{CONTINUATIONS_PER_PROMPT} continuations of each held-out prompt"})
    bleu_prompts: int = field(default=8, metadata={"help": "held-out prompts for --self-bleu"})
    data: str = field(default="shakespeare", metadata={"help": "the corpus the checkpoints saw, for held-out "
                      "text (LAMBADA local, self-BLEU prompts); ignored for the synthetic source"})
    device: str = field(default="cuda" if torch.cuda.is_available() else "cpu", metadata={"help": "cpu, cuda"})


def held_out_data(name, data_meta, vocab_size):
    """The dataset the checkpoints were trained on (for its validation split)."""
    source = source_from_meta(data_meta)
    if source is not None:
        return source
    data = load_data(name, vocab_size)
    if data.meta() != data_meta:
        raise cli.UserError(f"--data {name} has a different tokenizer/vocabulary than the checkpoints")
    return data


def main():
    cfg = cli.parse_config(EvalConfig, "GenPPL/entropy sweep over checkpoints x sampling steps.")
    if not cfg.ckpts:
        raise cli.UserError("give the checkpoints to evaluate: --ckpts PATH [PATH ...]")
    if min(cfg.steps) < 1:
        raise cli.UserError(f"--steps must be at least 1, got {min(cfg.steps)}")
    if min(cfg.num_samples, cfg.batch_size, cfg.lambada_examples, cfg.bleu_prompts) < 1:
        raise cli.UserError("sample, batch, example and prompt counts must be at least 1")
    kinds = DIFFUSION_KINDS + ("ar",)
    loaded = [(path, *load_model(path, kinds, cfg.weights, cfg.device)) for path in cfg.ckpts]
    data_meta = loaded[0][2]["data_meta"]
    if any(ckpt["data_meta"] != data_meta for _, _, ckpt in loaded):
        raise cli.UserError("the checkpoints use different tokenizers/vocabularies")
    seq_len = cfg.seq_len or min(model.config.seq_len for _, model, _ in loaded)
    tokenizer = tokenizer_from_meta(data_meta)
    judge_spec = cfg.judge or ("exact" if data_meta["kind"] == "synthetic" else DEFAULT_AR_JUDGE)
    if judge_spec == DEFAULT_AR_JUDGE and not Path(judge_spec).is_file():
        raise cli.UserError(f"no judge: {judge_spec} does not exist; train one (python train.py --model ar) "
                            "or pass --judge")
    judge = load_judge(judge_spec, data_meta, cfg.device)

    if cfg.lambada or cfg.self_bleu:
        data = held_out_data(cfg.data, data_meta, tokenizer.vocab_size)
    if cfg.lambada:
        examples = lambada_examples(cfg.lambada_source, data, cfg.lambada_examples, cfg.seed)

    entries = [(path, model, ckpt["kind"], steps) for path, model, ckpt in loaded
               for steps in ([seq_len] if ckpt["kind"] == "ar" else cfg.steps)]
    rows = quality_rows(entries, judge, cfg.num_samples, cfg.batch_size, seq_len, cfg.seed, cfg.device,
                        bos_id=tokenizer.eos_id)
    columns = ["label", "steps", "genppl", "entropy", "nfe", "seconds"]
    if cfg.self_bleu:
        for row, (_, model, kind, steps) in zip(rows, entries):
            row["self_bleu"] = continuation_self_bleu(model, kind, data, seq_len, steps, cfg.bleu_prompts,
                                                      cfg.seed, tokenizer.eos_id, cfg.batch_size)
        columns.append("self_bleu")

    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    table = write_tables(rows, columns, out, "sweep")
    plot_sweep(rows, {path for path, _, ckpt in loaded if ckpt["kind"] == "ar"}, out / "genppl.png")
    print(f"judge: {judge_spec}; {cfg.num_samples} samples of {seq_len} tokens per row\n\n{table}\n")
    if cfg.lambada:
        lambada_rows = [{"label": path, **lambada(model, examples, tokenizer, model.mask_id, cfg.device)}
                        for path, model, ckpt in loaded if ckpt["kind"] != "ar"]
        table = write_tables(lambada_rows, ["label", "accuracy", "ppl_bound", "n"], out, "lambada")
        print(f"LAMBADA, last word decoded in one forward pass\n\n{table}\n")
    print(f"results in {out}/")


if __name__ == "__main__":
    cli.run(main)
