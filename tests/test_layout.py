"""The library's shape: stage deps cover what each stage runs, no import cycles, small modules,
one model registry that dvc.yaml follows."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import yaml

from brainad.codebase import PACKAGE_ROOT, files_digest, import_closure, module_file
from brainad.models import registry

REPO = Path(__file__).resolve().parents[1]
MAX_MODULE_LINES = 460  # "no module over ~400 lines"
PACKAGES = ("data", "models", "scoring", "training", "evaluation")
# data flows down this list, never back up (a package may import only those before it)
ORDER = ("config", "utils", "runtime", "codebase", "metrics", "stage", *PACKAGES, "cli")


def _dvc() -> dict:
    return yaml.safe_load((REPO / "dvc.yaml").read_text())


def _stage_entry(stage: dict) -> Path:
    found = re.search(r"python (stages/\w+\.py)", stage["do"]["cmd"])
    assert found, stage["do"]["cmd"]
    return REPO / found.group(1)


def _covered(path: Path, deps: list[str]) -> bool:
    relative = path.relative_to(REPO).as_posix()
    return any(relative == d or relative.startswith(d.rstrip("/") + "/") for d in deps)


@pytest.mark.parametrize("name", sorted(_dvc()["stages"]))
def test_stage_deps_cover_the_import_closure(name: str) -> None:
    """Every library file a stage's entrypoint imports (at any depth, also inside functions) is
    a dep of that stage, and every listed library dep is used: dvc.lock cannot credit a result
    to code that did not make it, nor miss code that did."""
    stage = _dvc()["stages"][name]
    deps = [d if isinstance(d, str) else next(iter(d)) for d in stage["do"]["deps"]]
    entry = _stage_entry(stage)
    closure = import_closure([entry])
    assert entry.relative_to(REPO).as_posix() in deps, f"{name}: the entrypoint is not a dep"
    missing = [p.relative_to(REPO).as_posix() for p in closure if not _covered(p, deps)]
    assert not missing, f"{name}: add these to its deps in dvc.yaml: {missing}"
    library = [d for d in deps if d.startswith("src/")]
    unused = [d for d in library if not any(_covered(p, [d]) for p in closure)]
    assert not unused, f"{name}: deps it never imports: {unused}"


def test_closure_sees_imports_inside_functions(tmp_path: Path) -> None:
    script = tmp_path / "entry.py"
    script.write_text("def main():\n    from brainad.evaluation import report\n")
    closure = {p.relative_to(PACKAGE_ROOT).as_posix() for p in import_closure([script])}
    assert "evaluation/report.py" in closure and "evaluation/__init__.py" in closure
    assert "metrics.py" in closure  # imported by report.py's own imports


def test_training_fingerprint_follows_the_train_closure() -> None:
    """The resume fingerprint hashes the same closure the train stages depend on."""
    from brainad.training.fingerprint import code_checksum

    files = import_closure(["brainad.training.runner"])
    assert PACKAGE_ROOT / "training" / "loop.py" in files
    assert PACKAGE_ROOT / "models" / "vqgan.py" in files
    assert code_checksum() == files_digest(files)


def _module_of(path: Path) -> str:
    relative = path.relative_to(PACKAGE_ROOT).with_suffix("")
    parts = relative.parts[:-1] if relative.name == "__init__" else relative.parts
    return ".".join(("brainad", *parts))


def _runtime_nodes(tree: ast.AST) -> list[ast.AST]:
    """Every node except those under ``if TYPE_CHECKING:`` (type-only imports never run)."""
    skipped = {
        id(n)
        for block in ast.walk(tree)
        if isinstance(block, ast.If) and getattr(block.test, "id", "") == "TYPE_CHECKING"
        for child in block.body
        for n in ast.walk(child)
    }
    return [n for n in ast.walk(tree) if id(n) not in skipped]


def _edges() -> dict[str, set[str]]:
    """module → brainad modules it imports at run time (any depth in the file)."""
    graph: dict[str, set[str]] = {}
    for path in PACKAGE_ROOT.rglob("*.py"):
        names: set[str] = set()
        for node in _runtime_nodes(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.ImportFrom)
                and node.module
                and node.module.startswith("brainad")
            ):
                for alias in node.names:  # ``from pkg import submodule`` needs the submodule
                    sub = f"{node.module}.{alias.name}"
                    names.add(sub if module_file(sub) else node.module)
            elif isinstance(node, ast.Import):
                names.update(a.name for a in node.names if a.name.startswith("brainad"))
        graph[_module_of(path)] = names
    return graph


def test_no_import_cycles() -> None:
    graph = _edges()
    state: dict[str, int] = {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                raise AssertionError(f"import cycle: {' -> '.join([*stack, node, target])}")
            if target in graph and not state.get(target):
                visit(target, [*stack, node])
        state[node] = 2

    for node in sorted(graph):
        if not state.get(node):
            visit(node, [])


def test_packages_import_only_upstream() -> None:
    """``evaluation`` may import ``scoring``, never the reverse (and so on down the pipeline)."""
    wrong = []
    for module, targets in _edges().items():
        top = module.split(".")[1] if module.count(".") else ""
        if top not in ORDER:
            continue
        for target in targets:
            other = target.split(".")[1] if target.count(".") else ""
            if other in ORDER and ORDER.index(other) > ORDER.index(top):
                wrong.append(f"{module} -> {target}")
    assert not wrong, wrong


def test_modules_stay_small() -> None:
    roots = [PACKAGE_ROOT, REPO / "stages", REPO / "benchmarks"]
    long = {
        p.relative_to(REPO).as_posix(): n
        for root in roots
        for p in root.rglob("*.py")
        if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES
    }
    assert not long, f"split these modules: {long}"


def test_stages_are_thin() -> None:
    for path in (REPO / "stages").glob("*.py"):
        tree = ast.parse(path.read_text())
        functions = [n for n in tree.body if isinstance(n, ast.FunctionDef)]
        assert [f.name for f in functions] == ["main"], path
        assert len(path.read_text().splitlines()) <= 45, path


def test_dvc_yaml_follows_the_registry() -> None:
    """One train stage per registered model, named train_<name>, writing the registry's files,
    with that model's params section; training-curve plots for every phase."""
    stages = _dvc()["stages"]
    for name in registry.MODEL_NAMES:
        stage = stages[f"train_{name}"]["do"]
        assert f"--model {name}" in stage["cmd"]
        outs = [o if isinstance(o, str) else next(iter(o)) for o in stage["outs"]]
        model_dir = Path("models/${key}")
        assert registry.final_file(model_dir, name).as_posix() in outs
        assert registry.best_file(model_dir, name).as_posix() in outs
        assert {f"defaults.{name}", f"studies.${{key}}.{name}"} <= set(stage["params"])
        for consumer in ("ablate", "evaluate"):
            assert registry.best_file(model_dir, name).as_posix() in stages[consumer]["do"]["deps"]
    plots = {next(iter(p)) for p in _dvc()["plots"]}
    for study in ("demo", "brain-tumor-mri"):
        for name in registry.MODEL_NAMES:
            for phase in registry.entry(name).phases:
                live = registry.live_dir(Path(f"reports/{study}/train/{name}"), phase)
                assert f"{live.as_posix()}/plots/metrics" in plots


