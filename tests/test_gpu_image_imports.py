"""The Python models of the GPU and TensorRT layouts import with exactly what export/Dockerfile.triton
installs: the packages of its ``pip install`` line, their own dependencies, the project's two
distributions (installed there with ``--no-deps``) and the standard library. Anything else (the
gRPC/HTTP client libraries, rasterio, gradio, scikit-image, ...) is refused by an import hook in a
fresh interpreter, so a new import that the image lacks fails here instead of in the container."""

from __future__ import annotations

import re
import subprocess
import sys
from importlib import metadata

from packaging.requirements import Requirement

from .conftest import ROOT

DOCKERFILE = ROOT / "export" / "Dockerfile.triton"


def image_packages() -> list[str]:
    """The requirement strings of the Dockerfile's third-party ``pip install`` line."""
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    (line,) = [ln for ln in text.splitlines() if "pip install" in ln and "--no-deps" not in ln]
    return re.findall(r'"([^"]+)"', line)


def allowed_modules() -> set[str]:
    """Top-level modules of those packages and their dependencies, as installed here."""
    by_dist: dict[str, set[str]] = {}
    for module, dists in metadata.packages_distributions().items():
        for dist in dists:
            by_dist.setdefault(dist.lower().replace("_", "-"), set()).add(module)
    seen: set[str] = set()
    todo = [Requirement(r).name for r in image_packages()]
    while todo:
        name = todo.pop().lower().replace("_", "-")
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue
        for req in map(Requirement, requires):
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return {module for dist in seen for module in by_dist.get(dist, ())}


GUARD = """
import importlib.abc, sys, types
allowed = set(sys.argv[1].split(",")) | set(sys.stdlib_module_names) | {"hndsr", "hndsr_client"}

class Refuse(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] not in allowed:
            raise ModuleNotFoundError(f"{name} is not installed in the serving image", name=name)
        return None

sys.meta_path.insert(0, Refuse())
sys.modules["triton_python_backend_utils"] = types.ModuleType("triton_python_backend_utils")  # the stub's
import importlib.util
for path in sys.argv[2:]:
    spec = importlib.util.spec_from_file_location("model_" + str(abs(hash(path))), path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert hasattr(module, "TritonPythonModel"), path
print("imported", len(sys.argv) - 2)
"""


def python_models() -> list[str]:
    """model.py of every model whose GPU or TensorRT config uses the Python backend."""
    found = []
    for config in sorted(ROOT.glob("model_repository/*/configs/*.pbtxt")):
        if 'backend: "python"' in config.read_text():
            found.append(str(config.parent.parent / "1" / "model.py"))
    return sorted(set(found))


def test_the_dockerfile_installs_what_the_gpu_layouts_python_models_import():
    models = python_models()
    assert len(models) == 3, models  # hndsr, hndsr_stream, hndsr_core: the stages are ONNX/TensorRT there
    allowed = allowed_modules()
    assert {"torch", "numpy", "PIL", "safetensors", "typer"} <= allowed
    assert "tritonclient" not in allowed and "rasterio" not in allowed
    done = subprocess.run(
        [sys.executable, "-c", GUARD, ",".join(sorted(allowed)), *models],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == "imported 3"


def test_the_guard_refuses_a_package_the_image_lacks(tmp_path):
    model = tmp_path / "model.py"
    model.write_text("import tritonclient.grpc\n\nclass TritonPythonModel:\n    pass\n")
    done = subprocess.run(
        [sys.executable, "-c", GUARD, ",".join(sorted(allowed_modules())), str(model)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode != 0 and "tritonclient is not installed in the serving image" in done.stderr
