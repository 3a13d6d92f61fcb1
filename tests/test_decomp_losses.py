"""Each SPD loss and helper against values computed by hand."""

import math

import pytest
import torch

from circuitdecomp.decomp import losses as L
from circuitdecomp.decomp.ci import lower_leaky_hard_sigmoid, upper_leaky_hard_sigmoid
from circuitdecomp.decomp.components import MaskInfo
from circuitdecomp.decomp.config import DecompositionConfig, LRSchedule, MaskSampling, OutputLoss
from circuitdecomp.decomp.train import lr_at


def test_mse_is_mean_over_elements():
    pred, target = torch.tensor([[1.0, 2.0], [3.0, 4.0]]), torch.tensor([[1.0, 0.0], [0.0, 4.0]])
    assert L.output_distance(pred, target, OutputLoss.mse).item() == pytest.approx((4 + 9) / 4)


def test_kl_matches_hand_computation():
    target, pred = torch.tensor([[0.0, math.log(3.0)]]), torch.tensor([[0.0, 0.0]])
    p, q = [0.25, 0.75], [0.5, 0.5]
    expected = sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))
    assert L.output_distance(pred, target, OutputLoss.kl).item() == pytest.approx(expected, rel=1e-5)
    assert L.output_distance(target, target, OutputLoss.kl).item() == pytest.approx(0.0, abs=1e-7)


def test_faithfulness_averages_over_all_parameters():
    deltas = {"a": torch.tensor([[1.0, 2.0]]), "b": torch.tensor([[3.0]])}
    assert L.faithfulness_loss(deltas).item() == pytest.approx((1 + 4 + 9) / 3)


def test_importance_minimality_sums_components_and_averages_positions():
    g = {"a": torch.tensor([[0.5, 1.0], [0.0, 1.0]]), "b": torch.tensor([[[0.25]], [[1.0]]])}
    # a: mean_b g^2 = [0.125, 1.0]; b (batch 2, pos 1): mean = (0.0625 + 1) / 2
    expected = 0.125 + 1.0 + (0.0625 + 1.0) / 2
    assert L.importance_minimality_loss(g, p=2.0, eps=0.0).item() == pytest.approx(expected)


def test_frequency_penalty():
    g = {"a": torch.tensor([[1.0, 0.0], [1.0, 0.5]])}
    # component 0: mean 1, sum 2 -> 1 * (1 + log2(3)); component 1: mean 0.25, sum 0.5 -> 0.25 * (1 + log2(1.5))
    expected = (1 + math.log2(3)) + 0.25 * (1 + math.log2(1.5))
    assert L.importance_minimality_loss(g, p=1.0, eps=0.0, beta=1.0).item() == pytest.approx(expected)


def test_p_annealing():
    assert L.annealed_p(0.3, 2.0, None, 0.0, 1.0) == 2.0
    assert L.annealed_p(0.1, 2.0, 0.5, 0.2, 0.6) == 2.0
    assert L.annealed_p(0.4, 2.0, 0.5, 0.2, 0.6) == pytest.approx(1.25)
    assert L.annealed_p(0.9, 2.0, 0.5, 0.2, 0.6) == 0.5


def test_leaky_hard_sigmoids():
    x = torch.tensor([-2.0, 0.5, 2.0], requires_grad=True)
    y = lower_leaky_hard_sigmoid(x, 0.01)
    assert torch.equal(y, torch.tensor([0.0, 0.5, 1.0]))
    y.backward(torch.tensor([-1.0, 1.0, 1.0]))  # grad pushing x[0] up leaks through; x > 1 gets none
    assert torch.allclose(x.grad, torch.tensor([-0.01, 1.0, 0.0]))
    x.grad = None
    lower_leaky_hard_sigmoid(x, 0.01).backward(torch.tensor([1.0, 0.0, 0.0]))  # pushing down below 0: no leak
    assert x.grad[0] == 0.0
    assert torch.allclose(upper_leaky_hard_sigmoid(torch.tensor([-1.0, 0.5, 3.0]), 0.01), torch.tensor([0.0, 0.5, 1.02]))


@pytest.mark.parametrize("compiled", [False, True])
def test_fused_ci_matches_mlp_then_hard_sigmoids(compiled):
    """The one-kernel CI (forward and hand-written backward) against the plain MLP followed by the two sigmoids."""
    from circuitdecomp.decomp.ci import PerComponentMLP, hard_sigmoids

    fn = PerComponentMLP(C=6, hidden=[16], compile=compiled)
    with torch.no_grad():
        fn.biases[1][:, 0] = torch.tensor([-3.0, 0.0, 0.5, 1.0, 2.0, 4.0])  # pre-activations below, inside and above [0, 1]
    acts = torch.randn(4, 5, 6, requires_grad=True)  # [batch, pos, C]
    grad_lower, grad_upper = torch.randn(4, 5, 6), torch.randn(4, 5, 6)  # both signs: the lower leak depends on it
    params = [acts, *fn.parameters()]

    def values_and_grads(lower, upper):
        grads = torch.autograd.grad((lower * grad_lower + upper * grad_upper).sum(), params)
        return [lower, upper, *grads]

    fused = values_and_grads(*fn.importance(acts, None, 0.01))
    reference = values_and_grads(*hard_sigmoids(fn(acts), 0.01))
    # the fused kernel's erf is ATen's vectorised approximation (|error| < 3e-7), the reference's is exact
    assert all(torch.allclose(a, b, rtol=1e-4, atol=1e-5) for a, b in zip(fused, reference))
    with torch.no_grad():  # the no-grad path (evaluation) gives the same values
        assert all(torch.allclose(a, b) for a, b in zip(fn.importance(acts, None, 0.01), fused[:2]))


