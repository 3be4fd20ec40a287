"""The final table: generative perplexity (GenPPL), entropy and forward passes (NFE) of
unconditional samples, with the judges that score them (SPEC.md §7.1-7.2).

GenPPL is the exponential of the mean over samples of each sample's NLL per token under a judge:
the synthetic source itself (exact), our AR model (offline), or a Hugging Face causal LM (GPT-2
Large in the papers). It is always reported with the samples' token entropy, the guard against
repetitive text, and the number of forward passes per sample.

A Hugging Face judge follows MDLM's protocol: each sample is decoded to text and re-tokenized by
the judge's tokenizer (truncated to the sample's length), without a BOS, so the first judge token
is context and is not scored; a batch is padded on the right with EOS under an attention mask; the
tokens scored are the real tokens and the first EOS of each row (a sample's own end of text, or
else the first padding); rows longer than the judge's context are scored in context-sized chunks;
on a GPU the judge runs in bf16, and log-softmax in float32. MDLM pools the counted tokens of all
samples instead of averaging per sample (the two agree when the samples' judge lengths do).
"""
import json
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from data import source_from_meta, tokenizer_from_meta
from loading.checkpoint import load_model
from plumbing import devices
from plumbing.devices import eval_mode
from samplers import make_sampler, shaped

DEFAULT_AR_JUDGE = "out/ar/ckpt.pt"


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
            raise ValueError(f"samples of {tokens.shape[1]} tokens are longer than the judge's "
                                f"context of {context}")
        device = next(self.model.parameters()).device
        nll = []
        for chunk in tokens.to(device).split(self.batch_size):
            inputs = torch.cat([torch.full_like(chunk[:, :1], self.bos_id), chunk[:, :-1]], dim=1)
            logits = self.model(inputs).float()
            nll.append(F.cross_entropy(logits.transpose(1, 2), chunk, reduction="none").mean(1))
        return torch.cat(nll).cpu()


class ExactJudge:
    """The synthetic source itself: exact GenPPL from its likelihood, -log p(x) / L, and the exact
    divergence of the samples' n-gram statistics from the source's (`ngram_divergence`)."""

    def __init__(self, source):
        self.source = source

    def nll_per_token(self, tokens):
        return -self.source.log_prob(tokens) / tokens.shape[1]

    def divergences(self, tokens):
        """{"js1", "js2", "js3"}: the n-gram divergences of a set of samples, n = 1, 2, 3."""
        return {f"js{n}": ngram_divergence(tokens, self.source.ngram_marginal(n, tokens.shape[1])) for n in (1, 2, 3)}


def ngram_divergence(tokens, exact):
    """Jensen-Shannon divergence (nats, at most log 2) between the n-gram statistics of samples
    tokens [N, L], pooled over every start position, and the exact pooled n-gram law `exact` [V]^n.
    Junk puts mass on n-grams the source rarely makes, collapse keeps mass off most of those it makes:
    both raise it. Samples of the source itself score their sampling error, a small positive floor
    (the plug-in estimate is biased upwards, about (K - 1) / (8 count) for K n-grams)."""
    n, vocab = exact.dim(), exact.shape[0]
    index = sum(tokens[:, k:tokens.shape[1] - n + 1 + k].long() * vocab ** (n - 1 - k) for k in range(n))
    counts = torch.bincount(index.reshape(-1), minlength=vocab ** n).double()
    p, q = counts / counts.sum(), exact.reshape(-1).double()
    m = (p + q) / 2
    return float((torch.xlogy(p, p / m).sum() + torch.xlogy(q, q / m).sum()) / 2)


def judged_positions(ids, eos_id):
    """Which next-token predictions of judge ids [N, T] count (MDLM's protocol): positions 1..T-1,
    each real token and the first EOS of the row; later EOS (the padding among them) do not."""
    is_eos = ids == eos_id
    return (~is_eos | (is_eos.cumsum(-1) == 1))[:, 1:]


