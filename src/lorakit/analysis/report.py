"""`analyze`: the paper's section 7 on LoRA adapters (lorakit's or PEFT's) of one base model, as a report.

For every adapted matrix: the spectrum and effective rank of ΔW and its amplification of W (Table 7); for every
adapter after the first, the subspace similarity φ of its A matrices with the first adapter's (Figures 3, 4),
per layer and matrix type.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lorakit.analysis.amplification import amplification
from lorakit.analysis.spectrum import effective_rank_of, energy_rank_of
from lorakit.analysis.subspace import similarity_grid
from lorakit.core.errors import ConfigError
from lorakit.core.io import atomic_write
from lorakit.core.merge import delta_weight
from lorakit.core.state import wrappers
from lorakit.core.targets import layer_index

Matrix = tuple[int | None, str]
"""(block index, module name such as 'q_proj')."""


def factors(model: nn.Module, name: str) -> dict[Matrix, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """{(layer, module): (A (r x in), ΔW (out x in), W (out x in))} of adapter `name` on a loaded model."""
    out = {}
    for path, layer in wrappers(model):
        if not hasattr(layer, "lora_A") or name not in layer.lora_A:
            continue
        delta, w = delta_weight(layer, name), layer.weight_2d().detach()
        if getattr(layer, "transposed", False):  # Conv1D stores (in x out)
            delta, w = delta.T, w.T
        out[(layer_index(path), path.rsplit(".", 1)[-1])] = (layer.lora_A[name].detach(), delta, w.reshape(delta.shape))
    return out


def matrix_rows(found: dict[Matrix, tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
                weight_svds: dict[Matrix, tuple] | None = None) -> list[dict[str, Any]]:
    """Spectrum, effective rank and amplification of each ΔW; one SVD of each ΔW, and of each W shared through
    `weight_svds` across the adapters analyzed on the same base."""
    weight_svds = {} if weight_svds is None else weight_svds
    rows = []
    for key, (a, delta, w) in sorted(found.items(), key=lambda kv: (kv[0][0] or 0, kv[0][1])):
        index, module = key
        d_svd = torch.linalg.svd(delta.detach().double(), full_matrices=False)
        if key not in weight_svds:
            weight_svds[key] = torch.linalg.svd(w.detach().double(), full_matrices=False)
        amp = amplification(delta, w, rank=min(a.shape[0], *delta.shape), delta_svd=d_svd,
                            weight_svd=weight_svds[key])
        s = d_svd[1]
        rows.append({"layer": index, "module": module, "rank": a.shape[0], "effective_rank": effective_rank_of(s),
                     "energy_rank_90": energy_rank_of(s, 0.9), "amplification": amp.factor, **asdict(amp),
                     "singular_values": s.tolist()})
    return rows


def analyze(model_name: str, adapters: list[str | Path], out: str | Path, kind: str = "causal-lm",
            num_labels: int | None = None, layers_shown: int = 4) -> dict[str, Any]:
    """Load each adapter onto `model_name`, write analysis.json, report.md and report.html to `out`; returns
    the results."""
    from lorakit.analysis import plots
    from lorakit.core.io import load_adapter
    from lorakit.models import load

    if not adapters:
        raise ConfigError("give at least one adapter directory to analyze (two or more for subspace similarity)")
    model, _ = load(model_name, kind=kind, num_labels=num_labels)
    names = [load_adapter(model, d, name=f"adapter{i}") for i, d in enumerate(adapters)]
    found = {n: factors(model, n) for n in names}
    weight_svds: dict = {}
    matrices = {str(a): matrix_rows(found[n], weight_svds) for a, n in zip(adapters, names, strict=True)}
    results: dict[str, Any] = {"model": model_name, "adapters": [str(a) for a in adapters], "matrices": matrices,
                               "similarity": []}
    page = plots.Page(f"Adapter analysis on {model_name}")
    page.text("Hu et al. (2021), section 7. Effective rank = exp(entropy of σ/Σσ); amplification = ‖ΔW‖_F / "
              "‖UᵀWVᵀ‖_F with U, V the top-r singular vectors of ΔW (Table 7), next to the same projection on W's "
              "own top-r directions and on random ones.")
    for adapter, name in zip(adapters, names, strict=True):
        rows = results["matrices"][str(adapter)]
        page.heading(f"{adapter}")
        page.table(["layer", "matrix", "r", "eff. rank", "rank@90%", "‖ΔW‖", "‖UᵀWVᵀ‖ ΔW", "W top-r", "random",
                    "amplification"],
                   [[r["layer"], r["module"], r["rank"], f"{r['effective_rank']:.2f}", r["energy_rank_90"],
                     f"{r['delta_norm']:.3g}", f"{r['on_delta']:.3g}", f"{r['on_weight']:.3g}",
                     f"{r['on_random']:.3g}", f"{r['amplification']:.3g}"] for r in rows])
        spectra = {f"{r['layer']}.{r['module']}": torch.tensor(r["singular_values"][: 2 * r["rank"]]) for r in rows}
        page.image(f"spectrum_{name}.png", plots.spectra(spectra, f"ΔW singular values: {adapter}"),
                   f"Singular values of each ΔW of {adapter}")
    first = names[0]
    for adapter, name in list(zip(adapters, names, strict=True))[1:]:
        shared = sorted(set(found[first]) & set(found[name]), key=lambda m: (m[0] or 0, m[1]))
        if not shared:
            raise ConfigError(f"{adapters[0]} and {adapter} adapt no common matrix; compare adapters of the same "
                              "modules")
        grids = {m: similarity_grid(found[first][m][0], found[name][m][0]) for m in shared}
        results["similarity"].append({"a": str(adapters[0]), "b": str(adapter), "per_matrix": [
            {"layer": m[0], "module": m[1], "phi_full": float(g[-1, -1]), "phi_top1": float(g[0, 0]),
             "grid": g.tolist()} for m, g in grids.items()]})
        page.heading(f"Subspace similarity φ: {adapters[0]} vs {adapter}")
        for module in sorted({m[1] for m in shared}):
            chosen = _spread([m for m in shared if m[1] == module], layers_shown)
            png = plots.heatmaps({f"layer {m[0]} {module}": grids[m] for m in chosen},
                                 f"φ(A1, A2, i, j), {module}", xlabel=f"j ({adapter})", ylabel=f"i ({adapters[0]})")
            page.image(f"phi_{name}_{module}.png", png, f"φ for {module} at layers {[m[0] for m in chosen]}")
    out = Path(out)
    atomic_write(out / "analysis.json", (json.dumps(results, indent=1) + "\n").encode())
    page.write(out)
    return results


def _spread(items: list, count: int) -> list:
    """Up to `count` items evenly spaced from first to last (the paper shows layers 1, 32, 64, 96)."""
    if len(items) <= count:
        return items
    return [items[round(k * (len(items) - 1) / (count - 1))] for k in range(count)]
