"""Build a wheelhouse for installing paddy offline on a machine that already has torch.

The target (a GPU cluster node, say) has torch and torchvision installed but cannot reach a package
registry. This script collects, into one folder, a wheel of paddy itself plus a wheel of every runtime
dependency *except* torch, torchvision, triton and the nvidia-* / cuda-* distributions (and anything
reachable only through them), so that on the target::

    pip install --no-index --find-links wheelhouse paddy

installs paddy without downloading anything and reuses the machine's torch/torchvision.

The dependency set is read from the environment running this script (paddy installed with its pinned
dependencies, as ``make install`` does): ``Requires-Dist`` is walked from paddy, environment markers are
evaluated for the *target* Python version and platform, and the exact installed versions are fetched
with ``pip download --only-binary=:all:`` for that target. Pure-Python packages published only as sdists
are built into wheels locally.

Usage::

    python scripts/build_wheelhouse.py --dest wheelhouse --python-version 3.12

``--only NAME,...`` collects just those distributions and their dependencies (no paddy wheel), less
``--exclude``: the few packages a machine that runs paddy from a checkout lacks (``make gpu-wheels``).
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass, field
from email.parser import Parser
from importlib import metadata
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import NormalizedName, canonicalize_name, parse_wheel_filename
from packaging.version import Version

REPO_ROOT = Path(__file__).resolve().parents[1]
ROOT_PACKAGE = "paddy"
# Always left out: the target machine brings its own torch stack (CUDA-specific builds).
ALWAYS_EXCLUDED = ("torch", "torchvision", "triton")
EXCLUDED_PREFIXES = ("nvidia-", "cuda-")
DEFAULT_PLATFORM = "manylinux_2_28_x86_64"
# Legacy manylinux aliases (PEP 513/571/599) and the glibc version each stands for.
_LEGACY_MANYLINUX = {"manylinux1": 5, "manylinux2010": 12, "manylinux2014": 17}
_MANYLINUX_RE = re.compile(r"^manylinux_2_(\d+)_(\w+)$")


@dataclass
class Pin:
    """One distribution to put into the wheelhouse."""

    name: NormalizedName
    version: str | None  # None: not installed here (only needed on the target), resolved by pip
    specifier: str = ""  # the requirement's specifier, used when version is None
    required_by: set[str] = field(default_factory=set)

    @property
    def requirement(self) -> str:
        return f"{self.name}=={self.version}" if self.version else f"{self.name}{self.specifier}"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dest", type=Path, default=REPO_ROOT / "wheelhouse", help="output folder")
    parser.add_argument(
        "--python-version",
        default=f"{sys.version_info.major}.{sys.version_info.minor}",
        help="Python version of the target machine, X.Y (default: this interpreter's)",
    )
    parser.add_argument(
        "--platform",
        action="append",
        default=None,
        help=f"wheel platform tag of the target; repeatable (default: {DEFAULT_PLATFORM}). "
        "manylinux_2_N tags are widened to every older manylinux tag and linux_<arch>",
    )
    parser.add_argument(
        "--exclude",
        action="append",
        default=[],
        metavar="NAME",
        help="extra distribution to leave out (repeatable or comma-separated); "
        f"{', '.join(ALWAYS_EXCLUDED)}, nvidia-* and cuda-* are always left out",
    )
    parser.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="NAME",
        help="collect only these distributions (installed here) and their dependencies, without paddy's own "
        "wheel (repeatable or comma-separated): the packages a machine that runs paddy from a checkout lacks",
    )
    parser.add_argument(
        "--constraints",
        type=Path,
        default=REPO_ROOT / "requirements" / "constraints.txt",
        help="pins to check installed versions against, and to resolve packages not installed here",
    )
    return parser.parse_args(argv)


def expand_platforms(platforms: list[str]) -> list[str]:
    """Widen manylinux tags to every compatible older tag, newest first, without duplicates."""
    out: list[str] = []
    for tag in platforms:
        match = _MANYLINUX_RE.match(tag)
        legacy = tag.split("_", 1)
        if match is None and legacy[0] in _LEGACY_MANYLINUX and len(legacy) == 2:
            glibc_minor, arch = _LEGACY_MANYLINUX[legacy[0]], legacy[1]
        elif match is not None:
            glibc_minor, arch = int(match.group(1)), match.group(2)
        else:
            out.append(tag)
            continue
        for minor in range(glibc_minor, 4, -1):
            out.append(f"manylinux_2_{minor}_{arch}")
            out.extend(f"{alias}_{arch}" for alias, m in _LEGACY_MANYLINUX.items() if m == minor)
        out.append(f"linux_{arch}")
    return list(dict.fromkeys(out))


def _platform_arch(tag: str) -> str | None:
    """CPU architecture of a Linux platform tag (``manylinux_2_28_x86_64`` -> ``x86_64``)."""
    match = re.match(r"^(?:manylinux_\d+_\d+|manylinux\d+|linux)_(\w+)$", tag)
    return match.group(1) if match else None


def target_environment(python_version: str, platforms: list[str]) -> dict[str, str]:
    """Marker environment of the target: CPython ``python_version`` on Linux with the platforms' arch."""
    env = dict(default_environment())
    arches = (_platform_arch(p) for p in platforms)
    arch = next((a for a in arches if a), "x86_64")
    env.update(
        python_version=python_version,
        python_full_version=f"{python_version}.0",
        implementation_version=f"{python_version}.0",
        implementation_name="cpython",
        platform_python_implementation="CPython",
        os_name="posix",
        sys_platform="linux",
        platform_system="Linux",
        platform_machine=arch,
    )
    return env


