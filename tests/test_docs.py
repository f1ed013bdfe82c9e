"""README.md and docs/*.md against the repository: every relative link (and its #anchor) leads somewhere, and
every command they name exists. `python -m MODULE` of this project: the module exists and `--help` runs;
`python bench/X.py` and `bash bench/X.sh`: the script exists (and, for Python scripts, `--help` runs)."""

import concurrent.futures
import importlib.util
import os
import pathlib
import re
import subprocess
import sys
import unicodedata

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
OUR_PACKAGES = ("eg3d", "dataloading", "monitoring", "cluster")
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)|!\[[^\]]*\]\(([^)\s]+)\)")
MODULE = re.compile(r"python -m ([A-Za-z_][\w.]*)")
SCRIPT = re.compile(r"(?:python|bash) ((?:bench|tests|cluster)/[\w./-]+\.(?:py|sh))")
FENCE = re.compile(r"^(```|~~~)")


def github_anchor(heading: str) -> str:
    """GitHub's id for a heading: lower case, punctuation dropped (keeping - and _), spaces to hyphens."""
    text = re.sub(r"`([^`]*)`", r"\1", heading.strip().lower())
    text = "".join(ch for ch in text if ch in " -_" or unicodedata.category(ch)[0] in "LN")
    return text.replace(" ", "-")


def anchors(page: pathlib.Path) -> set[str]:
    """The ids of a Markdown page's headings (outside code blocks), numbered -1, -2 when repeated as GitHub does."""
    seen: dict[str, int] = {}
    ids = set()
    in_code = False
    for line in page.read_text().splitlines():
        if FENCE.match(line):
            in_code = not in_code
        elif not in_code and (m := re.match(r"#{1,6} (.+)", line)):
            base = github_anchor(m.group(1))
            n = seen.get(base, 0)
            ids.add(base if n == 0 else f"{base}-{n}")
            seen[base] = n + 1
    return ids


def links(page: pathlib.Path) -> list[str]:
    found = []
    for m in LINK.finditer(page.read_text()):
        target = m.group(1) or m.group(2)
        if not re.match(r"[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto: are not ours to check
            found.append(target)
    return found


def named_modules() -> set[str]:
    return {m for page in PAGES for m in MODULE.findall(page.read_text()) if m.split(".")[0] in OUR_PACKAGES
            and not m.endswith(".NAME")}


def named_scripts() -> set[str]:
    return {s for page in PAGES for s in SCRIPT.findall(page.read_text())}


def test_the_anchor_rule_is_githubs():
    # Ids as GitHub gives them to headings of these pages (checked by hand against rendered pages).
    assert github_anchor("3D quality: how good, and how 3D, a generator is") == \
        "3d-quality-how-good-and-how-3d-a-generator-is"
    assert github_anchor("The paper's recipe: stages, and `--init-from`") == "the-papers-recipe-stages-and---init-from"
    assert github_anchor("Run on VMs (Ray cluster launcher)") == "run-on-vms-ray-cluster-launcher"


def test_every_relative_link_leads_to_a_file_and_its_anchor():
    broken = []
    for page in PAGES:
        for target in links(page):
            path, _, anchor = target.partition("#")
            dest = (page.parent / path).resolve() if path else page
            if not dest.exists():
                broken.append(f"{page.relative_to(ROOT)}: {target} (no file {path})")
            elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
                broken.append(f"{page.relative_to(ROOT)}: {target} (no heading #{anchor} in {dest.relative_to(ROOT)})")
    assert not broken, "broken links:\n" + "\n".join(broken)


def test_the_checks_find_a_broken_link_and_a_missing_module(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("# A page\n\n[ok](#a-page) [gone](missing.md) [bad](#nowhere)\n`python -m eg3d.nothing_here`\n")
    assert links(page) == ["#a-page", "missing.md", "#nowhere"]
    assert anchors(page) == {"a-page"}
    assert MODULE.findall(page.read_text()) == ["eg3d.nothing_here"]
    assert importlib.util.find_spec("eg3d.nothing_here") is None


def test_every_named_module_exists():
    modules = named_modules()
    assert {"eg3d.train", "eg3d.generate", "dataloading.build"} <= modules  # the pattern finds what is there
    missing = sorted(m for m in modules if importlib.util.find_spec(m) is None)
    assert not missing, f"README/docs name modules that do not exist: {missing}"


def test_every_named_script_exists():
    scripts = named_scripts()
    assert "bench/train_step.py" in scripts
    missing = sorted(s for s in scripts if not (ROOT / s).is_file())
    assert not missing, f"README/docs name scripts that do not exist: {missing}"


def run_help(argv: list[str]) -> tuple[str, int, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, *argv, "--help"], cwd=ROOT, capture_output=True, text=True, env=env,
                          timeout=300)
    return " ".join(argv), proc.returncode, proc.stdout + proc.stderr


@pytest.mark.slow
def test_every_named_command_answers_help():
    commands = [["-m", m] for m in sorted(named_modules())]
    commands += [[s] for s in sorted(named_scripts()) if s.endswith(".py")]
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(run_help, commands))
    failed = [f"{name}: exit {rc}\n{out[-800:]}" for name, rc, out in results if rc != 0 or "usage" not in out.lower()]
    assert not failed, "commands whose --help fails:\n" + "\n".join(failed)
