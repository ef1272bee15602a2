"""ROUGE-L and CIDEr as the E2E challenge computes them: pycocoevalcap's `Rouge` and `Cider` scorers (the
MS-COCO caption evaluation code the e2e-metrics script calls), on PTB-tokenized lower-case text."""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence

ROUGE_BETA = 1.2
"""ROUGE-L's recall weight in pycocoevalcap (F_β with β = 1.2)."""

CIDER_SIGMA = 6.0
"""Width of CIDEr-D's Gaussian length penalty, in (bigram-count) tokens."""

CIDER_MAX_N = 4

Ngram = tuple[str, ...]

# pycocoevalcap drops these tokens after Stanford's PTBTokenizer (`PUNCTUATIONS` in ptbtokenizer.py); that
# tokenizer writes brackets as -LRB- etc. and quotes as `` or '', which the raw characters here stand for.
_DROPPED = frozenset({"''", "'", "``", "`", "\"", "(", ")", "[", "]", "{", "}",
                      ".", "?", "!", ",", ":", "-", "--", "...", ";"})
_CLITIC = re.compile(r"(?<=[a-z])(n't|'s|'re|'ve|'ll|'d|'m)$")
_SPLIT = re.compile(
    r"\.\.\.|--"  # ellipsis and double dash stay whole
    r"|(?<![0-9])[,:]|[,:](?![0-9])"  # comma and colon, except inside numbers (1,000 and 10:30)
    r"|[\"`()\[\]{};?!]"  # always on their own
    r"|^['$£€#]|'$"  # quotes and currency signs at a word's edge
)
_ABBREVIATION = re.compile(r"^([a-z]\.){2,}$")  # u.s. keeps its final period


def ptb_tokenize(text: str) -> list[str]:
    """Lower-case PTB-style tokens without punctuation, approximating the Java Stanford PTBTokenizer (CoreNLP
    3.4.1, `-lowerCase`) plus the punctuation filter that pycocoevalcap applies before ROUGE-L and CIDEr.

    Splits off punctuation, quotes, brackets, currency signs and the clitics 's n't 're 've 'll 'd 'm; keeps
    hyphenated words, numbers (20-25, 2.5, 1,000) and initials (u.s.) whole; then drops punctuation tokens.
    """
    tokens: list[str] = []
    for word in text.lower().split():
        tokens.extend(_split_word(word))
    return [t for t in tokens if t not in _DROPPED]


def rouge_l(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """Mean sentence ROUGE-L in [0, 1] (Lin, 2004) as pycocoevalcap computes it.

    Per segment: P = max_ref LCS/|hyp|, R = max_ref LCS/|ref| (maxima taken separately over references),
    F = (1 + β²)·P·R / (R + β²·P) with β = ROUGE_BETA, 0 when P or R is 0; LCS is over ptb_tokenize tokens.
    An empty hypothesis counts as one empty token, as pycocoevalcap's `split(" ")` makes it.
    """
    scores = []
    for hyp, refs in _tokenized(predictions, references):
        hyp = hyp or [""]
        lcs = [_lcs(hyp, ref or [""]) for ref in refs]
        precision = max(x / len(hyp) for x in lcs)
        recall = max(x / len(ref or [""]) for x, ref in zip(lcs, refs, strict=True))
        b2 = ROUGE_BETA**2
        f = (1 + b2) * precision * recall / (recall + b2 * precision) if precision and recall else 0.0
        scores.append(f)
    return sum(scores) / len(scores)


def cider(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """Corpus CIDEr-D (Vedantam et al., 2015) as pycocoevalcap's `Cider` computes it, on ptb_tokenize tokens.

    Each sentence becomes, for n = 1..4, a TF-IDF vector g_n(s)[w] = tf(w) · (log |D| - log max(1, df(w))),
    where D is the evaluated set's segments and df(w) the number of segments whose references contain w.
    CIDEr = mean_seg 10 · (1/4) Σ_n (1/m) Σ_refs exp(-(ℓ(h) - ℓ(r))² / (2σ²))
                  · Σ_w min(g_n(h)[w], g_n(r)[w]) · g_n(r)[w] / (‖g_n(h)‖ ‖g_n(r)‖),
    with m references, σ = CIDER_SIGMA, and ℓ(s) the number of bigrams in s (pycocoevalcap counts lengths at
    n = 2). A term with a zero norm is 0. With a single segment every idf is 0, so CIDEr is 0.
    """
    segments = _tokenized(predictions, references)
    hyp_counts = [_all_ngrams(hyp) for hyp, _ in segments]
    ref_counts = [[_all_ngrams(ref) for ref in refs] for _, refs in segments]
    df: Counter[Ngram] = Counter()
    for refs in ref_counts:
        df.update({g for counts in refs for g in counts})
    log_docs = math.log(len(segments))

    def vector(counts: Counter[Ngram]) -> tuple[list[dict[Ngram, float]], list[float], int]:
        vec: list[dict[Ngram, float]] = [{} for _ in range(CIDER_MAX_N)]
        for g, tf in counts.items():
            vec[len(g) - 1][g] = tf * (log_docs - math.log(max(1.0, df[g])))
        norms = [math.sqrt(sum(v * v for v in by_n.values())) for by_n in vec]
        return vec, norms, sum(counts[g] for g in vec[1])

    total = 0.0
    for hyp, refs in zip(hyp_counts, ref_counts, strict=True):
        h_vec, h_norm, h_len = vector(hyp)
        score = 0.0
        for ref in refs:
            r_vec, r_norm, r_len = vector(ref)
            penalty = math.exp(-((h_len - r_len) ** 2) / (2 * CIDER_SIGMA**2))
            for n in range(CIDER_MAX_N):
                dot = sum(min(v, r_vec[n].get(g, 0.0)) * r_vec[n].get(g, 0.0) for g, v in h_vec[n].items())
                if h_norm[n] and r_norm[n]:
                    dot /= h_norm[n] * r_norm[n]
                score += dot * penalty
        total += 10.0 * score / CIDER_MAX_N / len(refs)
    return total / len(segments)


def _split_word(word: str) -> list[str]:
    """One whitespace-separated word as PTB tokens (punctuation still included)."""
    if not word:
        return []
    match = _SPLIT.search(word)
    if match and match.group() == word:
        return [word]
    if match:
        return _split_word(word[: match.start()]) + [match.group()] + _split_word(word[match.end():])
    if word.endswith(".") and len(word) > 1 and not _ABBREVIATION.match(word):
        return _split_word(word[:-1]) + ["."]
    clitic = _CLITIC.search(word)
    if clitic:
        return [word[: clitic.start()], clitic.group()]
    return [word]


def _tokenized(
    predictions: Sequence[str], references: Sequence[Sequence[str]]
) -> list[tuple[list[str], list[list[str]]]]:
    return [(ptb_tokenize(hyp), [ptb_tokenize(r) for r in refs])
            for hyp, refs in zip(predictions, references, strict=True)]


def _lcs(a: list[str], b: list[str]) -> int:
    """Length of the longest common subsequence, by the O(|a|·|b|) dynamic program with one row."""
    row = [0] * (len(b) + 1)
    for x in a:
        diagonal = 0
        for j, y in enumerate(b, start=1):
            diagonal, row[j] = row[j], diagonal + 1 if x == y else max(row[j], row[j - 1])
    return row[-1]


def _all_ngrams(tokens: list[str]) -> Counter[Ngram]:
    n_max = CIDER_MAX_N
    return Counter(tuple(tokens[i: i + n]) for n in range(1, n_max + 1) for i in range(len(tokens) - n + 1))