def is_excluded(name: str, extra_excluded: set[NormalizedName]) -> bool:
    """Whether ``name`` is left to the target machine (torch stack) or excluded by the user."""
    norm = canonicalize_name(name)
    return norm in ALWAYS_EXCLUDED or norm in extra_excluded or norm.startswith(EXCLUDED_PREFIXES)


def read_constraints(path: Path) -> dict[NormalizedName, str]:
    """``name==version`` pins of a constraints file (other lines are ignored)."""
    pins: dict[NormalizedName, str] = {}
    if not path.is_file():
        return pins
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line or line.startswith("-"):
            continue
        try:
            req = Requirement(line)
        except InvalidRequirement:
            continue
        exact = [s.version for s in req.specifier if s.operator == "=="]
        if exact:
            pins[canonicalize_name(req.name)] = exact[0]
    return pins


def run(cmd: list[str], check: bool = True) -> subprocess.CompletedProcess[str]:
    print("+", " ".join(cmd), flush=True)
    result = subprocess.run(cmd, text=True, capture_output=True)
    if check and result.returncode != 0:
        sys.stderr.write(result.stdout + result.stderr)
        raise SystemExit(f"command failed with exit status {result.returncode}")
    return result


def build_own_wheel(dest: Path) -> Path:
    """``pip wheel`` paddy from the repository root; check it carries the Hydra configs."""
    with tempfile.TemporaryDirectory() as tmp:
        run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", tmp, str(REPO_ROOT)])
        built = sorted(Path(tmp).glob(f"{ROOT_PACKAGE}-*.whl"))
        if len(built) != 1:
            raise SystemExit(f"expected one {ROOT_PACKAGE} wheel, got {[p.name for p in built]}")
        for old in dest.glob(f"{ROOT_PACKAGE}-*.whl"):
            old.unlink()
        wheel = dest / built[0].name
        wheel.write_bytes(built[0].read_bytes())
    with zipfile.ZipFile(wheel) as zf:
        if f"{ROOT_PACKAGE}/conf/train.yaml" not in zf.namelist():
            raise SystemExit(f"{wheel.name} lacks {ROOT_PACKAGE}/conf/train.yaml")
    return wheel


def wheel_requirements(wheel: Path) -> list[str]:
    """``Requires-Dist`` lines of a wheel's METADATA."""
    with zipfile.ZipFile(wheel) as zf:
        meta_name = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        message = Parser().parsestr(zf.read(meta_name).decode())
    return message.get_all("Requires-Dist") or []


def installed_distributions() -> dict[NormalizedName, metadata.Distribution]:
    """Distributions of the running environment by normalized name."""
    found: dict[NormalizedName, metadata.Distribution] = {}
    for dist in metadata.distributions():
        name = dist.metadata["Name"]
        if name:
            found.setdefault(canonicalize_name(name), dist)  # first on sys.path wins, as for imports
    return found


