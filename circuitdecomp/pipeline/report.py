"""`report.md`: the run's headline numbers and figures in one page, from `metrics.json` and the PNGs in the run dir."""

from pathlib import Path
from typing import Any

from circuitdecomp.config import Stage
from circuitdecomp.runio import load_metrics, write_text

REPORT_FILE = "report.md"

_FIGURES = [  # (file stem, caption); missing files are skipped
    ("target_circuits", "What the target's MLP units read (look-up units vs v_i, attribute units vs u_j)."),
    ("ci_by_question", "Causal importance of live components by question type: which components carry look-ups and which attributes."),
    ("recovery", "Features from circuits vs ground truth: best |cos| per true feature, and true vs recovered coefficients."),
    ("thesis_table", "Features from circuits, SAE baselines and reference dictionaries, scored by the same code."),
]


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3f}" if abs(v) < 1000 else f"{v:.0f}"
    return str(v)


def _rows(metrics: dict[str, Any], keys: list[tuple[str, str]]) -> list[str]:
    return [f"| {label} | {_fmt(metrics[k])} |" for k, label in keys if k in metrics]


def summary_lines(m: dict[str, Any]) -> list[str]:
    """The summary table: one line per headline number that the run produced."""
    fams = ["animals", "attributes", "min"]
    keys = [("target/accuracy/min", "target: lowest held-out accuracy over question types"),
            ("target/circuits/animals_per_lookup_unit", "target: animals per look-up unit")]
    keys += [("decomp/faithfulness/components/relative_accuracy",
              "decomposition: accuracy with rounded-CI masks (components only), relative to the target"),
             ("decomp/faithfulness/with_delta/relative_accuracy",
              "decomposition: accuracy with rounded-CI masks plus the rest W - ΣUV, relative to the target"),
             ("decomp/faithfulness/ci_masks/relative_accuracy",
              "decomposition: accuracy with masks = CI (unrounded), relative to the target")]
    keys += [(k, f"decomposition: share of {k.split('/')[-1]}'s action outside the components (W - ΣUV)")
             for k in sorted(m) if k.startswith("decomp/delta_share/")]
    keys += [(k, f"decomposition: live components in {k.split('/')[-1]}") for k in sorted(m) if k.startswith("decomp/n_live/")]
    keys += [("features/n_features", "features from circuits")]
    for metric, label in (("frac_cos90", "share at \\|cos\\| >= 0.9"), ("frac_cos99", "share at \\|cos\\| >= 0.99"),
                          ("coef_recall", "coefficient recall"), ("coef_r2", "coefficient R²")):
        keys += [(f"recovery/{f}/{metric}", f"recovery, {f}: {label}") for f in fams]
    keys += [(f"recovery/{f}/units_for_r2_90", f"circuit simplicity, {f}: units a read-out needs for R² 0.9") for f in fams[:2]]
    keys += [("recovery/spurious_frac", "features matching no true feature (spurious share)")]
    keys += [(f"time/{s.value}_s", f"wall time of the {s.value} stage (s)") for s in Stage if s is not Stage.report]
    return ["| quantity | value |", "|---|---|", *_rows(m, keys)]


def write_report(run_dir: Path, title: str) -> Path:
    """Write `report.md` into the run dir (links the figures that exist; the thesis table if baselines ran)."""
    run_dir = Path(run_dir)
    m = load_metrics(run_dir)
    lines = [f"# {title}", "", "Numbers from `metrics.json` in this directory.", "", *summary_lines(m), ""]
    table = run_dir / "thesis_table.md"
    if table.exists():
        lines += ["## Features from circuits vs SAE baselines", "", table.read_text().strip(), ""]
    for stem, caption in _FIGURES:
        if (run_dir / f"{stem}.png").exists():
            lines += [f"![{stem}]({stem}.png)", "", f"*{caption}*", ""]
    return write_text(run_dir / REPORT_FILE, "\n".join(lines))
