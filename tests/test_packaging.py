"""The package layout: envs/ and agents/ install into the astra_gym namespace, nothing is left out."""

import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[1]


def _declared_packages() -> tuple[list[str], dict[str, str]]:
    setuptools_cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    return setuptools_cfg["packages"], setuptools_cfg["package-dir"]


def _package_dirs() -> dict[str, Path]:
    """Maps every folder holding an __init__.py under the installed roots to its dotted name."""
    roots = {"astra_gym": ROOT / "astra_gym", "astra_gym.envs": ROOT / "envs", "astra_gym.agents": ROOT / "agents"}
    found = {}
    for prefix, root in roots.items():
        for init in root.rglob("__init__.py"):
            rel = init.parent.relative_to(root).parts
            found[".".join((prefix, *rel))] = init.parent
    return found


def test_every_package_folder_is_declared():
    declared, _ = _declared_packages()
    on_disk = sorted(_package_dirs())
    missing = sorted(set(on_disk) - set(declared))
    assert not missing, f"add these packages to [tool.setuptools] packages in pyproject.toml: {missing}"
    stale = sorted(set(declared) - set(on_disk))
    assert not stale, f"pyproject.toml declares packages with no folder: {stale}"


def test_envs_and_agents_map_into_the_namespace():
    _, package_dir = _declared_packages()
    assert package_dir == {"astra_gym.envs": "envs", "astra_gym.agents": "agents"}
    code = "import astra_gym.envs, astra_gym.agents; print(astra_gym.envs.__file__, astra_gym.agents.__file__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/", check=True).stdout
    envs_file, agents_file = out.split()
    assert Path(envs_file).parent == ROOT / "envs"
    assert Path(agents_file).parent == ROOT / "agents"


def test_torch_is_pinned_and_torchvision_absent():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    deps = project["dependencies"] + [d for extra in project["optional-dependencies"].values() for d in extra]
    assert "torch==2.13.0" in project["dependencies"]
    assert not [d for d in deps if d.lower().startswith("torchvision")]


TRACKED_LIMIT_MIB = 56  # the GPU machine takes a 64 MiB working tree, and the simulator wheels travel with it


def test_tracked_tree_travels_to_the_gpu_machine():
    """The tracked files (bundled weights included) stay under the limit that lets a GPU call start."""
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    names = (
        subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True)
        .stdout.decode()
        .split("\0")
    )
    sizes = {name: (ROOT / name).stat().st_size for name in names if name and (ROOT / name).is_file()}
    total = sum(sizes.values())
    largest = sorted(sizes, key=sizes.get, reverse=True)[:3]
    assert total < TRACKED_LIMIT_MIB * 2**20, (
        f"the tracked tree is {total / 2**20:.1f} MiB (limit {TRACKED_LIMIT_MIB} MiB); the largest files are "
        f"{largest}: store world models in int8 (`--weights-dtype int8`), share files between bundles, "
        "or drop a bundle"
    )


def test_the_inference_layer_does_not_import_training():
    """Making and stepping an env of the bundled model loads no training code (a clean process)."""
    code = (
        "import sys, gymnasium as gym, astra_gym\n"
        "env = gym.make('Astra-Drive-v0', device='cpu')\n"
        "env.reset(seed=0); env.step(env.action_space.sample())\n"
        "loaded = sorted(m for m in sys.modules if m.startswith('astra_gym.training'))\n"
        "assert not loaded, loaded\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