def test_masks_lie_between_ci_and_one():
    g = {"a": torch.tensor([[0.0, 0.3, 1.0]]).expand(1000, 3)}
    gen = torch.Generator().manual_seed(0)
    m = L.sample_masks(g, MaskSampling.continuous, use_delta=True, generator=gen)["a"]
    assert (m.mask >= g["a"]).all() and (m.mask <= 1).all()
    assert torch.equal(m.mask[:, 2], torch.ones(1000))  # g = 1: never ablated
    assert m.mask[:, 0].mean().item() == pytest.approx(0.5, abs=0.05)  # g = 0: U(0, 1)
    assert m.delta_mask.shape == (1000,)
    b = L.sample_masks(g, MaskSampling.binomial, use_delta=False, generator=gen)["a"]
    assert set(b.mask[:, 0].unique().tolist()) == {0.0, 1.0} and b.delta_mask is None


def test_layerwise_masks_one_module_at_a_time():
    seen = []

    def run(masks):
        seen.append(sorted(masks))
        return torch.zeros(2)

    masks = {"a": MaskInfo(torch.ones(2, 1)), "b": MaskInfo(torch.ones(2, 1))}
    L.layerwise_recon_loss(run, torch.ones(2), [masks], OutputLoss.mse)
    assert seen == [["a"], ["b"]]
    seen.clear()
    L.stochastic_recon_loss(run, torch.ones(2), [masks, masks], OutputLoss.mse)
    assert seen == [["a", "b"], ["a", "b"]]


def test_routed_subsets_are_nonempty_and_cover_all_sizes():
    masks = {k: MaskInfo(torch.ones(4000, 2)) for k in "abc"}
    routed = L.route_subsets(masks, torch.Generator().manual_seed(0))
    chosen = torch.stack([routed[k].route for k in "abc"], -1)
    sizes = chosen.sum(-1)
    assert sizes.min() == 1 and sizes.max() == 3
    assert torch.bincount(sizes)[1:].float().div(4000).sub(1 / 3).abs().max() < 0.05


def test_lr_schedules():
    cos = DecompositionConfig(steps=100, lr=1.0, lr_schedule=LRSchedule.cosine)
    assert lr_at(0, cos) == pytest.approx(1.0) and lr_at(50, cos) == pytest.approx(0.5) and lr_at(100, cos) == pytest.approx(0.0)
    warm = DecompositionConfig(steps=100, lr=1.0, lr_schedule=LRSchedule.constant, lr_warmup_frac=0.1)
    assert lr_at(4, warm) == pytest.approx(0.5) and lr_at(50, warm) == 1.0
    lin = DecompositionConfig(steps=100, lr=1.0, lr_schedule=LRSchedule.linear, lr_final_frac=0.5)
    assert lr_at(50, lin) == pytest.approx(0.75)


def test_pgd_masks_find_a_worse_reconstruction_than_random():
    from torch import nn

    from circuitdecomp.decomp.config import ModuleSpec
    from circuitdecomp.decomp.model import ComponentModel
    from circuitdecomp.decomp.pgd import pgd_recon_loss

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 3), nn.ReLU(), nn.Linear(3, 5))
    cm = ComponentModel(model, DecompositionConfig(modules=[ModuleSpec("0", 4), ModuleSpec("2", 4)], compile=False))
    x = torch.rand(64, 5)
    gen = torch.Generator().manual_seed(0)
    random = pgd_recon_loss(cm, x, steps=0, step_size=0.1, kind=OutputLoss.mse, use_delta=True, generator=gen)
    worst = pgd_recon_loss(cm, x, steps=20, step_size=0.1, kind=OutputLoss.mse, use_delta=True, generator=gen)
    assert worst > random
    assert all(p.grad is None for p in cm.named_trainables().values())


def _two_component_model(ci: tuple[float, float], **coeffs: float):
    """y = 1 x1 + 2 x2 as two exact rank-1 components (neuron init, input side), CI fixed at `ci` (the CI function's
    output bias, weights zeroed); only the loss terms in `coeffs` are on. Returns (cm, cfg, CI bias)."""
    from circuitdecomp.decomp.config import InitKind, ModuleSpec
    from circuitdecomp.decomp.model import ComponentModel

    model = torch.nn.Sequential(torch.nn.Linear(2, 1, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0, 2.0]]))
    cfg = DecompositionConfig(
        modules=[ModuleSpec("0", 2)],
        init=InitKind.neurons,
        use_delta=False,
        compile=False,
        stochastic_recon_coeff=0.0,
        layerwise_recon_coeff=0.0,
        importance_coeff=0.0,
        **coeffs,
    )
    cm = ComponentModel(model, cfg)
    fn = cm.ci_fns["0"]
    with torch.no_grad():
        fn.weights[-1].zero_()
        fn.biases[-1].copy_(torch.tensor([[ci[0]], [ci[1]]]))
    return cm, cfg, fn.biases[-1]


