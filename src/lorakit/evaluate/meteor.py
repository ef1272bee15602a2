"""METEOR through the official Java scorer (Denkowski & Lavie, 2014), driven as pycocoevalcap drives it.

METEOR needs WordNet synonyms and a paraphrase table that only ship with meteor-1.5.jar, so lorakit does not
reimplement it: with Java on PATH and the jar available it runs the jar, otherwise the score is skipped.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import IO

from lorakit.evaluate.coco import ptb_tokenize
from lorakit.evaluate.errors import MetricError

METEOR_JAR_ENV = "LORAKIT_METEOR_JAR"
"""Environment variable naming meteor-1.5.jar when no path is passed."""

# The options pycocoevalcap passes: read segments from stdin, English, normalize punctuation and case.
_ARGS = ("-", "-", "-stdio", "-l", "en", "-norm")


def meteor_unavailable(jar: str | Path | None = None) -> str | None:
    """Why METEOR cannot run here (a sentence saying what to install), or None when it can."""
    if shutil.which("java") is None:
        return "METEOR skipped: Java is not on PATH; install a Java runtime (11 or later) to compute it."
    path = _jar(jar)
    if path is None:
        return (f"METEOR skipped: meteor-1.5.jar was not found; `pip install pycocoevalcap` (it bundles the jar), "
                f"or pass meteor_jar= or set {METEOR_JAR_ENV} to the jar from the METEOR 1.5 release (keep its "
                "data/ folder next to it).")
    if not path.is_file():
        return f"METEOR skipped: {path} does not exist; point {METEOR_JAR_ENV} at meteor-1.5.jar."
    return None


def meteor(
    predictions: Sequence[str], references: Sequence[Sequence[str]], jar: str | Path | None = None
) -> float:
    """Corpus METEOR in [0, 1] from meteor-1.5.jar, on ptb_tokenize text as pycocoevalcap feeds it.

    Per segment the jar returns match statistics ("SCORE ||| ref_1 ||| ... ||| hyp"); one "EVAL" line then
    aggregates them over the corpus (it is not the mean of sentence scores).
    """
    reason = meteor_unavailable(jar)
    if reason is not None:
        raise MetricError(reason)
    path = _jar(jar)
    assert path is not None  # meteor_unavailable checked it
    command = ["java", "-jar", "-Xmx2G", str(path), *_ARGS]
    with tempfile.TemporaryFile() as errors:
        process = subprocess.Popen(command, cwd=path.parent, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                   stderr=errors, text=True, encoding="utf-8")
        try:
            stats = []
            for hyp, refs in zip(predictions, references, strict=True):
                words = [" ".join(ptb_tokenize(r)) for r in refs] + [" ".join(ptb_tokenize(hyp))]
                # "|||" separates fields in the jar's protocol, so it may not appear inside one.
                stats.append(_ask(process, " ||| ".join(["SCORE", *(w.replace("|||", "") for w in words)]),
                                  errors))
            _ask(process, " ||| ".join(["EVAL", *stats]), errors)  # first line: segment 1's score
            for _ in range(len(stats) - 1):
                _read(process, errors)
            return float(_read(process, errors))
        finally:
            process.kill()
            process.wait()


def _jar(jar: str | Path | None) -> Path | None:
    """The jar passed, else $LORAKIT_METEOR_JAR, else the copy inside an installed pycocoevalcap (which bundles
    meteor-1.5.jar with its data/ folder), else None."""
    found = jar if jar is not None else os.environ.get(METEOR_JAR_ENV)
    if found:
        return Path(found).expanduser().resolve()
    spec = importlib.util.find_spec("pycocoevalcap")
    for root in (spec.submodule_search_locations or []) if spec is not None else []:
        bundled = Path(root) / "meteor" / "meteor-1.5.jar"
        if bundled.is_file():
            return bundled.resolve()
    return None


def _ask(process: subprocess.Popen[str], line: str, errors: IO[bytes]) -> str:
    assert process.stdin is not None
    process.stdin.write(line + "\n")
    process.stdin.flush()
    return _read(process, errors)


def _read(process: subprocess.Popen[str], errors: IO[bytes]) -> str:
    assert process.stdout is not None
    answer = process.stdout.readline().strip()
    if not answer:
        errors.seek(0)
        detail = errors.read().decode("utf-8", "replace").strip()[-500:]
        raise MetricError(f"the METEOR jar stopped answering ({detail or 'no error output'}); check that it "
                          "is meteor-1.5.jar with its data/ folder, and that Java can run it.")
    return answer
