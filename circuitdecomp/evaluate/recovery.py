"""Scores any set of units (circuit features, SAE latents, a planted dictionary) against the planted ground truth.

`score_recovery(units, truth, cfg)` matches every true feature of every family to the units and returns typed
scores; `to_metrics(result, prefix="recovery")` flattens them. Keys, with `<f>` a family name (e.g. animals):

* `recovery/<f>/frac_cos90`, `frac_cos99`: fraction of the family's features whose best unit has |cos| >= 0.9 / 0.99.
* `recovery/<f>/mean_max_cos`: mean best |cos|; `recovery/<f>/n_features`.
* `recovery/<f>/one_to_one_frac_cos90` (the headline), `one_to_one_cos`: the same under a one-to-one (Hungarian)
  matching of *all* families' features to units at once: a unit counts for one true feature only, so one dictionary
  cannot score on animals and attributes with the same units; features left without a unit count 0.
  `one_to_one_coef_recall`: coefficient recall with each feature's one-to-one partner instead of its best unit.
* `recovery/<f>/coef_recall`: fraction of features whose best unit's value (sign-corrected, per unit-norm
  direction) has Pearson r >= 0.9 and |slope - 1| <= 0.2 against the true coefficient (thresholds in
  RecoveryConfig); `coef_r`, `coef_slope` (slope of value on truth, with intercept), `coef_r2` (1 - SSE/SST of the
  value used as the coefficient, no fit) are means. Only features whose coefficient varies on the inputs are
  scored; `coef_n_scored` counts them.
* `recovery/<f>/units_for_r2_90`: mean number of units a greedy k-sparse linear read-out of unit values needs to
  predict a feature's coefficient with R² >= 0.9, over all scored features; features not reaching it within
  `probe_max_units` count as that cap (`probe_cap`), so the mean is then a lower bound; `units_for_r2_90_capped` is
  the fraction capped, `units_for_r2_90_median` the median.
* `recovery/<f>/subspace/...`: direction and coefficient keys again, with unit and feature directions projected
  into the subspace (e.g. entity subspace) and renormalised, values taken per unit of the projected direction;
  units with < `min_subspace_norm` of their direction inside are left out.
* `recovery/min/<key>` and `recovery/min/subspace/<key>`: the minimum over families of each higher-is-better key.
* `recovery/dead_frac`: units whose |value| never exceeds `dead_tol`; `recovery/spurious_frac`: units whose best
  |cos| with every true feature is < `spurious_cos` (full space); `recovery/n_units`.
"""

from dataclasses import dataclass

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from circuitdecomp.evaluate.coefficients import CoefficientScores, coefficient_scores, varies
from circuitdecomp.evaluate.config import RecoveryConfig
from circuitdecomp.evaluate.directions import (
    DirectionScores,
    cosines,
    direction_scores,
    hungarian,
    project_rows,
    spurious_units,
    unit_rows,
)
from circuitdecomp.evaluate.simplicity import SimplicityScores, probe_sizes, simplicity_scores
from circuitdecomp.frozen import check
from circuitdecomp.runio import Metrics

_RESERVED = ("min", "subspace")
_HEADLINE = (  # higher is better: these get a `min` over families
    "frac_cos90",
    "frac_cos99",
    "mean_max_cos",
    "one_to_one_cos",
    "one_to_one_frac_cos90",
    "coef_recall",
    "one_to_one_coef_recall",
    "coef_r",
    "coef_r2",
)
_FEATURE_INSIDE = 0.5  # true features must lie at least this much inside the subspace they are scored in


def _check_rows(name: str, rows: Tensor) -> None:
    check(bool(torch.isfinite(rows).all()), f"{name} has non-finite entries")
    zero = (rows.norm(dim=1) == 0).nonzero().flatten().tolist()
    check(not zero, f"{name} rows {zero[:10]} have zero norm: a direction is needed to compare; drop them")


