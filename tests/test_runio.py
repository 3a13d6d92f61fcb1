import json

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pytest
import torch

from circuitdecomp.runio import load_run, load_tensors, save_config, save_figure, save_tensors, update_metrics


def test_run_round_trip(tmp_path):
    save_config(tmp_path, {"world": {"n_animals": 3}, "seed": 1})
    save_tensors(tmp_path / "world.safetensors", {"a": torch.arange(6.0).reshape(2, 3)})
    update_metrics(tmp_path, {"target/accuracy/size": 0.5})
    update_metrics(tmp_path, {"target/accuracy/fact": 1.0})
    fig, ax = plt.subplots()
    ax.plot([0, 1])
    save_figure(tmp_path, "curve", fig)
    run = load_run(tmp_path)
    assert run.config == {"world": {"n_animals": 3}, "seed": 1}
    assert run.metrics == {"target/accuracy/size": 0.5, "target/accuracy/fact": 1.0}
    assert torch.equal(run.tensors("world")["a"], torch.arange(6.0).reshape(2, 3))
    assert run.tensor_files == ["world"] and [p.name for p in run.figures] == ["curve.png"]
    assert json.loads((tmp_path / "metrics.json").read_text())["target/accuracy/size"] == 0.5


def test_metric_keys_must_be_namespaced(tmp_path):
    with pytest.raises(ValueError, match="namespaced"):
        update_metrics(tmp_path, {"accuracy": 1.0})


def test_load_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="no config.yaml"):
        load_run(tmp_path)
    bad = tmp_path / "t.safetensors"
    bad.write_bytes(b"\x00\x01garbage")
    with pytest.raises(ValueError, match="t.safetensors"):
        load_tensors(bad)


def test_collect_gathers_runs_into_one_table(tmp_path):
    from circuitdecomp.collect import collect

    for seed in (0, 1):
        run = tmp_path / "sweep" / str(seed)
        save_config(run, {"decomposition": {"seed": seed}})
        update_metrics(run, {"decomp/mmcs": 0.5 + seed, "decomp/other": 1})
        update_metrics(run / "spd_random_start", {"decomp/mmcs": 9.0})  # a stage's sub-dir: part of its run, no config
    table = collect([tmp_path / "sweep"], ["decomp/mmcs"], ["decomposition.seed"])
    assert table.columns == ["run", "decomposition.seed", "decomp/mmcs"]
    assert [row[1:] for row in table.rows] == [[0, 0.5], [1, 1.5]]
    assert "| 1 | 1.5 |" in table.markdown() and table.csv().count("\n") == 3
    with pytest.raises(FileNotFoundError, match="no metrics.json"):
        collect([tmp_path / "empty"], ["*"], [])


def test_unwritable_or_full_run_dir_fails_before_work(tmp_path, monkeypatch):
    import os
    import shutil

    from circuitdecomp.runio import check_writable

    check_writable(tmp_path / "new")  # creates it
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    if os.geteuid() != 0:  # root ignores permission bits
        with pytest.raises(OSError, match="cannot write to the run directory"):
            check_writable(locked / "run")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(OSError, match="cannot write to the run directory"):
        check_writable(blocker / "run")  # a path under a regular file
    monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10, 10, 5 * 2**20))
    with pytest.raises(OSError, match="only 5 MB free"):
        check_writable(tmp_path / "new")
