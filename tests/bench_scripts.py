"""The benchmark scripts of bench/ imported as modules, for the tests of their functions.
Imported by the test modules as `from bench_scripts import load_bench_script`."""

import importlib.util
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench"


def load_bench_script(name: str):
    """bench/<name>.py as a module (bench/ on sys.path, for the scripts that import each other)."""
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
