"""Run directories: atomic writes of configs, tensors, metrics and figures, and reading a run back."""

import dataclasses
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


def atomic_write(path: Path, write: Callable[[Path], None]) -> Path:
    """Write via `write(tmp)` into a temp file beside `path`, then rename: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def check_writable(out_dir: Path, min_free_mb: int = 200) -> None:
    """Fail before any work when the run directory cannot be written or its disk is nearly full."""
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        probe = out_dir / ".write-probe"
        probe.write_text("ok")
        probe.unlink()
    except OSError as err:
        raise OSError(f"cannot write to the run directory {out_dir}: {err.strerror or err}; "
                      "pick another with hydra.run.dir=...") from err
    free_mb = shutil.disk_usage(out_dir).free // 2**20
    if free_mb < min_free_mb:
        raise OSError(f"only {free_mb} MB free on the disk of {out_dir} (need {min_free_mb} MB); free space or "
                      "pick another hydra.run.dir")


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


def save_tensors(path: Path, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None) -> Path:
    """Atomically save a flat {name: tensor} map as safetensors (contiguous CPU copies)."""
    plain = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    return atomic_write(path, lambda tmp: save_file(plain, str(tmp), metadata=dict(metadata or {})))


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    """Load a safetensors file, naming the file when it is missing or unreadable."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"tensor file not found: {path}")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as err:
        raise ValueError(f"cannot read {path}: {err} (is it truncated or from another program?)") from err


def require_keys(tensors: Mapping[str, torch.Tensor], keys: list[str], path: Path) -> None:
    """Fail naming the file and the missing keys."""
    missing = [k for k in keys if k not in tensors]
    if missing:
        raise KeyError(f"{path} lacks keys {missing}; it has {sorted(tensors)}")


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
        raise ValueError(f"{path} is not valid JSON: {err}") from err


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
        raise FileNotFoundError(f"run directory not found: {path}")
    config_path = path / CONFIG_FILE
    if not config_path.is_file():
        raise FileNotFoundError(f"{path} is not a run directory: it has no {CONFIG_FILE}")
    config = yaml.safe_load(config_path.read_text()) or {}
    metrics = load_metrics(path) if (path / METRICS_FILE).exists() else {}
    return Run(path=path, config=config, metrics=metrics)
