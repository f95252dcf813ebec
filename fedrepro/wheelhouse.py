"""Wheels for installing fedrepro on a machine without internet that already has a CUDA build of torch.

A lab GPU node or a hospital cluster often has torch installed (the CUDA build that fits its driver)
but no network. ``pip install fedrepro`` there would either fail or, given a wheelhouse that holds a
torch wheel, replace the CUDA build. So the wheelhouse holds every runtime dependency of fedrepro
*except* the torch family, each at the version installed here, for the target's Python and platform,
plus fedrepro's own wheel:

    make wheelhouse WHEEL_PYTHON=3.12                        # here, with internet: ./wheelhouse
    pip install --no-index --find-links wheelhouse fedrepro  # there: torch is kept, nothing is fetched

Dependencies are read from the installed distributions' metadata (``importlib.metadata``), so the
closure is exactly what this environment runs with. ``--have FILE`` (a ``pip freeze`` of the target)
leaves out what the target already has.
"""
from __future__ import annotations

import argparse
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

TORCH_FAMILY = re.compile(r"^(torch|torchvision|torchaudio|triton|nvidia-.*|cuda-.*)$")
"""Distributions the target's own CUDA build provides; a wheel of any of them would replace it."""

PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
             "manylinux1_x86_64")


def canonical(name: str) -> str:
    """PEP 503 normalised name: ``PyYAML`` and ``pyyaml``, ``jupyter_client`` and ``jupyter-client`` agree."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirement_name(requirement: str) -> tuple[str, str]:
    """``"opacus>=1.5 ; extra == 'x'"`` -> (``"opacus"``, the marker text)."""
    spec, _, marker = requirement.partition(";")
    name = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", spec)
    if name is None:
        raise ValueError(f"cannot read a distribution name from {requirement!r}")
    return canonical(name.group(1)), marker.strip()


def runtime_closure(root: str = "fedrepro", python_version: str | None = None,
                    exclude: set[str] = frozenset()) -> tuple[dict[str, str], list[str]]:
    """What ``root`` needs at run time: installed distributions as name -> installed version, and the
    requirements that only the target's Python has (not installed here, so not pinned).

    Environment markers are evaluated for ``python_version`` (the target's, e.g. ``"3.12"``). ``root``
    is installed without extras, but a dependency may ask for another's extras
    (``jsonschema[format-nongpl]``): those extras' requirements are followed too. The torch family is
    listed but not descended into: the target's torch brings its own dependencies.
    """
    from packaging.requirements import Requirement

    version = python_version or f"{sys.version_info[0]}.{sys.version_info[1]}"
    try:
        metadata.distribution(root)
    except metadata.PackageNotFoundError:
        raise RuntimeError(f"{root} is not installed here; run make install first, so the versions of its "
                           "dependencies can be read") from None
    found: dict[str, str] = {}
    expanded: dict[str, set[str]] = {}  # name -> extras whose requirements were followed ("" = none)
    unpinned: list[str] = []
    pending: list[tuple[str, frozenset[str], str]] = [(canonical(root), frozenset(), root)]
    while pending:
        name, extras, text = pending.pop()
        if name in exclude:
            continue
        wanted = ({""} | set(extras)) - expanded.get(name, set())
        if not wanted:
            continue
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:  # needed on the target's Python only
            unpinned.append(text.partition(";")[0].strip())
            continue
        found[name] = dist.version
        expanded.setdefault(name, set()).update(wanted)
        if TORCH_FAMILY.match(name):  # the target's torch brings its own dependencies
            continue
        for child_text in dist.requires or []:
            child = Requirement(child_text)
            applies = child.marker is None or any(
                child.marker.evaluate({"python_version": version, "python_full_version": f"{version}.0",
                                       "extra": extra}) for extra in wanted)
            if applies:
                pending.append((canonical(child.name), frozenset(child.extras), child_text))
    del found[canonical(root)]
    return found, sorted(set(unpinned))


def plan(have: set[str] = frozenset(), python_version: str | None = None,
         exclude: set[str] = frozenset()) -> tuple[dict[str, str], list[str]]:
    """What the wheelhouse must hold: the closure, less the torch family and ``have``: pinned
    distributions (name -> version) and unpinned requirements (downloaded with their dependencies).
    ``exclude`` prunes the dependency walk at those names (what only they need is left out too)."""
    have = {canonical(n) for n in have}
    pinned, unpinned = runtime_closure(python_version=python_version, exclude={canonical(n) for n in exclude})
    keep = [r for r in unpinned if not TORCH_FAMILY.match(_requirement_name(r)[0]) and _requirement_name(r)[0] not in have]
    return {n: v for n, v in sorted(pinned.items()) if not TORCH_FAMILY.match(n) and n not in have}, keep


def read_have(path: Path) -> set[str]:
    """Names from a ``pip freeze`` / ``pip list --format=freeze`` file (``name==version`` lines)."""
    names = set()
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            names.add(canonical(re.split(r"[=<>@ ]", line, maxsplit=1)[0]))
    return names


def download_command(requirement: str, dest: Path, python_version: str, deps: bool = False) -> list[str]:
    """pip's ``download`` of a wheel for the target (binary only; dependencies only for an unpinned one)."""
    platforms = [arg for p in PLATFORMS for arg in ("--platform", p)]
    return [sys.executable, "-m", "pip", "download", "--quiet", *([] if deps else ["--no-deps"]),
            "--only-binary=:all:", "--python-version", python_version, "--implementation", "cp", *platforms,
            "--dest", str(dest), requirement]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fedrepro.wheelhouse", description=__doc__.split("\n\n")[0])
    parser.add_argument("dest", type=Path, help="folder for the wheels (created)")
    parser.add_argument("--python-version", default="3.12", help="the target's Python, e.g. 3.12 (default)")
    parser.add_argument("--have", type=Path, help="a pip freeze of the target (or one name a line): these are left out")
    parser.add_argument("--exclude", nargs="*", default=[], metavar="NAME",
                        help="leave these distributions out too (with nothing that only they need, e.g. jupyterlab "
                             "on a machine that runs notebooks headlessly)")
    parser.add_argument("--dry-run", action="store_true", help="print the plan, download nothing")
    args = parser.parse_args(argv)
    pinned, unpinned = plan(read_have(args.have) if args.have else set(), args.python_version, set(args.exclude))
    requirements = [f"{n}=={v}" for n, v in pinned.items()]
    print(f"{len(requirements)} distributions at this environment's versions, for Python {args.python_version} "
          f"(torch family left out): {', '.join(requirements)}")
    if unpinned:
        print(f"needed on Python {args.python_version} only, with their dependencies: {', '.join(unpinned)}")
    if args.dry_run:
        return 0
    args.dest.mkdir(parents=True, exist_ok=True)
    failed = []
    for requirement, deps in [(r, False) for r in requirements] + [(r, True) for r in unpinned]:
        if subprocess.run(download_command(requirement, args.dest, args.python_version, deps)).returncode == 0:
            continue
        name = requirement.partition("==")[0]
        if name != requirement and subprocess.run(download_command(name, args.dest, args.python_version)).returncode == 0:
            print(f"{requirement} has no wheel for Python {args.python_version}: took the newest {name} that has one")
            continue
        failed.append(requirement)
    project = Path(__file__).resolve().parent.parent
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir",
                            str(args.dest), str(project)])
    if built.returncode != 0:
        failed.append("fedrepro (own wheel)")
    if failed:
        print(f"no wheel for Python {args.python_version} on manylinux x86_64: {', '.join(failed)}. Try another "
              "--python-version, or let the target build these from source distributions.", file=sys.stderr)
        return 1
    print(f"wrote {args.dest}; on the target: pip install --no-index --find-links {args.dest} fedrepro")
    return 0


if __name__ == "__main__":
    sys.exit(main())
