"""Task metrics as the LoRA paper reports them: the five E2E NLG metrics and the GLUE classification scores.

Scales follow the paper's tables (Table 3 for E2E): BLEU, METEOR and ROUGE-L are percentages (0-100), NIST and
CIDEr are raw (about 8.x and 2.x for good E2E systems). The GLUE functions return fractions (0-1, MCC -1..1)
like scikit-learn; multiply by 100 to print them as the paper does.
"""

from __future__ import annotations

import math
import warnings
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from lorakit.evaluate.coco import cider, rouge_l
from lorakit.evaluate.errors import MetricError
from lorakit.evaluate.meteor import meteor, meteor_unavailable
from lorakit.evaluate.mteval import bleu, nist

E2E_METRICS = ("BLEU", "NIST", "METEOR", "ROUGE_L", "CIDEr")


def e2e_metrics(
    predictions: Sequence[str], references: Sequence[Sequence[str]], meteor_jar: str | Path | None = None
) -> dict[str, float | None]:
    """The E2E challenge's five corpus metrics, computed like its official e2e-metrics script.

    Keys E2E_METRICS: BLEU (×100) and NIST from the script's mteval-v13a port; ROUGE_L (×100) and CIDEr from
    pycocoevalcap; METEOR (×100) from meteor-1.5.jar (`meteor_jar` or $LORAKIT_METEOR_JAR) when Java and the
    jar are present, else None with a warning that says why. references[i] lists every reference of
    predictions[i] (see `lorakit.data.group_references`).
    """
    _check_e2e(predictions, references)
    skipped = meteor_unavailable(meteor_jar)
    if skipped is not None:
        warnings.warn(skipped, stacklevel=2)
    return {
        "BLEU": 100.0 * bleu(predictions, references),
        "NIST": nist(predictions, references),
        "METEOR": None if skipped else 100.0 * meteor(predictions, references, meteor_jar),
        "ROUGE_L": 100.0 * rouge_l(predictions, references),
        "CIDEr": cider(predictions, references),
    }


def accuracy(predictions: Sequence[int], labels: Sequence[int]) -> float:
    """Fraction of predictions equal to their label."""
    _check_labels(predictions, labels)
    return sum(p == y for p, y in zip(predictions, labels, strict=True)) / len(labels)


def f1(predictions: Sequence[int], labels: Sequence[int]) -> float:
    """Binary F1 of the positive class 1: 2·TP / (2·TP + FP + FN), 0 when there is no positive at all."""
    _check_labels(predictions, labels)
    tp = sum(p == 1 and y == 1 for p, y in zip(predictions, labels, strict=True))
    fp = sum(p == 1 and y != 1 for p, y in zip(predictions, labels, strict=True))
    fn = sum(p != 1 and y == 1 for p, y in zip(predictions, labels, strict=True))
    return 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0


def matthews_corrcoef(predictions: Sequence[int], labels: Sequence[int]) -> float:
    """Matthews correlation (CoLA's metric), for any number of classes, 0 when it is undefined.

    MCC = (c·s - Σ_k p_k·t_k) / √((s² - Σ_k p_k²)(s² - Σ_k t_k²)), with s examples, c correct, and p_k,
    t_k the times class k is predicted and is true; for two classes this is (TP·TN - FP·FN) / √(product of
    the four margins).
    """
    _check_labels(predictions, labels)
    s = len(labels)
    c = sum(p == y for p, y in zip(predictions, labels, strict=True))
    predicted, true = Counter(predictions), Counter(labels)
    classes = set(predicted) | set(true)
    covariance = c * s - sum(predicted[k] * true[k] for k in classes)
    spread = (s * s - sum(v * v for v in predicted.values())) * (s * s - sum(v * v for v in true.values()))
    return covariance / math.sqrt(spread) if spread else 0.0


def _check_e2e(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> None:
    if len(predictions) != len(references) or not predictions:
        raise MetricError(f"got {len(predictions)} predictions and {len(references)} reference lists; give "
                          "one non-empty list of references per prediction, in the same order.")
    if isinstance(references[0], str):
        raise MetricError("references must be a list of reference lists (references[i] = all references of "
                          "predictions[i]); wrap single references as [[ref] for ref in refs].")
    empty = [i for i, refs in enumerate(references) if not refs]
    if empty:
        raise MetricError(f"segments {empty[:5]} have no reference; score only inputs that have references "
                          "(the E2E test CSV here has none).")


def _check_labels(predictions: Sequence[int], labels: Sequence[int]) -> None:
    if len(predictions) != len(labels) or not labels:
        raise MetricError(f"got {len(predictions)} predictions and {len(labels)} labels; give one prediction "
                          "per label, and at least one.")
