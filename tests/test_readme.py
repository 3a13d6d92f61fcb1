"""The README's code example runs as written."""

import re
from pathlib import Path

from conftest import REPO


def test_readme_api_example_runs(tmp_path, monkeypatch):
    text = (Path(REPO) / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    example = next(b for b in blocks if "decompose(" in b)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(example.replace("DecompositionConfig(steps=200", "DecompositionConfig(compile=False, steps=200"),
                 "README.md", "exec"), namespace)
    assert namespace["V"].shape == (8, 16) and namespace["U"].shape == (16, 4)
    assert (tmp_path / "decomposition.safetensors").exists()
