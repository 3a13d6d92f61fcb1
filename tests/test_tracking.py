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
