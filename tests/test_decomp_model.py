"""The component model: exact when masks are 1, generic over module kinds, cached passes equal fresh ones."""

import pytest
import torch
from torch import nn

from circuitdecomp.decomp.components import MaskInfo
from circuitdecomp.decomp.config import DecompositionConfig, InitKind, ModuleSpec
from circuitdecomp.decomp.model import ComponentModel


def _cfg(*patterns: str, C: int = 6, **kw) -> DecompositionConfig:
    return DecompositionConfig(modules=[ModuleSpec(p, C) for p in patterns], **kw)


class EmbedMLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(11, 8)
        self.fc1 = nn.Linear(8, 16)
        self.fc2 = nn.Linear(16, 5)

    def forward(self, tokens):
        return self.fc2(torch.relu(self.fc1(self.emb(tokens))))


def _ones(cm: ComponentModel, lead: tuple[int, ...], delta: float | None) -> dict[str, MaskInfo]:
    return {
        p: MaskInfo(torch.ones(*lead, cm.component(p).C), None if delta is None else torch.full(lead, delta)) for p in cm.paths
    }


def _fit_exactly(cm: ComponentModel) -> None:
    """Set V, U to an exact factorisation of each weight (C >= rank), so masks of 1 reproduce W without delta."""
    with torch.no_grad():
        for p in cm.paths:
            comp = cm.component(p)
            U_, S, Vh = torch.linalg.svd(comp.target_weight(), full_matrices=False)
            r = S.numel()
            comp.V.zero_()
            comp.U.zero_()
            comp.V[:, :r] = Vh.T * S
            comp.U[:r] = U_.T


def test_masks_of_one_reproduce_target_for_linear_and_embedding():
    model = EmbedMLP()
    tokens = torch.randint(0, 11, (4, 7))
    expected = model(tokens)
    cm = ComponentModel(model, _cfg("emb", "fc*", C=20))
    assert cm.paths == ["emb", "fc1", "fc2"]
    assert torch.allclose(cm.run_target(tokens), expected)
    # with the delta component fully on, any V, U give the target exactly
    assert torch.allclose(cm(tokens, _ones(cm, (4, 7), 1.0)), expected, atol=1e-5)
    _fit_exactly(cm)
    assert torch.allclose(cm(tokens, _ones(cm, (4, 7), None)), expected, atol=1e-5)
    assert torch.allclose(cm(tokens, _ones(cm, (4, 7), 0.0)), expected, atol=1e-5)


def test_conv1d_components():
    from transformers.pytorch_utils import Conv1D

    model = nn.Sequential(Conv1D(6, 4), nn.ReLU(), Conv1D(3, 6))
    x = torch.randn(5, 4)
    expected = model(x)
    cm = ComponentModel(model, _cfg("0", "2", C=8))
    assert cm.component("0").target_weight().shape == (6, 4)  # stored [d_in, d_out], seen as [d_out, d_in]
    cm.run_target(x)
    _fit_exactly(cm)
    assert torch.allclose(cm(x, _ones(cm, (5,), None)), expected, atol=1e-5)


def test_cached_pass_equals_fresh_computation():
    model = EmbedMLP()
    tokens = torch.randint(0, 11, (3, 5))
    cm = ComponentModel(model, _cfg("emb", "fc*"))
    cm.run_target(tokens)
    gen = torch.Generator().manual_seed(1)
    masks = {p: MaskInfo(torch.rand(3, 5, cm.component(p).C, generator=gen), torch.rand(3, 5, generator=gen)) for p in cm.paths}
    for subset in (["fc2"], ["fc1"], ["emb", "fc2"]):
        chosen = {p: masks[p] for p in subset}
        cached = cm(tokens, chosen)
        cm.state.outputs.clear()  # no cache: everything recomputed from the inputs
        fresh = cm(tokens, chosen)
        cm.run_target(tokens)
        assert torch.allclose(cached, fresh, atol=1e-6)


