"""Imports flow one way: models <- training, models <- service; training and service never meet;
bench and tests sit on top (tests may use bench's helpers, bench never imports tests)."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = {
    "models": {"training", "service", "bench", "tests"},
    "training": {"service", "bench", "tests"},
    "service": {"training", "bench", "tests"},
    "bench": {"tests"},
}


def project_files(package: str) -> list[Path]:
    """The package's own sources (not bench/.venv-anomalib or bench/work)."""
    return [p for p in (ROOT / package).rglob("*.py")
            if not any(part.startswith(".") or part == "work" for part in p.relative_to(ROOT).parts)]


def imported_packages(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names.append(node.module or "")
    return names


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_imports_respect_layering(package):
    bad = [f"{path.relative_to(ROOT)}: {n}" for path in project_files(package)
           for n in imported_packages(path) if n.split(".")[0] in FORBIDDEN[package]]
    assert not bad, bad


def test_layering_check_catches_a_violation(tmp_path):
    bad = tmp_path / "x.py"
    bad.write_text("from tests.helpers import save_version\nimport service.app\n")
    assert [n.split(".")[0] for n in imported_packages(bad)] == ["tests", "service"]


def test_no_sys_path_edits_in_the_project():
    offenders = [str(p.relative_to(ROOT)) for pkg in ("models", "training", "service", "bench", "tests")
                 for p in project_files(pkg) if "sys.path" in p.read_text() and p.name != "test_layering.py"]
    assert not offenders, offenders
