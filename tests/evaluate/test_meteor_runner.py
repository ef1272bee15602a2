"""METEOR runs the real jar only when Java and meteor-1.5.jar are present; otherwise it is skipped, not faked.

The jar's stdio protocol is exercised here against a stand-in `java` that answers with fixed numbers: it checks
how lorakit talks to the jar, not METEOR itself.
"""

import importlib.util
import json
import stat
import sys
from pathlib import Path

import pytest

from lorakit.evaluate import METEOR_JAR_ENV, MetricError, e2e_metrics, meteor, meteor_unavailable

STAND_IN = f"""#!{sys.executable}
import json, sys
log = open("protocol.jsonl", "a")
log.write(json.dumps({{"argv": sys.argv[1:]}}) + "\\n")
for line in sys.stdin:
    log.write(json.dumps({{"line": line.rstrip("\\n")}}) + "\\n")
    log.flush()
    fields = line.rstrip("\\n").split(" ||| ")
    if fields[0] == "SCORE":
        print(f"{{len(fields) - 2}} {{len(fields[-1].split())}}", flush=True)
    elif fields[0] == "EVAL":
        for _ in fields[1:]:
            print("0.5")
        print("0.4321", flush=True)
"""


def fake_java(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, script: str) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    java = bin_dir / "java"
    java.write_text(script)
    java.chmod(java.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", str(bin_dir))
    jar_dir = tmp_path / "meteor"
    jar_dir.mkdir()
    (jar_dir / "meteor-1.5.jar").write_bytes(b"")
    return jar_dir / "meteor-1.5.jar"


def test_without_java_meteor_is_skipped_with_a_reason(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    assert "Java is not on PATH" in (meteor_unavailable(tmp_path / "meteor-1.5.jar") or "")


def test_without_a_jar_e2e_metrics_reports_none_and_warns(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_java(tmp_path, monkeypatch, STAND_IN)
    monkeypatch.delenv(METEOR_JAR_ENV, raising=False)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)  # no pycocoevalcap either
    with pytest.warns(UserWarning, match="METEOR skipped: meteor-1.5.jar was not found; `pip install pycocoevalcap`"):
        scores = e2e_metrics(["the pub is cheap"], [["the pub is cheap"]])
    assert scores["METEOR"] is None
    with pytest.raises(MetricError, match="METEOR skipped"):
        meteor(["a"], [["a"]])


def test_the_jar_inside_an_installed_pycocoevalcap_is_found(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_java(tmp_path, monkeypatch, STAND_IN)
    monkeypatch.delenv(METEOR_JAR_ENV, raising=False)
    package = tmp_path / "site" / "pycocoevalcap"
    (package / "meteor").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "meteor" / "meteor-1.5.jar").write_bytes(b"")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    assert meteor_unavailable() is None
    assert meteor(["The pub, cheap."], [["the pub is cheap"]]) == pytest.approx(0.4321)


def test_a_missing_jar_path_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_java(tmp_path, monkeypatch, STAND_IN)
    monkeypatch.setenv(METEOR_JAR_ENV, str(tmp_path / "absent.jar"))
    assert "absent.jar does not exist" in (meteor_unavailable() or "")


def test_the_jar_gets_tokenized_segments_then_one_eval_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    jar = fake_java(tmp_path, monkeypatch, STAND_IN)
    score = meteor(["The pub, cheap.", "It's |||near"], [["the pub is cheap", "a pub"], ["near x"]], jar)
    assert score == pytest.approx(0.4321)
    log = [json.loads(line) for line in (jar.parent / "protocol.jsonl").read_text().splitlines()]
    assert log[0]["argv"] == ["-jar", "-Xmx2G", str(jar), "-", "-", "-stdio", "-l", "en", "-norm"]
    assert [entry["line"] for entry in log[1:]] == [
        "SCORE ||| the pub is cheap ||| a pub ||| the pub cheap",
        "SCORE ||| near x ||| it 's near",
        "EVAL ||| 2 3 ||| 1 3",
    ]


def test_e2e_metrics_reports_meteor_from_the_jar_as_a_percentage(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    jar = fake_java(tmp_path, monkeypatch, STAND_IN)
    monkeypatch.setenv(METEOR_JAR_ENV, str(jar))
    assert e2e_metrics(["a b"], [["a b"]])["METEOR"] == pytest.approx(43.21)


def test_a_jar_that_dies_raises_metric_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    jar = fake_java(tmp_path, monkeypatch, f"#!{sys.executable}\nimport sys\nsys.stderr.write('no data dir')\n")
    with pytest.raises(MetricError, match="stopped answering \\(no data dir\\)"):
        meteor(["a"], [["a"]], jar)
