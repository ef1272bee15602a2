"""The shipped quickstart set: reproducible from its generator, E2E-formatted, every slot realized once."""

import json
import re
import subprocess
import sys

from lorakit.quickstart import restaurants_path
from lorakit.quickstart.generate import SLOTS, TOTAL, TRAIN, VALUES, generate, to_jsonl

ROWS = [json.loads(line) for line in restaurants_path().read_text(encoding="utf-8").splitlines()]
MR_SLOT = re.compile(r"([A-Za-z][A-Za-z ]*)\[([^\]]+)\]")

MENTIONS = {
    "eatType": r"\b(pub|coffee shop|restaurant)\b",
    "food": r"\b(chinese|english|french|fast food|indian|italian|japanese)\b",
    "priceRange": r"£|cheap|pric",
    "customer rating": r"\brat(ed|ing)\b",
    "area": r"riverside|city centre",
    "familyFriendly": r"famil|child|kid",
    "near": r"\bnear\b|close to|walk from",
}
"""Words that can only come from a slot's realization, so none may appear when the slot is absent."""

NEGATION = r"\bnot\b|n't"


def parse(mr: str) -> dict[str, str]:
    pairs = MR_SLOT.findall(mr)
    assert ", ".join(f"{slot}[{value}]" for slot, value in pairs) == mr, f"not E2E syntax: {mr}"
    return dict(pairs)


def test_regenerating_reproduces_the_shipped_file_byte_for_byte() -> None:
    assert to_jsonl(generate()).encode("utf-8") == restaurants_path().read_bytes()


def test_running_the_module_prints_the_shipped_file() -> None:
    printed = subprocess.run(
        [sys.executable, "-m", "lorakit.quickstart.generate"], capture_output=True, check=True, timeout=60
    ).stdout
    assert printed == restaurants_path().read_bytes()


def test_the_first_320_lines_are_train_the_last_40_heldout_and_no_mr_repeats() -> None:
    assert [row["split"] for row in ROWS] == ["train"] * TRAIN + ["heldout"] * (TOTAL - TRAIN)
    assert len({row["mr"] for row in ROWS}) == TOTAL
    assert all(list(row) == ["mr", "ref", "split"] for row in ROWS)


def test_every_mr_has_a_name_and_two_to_seven_e2e_slots_in_e2e_order() -> None:
    for row in ROWS:
        slots = parse(row["mr"])
        assert list(slots)[0] == "name" and 3 <= len(slots) <= 8, row["mr"]
        assert list(slots) == [slot for slot in SLOTS if slot in slots], row["mr"]
        assert all(value in VALUES[slot] for slot, value in slots.items() if slot in VALUES), row["mr"]


def test_every_slot_value_appears_in_its_reference_and_absent_slots_do_not() -> None:
    problems = [problem for row in ROWS for problem in realization_problems(parse(row["mr"]), row["ref"])]
    assert problems == []


def realization_problems(slots: dict[str, str], ref: str) -> list[str]:
    text = ref.lower()
    problems = [] if ref.count(slots["name"]) == 1 else [f"name not exactly once: {ref}"]
    for slot, value in slots.items():
        if slot == "familyFriendly":
            said = re.search(MENTIONS[slot], text) and bool(re.search(NEGATION, text)) == (value == "no")
        else:
            said = value.lower() in text
        problems += [] if said else [f"{slot}[{value}] not realized: {ref}"]
    problems += [
        f"absent {slot} mentioned: {ref}" for slot in MENTIONS.keys() - slots.keys() if re.search(MENTIONS[slot], text)
    ]
    return problems


def test_references_are_one_or_two_sentences_and_both_lengths_occur() -> None:
    counts = [len(re.findall(r"[.!?](?:\s|$)", row["ref"])) for row in ROWS]
    assert set(counts) == {1, 2}
