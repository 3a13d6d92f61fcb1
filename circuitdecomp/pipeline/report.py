"""`report.md`: the run's headline numbers and figures in one page, from `metrics.json` and the PNGs in the run dir."""

from pathlib import Path
from typing import Any

from circuitdecomp.config import Stage
from circuitdecomp.runio import load_metrics, write_text
from circuitdecomp.world.question_types import NAMES

REPORT_FILE = "report.md"

_FIGURES = [  # (file stem, caption); missing files are skipped
    ("target_circuits", "What the target's MLP units read (look-up units vs v_i, attribute units vs u_j)."),
    (
        "ci_by_question",
        "Causal importance of live components by question type: which components carry look-ups and which attributes.",
    ),
    ("recovery", "Features from circuits vs ground truth: best |cos| per true feature, and true vs recovered coefficients."),
    ("thesis_table", "Features from circuits, SAE baselines and reference dictionaries, scored by the same code."),
]


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3f}" if abs(v) < 1000 else f"{v:.0f}"
    return str(v)


def _rows(metrics: dict[str, Any], keys: list[tuple[str, str]]) -> list[str]:
    return [f"| {label} | {_fmt(metrics[k])} |" for k, label in keys if k in metrics]


# (metric prefix, row name) of every dictionary the headline table compares, scored by the same code
HEADLINE_ROWS = (
    ("recovery", "SPD features (the recipe)"),
    ("spd_random_start/recovery", "SPD features, random start"),
    ("controls/neurons/recovery", "no decomposition: the target's own units"),
    ("controls/random/recovery", "random directions (chance)"),
    ("baselines/oracle", "best SAE per column (oracle over the sweep)"),
    ("recovery_raw", "SPD features, no projection"),
    ("recovery_tokens", "SPD features, projected on the read-out tokens' span"),
)
_HEADLINE_COLUMNS = (
    ("animals/one_to_one_frac_cos90", "animals 1:1"),
    ("attributes/one_to_one_frac_cos90", "attributes 1:1"),
    ("min/one_to_one_frac_cos90", "min 1:1"),
    ("animals/frac_cos90", "animals best"),
    ("attributes/frac_cos90", "attributes best"),
    ("animals/one_to_one_coef_recall", "animals coef 1:1"),
    ("attributes/one_to_one_coef_recall", "attributes coef 1:1"),
    ("min/subspace/one_to_one_frac_cos90", "min 1:1 in entity subspace"),
)


def headline_lines(m: dict[str, Any]) -> list[str]:
    """The headline table: one row per scored dictionary, one-to-one recovery at |cos| >= 0.9 first (a unit counts
    for one true feature), then best match with replacement, coefficient recall under the one-to-one matching, and the
    features' count against the true count and their spurious share."""
    n_true = sum(int(m.get(f"recovery/{f}/n_features", 0)) for f in ("animals", "attributes"))
    head = "| dictionary | " + " | ".join(label for _, label in _HEADLINE_COLUMNS) + f" | units (true: {n_true}) | spurious |"
    lines = [head, "|---|" + "---|" * (len(_HEADLINE_COLUMNS) + 2)]
    for prefix, name in HEADLINE_ROWS:
        if f"{prefix}/min/one_to_one_frac_cos90" not in m:
            continue
        cells = [_fmt(m.get(f"{prefix}/{k}", "–")) for k, _ in _HEADLINE_COLUMNS]
        cells += [_fmt(m.get(f"{prefix}/n_units", "–")), _fmt(m.get(f"{prefix}/spurious_frac", "–"))]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def summary_lines(m: dict[str, Any]) -> list[str]:
    """The summary table: one line per headline number that the run produced."""
    fams = ["animals", "attributes", "min"]
    keys = [
        ("target/accuracy/min", "target: lowest held-out accuracy over question types"),
        ("target/circuits/animals_per_lookup_unit", "target: animals per look-up unit"),
    ]
    keys += [
        (
            "decomp/faithfulness/components/relative_accuracy",
            "decomposition: accuracy with rounded-CI masks (components only), relative to the target",
        ),
        (
            "decomp/faithfulness/with_remainder/relative_accuracy",
            "decomposition: accuracy with rounded-CI masks plus the remainder W - ΣUV, relative to the target",
        ),
        (
            "decomp/faithfulness/ci_masks/relative_accuracy",
            "decomposition: accuracy with masks = CI (unrounded), relative to the target",
        ),
    ]
    keys += [
        (k, f"decomposition: ‖W - ΣUV‖ / ‖W‖ of {k.split('/')[-1]} (weights)")
        for k in sorted(m)
        if k.startswith("decomp/weight_share_outside/")
    ]
    keys += [
        (k, f"decomposition: share of {k.split('/')[-1]}'s action on the data outside the components (W - ΣUV)")
        for k in sorted(m)
        if k.startswith("decomp/delta_share/")
    ]
    keys += [(k, f"decomposition: live components in {k.split('/')[-1]}") for k in sorted(m) if k.startswith("decomp/n_live/")]
    keys += [
        ("features/n_features", "features from circuits"),
        ("features/n_fit_inputs", "inputs the features were fitted on (live components, gates)"),
        ("features/n_scored_inputs", "other inputs they are scored on (no overlap)"),
    ]
    for metric, label in (
        ("one_to_one_frac_cos90", "one-to-one share at \\|cos\\| >= 0.9"),
        ("frac_cos90", "best-match share at \\|cos\\| >= 0.9"),
        ("frac_cos99", "best-match share at \\|cos\\| >= 0.99"),
        ("coef_recall", "coefficient recall"),
        ("coef_r2", "coefficient R²"),
    ):
        keys += [(f"recovery/{f}/{metric}", f"recovery, {f}: {label}") for f in fams]
    keys += [(f"recovery/{f}/units_for_r2_90", f"circuit simplicity, {f}: units a read-out needs for R² 0.9") for f in fams[:2]]
    keys += [("recovery/spurious_frac", "features matching no true feature (spurious share)")]
    keys += [(f"time/{s.value}_s", f"wall time of the {s.value} stage (s)") for s in Stage if s is not Stage.report]
    return ["| quantity | value |", "|---|---|", *_rows(m, keys)]