class HFJudge:
    """A Hugging Face causal LM (the papers use gpt2-large), scored with MDLM's protocol (module
    docstring): retokenized text, no BOS, batches padded on the right with an attention mask,
    the first EOS counted, bf16 weights on a GPU."""

    def __init__(self, name, tokenizer, device, batch_size=16):
        try:
            import transformers
        except ImportError:
            raise ValueError(f"judge {name!r} is not 'exact' or a checkpoint file; a Hugging Face "
                             "judge needs `pip install -r requirements-gpu.txt`") from None
        device = torch.device(device)
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
        try:
            self.hf_tokenizer = transformers.AutoTokenizer.from_pretrained(name)
            self.model = transformers.AutoModelForCausalLM.from_pretrained(name, dtype=dtype).to(device).eval()
        except (OSError, ValueError) as e:  # what from_pretrained raises for an unknown name or no network
            reason = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
            raise ValueError(f"could not load judge {name!r} (a local folder or a Hugging Face hub name): "
                             f"{reason}") from None
        self.eos_id = self.hf_tokenizer.eos_token_id
        if self.eos_id is None:
            raise ValueError(f"judge {name!r} has no EOS token, which MDLM's protocol pads and counts with")
        self.hf_tokenizer.pad_token_id = self.eos_id
        self.hf_tokenizer.padding_side = "right"
        self.tokenizer, self.device, self.batch_size = tokenizer, device, batch_size
        self.context = self.model.config.max_position_embeddings

    def retokenize(self, tokens):
        """Our tokens [N, L] as text, then as the judge's ids [N, T] and attention mask, T <= L
        (MDLM truncates the judge's tokens to the samples' length)."""
        texts = [self.tokenizer.decode(row) for row in tokens]
        batch = self.hf_tokenizer(texts, return_tensors="pt", padding=True, truncation=True,
                                  max_length=tokens.shape[1], return_attention_mask=True)
        return batch["input_ids"], batch["attention_mask"]

    @torch.no_grad()
    def nll_sums(self, ids, attention_mask):
        """(summed NLL in nats, number of counted tokens) of each row of judge ids [N, T]. Rows
        longer than the judge's context are scored in context-sized chunks, each on its own."""
        sums, counts = torch.zeros(len(ids), dtype=torch.float64), torch.zeros(len(ids), dtype=torch.float64)
        for chunk, mask in zip(ids.split(self.context, 1), attention_mask.split(self.context, 1)):
            logits = self.model(chunk.to(self.device), attention_mask=mask.to(self.device)).logits.float().cpu()
            nll = F.cross_entropy(logits[:, :-1].transpose(1, 2), chunk[:, 1:], reduction="none")
            counted = judged_positions(chunk, self.eos_id)
            sums += (nll * counted).sum(-1).double()
            counts += counted.sum(-1)
        return sums, counts

    def nll_per_token(self, tokens):
        """Mean NLL per counted judge token of each sample of our tokens [N, L] -> [N]."""
        ids, mask = self.retokenize(tokens)
        totals = [self.nll_sums(i, m) for i, m in zip(ids.split(self.batch_size), mask.split(self.batch_size))]
        return torch.cat([s for s, _ in totals]) / torch.cat([c for _, c in totals])


def load_judge(spec, data_meta, device):
    """'exact' (synthetic source only), a path to our AR checkpoint, or a Hugging Face causal LM
    (a local folder or a hub name such as gpt2-large)."""
    if spec == "exact":
        source = source_from_meta(data_meta)
        if source is None:
            raise ValueError("the exact judge needs the synthetic source; these models saw text")
        return ExactJudge(source)
    if spec.endswith(".pt") or Path(spec).is_file():
        model, ckpt = load_model(spec, kinds=("ar",), device=device)
        if ckpt["data_meta"] != data_meta:
            raise ValueError(f"judge {spec} uses a different tokenizer/vocabulary than the samples")
        bos_id = tokenizer_from_meta(data_meta).eos_id
        if bos_id is None:
            raise ValueError("an AR judge needs a start token; for the synthetic source use --judge exact")
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


# ----------------------------------------------------------------------------- sampling