def test_leaves_before_the_first_masked_module_run_once_per_batch():
    model = EmbedMLP()
    emb, fc2 = model.emb, model.fc2
    runs = {"emb": 0, "fc2": 0}
    emb.register_forward_hook(lambda *_: runs.__setitem__("emb", runs["emb"] + 1))
    fc2.register_forward_hook(lambda *_: runs.__setitem__("fc2", runs["fc2"] + 1))
    tokens = torch.randint(0, 11, (3, 5))
    expected = model(tokens)
    runs.update(emb=0, fc2=0)
    cm = ComponentModel(model, _cfg("fc1", C=20))
    _fit_exactly(cm)
    cm.run_target(tokens)
    for _ in range(2):
        assert torch.allclose(cm(tokens, _ones(cm, (3, 5), None)), expected, atol=1e-5)
    assert runs == {"emb": 1, "fc2": 3}  # the embedding is reused; fc2 reads a masked module's output, so it reruns
    half = {"fc1": MaskInfo(torch.full((3, 5, 20), 0.5))}
    cached = cm(tokens, half)
    cm.state.outputs.clear()  # nothing recorded: every leaf runs
    assert torch.allclose(cached, cm(tokens, half)) and not torch.allclose(cached, expected, atol=1e-3)
    cm.detach_components()
    assert model.emb is emb and model.fc2 is fc2


def test_gradients_reach_components_and_not_target():
    model = EmbedMLP()
    tokens = torch.randint(0, 11, (3, 5))
    cm = ComponentModel(model, _cfg("fc1", "fc2"))
    target = cm.run_target(tokens)
    ci = cm.causal_importance()
    masks = {p: MaskInfo(ci.lower[p], torch.rand(3, 5)) for p in cm.paths}
    (cm(tokens, masks) - target).pow(2).mean().backward()
    for p in cm.paths:
        assert cm.component(p).V.grad is not None and cm.component(p).U.grad is not None
    assert all(p.grad is None for n, p in model.named_parameters() if "base" in n or n.startswith("emb"))


def test_bad_patterns_and_masks_are_named():
    with pytest.raises(ValueError, match=r"\['nope\*'\].*available: emb, fc1, fc2"):
        ComponentModel(EmbedMLP(), _cfg("fc1", "nope*"))
    with pytest.raises(ValueError, match=r"decomposition.modules: C=-1 for 'fc1' must be >= 1, or 0 \(from the shape\)"):
        ModuleSpec("fc1", -1)
    assert ComponentModel(EmbedMLP(), _cfg("fc1", C=0, compile=False)).component("fc1").C == 18  # ceil(1.1 x 16)
    cm = ComponentModel(EmbedMLP(), _cfg("fc1"))
    with pytest.raises(KeyError, match="fc9"):
        cm(torch.zeros(1, 1, dtype=torch.long), {"fc9": MaskInfo(torch.ones(1, 1, 6))})


def test_identity_insertion_keeps_function_and_is_decomposable():
    model = EmbedMLP()
    tokens = torch.randint(0, 11, (2, 3))
    expected = model(tokens)
    cm = ComponentModel(model, _cfg("fc2", "fc2.pre_identity", identity_before=["fc2"]))
    assert cm.paths == ["fc2.pre_identity", "fc2"] or set(cm.paths) == {"fc2", "fc2.pre_identity"}
    assert torch.equal(cm.component("fc2.pre_identity").target_weight(), torch.eye(16))
    assert torch.allclose(cm.run_target(tokens), expected, atol=1e-6)


def test_detach_restores_the_original_modules():
    model = EmbedMLP()
    fc1 = model.fc1
    cm = ComponentModel(model, _cfg("fc1"))
    assert model.fc1 is cm.component("fc1")
    cm.detach_components()
    assert model.fc1 is fc1


def test_transformerlens_bridge_linears():
    from transformer_lens import TransformerBridge, TransformerBridgeConfig

    cfg = TransformerBridgeConfig(
        d_model=16, d_head=4, n_heads=4, n_layers=1, n_ctx=6, d_vocab=13, d_mlp=32, act_fn="gelu", normalization_type=None, seed=0
    )
    bridge = TransformerBridge.boot_native(cfg)
    tokens = torch.randint(0, 13, (2, 6))
    with torch.no_grad():
        expected = bridge(tokens)
    cm = ComponentModel(bridge, _cfg("blocks.0.attn.*", "blocks.0.mlp.*", "unembed", C=40))
    assert set(cm.paths) >= {"blocks.0.attn.q", "blocks.0.attn.o", "blocks.0.mlp.in", "blocks.0.mlp.out", "unembed"}
    assert torch.allclose(cm.run_target(tokens), expected, atol=1e-5)
    _fit_exactly(cm)
    out = cm(tokens, _ones(cm, (2, 6), None))
    assert torch.allclose(out, expected, atol=1e-4)
    cm.detach_components()
    with torch.no_grad():
        assert torch.allclose(bridge(tokens), expected, atol=1e-6)


