"""Metrics (pure functions): the E2E NLG challenge's five scores and GLUE's classification scores."""

from lorakit.evaluate.coco import cider, ptb_tokenize, rouge_l
from lorakit.evaluate.errors import MetricError
from lorakit.evaluate.meteor import METEOR_JAR_ENV, meteor, meteor_unavailable
from lorakit.evaluate.metrics import E2E_METRICS, accuracy, e2e_metrics, f1, matthews_corrcoef
from lorakit.evaluate.mteval import bleu, nist, tokenize_13a

__all__ = [
    "E2E_METRICS",
    "METEOR_JAR_ENV",
    "MetricError",
    "accuracy",
    "bleu",
    "cider",
    "e2e_metrics",
    "f1",
    "matthews_corrcoef",
    "meteor",
    "meteor_unavailable",
    "nist",
    "ptb_tokenize",
    "rouge_l",
    "tokenize_13a",
]
