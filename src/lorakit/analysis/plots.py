"""Figures as PNG bytes (matplotlib, imported only here) and a Page that writes the same report as Markdown (with
PNG files beside it) and as one self-contained HTML file (PNGs embedded as base64)."""

from __future__ import annotations

import base64
import html
import io
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from lorakit.core.io import atomic_write


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # no display: reports are written by servers and CI as often as by laptops
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    _pyplot().close(fig)
    return buffer.getvalue()


def lines(series: Mapping[str, Sequence[tuple[float, float]]], xlabel: str, ylabel: str, title: str,
          log_x: bool = False) -> bytes:
    """One line per named series of (x, y) points, all on one axis."""
    plt = _pyplot()
    many = len(series) > 10  # matplotlib's default cycle has 10 colors: more series would share them
    fig, ax = plt.subplots(figsize=(8.0 if many else 6.4, 4.0))
    colors = plt.get_cmap("tab20").colors if many else [None] * len(series)
    for i, (name, points) in enumerate(series.items()):
        if points:
            xs, ys = zip(*points, strict=True)
            ax.plot(xs, ys, marker="os^D"[i % 4] if many else "o", markersize=3, label=name,
                    color=colors[i % len(colors)], linestyle="-" if i % 2 == 0 or not many else "--")
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    if log_x:
        ax.set_xscale("log")
    ax.grid(alpha=0.3)
    if many:  # beside the axes, so no line hides behind it
        ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    else:
        ax.legend(fontsize=8)
    return _png(fig)


def bars(values: Mapping[str, float], ylabel: str, title: str) -> bytes:
    """One bar per name."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    ax.bar(list(values), list(values.values()), color="tab:blue")
    ax.set(ylabel=ylabel, title=title)
    ax.tick_params(axis="x", rotation=30)
    ax.grid(alpha=0.3, axis="y")
    return _png(fig)


def heatmaps(grids: Mapping[str, torch.Tensor], title: str, xlabel: str = "j", ylabel: str = "i") -> bytes:
    """A row of φ heatmaps in [0, 1] (the paper's Figures 3 and 4), one per named (r1 x r2) grid."""
    plt = _pyplot()
    n = len(grids)
    cols = min(n, 4)
    fig, axes = plt.subplots(math.ceil(n / cols), cols, figsize=(3.2 * cols, 3.0 * math.ceil(n / cols)),
                             squeeze=False)
    image = None
    for ax, (name, grid) in zip(axes.flat, grids.items(), strict=False):
        r1, r2 = grid.shape
        image = ax.imshow(grid.numpy(), vmin=0, vmax=1, cmap="viridis", origin="upper", aspect="auto",
                          extent=(0.5, r2 + 0.5, r1 + 0.5, 0.5))
        ax.set(title=name, xlabel=xlabel, ylabel=ylabel)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    if image is not None:
        fig.colorbar(image, ax=axes.ravel().tolist(), shrink=0.8, label="φ")
    fig.suptitle(title)
    return _png(fig)


def spectra(values: Mapping[str, torch.Tensor], title: str) -> bytes:
    """Singular values (normalized by the largest) against their index, log scale, one line per matrix."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for name, s in values.items():
        if len(s) and float(s[0]) > 0:
            ax.plot(range(1, len(s) + 1), (s / s[0]).numpy(), marker=".", label=name)
    ax.set(xlabel="index k", ylabel="σ_k / σ_1", title=title, yscale="log")
    ax.grid(alpha=0.3)
    if len(values) <= 12:
        ax.legend(fontsize=7)
    return _png(fig)


class Page:
    """A report built once and written as report.md (+ PNG files) and report.html (self-contained)."""

    def __init__(self, title: str):
        self.title = title
        self.md: list[str] = [f"# {title}", ""]
        self.html: list[str] = [f"<h1>{html.escape(title)}</h1>"]
        self.images: dict[str, bytes] = {}

    def heading(self, text: str) -> None:
        self.md += [f"## {text}", ""]
        self.html.append(f"<h2>{html.escape(text)}</h2>")

    def text(self, text: str) -> None:
        self.md += [text, ""]
        self.html.append(f"<p>{html.escape(text)}</p>")

    def table(self, header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
        self.md += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        self.md += ["| " + " | ".join(map(str, r)) + " |" for r in rows] + [""]
        head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
        self.html.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")

    def image(self, name: str, png: bytes, caption: str) -> None:
        self.images[name] = png
        self.md += [f"![{caption}]({name})", ""]
        data = base64.b64encode(png).decode()
        self.html.append(f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(caption)}">'
                         f"<figcaption>{html.escape(caption)}</figcaption></figure>")

    def write(self, directory: str | Path) -> Path:
        """report.md, report.html and the PNGs into `directory` (each written atomically)."""
        out = Path(directory)
        for name, png in self.images.items():
            atomic_write(out / name, png)
        atomic_write(out / "report.md", "\n".join(self.md).encode())
        style = ("body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}"
                 "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;"
                 "text-align:right}th{background:#f3f3f3}img{max-width:100%}figcaption{color:#555}")
        page = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(self.title)}</title>"
                f"<style>{style}</style></head><body>{''.join(self.html)}</body></html>")
        atomic_write(out / "report.html", page.encode())
        return out
