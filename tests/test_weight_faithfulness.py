"""Faithfulness to the weights: the share of W the components leave out, and the masked target with the remainder."""

import pytest
import torch
from torch import nn

from circuitdecomp.decomp.config import DecompositionConfig, InitKind, ModuleSpec
from circuitdecomp.decomp.model import CausalImportance, ComponentModel
from circuitdecomp.pipeline.decompose import AnswerLogits, decomposition_view, faithfulness_metrics, weight_share_outside

MODULES = ["blocks.*.mlp.in", "blocks.*.mlp.out", "unembed"]


def test_weight_share_outside_by_hand_embedding_included():
    model = nn.Sequential(nn.Embedding(3, 2), nn.Linear(2, 2, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 2.0], [2.0, 0.0]]))  # token rows; ||W|| = 3
        model[1].weight.copy_(torch.tensor([[3.0, 0.0], [0.0, 4.0]]))  # ||W|| = 5
    cm = ComponentModel(model, DecompositionConfig(modules=[ModuleSpec("0", 1), ModuleSpec("1", 1)], compile=False))
    with torch.no_grad():
        emb, lin = cm.component("0"), cm.component("1")
        emb.V.copy_(torch.tensor([[1.0], [0.0], [2.0]]))  # rows V[t] U: [1, 0], [0, 0], [2, 0]; left out: token 1's [0, 2]
        emb.U.copy_(torch.tensor([[1.0, 0.0]]))
        lin.V.copy_(torch.tensor([[1.0], [0.0]]))  # U V = [[3, 0], [0, 0]]; left out: the 4
        lin.U.copy_(torch.tensor([[3.0, 0.0]]))
    share = weight_share_outside(cm)
    assert set(share) == {"decomp/weight_share_outside/0", "decomp/weight_share_outside/1"}
    assert share["decomp/weight_share_outside/0"] == pytest.approx(2 / 3)
    assert share["decomp/weight_share_outside/1"] == pytest.approx(4 / 5)
    with torch.no_grad():
        lin.U.zero_()
    assert weight_share_outside(cm)["decomp/weight_share_outside/1"] == pytest.approx(1.0)  # nothing inside
    with torch.no_grad():
        model[1].weight.zero_()  # a zero matrix has no share: its components' norm is reported instead
    assert weight_share_outside(cm) == {
        "decomp/weight_share_outside/0": pytest.approx(2 / 3),
        "decomp/weight_outside_norm/1": pytest.approx(0.0),
    }


def _cm(world, planted, init: InitKind) -> ComponentModel:
    cfg = DecompositionConfig(
        modules=[ModuleSpec(p, 0) for p in MODULES], positions=[-1], init=init, use_delta=False, compile=False
    )
    start = world.vocab.answers_start
    return ComponentModel(decomposition_view(planted, start), cfg, output_fn=AnswerLogits(start))


def _force_ci(cm: ComponentModel, tokens: torch.Tensor, value: float) -> None:
    """Every component's CI set to `value` on this batch (instead of the untrained CI functions)."""
    cm.run_target(tokens)
    ci = {p: torch.full_like(g, value) for p, g in cm.causal_importance().lower.items()}
    cm.causal_importance = lambda: CausalImportance(ci, ci)


def test_with_remainder_is_the_target_when_every_component_is_on(world, planted):
    """Random components with rounded CI all 1: components + remainder = W, whatever the components are."""
    ex = world.examples
    cm = _cm(world, planted, InitKind.random)
    _force_ci(cm, ex.tokens, 1.0)
    m = faithfulness_metrics(cm, ex)
    assert m["decomp/faithfulness/target_accuracy"] > 0.99  # the planted target
    assert m["decomp/faithfulness/with_remainder/accuracy"] == m["decomp/faithfulness/target_accuracy"]
    assert m["decomp/faithfulness/with_remainder/relative_accuracy"] == pytest.approx(1.0)
    assert m["decomp/faithfulness/with_remainder/agreement"] == 1.0
    assert m["decomp/faithfulness/components/agreement"] < 0.9  # random components alone are not the target


def test_with_remainder_when_every_component_is_off(world, planted):
    """CI rounds every component off: the masked model runs the remainder W - ΣUV alone."""
    ex = world.examples
    cm = _cm(world, planted, InitKind.random)
    with torch.no_grad():
        for p in cm.paths:
            cm.component(p).U.zero_()  # ΣUV = 0: the remainder is the whole W
    _force_ci(cm, ex.tokens, 0.0)
    m = faithfulness_metrics(cm, ex)
    assert m["decomp/faithfulness/with_remainder/accuracy"] == m["decomp/faithfulness/target_accuracy"]
    assert m["decomp/faithfulness/with_remainder/agreement"] == 1.0
    assert m["decomp/faithfulness/components/accuracy"] < 0.7  # no decomposed matrix at all: biases only

    exact = _cm(world, planted, InitKind.neurons)  # components start as the hidden units: ΣUV = W, nothing remains
    assert max(weight_share_outside(exact).values()) < 1e-5
    _force_ci(exact, ex.tokens, 0.0)
    m = faithfulness_metrics(exact, ex)
    # the remainder is ~0 (not W): the decomposed matrices are all but ablated, with or without it (ties in the
    # bias-only logits break on float noise, so the two accuracies need not be equal)
    assert m["decomp/faithfulness/with_remainder/accuracy"] < 0.7 and m["decomp/faithfulness/components/accuracy"] < 0.7
    assert m["decomp/faithfulness/with_remainder/agreement"] < 0.7
    assert not [k for k in m if "/with_delta/" in k]
