"""The thesis table: any dictionaries (features from circuits, SAEs, reference dictionaries) side by side.

`thesis_table({name: Entry(units, fve, l0)}, truth, size_attribute)` scores each entry with the shared metric
module (`evaluate/recovery.py`) and keeps the columns the thesis is about: per-family direction recovery,
coefficient recall and R², their minimum over families, circuit simplicity, reconstruction and L0.
"""

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import matplotlib.pyplot as plt
from matplotlib.figure import Figure

from circuitdecomp.evaluate.config import RecoveryConfig
from circuitdecomp.evaluate.recovery import GroundTruth, RecoveryResult, Units, score_recovery, to_metrics
from circuitdecomp.frozen import check
from circuitdecomp.runio import Metrics, write_text

FAMILIES = ("animals", "attributes")


@dataclass(frozen=True)
class Column:
    key: str  # also the metric key suffix: baselines/<row>/<key>
    label: str
    higher_is_better: bool | None  # None: not a score (L0)


COLUMNS = (  # one-to-one first: a unit counts for one true feature, so one dictionary cannot serve both families twice
    Column("animals/one_to_one_frac_cos90", "animals 1:1 cos≥0.9", True),
    Column("attributes/one_to_one_frac_cos90", "attributes 1:1 cos≥0.9", True),
    Column("min/one_to_one_frac_cos90", "min 1:1 cos≥0.9", True),
    Column("animals/frac_cos90", "animals best cos≥0.9", True),
    Column("attributes/frac_cos90", "attributes best cos≥0.9", True),
    Column("animals/coef_recall", "animals coef recall", True),
    Column("attributes/coef_recall", "attributes coef recall", True),
    Column("min/coef_recall", "min coef recall", True),
    Column("animals/coef_r2", "animals coef R²", True),
    Column("attributes/coef_r2", "attributes coef R²", True),
    Column("units_read_size", "units to read size", False),
    Column("units_read_animal", "units to read an animal", False),
    Column("n_units", "units", None),
    Column("spurious_frac", "spurious", None),
    Column("fve", "FVE", True),
    Column("l0", "L0", None),
)


@dataclass(frozen=True)
class Entry:
    """A dictionary to put in the table, with what the metric module cannot know about it."""

    units: Units
    fve: float | None = None  # fraction of variance of the activations its reconstruction explains; None: not a reconstruction
    l0: float | None = None  # mean active units per input; None: count the non-zero values
    note: str = ""  # settings, shown under the table


@dataclass(frozen=True)
class Row:
    name: str
    values: dict[str, float]  # column key -> value; NaN where it does not apply
    note: str = ""
    probe_cap: int = 0  # a read-out that needs more units than this is shown as '>cap'


def score_entry(
    name: str,
    entry: Entry,
    truth: GroundTruth,
    size_attribute: int,
    cfg: RecoveryConfig = RecoveryConfig(),
    subspace: bool = False,
) -> tuple[Row, Metrics]:
    """Score one dictionary: its table row and its full `recovery/...` metrics (`subspace`: use the subspace scores)."""
    names = tuple(f.name for f in truth.families)
    check(names == FAMILIES, f"the thesis table compares families {FAMILIES}, the ground truth has {names}")
    check(subspace is False or truth.subspace_basis is not None, "subspace=True needs a ground truth with subspace_basis")
    result = score_recovery(entry.units, truth, cfg)
    metrics = to_metrics(result)
    geo = "subspace/" if subspace else ""
    values = {
        f"{f}/{m}": metrics[f"recovery/{f}/{geo}{m}"]
        for f in (*FAMILIES, "min")
        for m in ("one_to_one_frac_cos90", "frac_cos90", "coef_recall")
    }
    values |= {f"{f}/coef_r2": metrics[f"recovery/{f}/{geo}coef_r2"] for f in FAMILIES}
    values["units_read_size"] = _units_to_read(result, "attributes", size_attribute, cfg.probe_max_units)
    values["units_read_animal"] = metrics["recovery/animals/units_for_r2_90"]
    values["n_units"] = float(result.n_units)
    values["spurious_frac"] = metrics["recovery/spurious_frac"]
    values["fve"] = math.nan if entry.fve is None else entry.fve
    active = (entry.units.values != 0).float().sum(dim=1).mean().item()
    values["l0"] = active if entry.l0 is None else entry.l0
    return Row(name, values, entry.note, cfg.probe_max_units), metrics


def _units_to_read(result: RecoveryResult, family: str, feature: int, cap: int) -> float:
    simple = result.family(family).simplicity
    return float(simple.units[feature]) if bool(simple.reached[feature]) else float(cap + 1)


