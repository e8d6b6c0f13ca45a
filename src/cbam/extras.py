"""The optional parts of `cbam` and the packages each needs: pyproject's extras, checked where they are used.

`pip install cbam` gives the layers, the model zoo, training and evaluation on image folders, profiling and
conversion; a command that needs an extra says which one in one line (a `DependencyError`).
"""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType

from cbam.errors import DependencyError

EXTRAS: dict[str, dict[str, str]] = {
    "survey": {
        "starlette": "starlette",
        "uvicorn": "uvicorn",
        "jinja2": "jinja2",
        "python-multipart": "multipart",
        "scipy": "scipy",
        "grad-cam": "pytorch_grad_cam",
    },
    "detection": {"pycocotools": "pycocotools"},
    "explain": {"grad-cam": "pytorch_grad_cam", "matplotlib": "matplotlib"},
    "digits": {"scikit-learn": "sklearn"},
    "timm": {"timm": "timm"},
    "compare": {"scipy": "scipy", "matplotlib": "matplotlib"},
    "cluster": {"submitit": "submitit"},
}
"""Each extra's packages: distribution name -> the module it installs."""


def missing_extra(extra: str, feature: str) -> DependencyError:
    """The one-line error for `feature` without `extra`: the packages it needs and the pip command."""
    return DependencyError(f"{feature} needs {', '.join(EXTRAS[extra])}: pip install 'cbam[{extra}]'")


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def require_extra(extra: str, feature: str) -> None:
    """Raise `missing_extra` unless every package of `extra` is installed (found, not imported: cheap)."""
    if not all(_installed(module) for module in EXTRAS[extra].values()):
        raise missing_extra(extra, feature)


def import_optional(module: str, extra: str, feature: str) -> ModuleType:
    """`module` imported, or `missing_extra(extra, feature)` raised when it (or what it needs) is not installed."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise missing_extra(extra, feature) from err