def test_masked_positions_only_change_those_positions():
    """positions=[-1]: CI and masks cover the last position; earlier positions run the target weights exactly."""
    model = EmbedMLP()
    tokens = torch.randint(0, 11, (4, 7))
    expected = model(tokens)
    cm = ComponentModel(model, _cfg("emb", "fc*", C=20, positions=[-1], compile=False))
    cm.run_target(tokens)
    ci = cm.causal_importance().lower
    assert all(g.shape == (4, 1, 20) for g in ci.values())
    zeros = {p: MaskInfo(torch.zeros(4, 1, 20), None) for p in cm.paths}
    out = cm(tokens, zeros)
    assert torch.allclose(out[:, :-1], expected[:, :-1])  # untouched
    assert not torch.allclose(out[:, -1], expected[:, -1], atol=1e-3)  # every component ablated at the last position
    _fit_exactly(cm)
    assert torch.allclose(cm(tokens, _ones(cm, (4, 1), None)), expected, atol=1e-5)


def test_neuron_init_is_exact_and_one_component_per_unit():
    """init=neurons: ΣUV = W from the start, each hidden unit of the wider side in its own component."""
    model = EmbedMLP()
    cm = ComponentModel(model, _cfg("fc*", C=20, init=InitKind.neurons, compile=False))
    for path in ("fc1", "fc2"):  # fc1: 8 -> 16 (units are outputs), fc2: 16 -> 5 (units are inputs)
        comp = cm.component(path)
        assert torch.allclose(comp.component_weight(), comp.target_weight(), atol=1e-5)
    fc1 = cm.component("fc1")
    assert torch.allclose(fc1.V[:, :16].norm(dim=0), torch.ones(16))  # unit read directions
    assert torch.count_nonzero(fc1.U[:16, :16] - torch.diag(torch.diagonal(fc1.U[:16, :16]))) == 0
    assert torch.equal(cm.component("fc2").V[:16, :16], torch.eye(16))


@pytest.mark.parametrize("side", ["inputs", "outputs"])
def test_neuron_init_on_a_chosen_side_of_a_square_matrix(side):
    """ModuleSpec.units picks the basis of a square matrix (an attention W_O starts in head coordinates)."""
    from circuitdecomp.decomp.config import UnitSide

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 6, bias=False))
    cfg = DecompositionConfig(modules=[ModuleSpec("0", 8, units=UnitSide(side))], init=InitKind.neurons, compile=False)
    comp = ComponentModel(model, cfg).component("0")
    assert torch.allclose(comp.component_weight(), comp.target_weight(), atol=1e-5)
    if side == "inputs":  # component c reads input c
        assert torch.equal(comp.V[:, :6], torch.eye(6))
    else:  # component c writes output c
        assert torch.count_nonzero(comp.U[:6, :6] - torch.diag(torch.diagonal(comp.U[:6, :6]))) == 0


def test_every_ci_fn_value_has_a_builder_that_makes_a_ci_function():
    from circuitdecomp.decomp.ci import CI_FUNCTIONS, CIFunction, CISite, make_ci_function
    from circuitdecomp.decomp.config import CIFnType, DecompositionConfig

    assert set(CI_FUNCTIONS) == set(CIFnType)
    for kind in CIFnType:
        fn = make_ci_function(kind, CISite(C=3, d_in=5), DecompositionConfig(compile=False))
        assert isinstance(fn, CIFunction)
        lower, upper = fn.importance(torch.randn(2, 3), torch.randn(2, 5), 0.01)
        assert lower.shape == upper.shape == (2, 3)
