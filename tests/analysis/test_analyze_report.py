"""`lorakit analyze` on two saved adapters of a tiny Llama: φ grids, amplification and spectra in the report."""

from __future__ import annotations

import argparse
import json

import torch
from tiny import randomize, tiny_llama
from tokenizers import Tokenizer, models
from transformers import PreTrainedTokenizerFast

from lorakit.cli import analyze as cli
from lorakit.core.config import LoraConfig
from lorakit.core.inject import inject
from lorakit.core.io import save_adapter


def test_analyze_compares_rank_2_with_rank_8_and_writes_the_report(tmp_path):
    tiny_llama().save_pretrained(tmp_path / "base")
    backend = Tokenizer(models.WordLevel({"<unk>": 0, "a": 1}, unk_token="<unk>"))
    PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>").save_pretrained(tmp_path / "base")
    for rank, seed in ((2, 1), (8, 2)):
        model = tiny_llama()
        inject(model, LoraConfig(rank=rank, targets=("q_proj", "v_proj")))
        randomize(model, seed=seed)
        save_adapter(model, tmp_path / f"r{rank}")
    p = argparse.ArgumentParser()
    cli.add_parser(p)
    args = p.parse_args([str(tmp_path / "r2"), str(tmp_path / "r8"), "--model", str(tmp_path / "base"),
                         "--out", str(tmp_path / "report")])
    assert cli.run(args) == 0
    results = json.loads((tmp_path / "report" / "analysis.json").read_text())
    rows = results["matrices"][str(tmp_path / "r2")]
    assert {(r["layer"], r["module"]) for r in rows} == {(0, "q_proj"), (0, "v_proj"), (1, "q_proj"), (1, "v_proj")}
    assert all(r["rank"] == 2 and 0 < r["effective_rank"] <= 2 + 1e-9 and r["amplification"] > 0 for r in rows)
    grid = torch.tensor(results["similarity"][0]["per_matrix"][0]["grid"])
    assert grid.shape == (2, 8) and bool(((grid >= 0) & (grid <= 1 + 1e-6)).all())
    page = (tmp_path / "report" / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 4  # two spectra, φ for q_proj and v_proj
