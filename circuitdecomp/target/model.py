"""The animal-world transformer: a TransformerLens-native bridge whose geometry keeps the world's ground truth exact.

Constraints, each a `torch.nn.utils.parametrize` parametrization so they hold after every optimiser step
(weight decay included) and bake into plain weights for saving:

* entity embedding rows are fixed at the world's directions (`FixRows`); positional embeddings are zero and frozen;
* attention q/k/v read only the context subspace (`ReadContext`) and o writes only into it (`WriteContext`).

So at the entity's own position (the read-out) the attention adds nothing entity-dependent (no self-term
W_OV v_i, and the pattern cannot depend on the entity), and it writes nothing into the entity subspace: the
residual there is exactly the entity's embedding plus question information.
"""

from pathlib import Path
from typing import Any

import torch
import torch.nn.utils.parametrize as P
from jaxtyping import Float, Int
from torch import Tensor, nn

from circuitdecomp.frozen import ConfigError
from circuitdecomp.rundir import TARGET_FILE
from circuitdecomp.runio import load_module_state, save_tensors
from circuitdecomp.target.config import TransformerTargetConfig
from circuitdecomp.world.vocab import READOUT_POS, SEQ_LEN
from circuitdecomp.world.world import World


class FixRows(nn.Module):
    """Parametrization W -> W with rows `idx` replaced by `values`: those rows get no gradient and no decay."""

    def __init__(self, idx: Int[Tensor, " k"], values: Float[Tensor, "k d"]) -> None:
        super().__init__()
        self.register_buffer("idx", idx)
        self.register_buffer("values", values)

    def forward(self, weight: Float[Tensor, "n d"]) -> Float[Tensor, "n d"]:
        return weight.index_put((self.idx,), self.values)


class ReadContext(nn.Module):
    """Parametrization W [out, d_model] -> W P: the layer ignores the entity subspace of its input."""

    def __init__(self, projector: Float[Tensor, "d_model d_model"]) -> None:
        super().__init__()
        self.register_buffer("projector", projector)

    def forward(self, weight: Float[Tensor, "d_out d_in"]) -> Float[Tensor, "d_out d_in"]:
        return weight @ self.projector


class WriteContext(nn.Module):
    """Parametrization of o's weight [d_model, in] or bias [d_model] -> P W: writes stay out of the entity subspace."""

    def __init__(self, projector: Float[Tensor, "d_model d_model"]) -> None:
        super().__init__()
        self.register_buffer("projector", projector)

    def forward(self, weight: Tensor) -> Tensor:
        return self.projector @ weight


def bridge_config(world: World, cfg: TransformerTargetConfig, seed: int) -> Any:
    """The TransformerBridgeConfig of the target (imports TransformerLens lazily: it takes seconds)."""
    from transformer_lens import TransformerBridgeConfig

    d = world.d_model
    if d % cfg.n_heads:
        raise ConfigError(f"target.n_heads={cfg.n_heads} does not divide d_model={d}; pick a divisor of {d}")
    return TransformerBridgeConfig(
        d_model=d,
        d_head=d // cfg.n_heads,
        n_heads=cfg.n_heads,
        n_layers=cfg.n_layers,
        n_ctx=SEQ_LEN,
        d_vocab=world.vocab.d_vocab,
        d_mlp=mlp_width(world, cfg),
        act_fn="relu",
        normalization_type=None,
        seed=seed,
    )


def planted_width(world: World) -> int:
    """MLP neurons the planted construction uses: one per animal, 2 per attribute question, 1 per fact."""
    return world.cfg.n_animals + 2 * len(world.cfg.asked_attributes) + world.cfg.n_facts


def trained_base_width(world: World) -> int:
    """What target.width_factor multiplies: n_animals + 4 per attribute question + n_facts.

    (The planted target's width when it had 4 clamp units per attribute question; kept so the trained target's
    measured recipe, width 2.2x this, stays the same.)
    """
    return world.cfg.n_animals + 4 * len(world.cfg.asked_attributes) + world.cfg.n_facts


def question_of_units(world: World, cfg: TransformerTargetConfig) -> Tensor:
    """Question token each unit of a per-question group serves, in unit order after the templates (empty when off)."""
    tokens = torch.tensor([world.vocab.attribute_question(q) for q in range(len(world.cfg.asked_attributes))])
    return tokens.repeat_interleave(cfg.units_per_question)


def mlp_width(world: World, cfg: TransformerTargetConfig) -> int:
    """target.d_mlp, or: the planted width (planted); trained: templates + per-question groups when
    `units_per_question` > 0, else width_factor x `trained_base_width`."""
    planted = cfg.kind.value == "planted"
    grouped = not planted and cfg.units_per_question > 0
    automatic = (
        planted_width(world)
        if planted
        else n_templates(world, cfg) + len(question_of_units(world, cfg))
        if grouped
        else round(cfg.width_factor * trained_base_width(world))
    )
    width = cfg.d_mlp if cfg.d_mlp is not None else automatic
    if grouped and cfg.d_mlp is None and not cfg.animal_templates:
        raise ValueError(
            f"target.units_per_question={cfg.units_per_question} without animal templates leaves no units for "
            "the look-ups: set target.animal_templates=true, or give target.d_mlp (units past the groups "
            "are shared by every question)"
        )
    if grouped and width < automatic:
        raise ValueError(
            f"target.d_mlp={width} is below the {automatic} units that target.units_per_question="
            f"{cfg.units_per_question} needs (templates + groups); raise target.d_mlp or set it to null"
        )
    if planted and width < planted_width(world):
        raise ValueError(
            f"target.d_mlp={width} is below the {planted_width(world)} neurons the planted target needs "
            f"for this world; raise target.d_mlp or set it to null"
        )
    if not planted and cfg.animal_templates and width <= world.cfg.n_animals:
        raise ValueError(
            f"target MLP width {width} leaves no units beside the {world.cfg.n_animals} animal templates; raise "
            f"target.d_mlp / target.width_factor, or set target.animal_templates=false"
        )
    return width


