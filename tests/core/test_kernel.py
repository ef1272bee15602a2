"""CLibrary: a C source is compiled once per machine into lorakit's cache, and says why when it cannot be used."""

from __future__ import annotations

import ctypes
import shutil
import sys

import pytest

from lorakit.core.kernel import CLibrary

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux") or not (shutil.which("cc") or shutil.which("gcc")),
                                reason="needs Linux and a C compiler")


def bind(lib: ctypes.CDLL) -> None:
    lib.lk_answer.argtypes = []
    lib.lk_answer.restype = ctypes.c_int


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LORAKIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("LORAKIT_KERNELS", raising=False)
    return tmp_path / "cache" / "kernels"


def test_a_library_is_built_once_and_rebuilt_when_its_source_changes(tmp_path, cache):
    source = tmp_path / "answer.c"
    source.write_text("int lk_answer(void) { return 42; }\n")
    lib = CLibrary(source, bind)
    assert lib.unavailable() is None and lib.get().lk_answer() == 42
    built = lib.build()
    assert built.parent == cache and built.name.startswith("answer-")
    stamp = built.stat().st_mtime_ns
    assert CLibrary(source, bind).build() == built and built.stat().st_mtime_ns == stamp  # not compiled again
    source.write_text("int lk_answer(void) { return 43; }\n")
    assert CLibrary(source, bind).build() != built
    assert [p.name for p in cache.iterdir() if p.name.startswith(".")] == []  # no temporary file left behind


def test_a_library_that_does_not_compile_says_why(tmp_path, cache):
    source = tmp_path / "broken.c"
    source.write_text("int lk_answer(void) { return }\n")
    lib = CLibrary(source, bind)
    assert lib.get() is None
    assert lib.unavailable().startswith("could not build broken.c: ") and "error" in lib.unavailable()
    assert not cache.exists() or not any(cache.iterdir())


def test_lorakit_kernels_0_turns_a_library_off(tmp_path, cache, monkeypatch):
    source = tmp_path / "answer.c"
    source.write_text("int lk_answer(void) { return 42; }\n")
    monkeypatch.setenv("LORAKIT_KERNELS", "0")
    lib = CLibrary(source, bind)
    assert lib.get() is None and lib.unavailable() == "LORAKIT_KERNELS=0"
    assert not cache.exists()
