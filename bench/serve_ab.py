"""lorakit serve at this checkout against another git revision's, under the same soak; prints JSON.

Each version's server runs in its own process (the other revision's source unpacked with `git archive` and put
first on the path the server process starts with), on SmolLM2-135M in bf16 with 8 rank-8 q,v adapters, and is
started `--runs` times, in the order A B B A A B...: greedy solo runs of the 32 prompts first, a short warm-up
soak, then a `--soak-seconds` soak of 32 streaming clients that each pause a random 0 to `--soak-pause` seconds
before every request (so requests join and leave the running batch at different steps). Reports each version's
median generated tokens/s over its runs, the ratio, and errors and outputs that differ from their solo runs.

    python bench/serve_ab.py --against HEAD~1 [--soak-pause 1.0] [--soak-seconds 15] [--runs 3]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import statistics
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import serve as bench  # noqa: E402 (the serving benchmark's model, adapters, server process and soak)

ROOT = Path(__file__).resolve().parents[1]


def unpack(rev: str) -> str:
    """The `src` folder of git revision `rev`, unpacked into a temporary directory."""
    where = Path(tempfile.mkdtemp())
    archive = subprocess.run(["git", "archive", rev, "src"], cwd=ROOT, check=True, capture_output=True).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(where, filter="data")
    return str(where / "src")


def one_run(source: str | None, dirs: list[Path], jobs: list[tuple[str, str]], args) -> dict:
    """Start a server on `source` (None: this checkout), soak it, stop it."""
    with bench.served(False, "bfloat16", dirs, 2, source) as (url, _):
        solo = {job: asyncio.run(bench.concurrent(url, [job], 32))[0][0] for job in jobs}
        asyncio.run(bench.soak(url, jobs, solo, 32, 3, 32, pause=args.soak_pause))
        return asyncio.run(bench.soak(url, jobs, solo, 32, args.soak_seconds, 32, pause=args.soak_pause))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--against", required=True, help="git revision of the other version (e.g. HEAD~1)")
    parser.add_argument("--soak-pause", type=float, default=1.0)
    parser.add_argument("--soak-seconds", type=float, default=15)
    parser.add_argument("--runs", type=int, default=3, help="server starts per version")
    args = parser.parse_args()
    model, tok = bench.base_model(False, "bfloat16")
    dirs = bench.make_adapters(model, Path(tempfile.mkdtemp()), bench.ADAPTERS)
    del model
    texts = bench.prompts(32)
    jobs = [(f"a{i % bench.ADAPTERS}", texts[i]) for i in range(32)]
    sources = {"this": None, args.against: unpack(args.against)}
    order = [k for r in range(args.runs) for k in (list(sources) if r % 2 == 0 else list(sources)[::-1])]
    runs: dict[str, list[dict]] = {k: [] for k in sources}
    for key in order:
        runs[key].append(one_run(sources[key], dirs, jobs, args))
    rates = {k: statistics.median(r["tokens_per_s"] for r in v) for k, v in runs.items()}
    json.dump({"soak_seconds": args.soak_seconds, "soak_pause_s": args.soak_pause, "runs": args.runs,
               "tokens_per_s": rates, "this_over_other": round(rates["this"] / rates[args.against], 3),
               "tokens_per_s_each": {k: [r["tokens_per_s"] for r in v] for k, v in runs.items()},
               "errors": {k: sum(r["errors"] for r in v) for k, v in runs.items()},
               "not_equal_to_solo": {k: sum(r["not_equal_to_solo"] for r in v) for k, v in runs.items()}},
              sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