def n_templates(world: World, cfg: TransformerTargetConfig) -> int:
    """How many MLP units start as animal templates (the first ones)."""
    return world.cfg.n_animals if cfg.animal_templates else 0


def build_model(world: World, cfg: TransformerTargetConfig, seed: int, constrained: bool = True) -> nn.Module:
    """A fresh TransformerBridge for the world; `constrained` adds the parametrizations (for training)."""
    from transformer_lens import TransformerBridge

    model = TransformerBridge.boot_native(bridge_config(world, cfg, seed))
    n = world.vocab.n_entities
    with torch.no_grad():
        model.W_E[:n] = world.entity_embeddings()
        model.pos_embed.weight.zero_()
    model.pos_embed.weight.requires_grad_(False)  # AdamW skips parameters without gradients: it stays zero
    if constrained:
        proj = world.geometry.context_projector()
        P.register_parametrization(model.embed.original_component, "weight", FixRows(torch.arange(n), world.entity_embeddings()))
        for block in model.blocks:
            attn = block.attn
            for name in ("q", "k", "v"):
                P.register_parametrization(attn.get_submodule(name).original_component, "weight", ReadContext(proj))
            o = attn.get_submodule("o").original_component
            P.register_parametrization(o, "weight", WriteContext(proj))
            P.register_parametrization(o, "bias", WriteContext(proj))
    return model


def bake(model: nn.Module) -> nn.Module:
    """Replace every parametrization by its current value: a plain bridge with the constraints in its weights."""
    for module in _parametrized(model):
        for name in list(module.parametrizations.keys()):
            P.remove_parametrizations(module, name, leave_parametrized=True)
    return model


def _parametrized(model: nn.Module) -> list[nn.Module]:
    # bridge components forward attribute lookups to the module they wrap, so `P.is_parametrized` is true for
    # both; only the wrapped module really owns the parametrizations
    return [m for m in model.modules() if "parametrizations" in m._modules]


def readout_logits(model: nn.Module, tokens: Int[Tensor, "batch 3"]) -> Float[Tensor, "batch d_vocab"]:
    """Logits at the read-out position (the entity's own position)."""
    return model(tokens)[:, -1]


def readout_forward(
    model: nn.Module, tokens: Int[Tensor, "batch 3"]
) -> tuple[Float[Tensor, "batch d_vocab"], Float[Tensor, "batch d_mlp"]]:
    """Logits and MLP activations at the read-out position only, computed ~3x faster than the full forward.

    Exact for a one-layer target whose attention reads only the context subspace (every target built here):
    the attention output at the entity's position then depends on the (question, modifier) prefix alone, so
    it is computed once per distinct prefix by the bridge itself, and the MLP and unembedding run on the
    read-out position only instead of all three. `tests/test_target.py` checks it against `model(tokens)`.
    """
    if len(model.blocks) != 1:
        raise ValueError(f"readout_forward needs a one-layer target, got {len(model.blocks)} layers; use model(tokens)")
    prefixes, which = torch.unique(tokens[:, :READOUT_POS], dim=0, return_inverse=True)
    probe = torch.cat([prefixes, torch.zeros_like(prefixes[:, :1])], dim=1)  # any entity: attention ignores it
    seen: dict[str, Tensor] = {}

    def keeper(name: str) -> Any:
        def keep(x: Tensor, hook: Any) -> None:
            seen[name] = x[:, READOUT_POS]

        return keep

    with model.hooks(fwd_hooks=[(f"blocks.0.hook_resid_{name}", keeper(name)) for name in ("pre", "mid")]):
        model(probe)
    attn_out = seen["mid"] - seen["pre"]
    x = model.W_E[tokens[:, READOUT_POS]] + model.pos_embed.weight[READOUT_POS] + attn_out[which]
    mlp = model.blocks[0].mlp
    h = torch.relu(mlp.get_submodule("in").original_component(x))
    resid = x + mlp.get_submodule("out").original_component(h)
    return model.unembed.original_component(resid), h


def baked_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """TL-format state dict with parametrized tensors at their current values (the model is left as it is).

    (`copy.deepcopy` + `bake` is not an option: a deep-copied bridge can no longer produce its state dict.)
    """
    state = {}
    for key, value in model.state_dict().items():
        if ".parametrizations." not in key:
            state[key] = value
            continue
        prefix, rest = key.split(".parametrizations.")
        name, tail = rest.split(".", 1)
        if tail == "original":  # 'embed.parametrizations.weight.original' -> 'embed.weight'
            state[f"{prefix}.{name}"] = getattr(model.get_submodule(prefix), name).detach()
    return state


def save_model(model: nn.Module, out_dir: Path, metadata: dict[str, str] | None = None) -> Path:
    """Save the model's TL-format state dict (constraints baked in) as `target.safetensors`."""
    return save_tensors(Path(out_dir) / TARGET_FILE, baked_state_dict(model), metadata)


def load_model(world: World, cfg: TransformerTargetConfig, seed: int, out_dir: Path) -> nn.Module:
    """Rebuild the bridge and load `target.safetensors` from a run dir (strict: every key must match)."""
    model = build_model(world, cfg, seed, constrained=False)
    load_module_state(model, Path(out_dir) / TARGET_FILE)
    return model.eval()
