"""The optimisation loop: resuming reproduces an uninterrupted run; divergence stops and keeps the checkpoint."""

import os
import signal

import pytest
import torch
from conftest import tiny_mlp, tiny_sparse_batch

from circuitdecomp.checkpoint import latest_checkpoint
from circuitdecomp.decomp.config import DecompositionConfig, ModuleSpec
from circuitdecomp.decomp.model import ComponentModel
from circuitdecomp.decomp.train import DivergenceError, train_decomposition
from circuitdecomp.interrupt import Interrupted

_model, _sample = tiny_mlp, tiny_sparse_batch


def _cfg(**kw) -> DecompositionConfig:
    base = dict(
        modules=[ModuleSpec("0", 8), ModuleSpec("2", 8)],
        steps=12,
        batch_size=32,
        warmup_steps=5,
        checkpoint_every=4,
        eval_every=4,
        subset_recon_coeff=1.0,
        faithfulness_coeff=0.5,
    )
    return DecompositionConfig(**(base | kw))


def _trained(out_dir, cfg, sample=_sample) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    cm = ComponentModel(_model(), cfg)
    train_decomposition(cm, sample, cfg, seed=0, out_dir=out_dir)
    return {k: v.detach().clone() for k, v in cm.named_trainables().items()}


def test_sigterm_checkpoints_and_resume_reproduces_uninterrupted_run(tmp_path):
    straight = _trained(tmp_path / "a", _cfg())
    calls = {"n": 0}

    def sample_then_sigterm(gen):
        calls["n"] += 1
        if calls["n"] == 7:
            os.kill(os.getpid(), signal.SIGTERM)  # arrives mid-step 6; the loop stops before step 7
        return _sample(gen)

    with pytest.raises(Interrupted, match="SIGTERM at step 7"):
        _trained(tmp_path / "b", _cfg(), sample_then_sigterm)
    assert latest_checkpoint(tmp_path / "b").name == "step_00000007.safetensors"
    resumed = _trained(tmp_path / "b", _cfg())
    assert straight.keys() == resumed.keys()
    for k in straight:
        assert torch.equal(straight[k], resumed[k]), k


def test_divergence_stops_with_named_step_and_terms(tmp_path):
    cfg = _cfg(steps=8, max_loss=1e-9)  # any loss counts as diverged
    cm = ComponentModel(_model(), cfg)
    with pytest.raises(DivergenceError, match=r"step 0: .*terms: .*stochastic_recon="):
        train_decomposition(cm, _sample, cfg, seed=0, out_dir=tmp_path)


def test_nan_input_is_caught(tmp_path):
    cfg = _cfg(steps=8, checkpoint_every=2)
    cm = ComponentModel(_model(), cfg)
    calls = {"n": 0}

    def poisoned(gen):
        calls["n"] += 1
        x = _sample(gen)
        return x * float("nan") if calls["n"] > 4 else x

    with pytest.raises(DivergenceError, match="step 4"):
        train_decomposition(cm, poisoned, cfg, seed=0, out_dir=tmp_path)
    assert latest_checkpoint(tmp_path).name == "step_00000004.safetensors"  # the last good state is kept


def test_restarts_continue_the_best_initialisation(tmp_path, caplog):
    import logging

    cfg = _cfg(steps=10, restarts=3, restart_steps=4, restart_eval_batches=2)
    cm = ComponentModel(_model(), cfg)
    with caplog.at_level(logging.INFO, logger="circuitdecomp.decomp.restarts"):
        result = train_decomposition(cm, _sample, cfg, seed=0, out_dir=tmp_path)
    scores = [
        float(r.getMessage().split("loss ")[1].split(" ")[0]) for r in caplog.records if "held-out SPD loss" in r.getMessage()
    ]
    chosen = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("continuing restart"))
    assert len(scores) == 3 and f"restart {scores.index(min(scores)) + 1} " in chosen
    assert result.steps_done == 6  # 10 steps in all, 4 of them inside the restart phase


def test_ci_warmup_trains_only_the_ci_functions():
    """ci_warmup_steps: components stay at their start (here the exact init=neurons one) while the CI functions move."""
    from circuitdecomp.decomp.config import InitKind

    cfg = _cfg(init=InitKind.neurons, ci_warmup_steps=5, steps=5, ci_init_bias=0.5, ci_lr_scale=10.0, compile=False)
    cm = ComponentModel(_model(), cfg)
    start = {k: v.detach().clone() for k, v in cm.named_trainables().items()}
    train_decomposition(cm, _sample, cfg, seed=0)
    after = cm.named_trainables()
    for k, v in start.items():
        assert (not torch.equal(after[k].detach(), v)) == ("/ci/" in k), k