@dataclass(frozen=True)
class Units:
    """A dictionary to score: unit k adds values[:, k] * directions[k] to the activation.

    SAE: decoder rows and latent activations. Read directions of circuits: pass them normalised, with the
    activation's projection onto them as values. Directions need not be unit-norm: values are rescaled to match.
    """

    directions: Float[Tensor, "n_units d_model"]
    values: Float[Tensor, "n_inputs n_units"]

    def __post_init__(self) -> None:
        n, m = self.directions.shape[0], self.values.shape[1]
        check(n > 0, "units: no units given")
        check(n == m, f"units: {n} directions but values has {m} columns; values must be [n_inputs, n_units]")
        _check_rows("units.directions", self.directions)
        check(bool(torch.isfinite(self.values).all()), "units.values has non-finite entries")

    def activations(self) -> Float[Tensor, "n_inputs d_model"]:
        """What the dictionary reconstructs: Σ_k values_k directions_k."""
        return self.values @ self.directions


@dataclass(frozen=True)
class Family:
    """One ground-truth family: feature directions and their true per-input coefficients."""

    name: str
    directions: Float[Tensor, "n_features d_model"]
    coefficients: Float[Tensor, "n_inputs n_features"]

    def __post_init__(self) -> None:
        check(bool(self.name) and "/" not in self.name, f"family name {self.name!r} must be non-empty without '/'")
        check(self.name not in _RESERVED, f"family name {self.name!r} is reserved for metric keys {_RESERVED}")
        n, m = self.directions.shape[0], self.coefficients.shape[1]
        check(n > 0, f"family {self.name!r} has no features (directions of shape {tuple(self.directions.shape)})")
        check(n == m, f"family {self.name!r}: {n} directions but coefficients has {m} columns")
        _check_rows(f"family {self.name!r} directions", self.directions)
        check(bool(torch.isfinite(self.coefficients).all()), f"family {self.name!r} coefficients are not finite")
        check(bool(varies(self.coefficients).any()), f"family {self.name!r}: no coefficient varies on these inputs")

    def activations(self) -> Float[Tensor, "n_inputs d_model"]:
        """The activation this family describes: Σ_i c_i directions_i."""
        return self.coefficients @ self.directions


@dataclass(frozen=True)
class GroundTruth:
    """Families scored separately, and optionally orthonormal rows spanning a subspace to score within as well."""

    families: tuple[Family, ...]
    subspace_basis: Float[Tensor, "d_subspace d_model"] | None = None

    def __post_init__(self) -> None:
        check(len(self.families) > 0, "ground truth has no families")
        names = [f.name for f in self.families]
        check(len(set(names)) == len(names), f"family names {names} are not unique")
        shapes = {f.name: (f.coefficients.shape[0], f.directions.shape[1]) for f in self.families}
        check(len(set(shapes.values())) == 1, f"families disagree on (n_inputs, d_model): {shapes}")
        if self.subspace_basis is not None:
            basis = self.subspace_basis.double()
            check(basis.shape[1] == self.d_model, f"subspace_basis has d_model={basis.shape[1]}, families {self.d_model}")
            gram_error = (basis @ basis.T - torch.eye(basis.shape[0], dtype=basis.dtype)).abs().max().item()
            check(gram_error < 1e-4, f"subspace_basis rows must be orthonormal (|B Bᵀ - I| max {gram_error:.2g})")

    @property
    def n_inputs(self) -> int:
        return self.families[0].coefficients.shape[0]

    @property
    def d_model(self) -> int:
        return self.families[0].directions.shape[1]


@dataclass(frozen=True)
class MatchScores:
    """Direction and coefficient scores of one family in one geometry (full space or subspace)."""

    directions: DirectionScores
    coefficients: CoefficientScores  # each feature's best unit
    one_to_one_coefficients: CoefficientScores  # each feature's one-to-one partner (value 0 where it has none)