@torch.no_grad()
def generate(model, process, n, seq_len, steps, *, sampler=None, prompt=(), bos_id=None, batch_size=64,
             generator=None, top_p=1.0, temperature=1.0, on_step=None):
    """n samples of seq_len tokens that start with `prompt` (kept fixed), made in batches. A
    diffusion model also infills: None in `prompt` is a gap position (prompts.template).

    A diffusion model (process given): `sampler` (samplers.py; default: the exact, cached one)
    from the process's prior after the prompt, in `steps` steps. An AR model (process None): the
    GPT continues [BOS] + prompt with its KV cache, one forward pass per new token (`steps`
    unused). Both draw from their categoricals at `temperature` and `top_p` (samplers.shaped; the
    same `diffusion.shaped_probs` for both). on_step(i, z) is called after each diffusion step.
    Returns (tokens [n, seq_len] on the CPU, NFE: forward passes per sequence, averaged over the
    samples).
    """
    sampler = make_sampler(process=process) if sampler is None else sampler
    context = model.config.seq_len
    if seq_len > context and not (process is not None and sampler.extends_context):
        raise ValueError(f"samples of {seq_len} tokens do not fit the model's context of {context} "
                         "(the semi-ar sampler makes longer ones)")
    fixed = [i for i, token in enumerate(prompt) if token is not None]  # None: a gap (plumbing/prompts.py)
    if len(prompt) > seq_len or len(fixed) == len(prompt) >= seq_len:
        raise ValueError(f"the prompt has {len(prompt)} tokens: it must be shorter than the "
                            f"{seq_len} tokens of a sample")
    if process is None and len(fixed) < len(prompt):
        raise ValueError("gaps ([MASK]) need a diffusion model: an AR model only continues a prefix")
    if process is not None and not process.takes_prompt and fixed:
        raise ValueError(f"prompts and gaps need a process that keeps given tokens fixed; the {process.name} "
                         "process's sampler may change every token at every step")
    device = next(model.parameters()).device
    fixed_tokens = torch.tensor([prompt[i] for i in fixed], dtype=torch.long, device=device)
    if process is None:
        start = fixed_tokens if bos_id is None else torch.cat([fixed_tokens.new_tensor([bos_id]), fixed_tokens])
        if len(start) == 0:
            raise ValueError("this AR model's vocabulary has no start token: give a prompt")
    samples, forwards = [], 0
    with eval_mode(model):
        for first in range(0, n, batch_size):
            size = min(batch_size, n - first)
            if process is None:
                tokens = model.generate(start.expand(size, -1), seq_len - len(prompt), top_p=top_p,
                                        temperature=temperature, generator=generator)[:, -seq_len:]
                forwards += size * (seq_len - len(prompt))
            else:
                z = process.prior(size, seq_len, device, generator)
                z[:, fixed] = fixed_tokens
                tokens, more = sampler(shaped(model, process, temperature, top_p), process, z, steps,
                                       generator=generator, on_step=on_step)
                forwards += more
            samples.append(tokens.cpu())
    return torch.cat(samples), forwards / n


def quality_rows(entries, judge, num_samples, batch_size, seq_len, seed, device, bos_id=None, sampler=None,
                 scored=None, temperature=1.0, top_p=1.0):
    """GenPPL with its 95% interval, entropy with its half-width, and forward passes (NFE per
    sequence) of unconditional samples, one row per entry (label, model, process, steps), process
    None for an AR model, each drawn at `temperature` and `top_p`; with the exact judge also the
    n-gram divergences (ExactJudge.divergences). Every entry samples with the same seed. bos_id: the
    AR models' start token (the tokenizer's EOS). scored: a list that receives each row's samples,
    for `write_samples`."""
    rows = []
    for label, model, process, steps in entries:
        start = time.perf_counter()
        with devices.autocast(device):  # bf16 on a GPU, as in training
            tokens, nfe = generate(model.to(device), process, num_samples, seq_len, steps, bos_id=bos_id,
                                   batch_size=batch_size, generator=torch.Generator().manual_seed(seed),
                                   sampler=sampler, temperature=temperature, top_p=top_p)
        seconds = time.perf_counter() - start
        shape = {"temperature": temperature, "top_p": top_p}
        if scored is not None:
            scored.append({"label": label, "steps": steps, "seed": seed, "batch_size": batch_size, **shape,
                           "tokens": tokens})
        rows.append({"label": label, "steps": steps, **sample_metrics(tokens, judge), "nfe": nfe,
                     "seconds": seconds, **shape})
    return rows


