"""The layout shows the architecture: imports point one way, from the model towards the commands.

Layers, earliest first (a module may import its own layer and earlier ones, never a later one):

    config -> networks -> dataloading -> metrics -> training -> monitoring -> cluster -> commands

`eg3d/config/`, `eg3d/networks/`, `dataloading/`, `eg3d/metrics/`, `eg3d/training/`, `monitoring/` and
`cluster/` are the library; the top-level modules of `eg3d/` are the commands, each run with `python -m`.
Imports inside functions count too. Model code (config and networks) imports no cluster, data-pipeline or
telemetry library.
"""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("eg3d", "dataloading", "cluster", "monitoring")
LAYERS = ("config", "networks", "dataloading", "metrics", "training", "monitoring", "cluster", "commands")
EG3D_LIBRARIES = ("config", "networks", "metrics", "training")  # eg3d's subpackages; the rest are commands
MODEL_LAYERS = ("config", "networks")
NOT_IN_MODEL_CODE = ("ray", "deepspeed", "nvidia.dali", "prometheus_client")


def module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer(module: str) -> str | None:
    """The layer of a project module, by its path; None outside the project."""
    top, _, rest = module.partition(".")
    if top == "eg3d":
        sub = rest.partition(".")[0]
        return sub if sub in EG3D_LIBRARIES else "commands"
    return top if top in PACKAGES else None


def is_module(name: str, root: Path) -> bool:
    path = root.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def imports(path: Path, root: Path):
    """(line, module) for every import in the file, at any depth; `from X import Y` gives X.Y when that is
    a module of the project, else X (and also X.Y outside the project, so that `from nvidia import dali`
    names nvidia.dali); relative imports are resolved."""
    package = module_name(path, root)
    if path.name != "__init__.py":
        package = package.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module
            for alias in node.names:
                candidate = f"{source}.{alias.name}"
                if is_module(candidate, root):
                    yield node.lineno, candidate
                else:
                    yield node.lineno, source
                    if layer(source) is None:
                        yield node.lineno, candidate


def sources(root: Path) -> list[Path]:
    return sorted(path for package in PACKAGES for path in (root / package).rglob("*.py"))


def layer_violations(root: Path) -> list[str]:
    problems = []
    for path in sources(root):
        own = layer(module_name(path, root))
        for line, module in sorted(set(imports(path, root))):
            target = layer(module)
            if target is not None and LAYERS.index(target) > LAYERS.index(own):
                problems.append(f"{path.relative_to(root)}:{line}: imports {module} ({target}), a later layer "
                                f"than its own ({own})")
    return problems


def model_code_violations(root: Path) -> list[str]:
    problems = []
    for path in sources(root):
        if layer(module_name(path, root)) in MODEL_LAYERS:
            for line, module in sorted(set(imports(path, root))):
                for library in NOT_IN_MODEL_CODE:
                    if module == library or module.startswith(library + "."):
                        problems.append(f"{path.relative_to(root)}:{line}: model code imports {module}")
    return problems


def is_main_guard(node: ast.stmt) -> bool:
    test = getattr(node, "test", None)
    return (isinstance(node, ast.If) and isinstance(test, ast.Compare) and isinstance(test.left, ast.Name)
            and test.left.id == "__name__" and isinstance(test.ops[0], ast.Eq)
            and isinstance(test.comparators[0], ast.Constant) and test.comparators[0].value == "__main__")


def command_problems(root: Path) -> list[str]:
    problems = []
    for path in sorted((root / "eg3d").glob("*.py")):
        if path.name == "__init__.py":
            continue
        body = ast.parse(path.read_text(), filename=str(path)).body
        if not any(isinstance(node, ast.FunctionDef) and node.name == "main" for node in body):
            problems.append(f"{path.relative_to(root)}: a command without a main()")
        if not any(is_main_guard(node) for node in body):
            problems.append(f"{path.relative_to(root)}: a command without `if __name__ == \"__main__\":`")
    return problems


def test_every_module_has_a_layer():
    modules = [module_name(path, ROOT) for path in sources(ROOT)]
    assert len(modules) > 30, modules
    assert all(layer(module) in LAYERS for module in modules), modules


def test_imports_point_from_the_model_towards_the_commands():
    problems = layer_violations(ROOT)
    assert not problems, "imports of a later layer (" + " -> ".join(LAYERS) + "):\n" + "\n".join(problems)


def test_model_code_imports_no_cluster_or_telemetry_library():
    problems = model_code_violations(ROOT)
    assert not problems, "\n".join(problems)


def test_every_top_level_module_of_eg3d_is_a_command():
    problems = command_problems(ROOT)
    assert not problems, "\n".join(problems)


def test_the_checks_find_a_wrong_import(tmp_path):
    """The checks above on a made-up tree: each kind of offence is reported with its file and line."""
    files = {
        "eg3d/__init__.py": "",
        "eg3d/networks/__init__.py": "",
        "eg3d/networks/generator.py": "import torch\n\n\ndef f():\n    from ..training import loop\n",
        "eg3d/networks/camera.py": "from nvidia import dali\nimport ray.train\n",
        "eg3d/training/__init__.py": "",
        "eg3d/training/loop.py": "from eg3d.networks.generator import f\nfrom eg3d import summary\n",
        "eg3d/summary.py": "def main():\n    pass\n",
        "dataloading/__init__.py": "",
        "dataloading/storage.py": "from . import storage\nfrom cluster.launch import launch\n",
        "cluster/__init__.py": "",
        "cluster/launch.py": "from eg3d.training.loop import train\n",
        "monitoring/__init__.py": "",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert layer_violations(tmp_path) == [
        "dataloading/storage.py:2: imports cluster.launch (cluster), a later layer than its own (dataloading)",
        "eg3d/networks/generator.py:5: imports eg3d.training.loop (training), a later layer than its own (networks)",
        "eg3d/training/loop.py:2: imports eg3d.summary (commands), a later layer than its own (training)",
    ]
    assert model_code_violations(tmp_path) == ["eg3d/networks/camera.py:1: model code imports nvidia.dali",
                                               "eg3d/networks/camera.py:2: model code imports ray.train"]
    assert command_problems(tmp_path) == ['eg3d/summary.py: a command without `if __name__ == "__main__":`']
