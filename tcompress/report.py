"""Tables and plots of what a run measured."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e4 else f"{value:,.0f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return "-" if value is None else str(value)


def format_table(rows: list[dict[str, Any]]) -> str:
    """A Markdown table of `rows` (dicts sharing keys), numbers right-aligned."""
    if not rows:
        return "(no rows)"
    keys = list(rows[0])
    cells = [[_cell(row.get(key)) for key in keys] for row in rows]
    widths = [max(len(key), *(len(r[i]) for r in cells)) for i, key in enumerate(keys)]
    numeric = [all(isinstance(row.get(key), (int, float)) for row in rows) for key in keys]

    def line(values: Iterable[str]) -> str:
        padded = (v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric))
        return "| " + " | ".join(padded) + " |"

    rule = "|" + "|".join(("-" * (w + 1) + ":") if num else "-" * (w + 2) for w, num in zip(widths, numeric)) + "|"
    return "\n".join([line(keys), rule, *(line(r) for r in cells)])


def write_json(path: str | Path, data: Any) -> None:
    """Write `data` as indented JSON to `path`, creating its folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")


def plot_throughput(rows: list[Any], path: str | Path, title: str = "throughput vs batch size",
                    baseline: str | None = None) -> None:
    """Throughput against batch size, one line per model, one panel per phase, each point of
    the other models labelled with its speed-up over `baseline` (default: the first model);
    saved as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    phases = list(dict.fromkeys(row.phase for row in rows))
    models = list(dict.fromkeys(row.model for row in rows))
    baseline = baseline or models[0]
    base = {(r.phase, r.batch): r.throughput for r in rows if r.model == baseline}
    fig, axes = plt.subplots(1, len(phases), figsize=(5.5 * len(phases), 4.2), squeeze=False)
    for ax, phase in zip(axes[0], phases):
        for model in models:
            points = sorted((r.batch, r.throughput) for r in rows if r.model == model and r.phase == phase)
            ax.plot(*zip(*points), marker="o", label=model)
            for batch, value in points if model != baseline else ():
                if (phase, batch) in base:
                    ax.annotate(f"{value / base[phase, batch]:.2f}x", (batch, value), textcoords="offset points",
                                xytext=(0, 6), ha="center", fontsize=8)
        unit = "items/s" if phase == "forward" else "tokens/s"
        ax.set(xscale="log", yscale="log", xlabel="batch size", ylabel=f"{phase} throughput ({unit})", title=phase)
        ax.set_xticks(sorted({r.batch for r in rows}), labels=[str(b) for b in sorted({r.batch for r in rows})])
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.suptitle(f"{title}; labels: speed-up over {baseline}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
