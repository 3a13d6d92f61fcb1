from pathlib import Path

from circuitdecomp.tracking import NullLogger, TrackingConfig, TrackingMode, make_logger


def test_tests_run_with_wandb_disabled(tmp_path):
    logger = make_logger(TrackingConfig(mode=TrackingMode.offline), tmp_path, {"a": 1}, "t")
    assert isinstance(logger, NullLogger)
    logger.log({"x/y": 1.0}, step=0)
    logger.log_figure("f", object())
    logger.log_artifact(Path("nowhere"), "n", "model")
    logger.finish()
    assert not (tmp_path / "wandb").exists()


def test_offline_run_writes_into_run_dir(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_MODE")
    logger = make_logger(TrackingConfig(mode=TrackingMode.offline), tmp_path, {"seed": 3}, "t")
    logger.log({"decomp/train/loss": 0.5}, step=1)
    logger.finish()
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("run-*.wandb"))


def test_each_stage_gets_its_own_step_axis(tmp_path, monkeypatch, capfd):
    """Target training then decomposition, both counting from 0: wandb's global step must only grow, so stage steps
    go in `<stage>/step` (passing step= made wandb drop every decomposition point below the target's last step)."""
    monkeypatch.delenv("WANDB_MODE")
    logger = make_logger(TrackingConfig(mode=TrackingMode.offline), tmp_path, {}, "t")
    rows, kwargs = [], []
    real_log = logger.run.log

    def spy(row, **kw):
        rows.append(dict(row))
        kwargs.append(kw)
        real_log(row, **kw)

    logger.run.log = spy
    for step in range(0, 300, 100):
        logger.log({"target/loss": 1.0}, step=step)
    for step in range(0, 200, 100):
        logger.log({"decomp/loss": 1.0, "decomp/ci_l0/x": 2.0}, step=step)
    logger.finish()
    assert all("step" not in kw for kw in kwargs)
    assert [r.get("target/step") for r in rows[:3]] == [0, 100, 200]
    assert [r.get("decomp/step") for r in rows[3:]] == [0, 100]
    assert "monotonically increasing" not in capfd.readouterr().err
