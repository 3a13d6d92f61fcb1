"""Run directories: atomic writes of configs, tensors, metrics and figures, and reading a run back."""

import dataclasses
import errno
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping
from enum import Enum
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

METRICS_FILE = "metrics.json"
Metrics = dict[str, float | int]  # flat, namespaced: "stage/group/name" -> number
CONFIG_FILE = "config.yaml"
MIN_FREE_MB = 200  # a floor for every run: world, target, checkpoints and wandb files of the configs here take < 50 MB


class RunFileError(Exception):
    """A file or directory of a run is missing, unreadable or does not fit: the CLI prints it in one line (exit 2)."""


class MissingRunFile(RunFileError, FileNotFoundError):
    """A file or run directory that should be there is not."""


class BadRunFile(RunFileError, ValueError):
    """A file that is there but truncated, corrupt, incomplete or written for another config."""


class DiskFull(RunFileError, OSError):
    """Not enough free space for the next write; what was written before is complete and kept."""


def atomic_write(path: Path, write: Callable[[Path], None]) -> Path:
    """Write via `write(tmp)` into a temp file beside `path`, then rename: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except OSError as err:
        if err.errno == errno.ENOSPC:
            raise DiskFull(
                f"disk full while writing {path}; the previous version of the file (if any) is intact: "
                "free space and re-run the same command"
            ) from err
        raise
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def check_writable(out_dir: Path, min_free_mb: int = MIN_FREE_MB) -> None:
    """Fail before any work when the run directory cannot be written or its disk is nearly full."""
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        probe = out_dir / ".write-probe"
        probe.write_text("ok")
        probe.unlink()
    except OSError as err:
        raise OSError(
            f"cannot write to the run directory {out_dir}: {err.strerror or err}; pick another with hydra.run.dir=..."
        ) from err
    check_free_space(out_dir, min_free_mb * 2**20, "this run")


def check_free_space(out_dir: Path, need_bytes: int, what: str) -> None:
    """Raise DiskFull unless the disk of `out_dir` has `need_bytes` free."""
    free = shutil.disk_usage(out_dir).free
    if free < need_bytes:
        raise DiskFull(
            f"only {free // 2**20} MB free on the disk of {out_dir}, {what} needs {-(-need_bytes // 2**20)} MB; "
            "free space or pick another hydra.run.dir"
        )


def write_text(path: Path, text: str) -> Path:
    """Atomically write a text file."""
    return atomic_write(path, lambda tmp: tmp.write_text(text))


def to_plain(obj: Any) -> Any:
    """Dataclasses, enums, tuples and paths -> JSON/YAML-safe builtins."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, Enum):
        return obj.value
    if isinstance(obj, Mapping):
        return {str(k): to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_plain(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj


def save_config(out_dir: Path, cfg: Any) -> Path:
    """Write the resolved config as `config.yaml`."""
    return write_text(Path(out_dir) / CONFIG_FILE, yaml.safe_dump(to_plain(cfg), sort_keys=False))


def load_saved_config(out_dir: Path) -> dict[str, Any] | None:
    """A run's `config.yaml` as a plain dict (None when there is none), naming the file when it is unreadable."""
    path = Path(out_dir) / CONFIG_FILE
    if not path.is_file():
        return None
    try:
        config = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise BadRunFile(f"{path} is not valid YAML: {str(err).splitlines()[0]}") from err
    if config is not None and not isinstance(config, dict):
        raise BadRunFile(f"{path} holds a {type(config).__name__}, not a config mapping")
    return config or {}


def config_differences(saved: Mapping[str, Any], current: Mapping[str, Any], ignore: tuple[str, ...] = ()) -> list[str]:
    """`key: saved -> current` for every dotted key whose value differs (keys starting with `ignore` skipped)."""

    def flat(d: Any, prefix: str = "") -> dict[str, Any]:
        if not isinstance(d, Mapping):
            return {prefix[:-1]: d}
        return {k: v for key, val in d.items() for k, v in flat(val, f"{prefix}{key}.").items()}

    a, b = flat(saved), flat(to_plain(current))
    keys = sorted(k for k in set(a) | set(b) if not k.startswith(ignore) and a.get(k, "<absent>") != b.get(k, "<absent>"))
    return [f"{k}: {a.get(k, '<absent>')} -> {b.get(k, '<absent>')}" for k in keys]


def save_tensors(path: Path, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None) -> Path:
    """Atomically save a flat {name: tensor} map as safetensors (contiguous CPU copies)."""
    plain = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    return atomic_write(path, lambda tmp: save_file(plain, str(tmp), metadata=dict(metadata or {})))


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    """Load a safetensors file, naming the file when it is missing or unreadable."""
    path = Path(path)
    if not path.is_file():
        raise MissingRunFile(f"tensor file not found: {path}")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as err:
        raise BadRunFile(f"cannot read {path}: {err} (is it truncated or from another program?)") from err


def require_keys(tensors: Mapping[str, torch.Tensor], keys: list[str], path: Path) -> None:
    """Fail naming the file and the missing keys."""
    missing = [k for k in keys if k not in tensors]
    if missing:
        raise BadRunFile(f"{path} lacks keys {missing}; it has {sorted(tensors)}")


def load_module_state(module: torch.nn.Module, path: Path) -> None:
    """Load a safetensors state dict into `module` strictly; a file made for another config fails naming it."""
    saved = load_tensors(path)
    own = module.state_dict()
    missing, unexpected = sorted(set(own) - set(saved)), sorted(set(saved) - set(own))
    shapes = [
        f"{k}: file {tuple(saved[k].shape)}, model {tuple(own[k].shape)}"
        for k in own
        if k in saved and saved[k].shape != own[k].shape
    ]
    if missing or unexpected or shapes:
        raise BadRunFile(
            f"{path} does not fit this model (written with another config?): missing {missing[:3]}, "
            f"unexpected {unexpected[:3]}, shape mismatch {shapes[:3]}; use the config it was made "
            "with, or delete the file to make it again"
        )
    module.load_state_dict(saved, strict=True)


def update_metrics(out_dir: Path, metrics: Mapping[str, float | int | str]) -> dict[str, Any]:
    """Merge flat, namespaced metrics (`stage/group/name`) into `metrics.json` and return all of them."""
    for key in metrics:
        if not isinstance(key, str) or "/" not in key:
            raise ValueError(f"metric key {key!r} must be namespaced like 'stage/name'")
    path = Path(out_dir) / METRICS_FILE
    merged = load_metrics(out_dir) if path.exists() else {}
    merged.update({k: to_plain(v) for k, v in metrics.items()})
    write_text(path, json.dumps(merged, indent=1, sort_keys=True))
    return merged


def load_metrics(out_dir: Path) -> dict[str, Any]:
    """Read `metrics.json` of a run."""
    path = Path(out_dir) / METRICS_FILE
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise BadRunFile(f"{path} is not valid JSON: {err}") from err


def save_figure(out_dir: Path, name: str, fig: Any) -> Path:
    """Save a matplotlib figure as `<name>.png`, atomically."""
    return atomic_write(Path(out_dir) / f"{name}.png", lambda tmp: fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight"))


@dataclasses.dataclass(frozen=True)
class Run:
    """A run directory read back: its config (plain dict), metrics and tensor files (loaded lazily)."""

    path: Path
    config: dict[str, Any]
    metrics: dict[str, Any]

    def tensors(self, name: str) -> dict[str, torch.Tensor]:
        """Load `<name>.safetensors` from the run."""
        return load_tensors(self.path / f"{name}.safetensors")

    @property
    def tensor_files(self) -> list[str]:
        return sorted(p.stem for p in self.path.glob("*.safetensors"))

    @property
    def figures(self) -> list[Path]:
        return sorted(self.path.glob("*.png"))


def load_run(path: Path) -> Run:
    """Read a run directory written by any script."""
    path = Path(path)
    if not path.is_dir():
        raise MissingRunFile(f"run directory not found: {path}")
    config = load_saved_config(path)
    if config is None:
        raise MissingRunFile(f"{path} is not a run directory: it has no {CONFIG_FILE}")
    metrics = load_metrics(path) if (path / METRICS_FILE).exists() else {}
    return Run(path=path, config=config, metrics=metrics)