def oracle_row(rows: list[Row], name: str = "best SAE per column (oracle)") -> Row:
    """Each column's best value over `rows` (a composite: no single SAE need reach them all); L0 is left out."""
    check(len(rows) > 0, "the oracle needs at least one row")
    values, best = {}, []
    for col in COLUMNS:
        if col.higher_is_better is None:
            values[col.key] = math.nan
            continue
        pick = (max if col.higher_is_better else min)(rows, key=lambda r: _finite(r.values[col.key], col.higher_is_better))
        values[col.key] = pick.values[col.key]
        best.append(f"{col.label}: {pick.name}")
    return Row(name, values, "; ".join(best), rows[0].probe_cap)


def _finite(v: float, higher: bool) -> float:
    return v if not math.isnan(v) else (-math.inf if higher else math.inf)


@dataclass(frozen=True)
class ThesisTable:
    rows: tuple[Row, ...]

    def markdown(self) -> str:
        """The table in markdown, with each row's note listed below it."""
        lines = ["| dictionary | " + " | ".join(c.label for c in COLUMNS) + " |", "|---|" + "---|" * len(COLUMNS)]
        for row in self.rows:
            lines.append(f"| {row.name} | " + " | ".join(_cell(row, c) for c in COLUMNS) + " |")
        notes = [f"* {row.name}: {row.note}" for row in self.rows if row.note]
        return "\n".join(lines + ([""] + notes if notes else []))

    def metrics(self, keys: dict[str, str], prefix: str = "baselines") -> Metrics:
        """`<prefix>/<keys[row name]>/<column>` for the rows named in `keys` (NaN cells left out)."""
        return {
            f"{prefix}/{keys[r.name]}/{k}": v
            for r in self.rows
            if r.name in keys
            for k, v in r.values.items()
            if not math.isnan(v)
        }

    def save(self, path: Path) -> Path:
        """Write the rows as JSON (a later stage adds its own rows and re-renders)."""
        return write_text(path, json.dumps([asdict(r) for r in self.rows], indent=1))

    @classmethod
    def load(cls, path: Path) -> "ThesisTable":
        return cls(tuple(Row(**r) for r in json.loads(Path(path).read_text())))

    def with_rows_first(self, rows: list[Row]) -> "ThesisTable":
        """The table with `rows` (e.g. features from circuits) on top."""
        return ThesisTable((*rows, *self.rows))

    def figure(self, title: str) -> Figure:
        """Two panels, one bar per family per row: coefficient recall (the thesis) and direction recovery."""
        fig, axes = plt.subplots(1, 2, figsize=(11, 0.55 * len(self.rows) + 1.6), sharey=True)
        y = range(len(self.rows))
        for ax, metric, label, xlabel in (
            (
                axes[0],
                "coef_recall",
                "coefficient recall",
                "share of true features whose best unit's value\nfollows the true coefficient (r and slope near 1)",
            ),
            (
                axes[1],
                "one_to_one_frac_cos90",
                "direction recovery, one-to-one",
                "share of true features with their own unit\nat |cos| ≥ 0.9 (each unit used once)",
            ),
        ):
            for shift, fam, colour in ((-0.2, "animals", "tab:orange"), (0.2, "attributes", "tab:blue")):
                vals = [r.values[f"{fam}/{metric}"] for r in self.rows]
                ax.barh([i + shift for i in y], vals, height=0.38, color=colour, label=fam)
                for i, v in zip(y, vals):  # print the value: a bar of length 0 must read as 0, not as missing
                    ax.text(min(v, 1.0) + 0.01, i + shift, f"{v:.2f}", va="center", fontsize=7)
            ax.set_xlim(0, 1.12)  # shares: 0 to 1, with room for the printed values
            ax.axvline(0.9, color="grey", lw=0.8, ls=":")
            ax.set_title(label, fontsize=10)
            ax.set_xlabel(xlabel, fontsize=9)
        axes[0].set_yticks(list(y), [r.name for r in self.rows])
        axes[0].invert_yaxis()
        axes[0].legend(loc="lower right", fontsize=8, title="true features", title_fontsize=8)
        fig.suptitle(
            f"{title}\nboth bars of a row past the dotted line (0.9): one dictionary carrying both families' true features",
            fontsize=10,
        )
        fig.tight_layout()
        return fig


def _cell(row: Row, col: Column) -> str:
    v = row.values.get(col.key, math.nan)  # a table saved before a column existed shows it empty
    if math.isnan(v):
        return "–"
    if col.key.startswith("units_read") and v > row.probe_cap:
        return f">{row.probe_cap}"
    if col.key == "units_read_size":
        return f"{v:.0f}"
    if col.key == "n_units":
        return f"{v:.0f}"
    return f"{v:.3g}" if col.key in ("l0", "units_read_animal") else f"{v:.2f}"


def thesis_table(
    entries: dict[str, Entry],
    truth: GroundTruth,
    size_attribute: int,
    cfg: RecoveryConfig = RecoveryConfig(),
    subspace: bool = False,
) -> ThesisTable:
    """Score every entry (in order) into one table."""
    return ThesisTable(tuple(score_entry(name, e, truth, size_attribute, cfg, subspace)[0] for name, e in entries.items()))
