"""Corpus BLEU and NIST as the E2E challenge computes them: the e2e-metrics script's Python port of
mteval-v13a (`metrics/pymteval.py`), case-insensitive, with multiple references per segment."""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence

Ngram = tuple[str, ...]

# mteval-v13a's tokenization rules, in its order. The first class is ASCII punctuation and symbols
# ({|}~ [\]^_` space-&  (-+  :-@  /), each split off on its own.
_13A_RULES = (
    (re.compile(r"([\{-\~\[-\` -\&\(-\+\:-\@\/])"), r" \1 "),
    (re.compile(r"([^0-9])([\.,])"), r"\1 \2 "),  # period and comma, unless after a digit
    (re.compile(r"([\.,])([^0-9])"), r" \1 \2"),  # ... or unless before a digit
    (re.compile(r"([0-9])(-)"), r"\1 \2 "),  # a dash after a digit
)

NIST_BETA = -math.log(0.5) / math.log(1.5) ** 2
"""NIST brevity-penalty constant: output 2/3 as long as the references scores half (mteval-v13a)."""


def tokenize_13a(text: str) -> list[str]:
    """Split `text` into tokens the way mteval-v13a does (lower-casing is left to the scorers)."""
    text = text.replace("<skipped>", "").replace("-\n", "").replace("\n", " ")
    text = text.replace("&quot;", '"').replace("&amp;", "&").replace("&lt;", "<").replace("&gt;", ">")
    text = f" {text} "
    for pattern, replacement in _13A_RULES:
        text = pattern.sub(replacement, text)
    return text.split()


def bleu(predictions: Sequence[str], references: Sequence[Sequence[str]], max_n: int = 4) -> float:
    """Corpus BLEU in [0, 1] (Papineni et al., 2002), lower-cased, 13a-tokenized, closest reference length.

    BLEU = BP · exp(Σ_n (1/N) log p_n), p_n = Σ_seg clipped n-gram hits / Σ_seg hypothesis n-grams,
    clipping each n-gram at its largest count in any one reference; BP = exp(1 - r/c) if c ≤ r else 1, with
    c the total hypothesis length and r the sum of the reference lengths closest to each hypothesis (ties go
    to the shorter). As in pymteval, a zero p_n is floored at 1e-15 instead of making BLEU undefined.
    """
    hits, totals = [0] * max_n, [0] * max_n
    hyp_len = ref_len = 0
    for hyp, refs in _tokenized(predictions, references):
        for n in range(1, max_n + 1):
            hyp_ngrams, ref_max = _ngrams(hyp, n), _max_counts(refs, n)
            hits[n - 1] += sum(min(c, ref_max[g]) for g, c in hyp_ngrams.items())
            # pymteval adds len - n + 1, negative for hypotheses shorter than n; count real n-grams, as
            # sacrebleu does (the two agree whenever every hypothesis has at least n tokens).
            totals[n - 1] += max(len(hyp) - n + 1, 0)
        hyp_len += len(hyp)
        ref_len += min((abs(len(r) - len(hyp)), len(r)) for r in refs)[1]
    log_precision = sum(math.log(max(h, 1e-15) / max(t, 1e-9)) for h, t in zip(hits, totals, strict=True))
    brevity = math.exp(1.0 - ref_len / hyp_len) if 0 < hyp_len <= ref_len else float(hyp_len > 0)
    return brevity * math.exp(log_precision / max_n)


def nist(predictions: Sequence[str], references: Sequence[Sequence[str]], max_n: int = 5) -> float:
    """Corpus NIST (Doddington, 2002), lower-cased, 13a-tokenized, as pymteval computes it.

    NIST = BP · Σ_n [Σ_seg Σ_{hit n-grams g} info(g) · hits(g)] / Σ_seg hypothesis n-grams, where
    info(w_1..w_n) = log2(count(w_1..w_{n-1}) / count(w_1..w_n)) over all references of all segments
    (count of the empty prefix = total reference words), and BP = exp(-β · ln²(min(1, L_sys / L_ref))) with
    L_ref the sum over segments of the mean reference length and β = NIST_BETA.
    """
    segments = _tokenized(predictions, references)
    ref_counts: Counter[Ngram] = Counter()
    for _, refs in segments:
        for ref in refs:
            ref_counts[()] += len(ref)
            for n in range(1, max_n + 1):
                ref_counts.update(_ngrams(ref, n))

    def info(ngram: Ngram) -> float:
        return math.log2(ref_counts[ngram[:-1]] / ref_counts[ngram]) if ngram in ref_counts else 0.0

    total = 0.0
    for n in range(1, max_n + 1):
        hit_info, hyp_ngram_count = 0.0, 0
        for hyp, refs in segments:
            ref_max = _max_counts(refs, n)
            hit_info += sum(info(g) * min(c, ref_max[g]) for g, c in _ngrams(hyp, n).items() if g in ref_max)
            hyp_ngram_count += max(len(hyp) - n + 1, 0)
        total += hit_info / hyp_ngram_count if hyp_ngram_count else 0.0
    sys_len = sum(len(hyp) for hyp, _ in segments)
    ref_len = sum(sum(len(r) for r in refs) / len(refs) for _, refs in segments)
    ratio = min(sys_len / ref_len, 1.0) if ref_len else 0.0
    return math.exp(-NIST_BETA * math.log(ratio) ** 2) * total if ratio > 0 else 0.0


def _tokenized(
    predictions: Sequence[str], references: Sequence[Sequence[str]]
) -> list[tuple[list[str], list[list[str]]]]:
    # Lower-case after tokenizing, as pymteval does; lower-casing first could change what 13a splits only for
    # characters whose lower case is punctuation, and there are none.
    return [
        ([t.lower() for t in tokenize_13a(hyp)], [[t.lower() for t in tokenize_13a(r)] for r in refs])
        for hyp, refs in zip(predictions, references, strict=True)
    ]


def _ngrams(tokens: list[str], n: int) -> Counter[Ngram]:
    return Counter(tuple(tokens[i: i + n]) for i in range(len(tokens) - n + 1))


def _max_counts(refs: list[list[str]], n: int) -> Counter[Ngram]:
    """Each n-gram's largest count in any single reference (the BLEU clipping bound)."""
    out: Counter[Ngram] = Counter()
    for ref in refs:
        out |= _ngrams(ref, n)
    return out
