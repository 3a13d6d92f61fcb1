"""The decomposition's one typed config. Defaults are the SPD paper's TMS recipe."""

import math
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from omegaconf import MISSING

from circuitdecomp.frozen import Frozen, check


class CIFnType(str, Enum):
    """How causal importance is computed from a module's input x."""

    mlp = "mlp"  # per component: g_c = MLP_c(x . V_c), the paper's choice and every config's
    # Experimental: one MLP on the whole module input x -> C values. Mixed on the trained target's MLP-in (results log,
    # session 10): with KL lower CI-L0 than per-component CIs, with MSE higher; it needs a wide ci_hidden ([16] starves it).
    shared_mlp = "shared_mlp"


class OutputLoss(str, Enum):
    mse = "mse"  # regression outputs
    kl = "kl"  # logits: KL(target || masked)


class LRSchedule(str, Enum):
    constant = "constant"
    cosine = "cosine"  # the paper's and every recipe's: the decay to 0 sharpens the CI functions (results log, session 4)
    linear = "linear"  # Experimental: no config or logged run uses it


class UnitSide(str, Enum):
    """Which side's basis `init=neurons` starts a matrix's components in."""

    auto = "auto"  # the wider side (an MLP's hidden units either way); outputs on a tie
    inputs = "inputs"  # component c reads input coordinate c (e.g. an attention output matrix: one head dimension)
    outputs = "outputs"  # Experimental (no config uses it): component c writes output coordinate c


class InitKind(str, Enum):
    """How components start (the faithfulness warm-up follows either way)."""

    random = "random"  # the paper: random V, U
    neurons = "neurons"  # one component per unit of the wider side of each matrix (see DecomposedModule.reset_parameters)


class MaskSampling(str, Enum):
    continuous = "continuous"  # r ~ U(0, 1): the paper's and every config's
    binomial = "binomial"  # Experimental: r ~ {0, 1}; no config or logged run uses it


@dataclass
class ModuleSpec(Frozen):
    """fnmatch pattern over module paths, and the number of rank-1 components for each match.

    C=0 sizes each match from its shape: ceil(C_factor x the wider side), e.g. one component per hidden unit
    and 10% spare, so that one config fits models (and worlds) of any width.
    """

    pattern: str = MISSING  # fnmatch pattern over module paths, e.g. 'blocks.*.mlp.in'
    C: int = MISSING  # rank-1 components per matched module; 0: from its shape (C_factor)
    C_factor: float = 1.1  # C=0: one component per unit of the wider side plus 10% spare (the world recipe)
    # mask every sequence position of these matches even when `positions` picks some: for matrices whose outputs at
    # other positions are read at the picked ones (attention keys and values; results log, session 4). No effect when
    # decomposition.positions is null (every position is masked then).
    all_positions: bool = False
    # init=neurons only (not read with init=random): the basis components start in. Square attention matrices have no
    # wider side; their head side (outputs of W_Q, W_K, W_V, inputs of W_O) starts every component inside one head
    # (W_O on its head side: rounded-CI attribute accuracy 0.713 -> 1.000 on the planted demo, results log, session 5).
    units: UnitSide = UnitSide.auto

    def __post_init__(self) -> None:
        check(bool(self.pattern), "decomposition.modules: a pattern is empty; name modules like 'blocks.*.mlp.in'")
        check(self.C >= 0, f"decomposition.modules: C={self.C} for '{self.pattern}' must be >= 1, or 0 (from the shape)")
        check(self.C_factor > 0, f"decomposition.modules: C_factor={self.C_factor} for '{self.pattern}' must be > 0")
        super().__post_init__()


