"""read_instruct (Alpaca JSON, self-instruct JSON Lines) and read_jsonl on small fixture files."""

import json
from pathlib import Path

import pytest

from lorakit.data import DataError, TextPair, instruct_prompt, read_instruct, read_jsonl


def write(path: Path, text: str) -> Path:
    path.write_bytes(text.encode("utf-8"))
    return path


def test_alpaca_prompt_is_instruction_then_blank_line_then_input_when_present(tmp_path: Path) -> None:
    records = [{"instruction": "Sort.", "input": "b, a", "output": "a, b"},
               {"instruction": "Say hi.", "input": "", "output": "Hi"},
               {"instruction": "Say bye.", "output": "Bye"}]
    pairs = read_instruct(write(tmp_path / "a.json", json.dumps(records, indent=2)))
    assert [p.prompt for p in pairs] == ["Sort.\n\nb, a", "Say hi.", "Say bye."]
    assert [p.completion for p in pairs] == ["a, b", "Hi", "Bye"]
    assert all(p.group == p.prompt for p in pairs)


def test_self_instruct_gives_one_pair_per_instance(tmp_path: Path) -> None:
    lines = [{"id": "t0", "motivation_app": "x", "instruction": "Fix.", "instances": [
        {"input": "teh", "output": "the"}, {"input": "adn", "output": "and"}]}]
    pairs = read_instruct(write(tmp_path / "s.jsonl", "\n".join(json.dumps(x) for x in lines)))
    assert pairs == [TextPair("Fix.\n\nteh", "the", "Fix.\n\nteh"), TextPair("Fix.\n\nadn", "and", "Fix.\n\nadn")]


def test_instruct_prompt_ignores_a_whitespace_only_input() -> None:
    assert instruct_prompt("Do it.", "  \n") == "Do it."


def test_jsonl_reads_prompt_completion_and_optional_group(tmp_path: Path) -> None:
    text = '{"prompt": "1+1=", "completion": "2"}\n\n{"prompt": "2+2=", "completion": "4", "group": "sums"}\n'
    pairs = read_jsonl(write(tmp_path / "d.jsonl", text))
    assert pairs == [TextPair("1+1=", "2", "1+1="), TextPair("2+2=", "4", "sums")]


@pytest.mark.parametrize(
    ("name", "text", "expected"),
    [
        ("a.json", "[", "line 1: not valid JSON"),
        ("a.json", '[{"instruction": "x"}]', "record 1: keys are ['instruction']; expected instruction, output"),
        ("a.json", '[{"instruction": "x", "output": "y", "inptu": ""}]', "unknown inptu"),
        ("a.json", '[{"instruction": "x", "output": 3}]', "output must be strings"),
        ("a.json", '["x"]', "record 1: expected a JSON object"),
        ("a.json", "[]", "holds no examples"),
        ("s.jsonl", '{"id": 1, "instruction": "x", "instances": []}', "line 1: keys are"),
        ("s.jsonl", '{"instruction": "x", "instances": [{"input": "a"}]}', "line 1, instance 1: keys are"),
        ("s.jsonl", "  \n", "is empty"),
    ],
)
def test_malformed_instruction_files_raise_data_error(tmp_path: Path, name: str, text: str, expected: str) -> None:
    file = write(tmp_path / name, text)
    with pytest.raises(DataError) as info:
        read_instruct(file)
    assert str(file) in str(info.value) and expected in str(info.value)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"prompt": "a", "completion": "b"}\n{"prompt": "a", "completion": \n', "line 2: not valid JSON"),
        ('{"prompt": "a"}\n', "line 1: keys are ['prompt']; expected prompt, completion"),
        ('{"prompt": "a", "completion": "b", "answer": "c"}\n', "unknown answer"),
        ('[1, 2]\n', "line 1: expected a JSON object"),
        ("\n\n", "is empty"),
    ],
)
def test_malformed_jsonl_raises_data_error_with_line_number(tmp_path: Path, text: str, expected: str) -> None:
    file = write(tmp_path / "d.jsonl", text)
    with pytest.raises(DataError) as info:
        read_jsonl(file)
    assert str(file) in str(info.value) and expected in str(info.value)


def test_missing_file_raises_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found"):
        read_jsonl(tmp_path / "absent.jsonl")
    with pytest.raises(DataError, match="not found"):
        read_instruct(tmp_path / "absent.json")


def test_non_utf8_file_names_the_line(tmp_path: Path) -> None:
    file = tmp_path / "d.jsonl"
    file.write_bytes(b'{"prompt": "a", "completion": "b"}\n{"prompt": "\xff"}\n')
    with pytest.raises(DataError, match="line 2: not valid UTF-8"):
        read_jsonl(file)