def sample_metrics(tokens, judge):
    """GenPPL (with its 95% interval), mean entropy (with its half-width) and, for the exact judge,
    the n-gram divergences of samples tokens [N, L]."""
    nll, entropy = judge.nll_per_token(tokens).double(), token_entropy(tokens).double()
    (mean, half), (_, entropy_half) = interval(nll), interval(entropy)
    return {"genppl": nll.mean().exp().item(), "entropy": entropy.mean().item(), "genppl_low": math.exp(mean - half),
            "genppl_high": math.exp(mean + half), "entropy_half": entropy_half,
            **(judge.divergences(tokens) if hasattr(judge, "divergences") else {})}


def interval(values):
    """(mean, half-width of its 95% interval) of independent draws, a float64 tensor: GenPPL's interval
    is exp(mean NLL +- half), the samples of a row being independent (scripts/genppl_interval.py)."""
    half = 1.96 * values.std().item() / math.sqrt(len(values)) if len(values) > 1 else float("nan")
    return values.mean().item(), half


def write_samples(path, scored, data_meta, sources):
    """Every sample behind a table, one JSON object per line: its row's label and steps, the
    seed and batch size that make it again, its index, text and tokens, and sources[i] (the
    checkpoint, the sampler) of row i. Re-scoring them checks any reported figure."""
    tokenizer = tokenizer_from_meta(data_meta)
    with open(path, "w") as f:
        for entry, source in zip(scored, sources):
            fields = {k: v for k, v in entry.items() if k != "tokens"}
            for index, row in enumerate(entry["tokens"].tolist()):
                f.write(json.dumps({**fields, **source, "index": index, "text": tokenizer.decode(row),
                                    "tokens": row}) + "\n")


# ----------------------------------------------------------------------------- reporting

def markdown_table(rows, columns):
    def cell(value):
        return f"{value:.2f}" if isinstance(value, float) else str(value)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    return "\n".join(lines + ["| " + " | ".join(cell(row[c]) for c in columns) + " |" for row in rows])


# ----------------------------------------------------------------------------- at equal entropy (SPEC.md §7.5)

def at_entropy(frontier, entropy):
    """(GenPPL, low, high) of the frontier (rows with entropy and genppl, genppl_low, genppl_high)
    at `entropy`, log-linear between the two nearest points; None outside its range of entropies."""
    points = sorted(frontier, key=lambda row: row["entropy"])
    for left, right in zip(points, points[1:]):
        if left["entropy"] <= entropy <= right["entropy"]:
            w = (entropy - left["entropy"]) / (right["entropy"] - left["entropy"] or 1.0)
            return tuple(math.exp((1 - w) * math.log(left[k]) + w * math.log(right[k]))
                         for k in ("genppl", "genppl_low", "genppl_high"))
    if len(points) == 1 and points[0]["entropy"] == entropy:
        return tuple(points[0][k] for k in ("genppl", "genppl_low", "genppl_high"))
    return None


def entropy_interval(row):
    """The row's 95% entropy interval (its half-width is 0 where the row records none)."""
    half = row.get("entropy_half") or 0.0
    half = 0.0 if isinstance(half, str) or math.isnan(half) else half
    return row["entropy"] - half, row["entropy"] + half


def frontier_span(frontier, low, high):
    """(least low bound, greatest high bound, least and greatest GenPPL) of the frontier over the
    entropies [low, high], or None where they leave its range. Log-linear between its points, so
    the extremes lie at the ends of the interval or at points inside it."""
    ends = [at_entropy(frontier, e) for e in (low, high)]
    if None in ends:
        return None
    inside = [(r["genppl"], r["genppl_low"], r["genppl_high"]) for r in frontier if low < r["entropy"] < high]
    values = ends + inside
    return (min(v[1] for v in values), max(v[2] for v in values), min(v[0] for v in values),
            max(v[0] for v in values))


