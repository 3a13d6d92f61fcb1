"""Gather the metrics of many runs (a Hydra multirun, a folder of runs) into one table."""

import csv
import fnmatch
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from circuitdecomp.runio import load_run


@dataclass(frozen=True)
class Table:
    columns: list[str]
    rows: list[list[object]]

    def markdown(self) -> str:
        fmt = lambda v: f"{v:.4g}" if isinstance(v, float) else ("" if v is None else str(v))  # noqa: E731
        lines = ["| " + " | ".join(self.columns) + " |", "|" + "---|" * len(self.columns)]
        lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in self.rows]
        return "\n".join(lines)

    def csv(self) -> str:
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow(self.columns)
        writer.writerows(self.rows)
        return out.getvalue()


def _flatten(d: dict, prefix: str = "") -> dict[str, object]:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def collect(roots: list[Path], metric_patterns: list[str], config_keys: list[str]) -> Table:
    """One row per run directory under `roots` that has a metrics.json (not nested in another); columns: run, config
    keys, metrics."""
    found = {p.parent for root in roots for p in Path(root).rglob("metrics.json")}
    # a stage's own sub-directory (the pipeline's spd_random_start/) belongs to its run: its metrics are in the run's
    # metrics.json under a prefix, and it has no config of its own
    run_dirs = sorted(d for d in found if not any(parent in found for parent in d.parents))
    if not run_dirs:
        raise FileNotFoundError(f"no metrics.json under {[str(r) for r in roots]}")
    runs = [load_run(d) for d in run_dirs]
    keys = sorted({k for r in runs for k in r.metrics if any(fnmatch.fnmatchcase(k, p) for p in metric_patterns)})
    rows = []
    for r in runs:
        cfg = _flatten(r.config)
        rows.append([str(r.path), *[cfg.get(k) for k in config_keys], *[r.metrics.get(k) for k in keys]])
    return Table(["run", *config_keys, *keys], rows)


def plot(table: Table, x: str, ys: list[str]) -> Any:
    """One panel per metric column matching `ys` (fnmatch): its value in every run against column `x`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if x not in table.columns:
        raise ValueError(f"--plot x={x!r} is not a column; columns: {table.columns} (add it with --config)")
    cols = [c for c in table.columns[1:] if c != x and any(fnmatch.fnmatchcase(c, y) for y in ys)]
    if not cols:
        raise ValueError(f"no column matches {ys}; columns: {table.columns}")
    xi = table.columns.index(x)
    fig, axes = plt.subplots(1, len(cols), figsize=(3.6 * len(cols), 3.4), squeeze=False, layout="constrained")
    for ax, col in zip(axes[0], cols):
        ci = table.columns.index(col)
        points = sorted((row[xi], row[ci]) for row in table.rows if row[xi] is not None and row[ci] is not None)
        ax.plot([p[0] for p in points], [p[1] for p in points], "o-")
        head, _, tail = col.rpartition("/")
        ax.set_title(col, fontsize=9)
        ax.set_xlabel(x, fontsize=9)
        ax.set_ylabel(f"{head}/\n{tail}" if head else col, fontsize=8)  # the metric, on two lines
    fig.suptitle(f"{', '.join(ys)} against {x}: one point per run that has both ({len(table.rows)} runs collected)", fontsize=10)
    return fig