@dataclass(frozen=True)
class FamilyScores:
    name: str
    n_features: int
    full: MatchScores
    subspace: MatchScores | None
    simplicity: SimplicityScores | None  # None when scored with simplicity=False


@dataclass(frozen=True)
class RecoveryResult:
    families: tuple[FamilyScores, ...]
    n_units: int
    dead: Bool[Tensor, " n_units"]
    spurious: Bool[Tensor, " n_units"]

    def family(self, name: str) -> FamilyScores:
        """Scores of the family called `name`."""
        for fam in self.families:
            if fam.name == name:
                return fam
        raise KeyError(f"no family {name!r}; have {[f.name for f in self.families]}")


def _match(
    cos: Float[Tensor, "n_all n_units"],
    unit_scale: Float[Tensor, " n_units"],
    feature_scale: Float[Tensor, " n_all"],
    units: Units,
    truth: GroundTruth,
    cfg: RecoveryConfig,
) -> list[MatchScores]:
    """Match features to units by |cos| (best and one-to-one), then fit each best unit's value to its coefficient.

    `*_scale` are the directions' norms in this geometry: coefficients are compared per unit-norm direction.
    """
    matched = hungarian(cos.abs())
    out, start = [], 0
    for fam in truth.families:
        rows = slice(start, start + fam.directions.shape[0])
        start = rows.stop
        d = direction_scores(cos[rows], matched[rows])
        # values per unit-norm direction, oriented like the feature (a unit at -v_i carries -c_i); a feature with
        # no unit at all (cos 0: every unit left out of the subspace) gets the value 0
        x = units.values[:, d.best_unit] * (unit_scale[d.best_unit] * torch.sign(d.best_cos))
        c = fam.coefficients * feature_scale[rows]
        partner = d.matched_unit.clamp_min(0)
        sign = torch.sign(cos[rows].gather(1, partner[:, None])[:, 0]) * (d.matched_unit >= 0)
        x11 = units.values[:, partner] * (unit_scale[partner] * sign)
        out.append(
            MatchScores(
                d,
                coefficient_scores(x, c, cfg.coef_min_r, cfg.coef_slope_tol),
                coefficient_scores(x11, c, cfg.coef_min_r, cfg.coef_slope_tol),
            )
        )
    return out


def _simplicity(units: Units, truth: GroundTruth, cfg: RecoveryConfig) -> list[SimplicityScores]:
    scored = [varies(f.coefficients) for f in truth.families]
    targets = torch.cat([f.coefficients[:, s] for f, s in zip(truth.families, scored)], dim=1)
    need_scored = probe_sizes(units.values, targets, cfg.probe_max_units).split([int(s.sum()) for s in scored])
    out = []
    for s, need_s in zip(scored, need_scored):
        need = torch.zeros(s.shape[0], dtype=torch.long).masked_scatter(s, need_s)
        out.append(simplicity_scores(need, s, cfg.probe_max_units))
    return out