def verdict(row, frontier):
    """A row against the reference's frontier at equal entropy: 'better' only if its GenPPL interval
    lies below the frontier's at every entropy of its own 95% entropy interval, 'worse' only if
    above at every one, else 'equal'; 'no verdict' where that interval leaves the frontier's range.
    Returns (the word, the frontier's GenPPL at the row's entropy or None)."""
    low, high = entropy_interval(row)
    span = frontier_span(frontier, low, high)
    if span is None:
        ends = sorted(r["entropy"] for r in frontier)
        return (f"no verdict: entropy {low:.3f}-{high:.3f} leaves the frontier's {ends[0]:.3f}-{ends[-1]:.3f}",
                None)
    word = "better" if row["genppl_high"] < span[0] else "worse" if row["genppl_low"] > span[1] else "equal"
    return word, at_entropy(frontier, row["entropy"])[0]


def compare(a, b, frontier):
    """Row a against row b at equal entropy, the reference's frontier giving the exchange rate between
    GenPPL and entropy: each row's excess log GenPPL over the frontier, an interval over its GenPPL
    interval and its entropy interval; 'better' if a's lies wholly below b's, 'worse' if wholly
    above, else 'equal'; 'no verdict' where either row's entropies leave the frontier's range."""
    excess = []
    for row in (a, b):
        span = frontier_span(frontier, *entropy_interval(row))
        if span is None:
            return "no verdict: an entropy interval leaves the frontier's range"
        excess.append((math.log(row["genppl_low"] / span[3]), math.log(row["genppl_high"] / span[2])))
    (a_low, a_high), (b_low, b_high) = excess
    return "better" if a_high < b_low else "worse" if a_low > b_high else "equal"


def final_table(cfg, device, judge_spec, judge, teacher, process, students, teacher_path, data_meta):
    """The table a distillation ends with: GenPPL and entropy of the teacher at L steps over
    --table-temperatures (its frontier) and at L/4, L/16, L/32, and of each student (label,
    checkpoint, steps) at its steps, each row beside its verdict at its own entropy against that
    frontier (`verdict`); printed, and written to <out_dir>/table.md, with every sample scored in
    <out_dir>/samples.jsonl (`write_samples`)."""
    L, batch = cfg.seq_len, min(cfg.eval_samples, 32)
    entries = [("teacher", teacher, process, s) for s in (L, L // 4, L // 16, L // 32) if s >= 1]
    paths = [teacher_path] * len(entries)
    for label, path, steps in students:
        model, _ = load_model(path, device=device)
        entries.append((label, model, process, steps))
        paths.append(str(path))
    scored, frontier = [], []
    for T in sorted(set(cfg.table_temperatures) | {1.0}):  # the teacher at L steps over temperatures
        frontier += quality_rows(entries[:1], judge, cfg.eval_samples, batch, L, cfg.seed, device, scored=scored,
                                 temperature=T)
    paths = [teacher_path] * len(frontier) + paths[1:]
    rows = frontier + quality_rows(entries[1:], judge, cfg.eval_samples, batch, L, cfg.seed, device, scored=scored)
    for row in rows:
        on_frontier = row["label"] == "teacher" and row["steps"] == L
        row.update(T=f"{row['temperature']:g}", verdict="(the frontier)" if on_frontier else verdict(row, frontier)[0],
                   genppl_95=f"{row['genppl']:.2f} ({row['genppl_low']:.2f}-{row['genppl_high']:.2f})",
                   entropy_95=f"{row['entropy']:.3f} ({2 * row['entropy_half']:.3f} wide)")
    table = markdown_table(rows, ["label", "steps", "T", "genppl_95", "entropy_95", "nfe", "verdict"])
    print(f"\nGenPPL (judge: {judge_spec}; 95% intervals) and entropy (nats), {cfg.eval_samples} samples of {L} "
          f"tokens; each row judged at its own entropy against the teacher at {L} steps over temperatures "
          f"(SPEC.md §7.5):\n{table}")
    (Path(cfg.out_dir) / "table.md").write_text(table + "\n")
    write_samples(Path(cfg.out_dir) / "samples.jsonl", scored, data_meta,
                  [{"checkpoint": path, "sampler": process.default_sampler} for path in paths])
