"""read_e2e, group_references and e2e_prompt on small fixture files."""

from pathlib import Path

import pytest

from lorakit.data import E2E_PROMPT_TEMPLATE, DataError, TextPair, e2e_prompt, group_references, read_e2e

MR_A = "name[Alimentum], area[city centre]"
MR_B = "name[Aromi], eatType[pub]"


def write(path: Path, text: str) -> Path:
    path.write_bytes(text.encode("utf-8"))
    return path


def test_csv_pairs_keep_order_and_quoted_newlines(tmp_path: Path) -> None:
    file = write(tmp_path / "devset.csv",
                 f'mr,ref\r\n"{MR_A}","Alimentum is central."\r\n"{MR_B}","Aromi is a pub,\r\n  really."\r\n'
                 f'"{MR_A}",Alimentum is in the centre.\r\n')
    pairs = read_e2e(file)
    assert [p.group for p in pairs] == [MR_A, MR_B, MR_A]
    assert pairs[1].completion == "Aromi is a pub,\r\n  really."
    assert pairs[0] == TextPair(prompt=e2e_prompt(MR_A), completion="Alimentum is central.", group=MR_A)


def test_directory_and_split_pick_the_official_file_name(tmp_path: Path) -> None:
    write(tmp_path / "trainset.csv", f'mr,ref\n"{MR_A}",train ref\n')
    write(tmp_path / "devset.csv", f'mr,ref\n"{MR_A}",dev ref\n')
    assert read_e2e(tmp_path, split="train")[0].completion == "train ref"
    assert read_e2e(tmp_path, split="dev")[0].completion == "dev ref"


def test_test_csv_with_only_an_mr_column_has_empty_completions(tmp_path: Path) -> None:
    pairs = read_e2e(write(tmp_path / "testset.csv", f'MR\n"{MR_A}"\n"{MR_B}"\n'))
    assert [(p.group, p.completion) for p in pairs] == [(MR_A, ""), (MR_B, "")]
    assert group_references(pairs) == [(MR_A, []), (MR_B, [])]


def test_lora_format_lines_split_on_double_bar_and_lose_the_trailing_space(tmp_path: Path) -> None:
    file = write(tmp_path / "valid.txt", "name : A | area : x||A is in x . \nname : B||B is good . \n")
    pairs = read_e2e(file)
    assert pairs[0] == TextPair(prompt="name : A | area : x ->", completion="A is in x .", group="name : A | area : x")
    assert len(pairs) == 2
    assert read_e2e(tmp_path, split="dev") == pairs


def test_group_references_collects_non_consecutive_refs_in_first_seen_order() -> None:
    pairs = [TextPair(e2e_prompt(g), c, g) for g, c in [(MR_B, "b1"), (MR_A, "a1"), (MR_B, "b2")]]
    assert group_references(pairs) == [(MR_B, ["b1", "b2"]), (MR_A, ["a1"])]


def test_prompt_is_the_template_filled_with_the_mr() -> None:
    assert e2e_prompt(MR_A) == E2E_PROMPT_TEMPLATE.format(mr=MR_A) == f"{MR_A} ->"


@pytest.mark.parametrize(
    ("name", "text", "expected"),
    [
        ("devset.csv", "", "is empty"),
        ("devset.csv", "mr,text\n\"x\",y\n", "expected 'mr,ref'"),
        ("devset.csv", "mr,ref,extra\n\"x\",y,z\n", "columns are ['mr', 'ref', 'extra']"),
        ("devset.csv", "mr,ref\n\"x\",y\n\"x\",y,z\n", "line 3: expected 2 fields"),
        ("devset.csv", "mr,ref\n\"x\",\n", "line 2: the ref field is empty"),
        ("devset.csv", "mr,ref\n", "header but no rows"),
        ("valid.txt", "name : A||ref\nname : B ref without separator\n", "line 2: expected 'MR||reference'"),
        ("valid.txt", "name : A||ref||more\n", "line 1"),
    ],
)
def test_malformed_files_raise_data_error_naming_file_and_line(
    tmp_path: Path, name: str, text: str, expected: str
) -> None:
    file = write(tmp_path / name, text)
    with pytest.raises(DataError) as info:
        read_e2e(file)
    assert str(file) in str(info.value) and expected in str(info.value)


def test_missing_file_error_lists_the_expected_file_names(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="trainset.csv"):
        read_e2e(tmp_path / "nowhere")
    with pytest.raises(DataError, match="expected devset.csv or valid.txt, found nothing"):
        read_e2e(tmp_path, split="dev")


def test_directory_without_split_asks_for_one(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="split="):
        read_e2e(tmp_path)


def test_data_error_is_a_lora_error_and_a_value_error() -> None:
    from lorakit.core.errors import LoraError

    assert issubclass(DataError, LoraError) and issubclass(DataError, ValueError)


def test_rows_after_a_quoted_newline_report_their_own_line(tmp_path: Path) -> None:
    file = write(tmp_path / "devset.csv", f'mr,ref\n"{MR_A}","two\nlines"\n"{MR_B}"\n')
    with pytest.raises(DataError, match="line 4: expected 2 fields"):
        read_e2e(file)


def test_an_unclosed_quote_that_swallows_the_file_raises_data_error(tmp_path: Path) -> None:
    file = write(tmp_path / "devset.csv", f'mr,ref\n"{MR_A}","open quote\n' + "x" * 200_000 + "\n")
    with pytest.raises(DataError, match="not valid CSV"):
        read_e2e(file)