def score_recovery(
    units: Units, truth: GroundTruth, cfg: RecoveryConfig = RecoveryConfig(), simplicity: bool = True
) -> RecoveryResult:
    """Score units against every ground-truth family: directions, coefficients, read-out size (unless not
    `simplicity`: the greedy probes cost most of the time with thousands of units), dead and spurious."""
    d_units = units.directions.shape[1]
    check(d_units == truth.d_model, f"units have d_model={d_units} but the ground truth has d_model={truth.d_model}")
    check(
        units.values.shape[0] == truth.n_inputs,
        f"units.values has n_inputs={units.values.shape[0]} rows but the true coefficients have {truth.n_inputs}: "
        "score both on the same inputs",
    )
    units = Units(units.directions.float(), units.values.float())  # one dtype for every product below
    truth = GroundTruth(
        tuple(Family(f.name, f.directions.float(), f.coefficients.float()) for f in truth.families),
        None if truth.subspace_basis is None else truth.subspace_basis.float(),
    )
    features = torch.cat([f.directions for f in truth.families])
    u_rows, f_rows = unit_rows(units.directions), unit_rows(features)
    u_norm, f_norm = units.directions.norm(dim=1), features.norm(dim=1)
    cos = cosines(f_rows, u_rows)
    full = _match(cos, u_norm, f_norm, units, truth, cfg)
    subspace: list[MatchScores | None] = [None] * len(truth.families)
    if truth.subspace_basis is not None:
        f_sub, f_inside = project_rows(f_rows, truth.subspace_basis, _FEATURE_INSIDE)
        outside = (f_inside < _FEATURE_INSIDE).nonzero().flatten().tolist()
        check(not outside, f"true features {outside[:10]} (over all families) lie mostly outside subspace_basis")
        u_sub, u_inside = project_rows(u_rows, truth.subspace_basis, cfg.min_subspace_norm)
        # in the subspace a unit's coefficient is its value times the norm of its projected direction
        subspace = _match(cosines(f_sub, u_sub), u_norm * u_inside, f_norm * f_inside, units, truth, cfg)

    simple = _simplicity(units, truth, cfg) if simplicity else [None] * len(truth.families)
    families = [
        FamilyScores(fam.name, fam.directions.shape[0], fm, sm, sim)
        for fam, fm, sm, sim in zip(truth.families, full, subspace, simple)
    ]
    return RecoveryResult(
        families=tuple(families),
        n_units=units.directions.shape[0],
        dead=units.values.abs().amax(dim=0) <= cfg.dead_tol,
        spurious=spurious_units(cos.abs(), cfg.spurious_cos),
    )


def _match_metrics(m: MatchScores, base: str) -> Metrics:
    d, c = m.directions, m.coefficients
    return {
        f"{base}/frac_cos90": d.frac_cos90,
        f"{base}/frac_cos99": d.frac_cos99,
        f"{base}/mean_max_cos": d.mean_max_cos,
        f"{base}/one_to_one_cos": d.one_to_one_cos,
        f"{base}/one_to_one_frac_cos90": d.one_to_one_frac_cos90,
        f"{base}/coef_recall": c.recall,
        f"{base}/one_to_one_coef_recall": m.one_to_one_coefficients.recall,
        f"{base}/coef_r": c.mean_r,
        f"{base}/coef_slope": c.mean_slope,
        f"{base}/coef_r2": c.mean_r2,
        f"{base}/coef_n_scored": c.n_scored,
    }


def to_metrics(result: RecoveryResult, prefix: str = "recovery") -> Metrics:
    """Flat keys `<prefix>/<family>/<metric>`, `<prefix>/min/<metric>` and the dictionary-wide ones (module docstring)."""
    metrics: Metrics = {}
    for fam in result.families:
        base = f"{prefix}/{fam.name}"
        metrics[f"{base}/n_features"] = fam.n_features
        metrics |= _match_metrics(fam.full, base)
        if fam.subspace is not None:
            metrics |= _match_metrics(fam.subspace, f"{base}/subspace")
        if fam.simplicity is not None:
            metrics[f"{base}/units_for_r2_90"] = fam.simplicity.mean_units
            metrics[f"{base}/units_for_r2_90_median"] = fam.simplicity.median_units
            metrics[f"{base}/units_for_r2_90_capped"] = fam.simplicity.frac_capped
    geometries = [""] + (["subspace/"] if result.families[0].subspace is not None else [])
    for geo in geometries:
        for key in _HEADLINE:
            metrics[f"{prefix}/min/{geo}{key}"] = min(metrics[f"{prefix}/{f.name}/{geo}{key}"] for f in result.families)
    metrics[f"{prefix}/n_units"] = result.n_units
    if result.families[0].simplicity is not None:
        metrics[f"{prefix}/probe_cap"] = result.families[0].simplicity.cap
    metrics[f"{prefix}/dead_frac"] = result.dead.float().mean().item()
    metrics[f"{prefix}/spurious_frac"] = result.spurious.float().mean().item()
    return metrics
