"""tokenize_pairs, tokenize_labeled and collate with real tokenizers built in the test (no downloads)."""

import logging

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from lorakit.data import (
    IGNORE_INDEX,
    DataError,
    Example,
    LabeledText,
    TextPair,
    collate,
    model_inputs,
    tokenize_labeled,
    tokenize_pairs,
)
from lorakit.data.tokenize import PLAIN_SEPARATOR

CORPUS = ["name[Alimentum], area[city centre] -> Alimentum is in the city centre.",
          "name[Aromi], eatType[pub] -> Aromi is a pub near Café Brazil, £20-25."] * 5
CHAT_TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>{% endif %}")
PAIRS = [TextPair("name[Alimentum], area[city centre] ->", "Alimentum is in the city centre.", "a"),
         TextPair("name[Aromi], eatType[pub] ->", "Aromi is a pub near Café Brazil, £20-25.", "b"),
         TextPair("name[Aromi] ->", "", "c")]


def byte_bpe(bos: bool = False) -> PreTrainedTokenizerFast:
    """A GPT-2-style byte-level BPE (lossless decode); with bos=True it prepends <s> like Llama's."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<s>", "<|end|>", "<|user|>", "<|assistant|>"]
    tok.train_from_iterator(CORPUS, trainers.BpeTrainer(
        vocab_size=300, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    if bos:
        tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", bos_token="<s>", pad_token="<s>")


@pytest.fixture(scope="module")
def tok() -> PreTrainedTokenizerFast:
    return byte_bpe()


def completion_part(example: Example) -> list[int]:
    return [t for t, y in zip(example.input_ids, example.labels, strict=True) if y != IGNORE_INDEX]


def test_labels_are_ignored_exactly_on_prompt_positions(tok: PreTrainedTokenizerFast) -> None:
    for pair, ex in zip(PAIRS, tokenize_pairs(PAIRS, tok, max_length=128), strict=True):
        prompt_ids = tok.encode(pair.prompt, add_special_tokens=False)
        assert ex.input_ids[: len(prompt_ids)] == prompt_ids
        assert ex.labels[: len(prompt_ids)] == [IGNORE_INDEX] * len(prompt_ids)
        assert ex.labels[len(prompt_ids):] == ex.input_ids[len(prompt_ids):]
        assert IGNORE_INDEX not in ex.labels[len(prompt_ids):]


def test_decoded_completion_part_is_separator_completion_and_eos(tok: PreTrainedTokenizerFast) -> None:
    for pair, ex in zip(PAIRS, tokenize_pairs(PAIRS, tok, max_length=128), strict=True):
        separator = PLAIN_SEPARATOR if pair.completion else ""
        assert tok.decode(completion_part(ex)) == separator + pair.completion + tok.eos_token
        assert tok.decode(ex.input_ids) == pair.prompt + separator + pair.completion + tok.eos_token


def test_leading_special_tokens_stay_first_and_unlabeled() -> None:
    tok = byte_bpe(bos=True)
    ex = tokenize_pairs(PAIRS[:1], tok, max_length=128)[0]
    assert ex.input_ids[0] == tok.bos_token_id and ex.labels[0] == IGNORE_INDEX
    assert tok.decode(completion_part(ex)) == " " + PAIRS[0].completion + tok.eos_token


def test_long_examples_lose_prompt_tokens_from_the_left_and_keep_the_whole_completion(
    caplog: pytest.LogCaptureFixture,
) -> None:
    tok = byte_bpe(bos=True)
    pair = TextPair(" ".join([PAIRS[0].prompt] * 4), "Alimentum.", "a")
    full = tokenize_pairs([pair], tok, max_length=128)[0]
    limit = 2 * len(completion_part(full)) + 2  # room for the whole completion and as much prompt, plus 2
    assert len(full.input_ids) > limit
    with caplog.at_level(logging.WARNING, logger="lorakit.data.tokenize"):
        cut = tokenize_pairs([pair], tok, max_length=limit)[0]
    assert len(cut.input_ids) == limit
    assert cut.input_ids[0] == tok.bos_token_id  # BOS kept, then the prompt's last tokens
    assert cut.input_ids[1:] == full.input_ids[len(full.input_ids) - limit + 1:]
    assert completion_part(cut) == completion_part(full)
    assert "1 of 1 examples were longer than max_length" in caplog.text
    assert "1 lost the start of their prompt, 0 the end of their completion" in caplog.text


def test_a_completion_longer_than_the_window_keeps_half_a_window_of_prompt(tok: PreTrainedTokenizerFast) -> None:
    long = TextPair("name[Aromi], eatType[pub] ->", " ".join(["Aromi is a pub."] * 20), "g")
    ex = tokenize_pairs([long], tok, max_length=16)[0]
    assert len(ex.input_ids) == 16
    assert ex.labels[:8] == [IGNORE_INDEX] * 8 and IGNORE_INDEX not in ex.labels[8:]
    assert tok.decode(completion_part(ex)).startswith(" Aromi is a pub.")


def test_chat_mode_masks_the_templated_prompt_and_learns_the_end_of_turn() -> None:
    tok = byte_bpe()
    tok.chat_template = CHAT_TEMPLATE
    tok.eos_token = "<|end|>"
    ex = tokenize_pairs(PAIRS[:1], tok, max_length=128, chat=True)[0]
    prompt = f"<|user|>{PAIRS[0].prompt}<|end|><|assistant|>"
    assert tok.decode(ex.input_ids) == prompt + PAIRS[0].completion + "<|end|>"  # eos not doubled
    assert tok.decode(completion_part(ex)) == PAIRS[0].completion + "<|end|>"
    assert ex.labels[: len(ex.labels) - len(completion_part(ex))] == [IGNORE_INDEX] * (
        len(ex.labels) - len(completion_part(ex)))


def test_chat_mode_appends_eos_when_the_end_of_turn_marker_is_not_eos() -> None:
    tok = byte_bpe()
    tok.chat_template = CHAT_TEMPLATE
    ex = tokenize_pairs(PAIRS[:1], tok, max_length=128, chat=True)[0]
    assert tok.decode(completion_part(ex)) == PAIRS[0].completion + "<|end|>" + tok.eos_token


def test_chat_mode_without_a_template_says_how_to_fix_it(tok: PreTrainedTokenizerFast) -> None:
    with pytest.raises(DataError, match="chat template"):
        tokenize_pairs(PAIRS, tok, max_length=64, chat=True)


def test_empty_data_and_bad_max_length_raise_data_error(tok: PreTrainedTokenizerFast) -> None:
    with pytest.raises(DataError, match="empty"):
        tokenize_pairs([], tok, max_length=64)
    with pytest.raises(DataError, match="empty"):
        tokenize_labeled([], tok, max_length=64)
    with pytest.raises(DataError, match="max_length"):
        tokenize_pairs(PAIRS, tok, max_length=1)


def test_labeled_examples_carry_one_label_and_are_cut_to_max_length(
    tok: PreTrainedTokenizerFast, caplog: pytest.LogCaptureFixture
) -> None:
    texts = [LabeledText("Aromi is a pub.", None, 1), LabeledText(CORPUS[1], None, 0)]
    with caplog.at_level(logging.WARNING, logger="lorakit.data.tokenize"):
        examples = tokenize_labeled(texts, tok, max_length=8)
    assert examples[0].input_ids == tok.encode("Aromi is a pub.") and examples[0].labels == [1]
    assert len(examples[1].input_ids) == 8 and examples[1].labels == [0]
    assert "1 of 2 texts were longer than max_length=8" in caplog.text


def test_labeled_pairs_encode_both_texts(tok: PreTrainedTokenizerFast) -> None:
    ex = tokenize_labeled([LabeledText("Aromi", "a pub", 1)], tok, max_length=32)[0]
    assert ex.input_ids == tok("Aromi", "a pub")["input_ids"]


def test_pair_segment_ids_reach_the_model_inputs() -> None:
    # BERT-style pairs: the tokenizer's segment ids (0 for the first text, 1 for the second) are kept, padded
    # with 0, and passed to the model; tokenizers that make none (GPT-2, Llama) add no key.
    bert_like = byte_bpe()
    bert_like.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A:0", pair="<s> $A:0 <s> $B:1", special_tokens=[("<s>", 1)])
    bert_like.model_input_names = ["input_ids", "token_type_ids", "attention_mask"]
    short, long = tokenize_labeled([LabeledText("Aromi", "a pub", 1), LabeledText("Aromi is", "a pub near", 0)],
                                   bert_like, max_length=32)
    n_first = len(bert_like.encode("Aromi", add_special_tokens=False)) + 2  # <s> A <s> are segment 0
    assert short.token_type_ids == [0] * n_first + [1] * (len(short.input_ids) - n_first)
    batch = collate([short, long], pad_id=0)
    padding = len(long.input_ids) - len(short.input_ids)
    assert batch["token_type_ids"].tolist()[0] == short.token_type_ids + [0] * padding
    assert set(model_inputs(batch)) == {"input_ids", "attention_mask", "token_type_ids"}
    plain = collate([Example([5, 6], [1]), Example([7], [0])], pad_id=0)
    assert set(model_inputs(plain)) == {"input_ids", "attention_mask"}


def test_collate_pads_inputs_mask_and_labels_on_the_chosen_side() -> None:
    batch = [Example([5, 6, 7], [IGNORE_INDEX, 6, 7]), Example([8], [8])]
    right = collate(batch, pad_id=0)
    assert right["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert right["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert right["labels"].tolist() == [[IGNORE_INDEX, 6, 7], [8, IGNORE_INDEX, IGNORE_INDEX]]
    left = collate(batch, pad_id=0, padding_side="left")
    assert left["input_ids"].tolist() == [[5, 6, 7], [0, 0, 8]]
    assert left["labels"].tolist() == [[IGNORE_INDEX, 6, 7], [IGNORE_INDEX, IGNORE_INDEX, 8]]
    assert all(t.dtype == torch.long for t in right.values())


def test_collate_gives_one_label_per_row_for_classification() -> None:
    batch = collate([Example([1, 2, 3], [1]), Example([4, 5], [0])], pad_id=0)
    assert batch["labels"].tolist() == [1, 0] and batch["input_ids"].shape == (2, 3)


def test_collate_refuses_empty_or_mixed_batches() -> None:
    with pytest.raises(DataError, match="empty batch"):
        collate([], pad_id=0)
    with pytest.raises(DataError, match="neither"):
        collate([Example([1, 2], [1, 2]), Example([1, 2, 3], [1, 2])], pad_id=0)
    with pytest.raises(DataError, match="padding_side"):
        collate([Example([1], [1])], pad_id=0, padding_side="middle")  # type: ignore[arg-type]
