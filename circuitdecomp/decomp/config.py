"""The decomposition's one typed config. Defaults are the SPD paper's TMS recipe."""

from dataclasses import dataclass, field
from enum import Enum

from omegaconf import MISSING

from circuitdecomp.frozen import Frozen, check


class CIFnType(str, Enum):
    """How causal importance is computed from a module's input x."""

    mlp = "mlp"  # per component: g_c = MLP_c(x . V_c), the paper's choice
    shared_mlp = "shared_mlp"  # one MLP on the whole module input x -> C values


class OutputLoss(str, Enum):
    mse = "mse"  # regression outputs
    kl = "kl"  # logits: KL(target || masked)


class LRSchedule(str, Enum):
    constant = "constant"
    cosine = "cosine"
    linear = "linear"


class MaskSampling(str, Enum):
    continuous = "continuous"  # r ~ U(0, 1)
    binomial = "binomial"  # r ~ {0, 1}


@dataclass
class ModuleSpec(Frozen):
    """fnmatch pattern over module paths, and the number of rank-1 components for each match."""

    pattern: str = MISSING
    C: int = MISSING

    def __post_init__(self) -> None:
        check(self.C >= 1, f"decomposition.modules: C={self.C} for '{self.pattern}' must be >= 1")
        super().__post_init__()


@dataclass
class DecompositionConfig(Frozen):
    """Stochastic Parameter Decomposition settings (arXiv 2506.20790)."""

    modules: list[ModuleSpec] = field(default_factory=list)
    seed: int | None = None  # None: the run's seed; set it to vary only the decomposition on one target
    # Paths of modules before which a fixed identity Linear is inserted (the paper's "+ID" check);
    # the inserted module is named `<path>.pre_identity` and can be decomposed like any other.
    identity_before: list[str] = field(default_factory=list)
    steps: int = 10_000
    batch_size: int = 4096
    lr: float = 1e-3
    lr_schedule: LRSchedule = LRSchedule.cosine
    lr_warmup_frac: float = 0.0
    lr_final_frac: float = 0.0
    # Faithfulness warm-up: fit sum_c U_c V_c^T to W before anything else.
    warmup_steps: int = 200
    warmup_lr: float = 0.01
    warmup_weight_decay: float = 0.1
    # Causal importance.
    ci_fn: CIFnType = CIFnType.mlp
    ci_hidden: list[int] = field(default_factory=lambda: [16])
    leak: float = 0.01
    compile: bool = True  # torch.compile the CI MLP (one-off ~20 s, then ~2.4x faster); off in quick tests
    mask_sampling: MaskSampling = MaskSampling.continuous
    n_mask_samples: int = 1
    use_delta: bool = True
    # Loss coefficients (0 switches a term off).
    output_loss: OutputLoss = OutputLoss.mse
    faithfulness_coeff: float = 0.0
    stochastic_recon_coeff: float = 1.0
    layerwise_recon_coeff: float = 1.0
    subset_recon_coeff: float = 0.0
    importance_coeff: float = 3e-3
    pnorm: float = 1.0
    pnorm_final: float | None = None  # anneal p linearly to this value
    pnorm_anneal_start: float = 0.0  # fraction of training
    pnorm_anneal_end: float = 1.0
    importance_eps: float = 1e-12
    importance_beta: float = 0.0  # frequency penalty: cost x (1 + beta log2(1 + times used in the batch))
    # Restarts: `restarts` initialisations trained for `restart_steps` each; the lowest held-out loss continues.
    restarts: int = 1
    restart_steps: int = 3000
    restart_eval_batches: int = 8
    # Evaluation and bookkeeping.
    ci_alive_threshold: float = 0.1
    eval_every: int = 1000
    checkpoint_every: int = 1000
    pgd_steps: int = 0  # adversarial-mask evaluation (0 = off)
    pgd_step_size: float = 0.1
    max_loss: float = 1e6  # a loss above this (or NaN/inf) stops the run as diverged

    def __post_init__(self) -> None:
        check(self.steps >= 0, f"decomposition.steps={self.steps} must be >= 0")
        check(self.batch_size >= 1, f"decomposition.batch_size={self.batch_size} must be >= 1")
        check(self.lr > 0, f"decomposition.lr={self.lr} must be > 0")
        check(0 <= self.lr_warmup_frac <= 1, f"decomposition.lr_warmup_frac={self.lr_warmup_frac} must be in [0, 1]")
        check(self.warmup_steps >= 0, f"decomposition.warmup_steps={self.warmup_steps} must be >= 0")
        check(self.restarts >= 1 and self.restart_steps >= 1 and self.restart_eval_batches >= 1,
              f"decomposition.restarts={self.restarts}, restart_steps, restart_eval_batches must be >= 1")
        check(self.n_mask_samples >= 1, f"decomposition.n_mask_samples={self.n_mask_samples} must be >= 1")
        check(self.pnorm > 0, f"decomposition.pnorm={self.pnorm} must be > 0")
        check(self.importance_coeff >= 0, f"decomposition.importance_coeff={self.importance_coeff} must be >= 0")
        check(len(self.ci_hidden) >= 1 and min(self.ci_hidden) >= 1,
              f"decomposition.ci_hidden={list(self.ci_hidden)} needs at least one positive width")
        check(self.eval_every >= 1 and self.checkpoint_every >= 1,
              "decomposition.eval_every and checkpoint_every must be >= 1")
        super().__post_init__()