def write_report(run_dir: Path, title: str) -> Path:
    """Write `report.md` into the run dir (links the figures that exist; the thesis table if baselines ran)."""
    run_dir = Path(run_dir)
    m = load_metrics(run_dir)
    lines = [
        f"# {title}",
        "",
        "Numbers from `metrics.json` in this directory. Every dictionary below is scored by the "
        "same code on the same held-out inputs; the features are fitted on other inputs of the world.",
        "",
        "## Headline: what the decomposition adds",
        "",
        "Share of true features matched at \\|cos\\| >= 0.9 one-to-one (Hungarian over both families at once) "
        "and by best match; coefficient recall of the one-to-one partner; number of units and the share matching "
        "no true feature.",
        "",
        *headline_lines(m),
        "",
        "## Details",
        "",
        *summary_lines(m),
        "",
    ]
    table = run_dir / "thesis_table.md"
    if table.exists():
        lines += ["## Features from circuits vs SAE baselines", "", table.read_text().strip(), ""]
    for stem, caption in _FIGURES:
        if (run_dir / f"{stem}.png").exists():
            lines += [f"![{stem}]({stem}.png)", "", f"*{caption}*", ""]
    return write_text(run_dir / REPORT_FILE, "\n".join(lines))


# The ladder of targets (docs/targets.md): one column per finished pipeline run, one row per number the issue asks for
LADDER_ROWS = (
    *((f"target/accuracy/{q}", f"held-out accuracy: {q}") for q in NAMES),  # every registered question type
    ("target/circuits/animals_per_lookup_unit", "target: animals per look-up unit"),
    ("target/circuits/attribute_read_purity", "target: attribute read purity"),
    ("target/mechanisms/attribute_reads/keep_only_u", "target: attribute accuracy, entity reduced to its u_j part"),
    ("target/mechanisms/attribute_reads/keep_only_u_kl", "target: KL of the answers, entity reduced to its u_j part"),
    ("controls/neurons/recovery/animals/one_to_one_frac_cos90", "neuron control: animals 1:1"),
    ("controls/neurons/recovery/attributes/one_to_one_frac_cos90", "neuron control: attributes 1:1"),
    ("recovery/animals/one_to_one_frac_cos90", "SPD (from the neurons): animals 1:1"),
    ("recovery/attributes/one_to_one_frac_cos90", "SPD (from the neurons): attributes 1:1"),
    ("spd_random_start/recovery/animals/one_to_one_frac_cos90", "SPD (random start): animals 1:1"),
    ("spd_random_start/recovery/attributes/one_to_one_frac_cos90", "SPD (random start): attributes 1:1"),
    ("recovery/animals/one_to_one_coef_recall", "SPD (from the neurons): animals coefficient recall"),
    ("recovery/attributes/one_to_one_coef_recall", "SPD (from the neurons): attributes coefficient recall"),
    ("decomp/faithfulness/components/relative_accuracy", "faithfulness: rounded CI, components only"),
    ("decomp/faithfulness/with_remainder/relative_accuracy", "faithfulness: rounded CI plus the remainder W - ΣUV"),
    ("time/decompose_s", "SPD wall time (s)"),
)


def ladder_lines(runs: dict[str, dict[str, Any]]) -> list[str]:
    """A markdown table: one column per run (name -> its metrics), one row per `LADDER_ROWS` entry; '–' where a run
    lacks a number (a stage it did not run)."""
    lines = ["| | " + " | ".join(runs) + " |", "|---|" + "---|" * len(runs)]
    for key, label in LADDER_ROWS:
        fmt = (lambda v: f"{v:.0f}") if key.startswith("time/") else _fmt
        lines.append(f"| {label} | " + " | ".join(fmt(m[key]) if key in m else "–" for m in runs.values()) + " |")
    return lines


def ladder(run_dirs: dict[str, Path]) -> str:
    """The ladder table of finished pipeline runs (name -> run directory), read from their metrics.json."""
    return "\n".join(ladder_lines({name: load_metrics(Path(d)) for name, d in run_dirs.items()})) + "\n"