@dataclass
class DecompositionConfig(Frozen):
    """Stochastic Parameter Decomposition settings (arXiv 2506.20790).

    The defaults are the paper's TMS recipe (`configs/decomposition/tms.yaml` adds only the modules); the animal-world
    recipe is `configs/decomposition/world.yaml`. "Experimental" marks an option no measurement has shown to help.
    """

    modules: list[ModuleSpec] = field(default_factory=list)  # the matrices to decompose (model-specific: no default)
    seed: int | None = None  # None: the run's seed; set it to vary only the decomposition on one target
    # Paths of modules before which a fixed identity Linear is inserted (the paper's "+ID" check);
    # the inserted module is named `<path>.pre_identity` and can be decomposed like any other.
    identity_before: list[str] = field(default_factory=list)
    # random: the paper, the toys and the random-start control; neurons: the world recipe (from random starts SPD
    # finds neither family of the animal world: results log, sessions 2 and 9)
    init: InitKind = InitKind.random
    steps: int = 10_000  # the paper's TMS budget; the world recipe grows it with the world's questions (session 8)
    batch_size: int = 4096  # the paper's TMS batch
    lr: float = 1e-3  # the paper's
    lr_schedule: LRSchedule = LRSchedule.cosine
    lr_warmup_frac: float = 0.0  # Experimental: linear learning-rate warm-up over this fraction of the steps
    lr_final_frac: float = 0.0  # Experimental: cosine / linear decay ends at lr x this (not read with lr_schedule=constant)
    # Faithfulness warm-up (the paper's): fit sum_c U_c V_c^T to W before anything else. Skipped with init=neurons,
    # whose start is exact (Adam's sign-like steps smeared every unit over all others: results log, session 2), so
    # warmup_* have no effect under the world recipe.
    warmup_steps: int = 200
    warmup_lr: float = 0.01
    warmup_weight_decay: float = 0.1
    # CI warm-up: the first steps train only the CI functions (components frozen), so that a good start such as
    # init=neurons is not pulled apart by masks that are still random (world: 500; results log, session 2).
    ci_warmup_steps: int = 0
    # Causal importance.
    ci_fn: CIFnType = CIFnType.mlp
    ci_hidden: list[int] = field(default_factory=lambda: [16])  # hidden widths of the CI MLP (the paper's 16)
    # per-component MLP: start every CI near this value (None: the paper's init; world: 0.5, inside (0, 1) where both
    # gradients flow, results log, session 2). Not read with ci_fn=shared_mlp.
    ci_init_bias: float | None = None
    # Experimental: per-component MLP with one hidden layer: kinks at quantiles of x . V_c on a batch (after the
    # warm-up). Mixed (results log): slower reconstruction on the mini world (session 2); at batch 32 more look-ups
    # found than the then-recipe, but MLP-out's CI-L0 2.96 against 1.24 (session 5).
    ci_init_from_data: bool = False
    # learning rate of the CI functions relative to the components' (world: 10; 30 found fewer look-ups, session 5)
    ci_lr_scale: float = 1.0
    leak: float = 0.01  # CI slope outside [0, 1] (the paper's); world: 0.1, dead CIs climb back (session 5)
    compile: bool = True  # torch.compile the CI MLP (one-off ~20 s, then ~2.4x faster); off in quick tests
    mask_sampling: MaskSampling = MaskSampling.continuous
    n_mask_samples: int = 1  # Experimental above 1: stochastic masks per step, averaged; no config or logged run used more
    # the paper's always-on remainder W - sum U V; world: off (the attribute readers moved into it, results log, session 2)
    use_delta: bool = True
    # Sequence positions that get masks and CI (e.g. [-1] when only the last position's output is reconstructed
    # and earlier positions' own outputs are never read); other positions run the target weights. None: all.
    positions: list[int] | None = None
    # Loss coefficients (0 switches a term off).
    output_loss: OutputLoss = OutputLoss.mse
    # Experimental: ||W - sum U V||^2 (the reference implementation's term). At 1 it brought the weights closer at no
    # recovery cost (results log, session 9) and helped the mini world's attribute readers only a little (session 2);
    # off in every config.
    faithfulness_coeff: float = 0.0
    stochastic_recon_coeff: float = 1.0  # the paper's
    layerwise_recon_coeff: float = 1.0  # the paper's
    # Experimental: one routed-subset pass in place of one layerwise pass per module (the transformer examples use it
    # for their 16 modules); never compared with layerwise for quality, and no faster on the trained demo (session 7)
    subset_recon_coeff: float = 0.0
    # Reconstruction with the CI itself as the mask (no noise): a component with CI 0 is fully ablated, as in the
    # rounded-CI faithfulness check. Continuous masks keep half of every CI-0 component on average, so a pathway
    # spread over many redundant units can be dropped from CI at half its reconstruction cost (results log, session 6).
    # World: 1 (rounded-CI faithfulness 0.82 -> 0.99, session 7).
    ci_masked_recon_coeff: float = 0.0
    importance_coeff: float = 3e-3  # the paper's TMS 5-2 value; world: 1e-2 (results log, sessions 6-7)
    # Minimality ramps up linearly over this fraction of the steps: rare circuits (inputs seen once every few steps)
    # get their CI functions from reconstruction before sparsity can switch them off (docs/results_log.md).
    importance_warmup_frac: float = 0.0
    pnorm: float = 1.0  # p of the minimality term |CI|^p (the paper's TMS 5-2 value; 2 for TMS 40-10 and resid_mlp)
    # Experimental (no config or logged run): anneal p linearly to pnorm_final between these fractions of training;
    # the window is refused without pnorm_final
    pnorm_final: float | None = None
    pnorm_anneal_start: float = 0.0
    pnorm_anneal_end: float = 1.0
    importance_eps: float = 1e-12  # numerical floor of the minimality term
    # Experimental (never measured): frequency penalty, cost x (1 + beta log2(1 + times used in the batch))
    importance_beta: float = 0.0
    # Restarts: `restarts` initialisations trained for `restart_steps` each; the lowest held-out loss continues
    # (restart_* are not read with restarts=1). TMS 5-2 uses 4: about half of single runs end in a local minimum
    # (results log, 2026-11-25).
    restarts: int = 1
    restart_steps: int = 3000
    restart_eval_batches: int = 8
    # Evaluation and bookkeeping.
    ci_alive_threshold: float = 0.1  # a component counts as live, and in CI-L0, above this CI
    eval_every: int = 1000  # held-out metrics every this many steps
    checkpoint_every: int = 1000  # a resumable checkpoint every this many steps
    # Experimental (no config or logged run turns it on): the toys' adversarial-mask evaluation, pgd_steps steps of
    # size pgd_step_size (0: off; pgd_step_size is not read then)
    pgd_steps: int = 0
    pgd_step_size: float = 0.1
    max_loss: float = 1e6  # a loss above this (or NaN/inf) stops the run as diverged
    # On divergence, go back to the last periodic checkpoint with lr x this factor, at most max_retries times.
    # Off (0) by default: a retry changes the experiment's learning rate, which a researcher should decide
    # (max_retries is not read then).
    retry_lr_factor: float = 0.0
    max_retries: int = 2

    def __post_init__(self) -> None:
        check(self.steps >= 0, f"decomposition.steps={self.steps} must be >= 0")
        check(self.batch_size >= 1, f"decomposition.batch_size={self.batch_size} must be >= 1")
        check(self.lr > 0, f"decomposition.lr={self.lr} must be > 0")
        check(math.isfinite(self.lr), f"decomposition.lr={self.lr} must be finite")
        check(
            0 <= self.importance_warmup_frac <= 1,
            f"decomposition.importance_warmup_frac={self.importance_warmup_frac} must be in [0, 1]",
        )
        check(0 <= self.lr_warmup_frac <= 1, f"decomposition.lr_warmup_frac={self.lr_warmup_frac} must be in [0, 1]")
        check(self.warmup_steps >= 0, f"decomposition.warmup_steps={self.warmup_steps} must be >= 0")
        check(self.ci_lr_scale > 0, f"decomposition.ci_lr_scale={self.ci_lr_scale} must be > 0")
        check(self.ci_warmup_steps >= 0, f"decomposition.ci_warmup_steps={self.ci_warmup_steps} must be >= 0")
        for name in ("restarts", "restart_steps", "restart_eval_batches", "eval_every", "checkpoint_every"):
            check(getattr(self, name) >= 1, f"decomposition.{name}={getattr(self, name)} must be >= 1")
        check(self.seed is None or self.seed >= 0, f"decomposition.seed={self.seed} must be >= 0, or null for the run's seed")
        check(0 <= self.lr_final_frac <= 1, f"decomposition.lr_final_frac={self.lr_final_frac} must be in [0, 1]")
        check(self.warmup_lr > 0, f"decomposition.warmup_lr={self.warmup_lr} must be > 0")
        check(self.warmup_weight_decay >= 0, f"decomposition.warmup_weight_decay={self.warmup_weight_decay} must be >= 0")
        check(self.leak >= 0, f"decomposition.leak={self.leak} must be >= 0")
        for name in (
            "faithfulness_coeff",
            "stochastic_recon_coeff",
            "layerwise_recon_coeff",
            "subset_recon_coeff",
            "ci_masked_recon_coeff",
            "importance_beta",
        ):
            check(getattr(self, name) >= 0, f"decomposition.{name}={getattr(self, name)} must be >= 0 (0 switches it off)")
        check(
            self.pnorm_final is None or self.pnorm_final > 0, f"decomposition.pnorm_final={self.pnorm_final} must be > 0 or null"
        )
        check(
            0 <= self.pnorm_anneal_start <= self.pnorm_anneal_end <= 1,
            f"decomposition.pnorm_anneal_start={self.pnorm_anneal_start}, pnorm_anneal_end={self.pnorm_anneal_end}: "
            "need 0 <= start <= end <= 1",
        )
        check(self.importance_eps > 0, f"decomposition.importance_eps={self.importance_eps} must be > 0")
        check(0 < self.ci_alive_threshold < 1, f"decomposition.ci_alive_threshold={self.ci_alive_threshold} must be in (0, 1)")
        check(self.pgd_steps >= 0, f"decomposition.pgd_steps={self.pgd_steps} must be >= 0 (0: off)")
        check(self.pgd_step_size > 0, f"decomposition.pgd_step_size={self.pgd_step_size} must be > 0")
        check(self.max_loss > 0, f"decomposition.max_loss={self.max_loss} must be > 0")
        check(
            0 <= self.retry_lr_factor < 1, f"decomposition.retry_lr_factor={self.retry_lr_factor} must be in [0, 1) (0: no retry)"
        )
        check(self.max_retries >= 0, f"decomposition.max_retries={self.max_retries} must be >= 0")
        patterns = [m.pattern for m in self.modules]
        twice = sorted({p for p in patterns if patterns.count(p) > 1})
        check(not twice, f"decomposition.modules lists the pattern(s) {twice} more than once; give each pattern one C")
        check(self.n_mask_samples >= 1, f"decomposition.n_mask_samples={self.n_mask_samples} must be >= 1")
        check(self.pnorm > 0, f"decomposition.pnorm={self.pnorm} must be > 0")
        check(self.importance_coeff >= 0, f"decomposition.importance_coeff={self.importance_coeff} must be >= 0")
        check(
            len(self.ci_hidden) >= 1 and min(self.ci_hidden) >= 1,
            f"decomposition.ci_hidden={list(self.ci_hidden)} needs at least one positive width",
        )
        if self.ci_init_from_data:
            check(
                self.ci_fn is CIFnType.mlp,
                f"decomposition.ci_init_from_data=true has no effect with ci_fn={self.ci_fn.value} (it places the kinks of "
                "per-component MLPs); set ci_init_from_data=false, or ci_fn=mlp",
            )
            check(
                len(self.ci_hidden) == 1,
                f"decomposition.ci_init_from_data=true needs one hidden layer, got ci_hidden={list(self.ci_hidden)}; "
                "set ci_hidden=[H], or ci_init_from_data=false",
            )
        check(
            self.pnorm_final is not None or (self.pnorm_anneal_start, self.pnorm_anneal_end) == (0.0, 1.0),
            f"decomposition.pnorm_anneal_start={self.pnorm_anneal_start}, pnorm_anneal_end={self.pnorm_anneal_end} have no "
            "effect without pnorm_final: set decomposition.pnorm_final, or leave the window at 0 and 1",
        )
        super().__post_init__()


# Keys that were removed, with the value that meant "off" and why they went: a command line naming one is refused
# with the reason (cli.precheck_overrides), and a saved decomposition listing one at its off value still loads.
RETIRED: dict[str, tuple[Any, str]] = {
    "rounded_recon_coeff": (
        0.0,
        "reconstruction with CI rounded at 0.5 did worse than ci_masked_recon_coeff, in its place and beside it "
        "(docs/results_log.md, session 8)",
    ),
}


def drop_retired(saved: dict[str, Any], where: str) -> dict[str, Any]:
    """A saved decomposition config without its retired keys; a retired key set to anything but off is refused."""
    for key, (off, why) in RETIRED.items():
        if key in saved and saved[key] != off:
            raise ValueError(f"{where} was made with decomposition.{key}={saved[key]}, which was removed: {why}")
    return {k: v for k, v in saved.items() if k not in RETIRED}
