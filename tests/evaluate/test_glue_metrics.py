"""accuracy, f1 and matthews_corrcoef against values computed by hand."""

import math

import pytest

from lorakit.evaluate import MetricError, accuracy, f1, matthews_corrcoef

# TP = 2 (rows 0, 1), FN = 1 (row 2), FP = 1 (row 3), TN = 2 (rows 4, 5)
PREDICTIONS = [1, 1, 0, 1, 0, 0]
LABELS = [1, 1, 1, 0, 0, 0]


def test_accuracy_is_the_fraction_correct() -> None:
    assert accuracy(PREDICTIONS, LABELS) == pytest.approx(4 / 6)


def test_f1_of_the_positive_class() -> None:
    assert f1(PREDICTIONS, LABELS) == pytest.approx(2 * 2 / (2 * 2 + 1 + 1))


def test_matthews_of_a_binary_confusion_matrix() -> None:
    # (TP·TN - FP·FN) / sqrt((TP+FP)(TP+FN)(TN+FP)(TN+FN)) = (4 - 1) / sqrt(3·3·3·3) = 1/3
    assert matthews_corrcoef(PREDICTIONS, LABELS) == pytest.approx(1 / 3)


def test_matthews_is_one_for_perfect_minus_one_for_inverted_and_zero_for_constant() -> None:
    assert matthews_corrcoef(LABELS, LABELS) == pytest.approx(1.0)
    assert matthews_corrcoef([1 - y for y in LABELS], LABELS) == pytest.approx(-1.0)
    assert matthews_corrcoef([1] * 6, LABELS) == 0.0


def test_matthews_handles_three_classes() -> None:
    # s = 4, c = 3 (rows 0, 2, 3); predicted counts {0: 2, 1: 1, 2: 1}, true counts {0: 1, 1: 2, 2: 1}.
    # (3·4 - (2·1 + 1·2 + 1·1)) / sqrt((16 - 6)(16 - 6)) = 7 / 10
    assert matthews_corrcoef([0, 0, 1, 2], [0, 1, 1, 2]) == pytest.approx(0.7)


def test_f1_without_any_positive_is_zero() -> None:
    assert f1([0, 0], [0, 0]) == 0.0


def test_mismatched_or_empty_inputs_raise_metric_error() -> None:
    for metric in (accuracy, f1, matthews_corrcoef):
        with pytest.raises(MetricError, match="one prediction per label"):
            metric([1, 0], [1])
        with pytest.raises(MetricError):
            metric([], [])
    assert not math.isnan(matthews_corrcoef([0], [0]))
