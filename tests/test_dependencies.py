"""Dependencies that say what is used: every third-party import is declared in pyproject.toml (the base or
an extra), imports of an extra stay out of a module's top level (a base install must import every module),
and requirements.lock pins every declared dependency at the version pyproject.toml declares. No network:
the lock is read, never regenerated (`make lock` does that)."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
import tomllib
from functools import cache
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = ROOT / "pyproject.toml"
LOCK = ROOT / "requirements.lock"
MAKEFILE = ROOT / "Makefile"
FIRST_PARTY = {"stylecore", "flows"}
LOCK_LINE = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)==(?P<version>\S+)\s*(?:;\s*(?P<marker>.+))?$")


@cache
def project() -> dict:
    return tomllib.loads(PYPROJECT.read_text())["project"]


def requirements(group: str | None) -> list[Requirement]:
    """The base's requirements (group None) or an extra's."""
    raw = project()["dependencies"] if group is None else project()["optional-dependencies"][group]
    return [Requirement(line) for line in raw]


def names(group: str | None) -> set[str]:
    return {canonicalize_name(r.name) for r in requirements(group) if r.name != project()["name"]}


def base() -> set[str]:
    return names(None)


def extras() -> dict[str, set[str]]:
    return {extra: names(extra) for extra in project()["optional-dependencies"]}


def declared() -> set[str]:
    return base().union(*extras().values())


@cache
def module_distributions() -> dict[str, list[str]]:
    return importlib.metadata.packages_distributions()


def distributions_of(module: str) -> set[str]:
    """The distributions that provide the top-level `module`: from what is installed, else by its name
    (an extra's module that this environment lacks, e.g. ray on a base install)."""
    found = module_distributions().get(module)
    if found:
        return {canonicalize_name(d) for d in found}
    return {canonicalize_name(module)}


def imports(path: Path) -> list[tuple[int, str, bool]]:
    """(line, top-level module, at the module's top level) for each absolute import in `path`; imports inside
    a function, a try or an if (TYPE_CHECKING) are not at the top level: they run only on their path."""
    tree = ast.parse(path.read_text(), filename=str(path))
    top_level = {id(node) for node in tree.body}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            modules = [node.module]
        else:
            continue
        for module in modules:
            found.append((node.lineno, module.split(".")[0], id(node) in top_level))
    return found


def third_party(path: Path, local: set[str]) -> list[tuple[int, str, bool]]:
    skip = set(sys.stdlib_module_names) | FIRST_PARTY | local | {"__future__"}
    return [(line, module, top) for line, module, top in imports(path) if module not in skip]


def sources(folder: str) -> list[Path]:
    return sorted((ROOT / folder).rglob("*.py"))


@pytest.mark.parametrize("folder", ["stylecore", "flows"])
def test_package_imports_are_declared(folder):
    problems = []
    for path in sources(folder):
        for line, module, top in third_party(path, set()):
            where = f"{path.relative_to(ROOT)}:{line} imports {module}"
            dists = distributions_of(module)
            if not dists & declared():
                problems.append(f"{where} ({', '.join(sorted(dists))}): declare it in pyproject.toml")
            elif top and not dists & base():
                extra = next(e for e, n in extras().items() if dists & n)
                problems.append(
                    f"{where} at the top level, but it is only in the {extra} extra: import it where it is used, "
                    f"with a one-line error naming the extra when it is missing"
                )
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("folder", ["tests", "bench"])
def test_test_and_bench_imports_are_declared(folder):
    local = {p.stem for p in (ROOT / folder).rglob("*.py")}  # helpers beside the tests: images, conftest, ...
    problems = []
    for path in sources(folder):
        for line, module, _ in third_party(path, local):
            dists = distributions_of(module)
            if not dists & declared():
                problems.append(f"{path.relative_to(ROOT)}:{line} imports {module} ({', '.join(sorted(dists))})")
    assert not problems, "undeclared (add them to the base or the test extra):\n" + "\n".join(problems)


def test_a_package_pinned_twice_is_pinned_alike():
    seen: dict[str, tuple[str, str]] = {}
    for group in [None, *project()["optional-dependencies"]]:
        for requirement in requirements(group):
            name = canonicalize_name(requirement.name)
            spec = str(requirement.specifier)
            if name in seen and seen[name][1] != spec:
                pytest.fail(f"{name}: {spec} in {group or 'the base'} but {seen[name][1]} in {seen[name][0]}")
            seen.setdefault(name, (group or "the base", spec))


# --- requirements.lock ----------------------------------------------------------------------------------


@cache
def lock() -> dict[str, list[Version]]:
    """Name → the versions the lock pins (more than one where markers split it, e.g. by Python version)."""
    assert LOCK.is_file(), "requirements.lock is missing: run `make lock`"
    pinned: dict[str, list[Version]] = {}
    for raw in LOCK.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        match = LOCK_LINE.match(line)
        assert match, f"requirements.lock: {line!r} is not NAME==VERSION [; MARKER]"
        pinned.setdefault(canonicalize_name(match["name"]), []).append(Version(match["version"]))
    return pinned


@pytest.mark.parametrize("group", [None, "ray", "kubernetes", "fetch", "test"], ids=lambda g: g or "base")
def test_lock_pins_every_declared_dependency_as_declared(group):
    if group is not None and group not in project()["optional-dependencies"]:
        pytest.skip(f"no {group} extra")
    for requirement in requirements(group):
        name = canonicalize_name(requirement.name)
        assert name in lock(), f"{name} ({group or 'base'}) is not in requirements.lock: run `make lock`"
        for version in lock()[name]:
            assert requirement.specifier.contains(version, prereleases=True), (
                f"requirements.lock pins {name}=={version}, pyproject.toml declares {requirement}: run `make lock`"
            )


def test_lock_pins_torch_and_its_cuda_libraries():
    """torch and torchvision exactly (other releases are gigabytes away), and the CUDA libraries torch asks for."""
    assert lock()["torch"] == [Version("2.14.1")]
    assert lock()["torchvision"] == [Version("0.29.1")]
    try:
        torch = importlib.metadata.distribution("torch")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("torch is not installed")
    for line in torch.requires or []:
        requirement = Requirement(line)
        if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
            assert canonicalize_name(requirement.name) in lock(), f"torch needs {requirement.name}; the lock lacks it"


def lock_header_extras() -> set[str]:
    header = [line for line in LOCK.read_text().splitlines()[:5] if "pip compile" in line]
    assert header, "requirements.lock does not start with the command that made it (uv pip compile ...)"
    return set(re.findall(r"--extra[ =](\S+)", header[0]))


def test_lock_covers_every_extra_and_make_lock_regenerates_it():
    assert lock_header_extras() == set(project()["optional-dependencies"]), (
        "requirements.lock was not compiled with every extra: add it to LOCK_EXTRAS in the Makefile, run `make lock`"
    )
    makefile = MAKEFILE.read_text()
    assert re.search(r"^lock:", makefile, re.M), "the Makefile has no `lock` target"
    assert set(re.findall(r"--extra (\S+)", makefile)) == lock_header_extras()


def test_make_setup_installs_the_lock():
    recipe = re.search(r"^\$\(STAMP\):.*\n((?:\t.*\n)+)", MAKEFILE.read_text(), re.M)
    assert recipe, "the Makefile's setup stamp recipe is missing"
    assert "requirements.lock" in recipe.group(0), "`make setup` does not install requirements.lock"


# --- a path whose extra is missing says so in one line ------------------------------------------------------


def test_vgg16_conversion_without_the_fetch_extra_names_it_before_downloading(monkeypatch, tmp_path):
    from stylecore import weights
    from stylecore.errors import WeightsMissing

    monkeypatch.setitem(sys.modules, "onnx", None)  # `import onnx` raises ImportError, as when it is absent
    monkeypatch.setattr(weights, "offline_vgg16_file", lambda: tmp_path / "vgg16.pth")
    monkeypatch.setattr(weights.subprocess, "run", lambda *a, **k: pytest.fail("downloaded before checking onnx"))
    with pytest.raises(WeightsMissing) as missing:
        weights.fetch_offline_vgg16()
    message = str(missing.value)
    assert "\n" not in message and "pip install 'stylize[fetch]'" in message, message


def test_ray_runner_without_the_ray_extra_names_it(monkeypatch):
    from flows import dispatch
    from stylecore.errors import StyleError

    monkeypatch.setitem(sys.modules, "ray", None)
    monkeypatch.setitem(sys.modules, "prefect_ray", None)
    with pytest.raises(StyleError) as missing:
        with dispatch._ray(None):
            pass
    message = str(missing.value)
    assert "\n" not in message and "pip install 'stylize[ray]'" in message, message