TWO_X = torch.tensor([[1.0, 1.0], [0.0, 3.0], [2.0, 0.0]])


def test_ci_masked_recon_ablates_components_with_ci_zero():
    """CI (1, 0) drops the second component: loss = mean((2 x2)^2)."""
    from circuitdecomp.decomp.train import spd_losses

    cm, cfg, bias = _two_component_model((2.0, -1.0), ci_masked_recon_coeff=1.0)  # CI = clamp(bias): 1 and 0
    x = TWO_X
    total, terms, _ = spd_losses(cm, x, cfg, 1.0, torch.Generator().manual_seed(0))
    expected = ((2 * x[:, 1]) ** 2).mean().item()  # 13/3
    assert math.isclose(terms["ci_masked_recon"].item(), expected, rel_tol=1e-6)
    assert math.isclose(total.item(), expected, rel_tol=1e-6)
    with torch.no_grad():
        bias.fill_(2.0)  # every CI 1: the exact components reproduce the target
    assert spd_losses(cm, x, cfg, 1.0, torch.Generator())[1]["ci_masked_recon"].item() < 1e-10


def test_the_removed_rounded_recon_term_is_refused_by_name_and_old_files_still_load(tmp_path, capsys):
    """rounded_recon_coeff did worse than the continuous CI-masked term (results log, session 8) and was removed: the
    command line is refused with the reason, a saved decomposition listing it at 0 loads, one that used it is refused."""
    import json

    from conftest import tiny_mlp
    from safetensors.torch import load_file, save_file

    from circuitdecomp.cli import precheck_overrides
    from circuitdecomp.decomp.api import Decomposition
    from circuitdecomp.decomp.config import ModuleSpec
    from circuitdecomp.decomp.model import ComponentModel
    from circuitdecomp.runio import to_plain

    with pytest.raises(SystemExit) as stop:
        precheck_overrides(["decomposition.rounded_recon_coeff=1"])
    assert stop.value.code == 2 and "rounded_recon_coeff was removed" in capsys.readouterr().err
    cfg = DecompositionConfig(modules=[ModuleSpec("0", 3)], compile=False)
    path = Decomposition(ComponentModel(tiny_mlp(), cfg), cfg).save(tmp_path / "d.safetensors")
    tensors = load_file(path)
    for value, loads in ((0.0, True), (0.5, False)):
        old = {**to_plain(cfg), "rounded_recon_coeff": value}  # what a file saved before the removal holds
        save_file(tensors, str(tmp_path / "old.safetensors"), {"config": json.dumps(old)})
        if loads:
            assert Decomposition.load(tmp_path / "old.safetensors", tiny_mlp().requires_grad_(False)).paths == ["0"]
        else:
            with pytest.raises(ValueError, match="rounded_recon_coeff=0.5, which was removed"):
                Decomposition.load(tmp_path / "old.safetensors", tiny_mlp().requires_grad_(False))


def test_every_loss_coefficient_has_one_term_and_every_term_a_coefficient():
    """The table of terms is the one place a loss is declared: each row names a real config field, and no
    `*_coeff` field of DecompositionConfig lacks a row (it would be a knob with no effect)."""
    import dataclasses

    from circuitdecomp.decomp.config import DecompositionConfig
    from circuitdecomp.decomp.terms import TERMS

    fields = {f.name for f in dataclasses.fields(DecompositionConfig) if f.name.endswith("_coeff")}
    assert sorted(t.coeff for t in TERMS) == sorted(fields)
    assert len({t.name for t in TERMS}) == len(TERMS)


def test_total_is_the_coefficient_weighted_sum_of_the_terms_with_the_importance_ramp():
    from conftest import tiny_mlp, tiny_sparse_batch

    from circuitdecomp.decomp.config import DecompositionConfig, ModuleSpec
    from circuitdecomp.decomp.model import ComponentModel
    from circuitdecomp.decomp.train import spd_losses

    cfg = DecompositionConfig(
        modules=[ModuleSpec("0", 5)], compile=False, faithfulness_coeff=0.5, importance_coeff=0.2, importance_warmup_frac=0.5
    )
    cm = ComponentModel(tiny_mlp(), cfg)
    x = tiny_sparse_batch(torch.Generator().manual_seed(1))
    total, terms, _ = spd_losses(cm, x, cfg, 0.25, torch.Generator().manual_seed(0))
    assert set(terms) == {"faithfulness", "stochastic_recon", "layerwise_recon", "importance_minimality"}
    recon = terms["stochastic_recon"] + terms["layerwise_recon"]
    by_hand = 0.5 * terms["faithfulness"] + recon + 0.2 * 0.5 * terms["importance_minimality"]
    assert torch.allclose(total, by_hand)
