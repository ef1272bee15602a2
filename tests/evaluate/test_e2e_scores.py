"""e2e_metrics end to end: keys, scales, input checks, and BLEU against sacrebleu on the real E2E dev set."""

from pathlib import Path

import pytest
import sacrebleu

from lorakit.data import group_references, read_e2e
from lorakit.evaluate import E2E_METRICS, MetricError, bleu, e2e_metrics

DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"


@pytest.fixture(scope="module")
def dev_system() -> tuple[list[str], list[list[str]]]:
    """A realistic system: each MR's first human reference, scored against its remaining references."""
    if not (DATA / "e2e" / "devset.csv").is_file():
        pytest.skip(f"shared E2E data not found at {DATA}")
    groups = group_references(read_e2e(DATA / "e2e", split="dev"))
    return [refs[0] for _, refs in groups], [refs[1:] for _, refs in groups]


def test_bleu_matches_sacrebleu_lowercased_13a_on_the_e2e_dev_set(
    dev_system: tuple[list[str], list[list[str]]],
) -> None:
    predictions, references = dev_system
    # sacrebleu wants one stream per reference slot; None marks a segment with fewer references.
    width = max(len(refs) for refs in references)
    streams = [[refs[i] if i < len(refs) else None for refs in references] for i in range(width)]
    expected = sacrebleu.corpus_bleu(predictions, streams, lowercase=True, tokenize="13a").score
    assert abs(100 * bleu(predictions, references) - expected) <= 0.1


def test_human_references_score_in_the_range_the_e2e_challenge_reports(
    dev_system: tuple[list[str], list[list[str]]],
) -> None:
    predictions, references = dev_system
    with pytest.warns(UserWarning):  # METEOR is skipped unless a jar is configured
        scores = e2e_metrics(predictions, references, meteor_jar=DATA / "no-such-meteor.jar")
    assert list(scores) == list(E2E_METRICS)
    assert 50 < scores["BLEU"] < 75 and 7 < scores["NIST"] < 10
    assert 55 < scores["ROUGE_L"] < 75 and 1.5 < scores["CIDEr"] < 3


def test_a_perfect_system_scores_100_on_the_percentage_metrics() -> None:
    predictions = ["The Eagle is a cheap pub.", "Aromi is a family-friendly coffee shop."]
    with pytest.warns(UserWarning):
        scores = e2e_metrics(predictions, [[p] for p in predictions], meteor_jar="/no/such/meteor.jar")
    assert scores["BLEU"] == pytest.approx(100.0) and scores["ROUGE_L"] == pytest.approx(100.0)
    assert scores["CIDEr"] == pytest.approx(10.0) and scores["METEOR"] is None


@pytest.mark.parametrize(
    ("predictions", "references", "expected"),
    [
        (["a"], [["a"], ["b"]], "1 predictions and 2 reference lists"),
        ([], [], "0 predictions"),
        (["a"], ["a"], "list of reference lists"),
        (["a", "b"], [["a"], []], "segments \\[1\\] have no reference"),
    ],
)
def test_misaligned_inputs_raise_metric_error(predictions: list, references: list, expected: str) -> None:
    with pytest.raises(MetricError, match=expected):
        e2e_metrics(predictions, references)
