"""BLEU and NIST (mteval-v13a as the e2e-metrics script computes them) on hand-checked cases."""

import math

import pytest

from lorakit.evaluate import bleu, nist, tokenize_13a
from lorakit.evaluate.mteval import NIST_BETA


def test_13a_splits_punctuation_but_keeps_numbers_and_apostrophes() -> None:
    assert tokenize_13a("Prices: £20-25, 2.5 stars.") == ["Prices", ":", "£20", "-", "25", ",", "2.5", "stars", "."]
    assert tokenize_13a("It's &quot;fine&quot;") == ["It's", '"', "fine", '"']


def test_a_perfect_match_scores_one() -> None:
    assert bleu(["The cat sat on the mat."], [["the cat sat on the mat ."]]) == pytest.approx(1.0)


def test_bleu_of_a_hand_computed_sentence() -> None:
    # hyp: the cat sat on the mat / ref: the cat sat on a mat (6 tokens each, so BP = 1)
    # p1 = 5/6 ("the" clipped to 1), p2 = 3/5, p3 = 2/4, p4 = 1/3  ->  BLEU = (1/12) ** (1/4) = 0.537285
    assert bleu(["the cat sat on the mat"], [["the cat sat on a mat"]]) == pytest.approx((1 / 12) ** 0.25)


def test_bleu_clips_by_the_best_single_reference_and_uses_the_closest_length() -> None:
    # refs of 4 and 8 tokens; the 4-token hyp matches the first exactly, so every p_n = 1 and r = 4.
    assert bleu(["a b c d"], [["a b c d", "a b c d e f g h"]]) == pytest.approx(1.0)
    # a 2-token hyp: r = 4 (closest), c = 2, BP = exp(1 - 4/2); p3 = p4 have no n-grams -> floored.
    assert bleu(["a b"], [["a b c d"]]) < 1e-3


def test_bleu_is_case_insensitive() -> None:
    assert bleu(["THE CAT SAT ON THE MAT"], [["the cat sat on the mat"]]) == pytest.approx(1.0)


def test_nist_of_a_hand_computed_sentence() -> None:
    # ref "a b a": 3 words; counts a:2 b:1 "a b":1 "b a":1. info(a) = log2(3/2), info(b) = log2(3/1),
    # info("a b") = log2(count(a)/count("a b")) = 1. hyp "a b": unigram term (log2 1.5 + log2 3)/2,
    # bigram term 1/1, no longer n-grams. BP: 2/3 of the reference length -> exp(-β ln²(2/3)) = 0.5.
    expected = 0.5 * ((math.log2(1.5) + math.log2(3)) / 2 + 1)
    assert nist(["a b"], [["a b a"]]) == pytest.approx(expected)
    assert math.exp(-NIST_BETA * math.log(2 / 3) ** 2) == pytest.approx(0.5)


def test_nist_counts_information_over_all_references_of_all_segments() -> None:
    # "x" appears in 1 of 4 reference words overall: info = log2(4) = 2 for its hit, 0 for hyp "y" (a miss).
    # Both hyps are as long as the mean reference, so BP = 1: NIST = (2 + 0) / 2 unigrams = 1.
    assert nist(["x", "y"], [["x", "z"], ["z", "z"]]) == pytest.approx(1.0)


def test_empty_predictions_score_zero() -> None:
    assert bleu([""], [["a b c"]]) == 0.0
    assert nist([""], [["a b c"]]) == 0.0