def test_registry_builds_every_model_from_params() -> None:
    from brainad.config import load_study

    config = load_study("demo", REPO / "params.yaml")
    size = config.preprocess.image_size
    for name in registry.MODEL_NAMES:
        model = registry.new_model(name, config, size)
        assert model.name == name
        rebuilt = registry.build_model(name, model.spec())
        assert type(rebuilt) is type(model)
        assert registry.fit_config(name, config) is not None
    with pytest.raises(ValueError, match="known models"):
        registry.entry("prior")


def test_top_level_layout() -> None:
    for name in ("dvc.yaml", "params.yaml", "stages", "src", "reports", "tests", "pyproject.toml"):
        assert (REPO / name).exists(), name
    readme = REPO / "data" / "README.md"
    assert readme.is_file() and "by hand" in readme.read_text()


def test_stages_import_the_library_only_after_stage_setup() -> None:
    """An entrypoint imports only ``brainad.stage`` at module level: torch, numpy and OpenCV load
    after ``stage_setup`` has pinned a deterministic study's kernels (:mod:`brainad.runtime`)."""
    for path in (REPO / "stages").glob("*.py"):
        tree = ast.parse(path.read_text())
        imported = [
            node.module if isinstance(node, ast.ImportFrom) else node.names[0].name
            for node in tree.body
            if isinstance(node, (ast.Import, ast.ImportFrom))
        ]
        assert imported == ["brainad.stage"], f"{path.name}: {imported}"
