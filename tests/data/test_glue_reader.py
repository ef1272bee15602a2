"""read_glue and GLUE_TASKS on small fixture files."""

from pathlib import Path

import pytest

from lorakit.data import GLUE_TASKS, DataError, LabeledText, glue_task, read_glue

BOM = "\ufeff"


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode("utf-8"))
    return path


def test_sst2_rows_keep_their_text_exactly_and_parse_labels(tmp_path: Path) -> None:
    file = write(tmp_path / "dev.tsv", 'sentence\tlabel\nit \'s a "charming" film . \t1\nbleak \t0\n')
    assert read_glue("sst2", file) == [
        LabeledText('it \'s a "charming" film . ', None, 1),
        LabeledText("bleak ", None, 0),
    ]


def test_mrpc_reads_through_a_byte_order_mark_and_unbalanced_quotes(tmp_path: Path) -> None:
    header = "Quality\t#1 ID\t#2 ID\t#1 String\t#2 String\n"
    file = write(tmp_path / "train.tsv", BOM + header + '1\t7\t8\tHe said "yes.\t"Yes," he said.\r\n')
    assert read_glue("mrpc", file) == [LabeledText('He said "yes.', '"Yes," he said.', 1)]


def test_rte_maps_label_names_to_indices_in_label_order(tmp_path: Path) -> None:
    rows = "index\tsentence1\tsentence2\tlabel\n0\ta\tb\tentailment\n1\tc\td\tnot_entailment\n"
    file = write(tmp_path / "dev.tsv", rows)
    assert [t.label for t in read_glue("rte", file)] == [0, 1]
    assert GLUE_TASKS["rte"].label_names == ("entailment", "not_entailment")


def test_cola_has_no_header_and_reads_every_line(tmp_path: Path) -> None:
    file = write(tmp_path / "train.tsv", "gj04\t1\t\tThe sailors rode.\ngj04\t0\t*\tRode sailors the.\n")
    assert read_glue("cola", file) == [
        LabeledText("The sailors rode.", None, 1),
        LabeledText("Rode sailors the.", None, 0),
    ]


def test_glue_root_directory_and_split_find_the_task_file(tmp_path: Path) -> None:
    write(tmp_path / "sst2" / "dev.tsv", "sentence\tlabel\ngood\t1\n")
    assert read_glue("SST2", tmp_path, "dev") == [LabeledText("good", None, 1)]
    assert read_glue("sst2", tmp_path / "sst2", "dev") == [LabeledText("good", None, 1)]


def test_every_task_declares_labels_and_a_metric_consistently() -> None:
    for spec in GLUE_TASKS.values():
        assert spec.num_labels == len(spec.label_names) == 2
        assert spec.metric in ("accuracy", "matthews_corrcoef")
    assert glue_task("cola").metric == "matthews_corrcoef"


def test_unknown_task_lists_the_known_tasks(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="sst2, mrpc, rte, cola"):
        read_glue("mnli", tmp_path, "dev")


def test_the_test_split_reads_unlabeled_examples_with_their_file_index(tmp_path: Path) -> None:
    (tmp_path / "test.tsv").write_text("index\t#1 ID\t#2 ID\t#1 String\t#2 String\n7\t1\t2\ta b\tc d\n")
    [record] = read_glue("mrpc", tmp_path, "test")
    assert (record.text, record.text_pair, record.label, record.id) == ("a b", "c d", None, "7")
    (tmp_path / "dev.tsv").write_text((tmp_path / "test.tsv").read_text())
    with pytest.raises(DataError, match="unlabeled GLUE test file; the dev split needs labels"):
        read_glue("mrpc", tmp_path, "dev")


@pytest.mark.parametrize(
    ("task", "text", "expected"),
    [
        ("sst2", "", "is empty"),
        ("sst2", "index\tsentence\tlabel\n0\tgood\t1\n", "columns are ['index', 'sentence', 'label']"),
        ("sst2", "sentence\tlabel\ngood\t1\textra\n", "line 2: expected 2 tab-separated fields"),
        ("sst2", "sentence\tlabel\ngood\tpositive\n", "line 2: label 'positive' is not one of 0, 1"),
        ("rte", "index\tsentence1\tsentence2\tlabel\n0\ta\tb\tneutral\n", "line 2: label 'neutral'"),
        ("cola", "gj04\t1\tThe sailors rode.\n", "line 1: expected 4 tab-separated fields"),
        ("sst2", "sentence\tlabel\n\t1\n", "line 2: the 'sentence' field is empty"),
        ("sst2", "sentence\tlabel\n", "header but no rows"),
    ],
)
def test_malformed_files_raise_data_error_naming_file_and_line(
    tmp_path: Path, task: str, text: str, expected: str
) -> None:
    file = write(tmp_path / "dev.tsv", text)
    with pytest.raises(DataError) as info:
        read_glue(task, file)
    assert str(file) in str(info.value) and expected in str(info.value)


def test_missing_split_file_says_which_file_was_expected(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="expected dev.tsv"):
        read_glue("sst2", tmp_path, "dev")
