"""The offline GPU install's wheelhouse plan: every runtime dependency of fedrepro at this environment's
version, never a torch-family wheel (it would replace the target's CUDA build), minus what the target has."""
from __future__ import annotations

from pathlib import Path

from fedrepro import wheelhouse


def test_plan_holds_runtime_dependencies_and_no_torch_family():
    pinned, unpinned = wheelhouse.plan(python_version="3.11")
    for needed in ("opacus", "papermill", "nbval", "ipykernel", "pyzmq", "torchattacks", "medmnist", "pyyaml"):
        assert needed in pinned, needed
    assert not [n for n in pinned if wheelhouse.TORCH_FAMILY.match(n)]
    assert "pytest" in pinned  # nbval needs it at run time
    assert "dask" not in pinned and "flwr" not in pinned  # extras are not installed by `pip install fedrepro`
    assert "torch" not in [wheelhouse.canonical(r.split(">")[0]) for r in unpinned]


def test_markers_are_evaluated_for_the_target_python():
    _, on_311 = wheelhouse.plan(python_version="3.11")
    _, on_312 = wheelhouse.plan(python_version="3.12")
    # papermill needs aiohttp on 3.12 only; aiohttp is not installed here, so it goes unpinned
    assert not any(r.startswith("aiohttp") for r in on_311)
    assert any(r.startswith("aiohttp") for r in on_312)


def test_have_file_leaves_out_what_the_target_has(tmp_path: Path):
    freeze = tmp_path / "have.txt"
    freeze.write_text("# the H200's image\nnumpy==2.5.0\nPyYAML==6.0.2\nscikit_image==0.25\ntorch==2.11.0+cu130\n")
    assert wheelhouse.read_have(freeze) == {"numpy", "pyyaml", "scikit-image", "torch"}
    pinned, _ = wheelhouse.plan(wheelhouse.read_have(freeze), python_version="3.12")
    assert "numpy" not in pinned and "pyyaml" not in pinned and "scikit-image" not in pinned
    assert "opacus" in pinned


def test_download_command_is_binary_only_for_the_target():
    command = wheelhouse.download_command("opacus==1.6.0", Path("w"), "3.12")
    assert command[-1] == "opacus==1.6.0" and "--no-deps" in command and "--only-binary=:all:" in command
    assert command[command.index("--python-version") + 1] == "3.12"
    assert "--no-deps" not in wheelhouse.download_command("aiohttp>=3.9", Path("w"), "3.12", deps=True)


def test_exclude_prunes_what_only_the_excluded_need():
    full, _ = wheelhouse.plan(python_version="3.11")
    pruned, _ = wheelhouse.plan(python_version="3.11", exclude={"jupyterlab"})
    assert "jupyterlab" in full and "jupyterlab" not in pruned
    assert "jupyter-server" in full and "jupyter-server" not in pruned  # needed by jupyterlab alone
    assert "ipykernel" in pruned and "opacus" in pruned  # still needed by the rest


def test_extras_a_dependency_asks_for_are_followed():
    # jupyter-events needs jsonschema[format-nongpl]; that extra brings webcolors and friends
    pinned, _ = wheelhouse.plan(python_version="3.12")
    for name in ("fqdn", "isoduration", "jsonpointer", "uri-template", "webcolors"):
        assert name in pinned, name
