"""ROUGE-L and CIDEr (pycocoevalcap's scorers) and the PTB-style tokenization in front of them."""

import math

import pytest

from lorakit.evaluate import cider, ptb_tokenize, rouge_l


def test_ptb_tokens_are_lower_case_without_punctuation() -> None:
    text = 'The Vaults pub isn\'t near "Café Adriatic" (£20-25). It\'s 5-star, U.S. style... 1,000 at 10:30'
    assert ptb_tokenize(text) == ["the", "vaults", "pub", "is", "n't", "near", "café", "adriatic", "£", "20-25",
                                  "it", "'s", "5-star", "u.s.", "style", "1,000", "at", "10:30"]


def test_spaced_punctuation_of_the_lora_format_drops_like_attached_punctuation() -> None:
    assert ptb_tokenize("family - friendly , near X .") == ptb_tokenize("family friendly, near X.")


def test_rouge_l_of_a_perfect_match_is_one() -> None:
    assert rouge_l(["The pub is cheap."], [["the pub is cheap"]]) == pytest.approx(1.0)


def test_rouge_l_of_a_hand_computed_pair() -> None:
    # LCS("a b c d", "a c d e f") = 3 (a c d): P = 3/4, R = 3/5,
    # F = (1 + 1.2²)·P·R / (R + 1.2²·P) = 2.44·0.45 / 1.68 = 0.653571...
    assert rouge_l(["a b c d"], [["a c d e f"]]) == pytest.approx(2.44 * 0.45 / 1.68)


def test_rouge_l_takes_precision_and_recall_maxima_over_references_separately() -> None:
    # ref 1 "a b": LCS 2, P = 2/3, R = 1. ref 2 "a b c d e f": LCS 3, P = 1, R = 1/2. Max P = 1, max R = 1.
    assert rouge_l(["a b c"], [["a b", "a b c d e f"]]) == pytest.approx(1.0)


def test_rouge_l_averages_over_segments_and_scores_misses_zero() -> None:
    assert rouge_l(["a b", "x"], [["a b"], ["y"]]) == pytest.approx(0.5)


def test_cider_of_perfect_distinct_segments_is_ten() -> None:
    # Each n-gram occurs in one of the two segments: idf = log 2 everywhere; a hypothesis equal to its single
    # reference has cosine 1 for n = 1..4 and no length penalty, so each segment scores 10 · mean(1, 1, 1, 1).
    assert cider(["a b c d e", "f g h i j"], [["a b c d e"], ["f g h i j"]]) == pytest.approx(10.0)


def test_cider_gives_no_credit_for_n_grams_every_segment_shares() -> None:
    # "a b c d" occurs in both segments' references: idf = log 2 - log 2 = 0 for all its n-grams.
    assert cider(["a b c d", "a b c d"], [["a b c d"], ["a b c d"]]) == 0.0


def test_cider_of_three_word_sentences_misses_the_four_gram_term() -> None:
    # no 4-grams: that term is 0, so the mean over n = 1..4 is 3/4 of the perfect score.
    assert cider(["a b c", "d e f"], [["a b c"], ["d e f"]]) == pytest.approx(7.5)


def test_cider_of_a_hand_computed_partial_match_with_its_length_penalty() -> None:
    # Segment 1: hyp "a b c d e" (5 words, 4 bigrams), ref "a b c d e x y z" (8 words, 7 bigrams); every idf is
    # log 2, so cosine_n = (shared n-grams) / sqrt(hyp n-grams · ref n-grams): 5/√40, 4/√28, 3/√18, 2/√10.
    # Length penalty on bigram counts: exp(-(4 - 7)² / (2 · 6²)). Segment 2 is a perfect match: 10.
    cosines = [5 / math.sqrt(40), 4 / math.sqrt(28), 3 / math.sqrt(18), 2 / math.sqrt(10)]
    first = 10 * math.exp(-9 / 72) * sum(cosines) / 4
    score = cider(["a b c d e", "f g h i j"], [["a b c d e x y z"], ["f g h i j"]])
    assert score == pytest.approx((first + 10) / 2)


def test_a_single_segment_has_zero_cider_because_every_idf_is_zero() -> None:
    assert cider(["the pub is cheap"], [["the pub is cheap"]]) == 0.0
