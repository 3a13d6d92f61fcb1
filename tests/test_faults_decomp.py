"""docs/faults.md, decomposition stage: checkpoints (truncated, foreign, full disk), numerical faults (NaN,
divergence retries), and determinism (config and CLI faults: test_faults.py; target stage: test_faults_target.py).

Each test provokes one fault and checks what the user sees (message, exit code) and what is left on disk.
"""

import errno
import logging
import shutil
from pathlib import Path

import pytest
import torch
from conftest import tiny_mlp, tiny_sparse_batch
from safetensors import safe_open
from safetensors.torch import save_file

from circuitdecomp.checkpoint import (
    CKPT_DIR,
    latest_checkpoint,
    load_checkpoint,
    read_retry,
    retry_from_last_good,
    save_checkpoint,
)
from circuitdecomp.decomp.config import DecompositionConfig, ModuleSpec
from circuitdecomp.decomp.model import ComponentModel
from circuitdecomp.decomp.train import TrainResult, fresh_state, train_decomposition
from circuitdecomp.interrupt import DivergenceError
from circuitdecomp.runio import BadRunFile, DiskFull, load_tensors
from circuitdecomp.world.config import WorldConfig
from circuitdecomp.world.world import make_world, save_world

# ----------------------------------------------------------------------------------- decomposition checkpoints


_model, _sample = tiny_mlp, tiny_sparse_batch


def _cfg(**kw) -> DecompositionConfig:
    base = dict(
        modules=[ModuleSpec("0", 8), ModuleSpec("2", 8)],
        steps=12,
        batch_size=32,
        warmup_steps=5,
        checkpoint_every=4,
        eval_every=4,
        compile=False,
    )
    return DecompositionConfig(**(base | kw))


def _decompose(out_dir, cfg, sample=_sample, seed=0) -> tuple[dict[str, torch.Tensor], TrainResult]:
    torch.manual_seed(seed)
    cm = ComponentModel(_model(), cfg)
    result = train_decomposition(cm, sample, cfg, seed=seed, out_dir=out_dir)
    return {k: v.detach().clone() for k, v in cm.named_trainables().items()}, result


def test_truncated_checkpoint_names_the_file_and_the_fix(tmp_path):
    _decompose(tmp_path, _cfg(steps=4))
    ckpt = latest_checkpoint(tmp_path)
    ckpt.write_bytes(ckpt.read_bytes()[:200])
    with pytest.raises(BadRunFile, match=f"{ckpt.name}.*delete it to resume from the one before"):
        _decompose(tmp_path, _cfg(steps=4))


def test_checkpoint_from_another_config_is_refused(tmp_path):
    _decompose(tmp_path, _cfg(steps=4))
    with pytest.raises(BadRunFile, match=r"written with other settings \(decomposition.modules: .*'C': 8.* -> .*'C': 5"):
        _decompose(tmp_path, _cfg(steps=4, modules=[ModuleSpec("0", 5), ModuleSpec("2", 8)]))
    with pytest.raises(BadRunFile, match=r"written with other settings \(decomposition.lr: 0.001 -> 0.002\)"):
        _decompose(tmp_path, _cfg(steps=4, lr=2e-3))
    with pytest.raises(BadRunFile, match=r"written with other settings \(seed: 0 -> 1\)"):
        _decompose(tmp_path, _cfg(steps=4), seed=1)
    _decompose(tmp_path, _cfg(steps=4, eval_every=2))  # bookkeeping keys may change between run and resume
    other = fresh_state(ComponentModel(_model(), _cfg(modules=[ModuleSpec("0", 5), ModuleSpec("2", 8)])), _cfg(), 0)
    with pytest.raises(BadRunFile, match=r"does not fit this run .*shape mismatch \['0/V', '0/U'"):
        load_checkpoint(latest_checkpoint(tmp_path), other.named, other.opt, other.gens)  # no fingerprint: shapes


def test_disk_full_mid_run_keeps_every_earlier_checkpoint_whole(tmp_path, monkeypatch):
    real_save = save_file
    writes = []

    def fills_the_disk(tensors, filename, metadata=None):
        writes.append(filename)
        if len(writes) < 3:
            return real_save(tensors, filename, metadata=metadata)
        Path(filename).write_bytes(b"half")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("circuitdecomp.runio.save_file", fills_the_disk)
    with pytest.raises(DiskFull, match="disk full while writing .*step_00000008.safetensors; the previous version"):
        _decompose(tmp_path, _cfg(steps=12))
    names = sorted(p.name for p in (tmp_path / CKPT_DIR).iterdir())
    assert names == ["step_00000000.safetensors", "step_00000004.safetensors"]  # no temp file left behind
    assert all(load_tensors(tmp_path / CKPT_DIR / n) for n in names)


def test_full_disk_stops_decomposition_before_its_first_step(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10, 10, 1000))
    with pytest.raises(DiskFull, match=r"only 0 MB free .* needs 1 MB"):
        _decompose(tmp_path, _cfg(), lambda gen: calls.append(1) or _sample(gen))
    assert calls == [] and latest_checkpoint(tmp_path) is None