def marker_applies(req: Requirement, env: dict[str, str], extras: set[str]) -> bool:
    """Whether ``req`` is needed on the target, given the extras requested of its parent."""
    if req.marker is None:
        return True
    return any(req.marker.evaluate({**env, "extra": extra}) for extra in ({""} | extras))


def resolve(
    root_requirements: list[str],
    env: dict[str, str],
    excluded: set[NormalizedName],
    root: str = ROOT_PACKAGE,
) -> tuple[dict[NormalizedName, Pin], dict[NormalizedName, set[str]]]:
    """Walk Requires-Dist from the root; return the pins and the requirements on excluded packages."""
    installed = installed_distributions()
    pins: dict[NormalizedName, Pin] = {}
    excluded_reqs: dict[NormalizedName, set[str]] = {}
    seen: set[tuple[NormalizedName, frozenset[str]]] = set()
    queue: list[tuple[str, list[str], set[str]]] = [(root, root_requirements, set())]
    while queue:
        parent, requirements, extras = queue.pop()
        for line in requirements:
            req = Requirement(line)
            if not marker_applies(req, env, extras):
                continue
            name = canonicalize_name(req.name)
            if is_excluded(name, excluded):
                excluded_reqs.setdefault(name, set()).add(f"{req.name}{req.specifier or ''} ({parent})")
                continue
            dist = installed.get(name)
            pin = pins.setdefault(name, Pin(name, dist.version if dist else None, str(req.specifier)))
            pin.required_by.add(parent)
            if dist is None:
                continue
            req_extras = {canonicalize_name(e) for e in req.extras}
            key = (name, frozenset(req_extras))
            if key in seen:
                continue
            seen.add(key)
            queue.append((str(name), dist.requires or [], req_extras))
    return pins, excluded_reqs


def remove_stale_wheels(dest: Path, pins: dict[NormalizedName, Pin], keep_unpinned: bool = True) -> None:
    """Delete wheels left in ``dest`` by an earlier run for other versions of the packages pinned now
    (and, unless ``keep_unpinned``, of packages not pinned now: ``--only`` sets are installed whole)."""
    for wheel in dest.glob("*.whl"):
        name, version = parse_wheel_filename(wheel.name)[:2]
        pin = pins.get(name)
        other_version = pin is not None and pin.version is not None and version != Version(pin.version)
        if other_version or (pin is None and not keep_unpinned):
            print(f"removing stale {wheel.name}")
            wheel.unlink()


def pip_download(reqs: list[str], dest: Path, python_version: str, platforms: list[str]) -> bool:
    """``pip download`` exact wheels for the target; True when all were found."""
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:"]
    cmd += ["--python-version", python_version, "--implementation", "cp", "-d", str(dest)]
    for platform in platforms:
        cmd += ["--platform", platform]
    result = run(cmd + reqs, check=False)
    if result.returncode != 0:
        errors = [line for line in result.stderr.splitlines() if line.startswith("ERROR")]
        print("\n".join(errors[-2:]) or result.stderr[-500:], file=sys.stderr)
    return result.returncode == 0


def build_pure_wheel(req: str, dest: Path) -> bool:
    """Build a wheel from an sdist; keep it only if it is pure Python (runs on any target)."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-binary=:all:", "-w", tmp]
        if run(cmd + [req], check=False).returncode != 0:
            return False
        for wheel in Path(tmp).glob("*.whl"):
            tags = parse_wheel_filename(wheel.name)[3]
            if all(t.abi == "none" and t.platform == "any" for t in tags):
                (dest / wheel.name).write_bytes(wheel.read_bytes())
                return True
            print(f"  {wheel.name} is not pure Python; not usable for another target", file=sys.stderr)
    return False


def write_readme(
    dest: Path,
    python_version: str,
    platforms: list[str],
    excluded_reqs: dict[NormalizedName, set[str]],
    own_wheel: Path | None,
) -> None:
    needs = "\n".join(f"  {name}: " + "; ".join(sorted(reqs)) for name, reqs in sorted(excluded_reqs.items()))
    if own_wheel is None:  # --only: a set for a machine that runs paddy from a checkout
        dest.joinpath("README.txt").write_text(
            f"""Wheels for CPython {python_version} on Linux ({", ".join(platforms)}): what a machine that runs
paddy from a checkout lacks, with their dependencies, less what it has. Left out; the target must have:
{needs}

