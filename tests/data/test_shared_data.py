"""The readers on the real files in ../shared/data: record counts match the datasets' documented sizes."""

from pathlib import Path

import pytest

from lorakit.data import group_references, read_e2e, read_glue, read_instruct

DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"

pytestmark = pytest.mark.skipif(not DATA.is_dir(), reason=f"shared data not found at {DATA}")


@pytest.mark.parametrize(("split", "refs", "mrs"), [("train", 42_061, 4_862), ("dev", 4_672, 547), ("test", 630, 630)])
def test_e2e_official_csv_counts(split: str, refs: int, mrs: int) -> None:
    pairs = read_e2e(DATA / "e2e", split=split)
    assert len(pairs) == refs
    assert len(group_references(pairs)) == mrs


def test_e2e_lora_format_dev_matches_the_official_dev_set_shape() -> None:
    pairs = read_e2e(DATA / "e2e_lora_format" / "valid.txt")
    groups = group_references(pairs)
    assert (len(pairs), len(groups)) == (4_672, 547)
    official = group_references(read_e2e(DATA / "e2e", split="dev"))
    assert [len(refs) for _, refs in groups] == [len(refs) for _, refs in official]


@pytest.mark.parametrize(
    ("task", "train", "dev"),
    [("sst2", 67_349, 872), ("mrpc", 3_668, 408), ("rte", 2_490, 277), ("cola", 8_551, 1_043)],
)
def test_glue_counts_and_both_labels_present(task: str, train: int, dev: int) -> None:
    for split, count in (("train", train), ("dev", dev)):
        records = read_glue(task, DATA / "glue", split)
        assert len(records) == count
        assert {r.label for r in records} == {0, 1}


@pytest.mark.parametrize(
    ("name", "count"),
    [
        ("alpaca_5000.json", 5_000),
        ("alpaca_gpt4_en_demo_999.json", 999),
        ("self_instruct_user_oriented_252.jsonl", 252),
    ],
)
def test_instruction_file_counts(name: str, count: int) -> None:
    pairs = read_instruct(DATA / "instruct" / name)
    assert len(pairs) == count
    assert all(p.prompt for p in pairs)  # two Alpaca outputs are empty in the release itself; they are kept