# ------------------------------------------------------------------------------------------- numerical faults


def _poisoned_at(calls_to_poison: set[int]):
    calls = {"n": 0}

    def sample(gen):
        calls["n"] += 1
        x = _sample(gen)
        return x * float("nan") if calls["n"] in calls_to_poison else x

    return sample


def test_nan_stops_with_step_and_terms_and_keeps_last_good_checkpoint(tmp_path):
    with pytest.raises(
        DivergenceError,
        match=r"decomposition diverged at step 6: total loss nan .*terms: stochastic_recon=nan, "
        r"layerwise_recon=nan, importance_minimality=.*retry_lr_factor=0.5",
    ):
        _decompose(tmp_path, _cfg(), _poisoned_at({7}))
    assert latest_checkpoint(tmp_path).name == "step_00000004.safetensors"


def test_divergence_retries_from_last_good_checkpoint_with_lower_lr(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="circuitdecomp"):
        params, result = _decompose(tmp_path, _cfg(retry_lr_factor=0.5), _poisoned_at({7}))
    assert result.lr_scale == 0.5 and all(torch.isfinite(p).all() for p in params.values())
    assert "diverged at step 6" in caplog.text and "Retry 1/2 from the last periodic checkpoint with lr x 0.5" in caplog.text
    assert read_retry(latest_checkpoint(tmp_path)).lr_scale == 0.5  # a resumed run keeps the lower rate
    assert _decompose(tmp_path, _cfg(retry_lr_factor=0.5))[1].lr_scale == 0.5


def test_retries_are_limited(tmp_path):
    with pytest.raises(DivergenceError, match=r"diverged at step 4.*No retry left \(decomposition.max_retries=2"):
        _decompose(tmp_path, _cfg(retry_lr_factor=0.5), _poisoned_at(set(range(7, 100))))
    assert read_retry(latest_checkpoint(tmp_path)).count == 2


def test_retry_goes_back_to_a_periodic_checkpoint_never_a_signal_one(tmp_path):
    cm = ComponentModel(_model(), _cfg())
    state = fresh_state(cm, _cfg(), 0)
    for step, by_signal in [(4, False), (8, False), (10, True)]:
        save_checkpoint(tmp_path, step, state.named, state.opt, state.gens, by_signal=by_signal)
    retry = retry_from_last_good(tmp_path, 0.5, max_retries=2)
    assert retry.lr_scale == 0.5 and retry.count == 1
    assert [p.name for p in sorted((tmp_path / CKPT_DIR).iterdir())] == ["step_00000004.safetensors", "step_00000008.safetensors"]
    with safe_open(str(tmp_path / CKPT_DIR / "step_00000008.safetensors"), "pt") as f:
        assert f.metadata()["lr_scale"] == "0.5"
    assert load_checkpoint(tmp_path / CKPT_DIR / "step_00000008.safetensors", state.named, state.opt, state.gens) == 8
    assert retry_from_last_good(tmp_path, 0.0, max_retries=2) is None  # off


def test_signal_checkpoints_are_pruned_but_periodic_ones_kept(tmp_path):
    cm = ComponentModel(_model(), _cfg())
    state = fresh_state(cm, _cfg(), 0)
    for step, by_signal in [(0, False), (3, True), (4, False), (6, True), (8, False)]:
        save_checkpoint(tmp_path, step, state.named, state.opt, state.gens, by_signal=by_signal)
    assert [p.name[5:13] for p in sorted((tmp_path / CKPT_DIR).iterdir())] == ["00000004", "00000008"]


# -------------------------------------------------------------------------------------------- determinism


def _same_file_contents(a: Path, b: Path) -> bool:
    """Equal tensors and metadata (safetensors writes its header in hash order, so bytes may differ)."""
    ta, tb = load_tensors(a), load_tensors(b)
    with safe_open(str(a), "pt") as fa, safe_open(str(b), "pt") as fb:
        same_meta = fa.metadata() == fb.metadata()
    return same_meta and ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)


def test_same_seed_and_config_give_identical_world_file(tmp_path):
    cfg = WorldConfig(n_attributes=6, n_animals=12, n_houses=4, n_economies=2, n_facts=2, n_fact_answers=4, attribute_margin=0.25)
    a = save_world(make_world(cfg, 5), tmp_path / "a")
    b = save_world(make_world(cfg, 5), tmp_path / "b")
    c = save_world(make_world(cfg, 6), tmp_path / "c")
    assert _same_file_contents(a, b) and not _same_file_contents(a, c)


def test_same_seed_and_config_give_identical_decomposition(tmp_path):
    a, _ = _decompose(tmp_path / "a", _cfg())
    b, _ = _decompose(None, _cfg())  # with or without checkpoints
    c, _ = _decompose(tmp_path / "c", _cfg(), seed=1)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["0/V"], c["0/V"])