Install, with no access to a package registry (all at once, none of pip's resolving):

    pip install --no-index --no-deps --target /tmp/paddy-site {dest.name}/*.whl
    export PYTHONPATH=/tmp/paddy-site:$PWD      # from the checkout
"""
        )
        return
    dest.joinpath("README.txt").write_text(
        f"""Offline wheelhouse for {own_wheel.name}

Target: CPython {python_version} on Linux, platform tags {", ".join(platforms)}
(manylinux tags include every older manylinux tag).

torch and torchvision are NOT included (nor triton, nvidia-* or cuda-* packages): they must already
be installed on the target machine, in the Python environment you install paddy into. The package
requirements on them are:
{needs}

Install, with no access to a package registry:

    pip install --no-index --find-links wheelhouse paddy

(run from the folder holding `wheelhouse`, or give its full path). pip then uses only the wheels here
plus what is already installed, and keeps the existing torch/torchvision. Check with:

    python -c "import paddy.train; from paddy.config import config_dir; print(config_dir())"
"""
    )


def root_requirements(only: list[str], dest: Path) -> tuple[list[str], str, Path | None]:
    """Where the walk starts: the ``--only`` names, or the requirements of paddy's wheel (built into
    ``dest``). Returns them, the root's name (for messages) and paddy's wheel (None with ``--only``)."""
    names = [name.strip() for item in only for name in item.split(",") if name.strip()]
    if names:
        return names, "--only", None
    try:
        metadata.distribution(ROOT_PACKAGE)
    except metadata.PackageNotFoundError:
        raise SystemExit(
            f"{ROOT_PACKAGE} is not installed in {sys.executable}'s environment: the dependency versions are "
            "read from there (run `make install` and use its venv)"
        ) from None
    own_wheel = build_own_wheel(dest)
    print(f"built {own_wheel.name} (contains {ROOT_PACKAGE}/conf/train.yaml)")
    return wheel_requirements(own_wheel), ROOT_PACKAGE, own_wheel


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not re.fullmatch(r"\d+\.\d+", args.python_version):
        raise SystemExit(f"--python-version must look like 3.12, got {args.python_version!r}")
    platforms = expand_platforms(args.platform or [DEFAULT_PLATFORM])
    excluded = {canonicalize_name(n) for item in args.exclude for n in item.split(",") if n.strip()}
    dest: Path = args.dest.resolve()
    dest.mkdir(parents=True, exist_ok=True)

    roots, root_name, own_wheel = root_requirements(args.only, dest)
    env = target_environment(args.python_version, platforms)
    pins, excluded_reqs = resolve(roots, env, excluded, root_name)
    constraints = read_constraints(args.constraints)
    for pin in pins.values():
        pinned = constraints.get(pin.name)
        if pin.version is None and pinned:
            pin.version = pinned
        elif pinned and pinned != pin.version:
            print(f"warning: {pin.name} {pin.version} is installed but {args.constraints} pins {pinned}")
    unpinned = sorted(p.name for p in pins.values() if p.version is None)
    if unpinned:
        print(f"warning: not installed here, newest matching version used: {', '.join(unpinned)}")
    print(f"{len(pins)} dependencies to fetch (excluded: {', '.join(sorted(excluded_reqs))})")

    remove_stale_wheels(dest, pins, keep_unpinned=own_wheel is not None)
    reqs = sorted(pin.requirement for pin in pins.values())
    failed: list[str] = []
    if not pip_download(reqs, dest, args.python_version, platforms):
        print("one pip download for all failed; retrying package by package", flush=True)
        for req in reqs:
            if pip_download([req], dest, args.python_version, platforms):
                continue
            print(f"  no wheel for {req}; trying to build a pure-Python wheel from its sdist")
            if not build_pure_wheel(req, dest):
                failed.append(req)

    write_readme(dest, args.python_version, args.platform or [DEFAULT_PLATFORM], excluded_reqs, own_wheel)
    wheels = sorted(dest.glob("*.whl"))
    size_mb = sum(w.stat().st_size for w in wheels) / 2**20
    print(f"\n{dest}: {len(wheels)} wheels, {size_mb:.1f} MB, for CPython {args.python_version}")
    if failed:
        print(f"FAILED (no usable wheel): {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
