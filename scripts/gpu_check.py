"""``make gpu-check``: paddy's GPU check in one command, for a machine with a CUDA GPU (issue 16).

Steps, in this order; each one is timed, and everything printed also goes to ``<out>/gpu_check.log``:

=========== =================================================================================== ===========
step        what                                                                                H200 (est.)
=========== =================================================================================== ===========
wheels      install the carried wheels (``make gpu-wheels`` -> ``gpu-wheels/``) into a private     ~5 s
            folder put first on PYTHONPATH (``pip --no-index --no-deps``: nothing downloaded, the
            machine's torch stays); where they do not fit this interpreter (this project's 3.11
            venv), pip only checks them for CPython 3.12
imports     paddy from the checkout and what it imports, with versions; paddy's requirements    ~10 s
            against what is installed
commands    the benchmark command lines below compose (options exist, Hydra overrides apply)   ~8 s
cuda        a CUDA device is there (else stop here: exit status 2)                             ~5 s
tests       ``pytest -m gpu tests/test_gpu.py``, ~2 min of it compiling lite0_ca (meanwhile,    ~230 s
            10,400 photos of 640x480 are written on the CPU for the next step)
throughput  ``python -m paddy.benchmark mode=throughput model=lite0_ca``: raw loop, paddy         ~120 s
            in-device, then 15 epochs from the 10,400 JPEGs (cold decoded-image cache), bf16,
            batch 256, 224 px
ratio       paddy in-device / raw loop for mnv3s_ca and effv2s_ca (224 px, batch 256, bf16)      ~60 s
=========== =================================================================================== ===========

About 7.5 minutes in all (estimated: it has not run on a GPU yet); each step has a time limit.

Then ``<out>/gpu_check.json``: each step's status and seconds, the tests' counts and durations, the
benchmark rows and the issue's targets (met or not); it is rewritten after every step, so a check
cut short still leaves what it measured. The benchmarks write ``<out>/throughput_gpu_<model>.md/.csv/.json``;
``--bundle`` packs those into ``<out>/gpu_check_benchmarks.tar.gz`` instead, after each benchmark (for a
machine that returns few files).

    python scripts/gpu_check.py [--out benchmarks/results] [--wheels gpu-wheels] [--steps tests,ratio] [--bundle]

Exit status: 0 every step passed; 1 a step failed (the rest still ran, except after a failed import);
2 no CUDA device (the steps before it ran).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import xml.etree.ElementTree as ET
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
STEPS = ("wheels", "imports", "commands", "cuda", "tests", "throughput", "ratio")
PHOTOS = (10400, 640, 480)  # images, width, height
GPU = ["device=cuda", "precision=bf16", "batch_size=256", "image_size=224"]
RATIO_MODELS = ("mnv3s_ca", "effv2s_ca")
IMPORTS = ("torch", "torchvision", "timm", "lightning", "torchmetrics", "cv2", "tensorboard", "scipy", "hydra",
           "omegaconf", "optuna", "albumentations", "simplejpeg", "hydra_plugins.hydra_optuna_sweeper",
           "hydra_plugins.paddy_sweeper", "paddy.train", "paddy.benchmark.throughput", "paddy.data.gpu_augment")
# The targets (ratios and times from one run): (what, result key, comparison, bound).
TARGETS = (
    ("mnv3s_ca paddy in-device / raw loop", "mnv3s_ca.in_device_ratio", ">=", 0.97),
    ("effv2s_ca paddy in-device / raw loop", "effv2s_ca.in_device_ratio", ">=", 0.97),
    ("lite0_ca paddy from JPEG files / paddy in-device", "lite0_ca.jpeg_ratio", ">=", 0.90),
    ("lite0_ca from JPEG files, train img/s (3 x timm's 1,673 on an H100)", "lite0_ca.jpeg_img_s", ">=", 3 * 1673),
    ("lite0_ca 15 epochs on 10,400 JPEGs, command wall s (cold cache)", "lite0_ca.jpeg_command_wall_s", "<", 60.0),
)


def benchmark_commands(out: Path, photos: Path) -> dict[str, list[str]]:
    """The benchmark runs of the check, as ``python -m paddy.benchmark`` arguments, by model."""
    commands = {"lite0_ca": ["mode=throughput", "model=lite0_ca", *GPU, "epochs=15", f"root={photos}",
                             f"out={out / 'throughput_gpu_lite0_ca'}"]}
    for model in RATIO_MODELS:
        commands[model] = ["mode=throughput", f"model={model}", *GPU, "parts=raw,in_device",
                           f"out={out / f'throughput_gpu_{model}'}"]
    return commands


# ---------------------------------------------------------------------------------------------- probes
# Run in a child interpreter with the check's environment (the installed wheels on its path); each
# prints one JSON line last.


def probe_imports() -> dict[str, Any]:
    """Import what the check needs; versions of the key distributions; paddy's unmet requirements."""
    import importlib
    from importlib import metadata

    import tomllib
    from packaging.requirements import Requirement

    failed = {}
    for name in IMPORTS:
        try:
            importlib.import_module(name)
        except Exception as err:  # noqa: BLE001 - any import failure is reported, not raised
            failed[name] = f"{type(err).__name__}: {err}"
    unmet, versions = [], {}
    for line in tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]:
        req = Requirement(line)
        if req.marker is not None and not req.marker.evaluate():
            continue
        try:
            versions[req.name] = version = metadata.version(req.name)
        except metadata.PackageNotFoundError:
            unmet.append(f"{req} (not installed)")
            continue
        if req.specifier and not req.specifier.contains(version, prereleases=True):
            unmet.append(f"{req} (installed: {version})")
    where = {name: str(Path(sys.modules[name].__file__).parent) for name in ("paddy", "hydra", "albumentations")
             if name in sys.modules}
    return {"failed": failed, "unmet": unmet, "versions": versions, "python": sys.version.split()[0], "from": where}


def probe_commands(out: str, photos: str) -> dict[str, Any]:
    """Parse and compose each benchmark command line as ``python -m paddy.benchmark`` would (no device needed)."""
    from paddy.benchmark.common import compose_named, parse_cli

    errors = {}
    for model, argv in benchmark_commands(Path(out), Path(photos)).items():
        try:
            _, options, overrides = parse_cli(argv)
            compose_named(options["model"], overrides)
        except Exception as err:  # noqa: BLE001 - reported per command
            errors[model] = f"{type(err).__name__}: {err}"
    return {"errors": errors}


def probe_cuda() -> dict[str, Any]:
    import torch

    found = {"torch": torch.__version__, "cuda_build": torch.version.cuda, "available": torch.cuda.is_available(),
             "visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES")}
    if found["available"]:
        props = torch.cuda.get_device_properties(0)
        found.update(device=props.name, capability=f"{props.major}.{props.minor}", count=torch.cuda.device_count(),
                     memory_gib=round(props.total_memory / 2**30, 1), bf16=torch.cuda.is_bf16_supported(),
                     nccl=torch.distributed.is_nccl_available(), cudnn=torch.backends.cudnn.version())
    return found


def probe_photos(root: str) -> dict[str, Any]:
    from paddy.benchmark.throughput import write_photo_set

    images, width, height = PHOTOS
    started = time.perf_counter()
    write_photo_set(Path(root), images, width, height)
    return {"images": images, "size": f"{width}x{height}", "seconds": round(time.perf_counter() - started, 1)}


PROBES = {"imports": lambda a: probe_imports(), "commands": lambda a: probe_commands(a.out, a.photos),
          "cuda": lambda a: probe_cuda(), "photos": lambda a: probe_photos(a.photos)}


# ---------------------------------------------------------------------------------------------- the check


def kill(process: subprocess.Popen) -> None:
    """End a process this check started, with its children (it leads its own process group)."""
    if process.poll() is None:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


class GpuCheck:
    """The steps' shared state: where things go, the child environment, the log and the summary."""

    def __init__(self, args: argparse.Namespace):
        self.out: Path = args.out.resolve()
        self.out.mkdir(parents=True, exist_ok=True)
        self.wheels: Path = args.wheels.resolve()
        self.work = Path(tempfile.mkdtemp(prefix="paddy-gpu-check-"))
        self.bundle_files = bool(args.bundle)
        self.bench_out = self.work / "benchmarks" if args.bundle else self.out
        self.photos = self.work / "photos"
        self.site = self.work / "site"
        self.log_file = (self.out / "gpu_check.log").open("w")
        self.started = time.perf_counter()
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", "NO_ALBUMENTATIONS_UPDATE": "1",
                    "PADDY_CACHE_DIR": str(self.work / "cache"), "PYTHONPATH": self._path(str(REPO))}
        self.summary: dict[str, Any] = {"check": "paddy gpu_check", "started": datetime.now(timezone.utc).isoformat(),
                                        "out": str(self.out), "steps": {}, "results": {}, "targets": []}
        self.photo_writer: subprocess.Popen | None = None
        self.photo_log = self.work / "photos.log"

    def _path(self, first: str) -> str:
        return os.pathsep.join(filter(None, [first, os.environ.get("PYTHONPATH")]))

    def say(self, message: str) -> None:
        line = f"[gpu-check {time.perf_counter() - self.started:6.1f}s] {message}"
        print(line, flush=True)
        self.log_file.write(line + "\n")
        self.log_file.flush()

    def run(self, command: list[str], timeout: float) -> tuple[int, list[str]]:
        """Run ``command`` from the checkout, its output streamed to the console and the log; killed
        (its whole process group) after ``timeout`` seconds. Returns (exit status, output lines)."""
        self.say("$ " + " ".join(command))
        process = subprocess.Popen(command, cwd=REPO, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                   text=True, errors="replace", start_new_session=True)
        timer = threading.Timer(timeout, kill, (process,))
        timer.start()
        lines = []
        try:
            for line in process.stdout:
                sys.stdout.write(line)
                self.log_file.write(line)
                lines.append(line.rstrip("\n"))
            status = process.wait()
        finally:
            timer.cancel()
        self.log_file.flush()
        if status == -signal.SIGKILL:
            self.say(f"killed after its time limit of {timeout:.0f} s")
        return status, lines

    def probe(self, name: str, timeout: float = 300) -> tuple[int, dict[str, Any]]:
        status, lines = self.run([sys.executable, str(Path(__file__).resolve()), "--probe", name, "--out",
                                  str(self.bench_out), "--photos", str(self.photos)], timeout)
        try:
            return status, json.loads(lines[-1])
        except (IndexError, json.JSONDecodeError):
            return status or 1, {}

    def record(self, step: str, status: str, seconds: float, **details: Any) -> None:
        self.summary["steps"][step] = {"status": status, "seconds": round(seconds, 1), **details}
        self.say(f"step {step}: {status} in {seconds:.1f} s")
        self.write_summary()

    def write_summary(self) -> None:
        self.summary["elapsed_s"] = round(time.perf_counter() - self.started, 1)
        (self.out / "gpu_check.json").write_text(json.dumps(self.summary, indent=2, default=str) + "\n")

    def close(self) -> None:
        if self.photo_writer is not None:
            kill(self.photo_writer)
        self.log_file.close()
        shutil.rmtree(self.work, ignore_errors=True)


# ---------------------------------------------------------------------------------------------- steps
# Each returns (status, details): ok | checked | skipped | failed | no-cuda.


def step_wheels(ck: GpuCheck) -> tuple[str, dict[str, Any]]:
    """Install the carried wheels into a private folder (first on the children's PYTHONPATH); where
    they are for another Python than this one, only let pip check them for theirs."""
    from packaging.tags import sys_tags
    from packaging.utils import parse_wheel_filename

    wheels = sorted(ck.wheels.glob("*.whl"))
    if not wheels:
        ck.say(f"no wheels in {ck.wheels}: nothing to install (run `make gpu-wheels` where a package registry "
               f"is reachable and carry that folder); the imports step shows what is missing")
        return "skipped", {"wheels": 0}
    details = {"wheels": len(wheels), "mib": round(sum(w.stat().st_size for w in wheels) / 2**20, 1),
               "folder": str(ck.wheels)}
    ck.say(f"{details['wheels']} wheels, {details['mib']} MiB in {ck.wheels}")
    pip = [sys.executable, "-m", "pip", "install", "--quiet", "--no-index", "--no-deps", "--no-compile",
           "--no-cache-dir", "--disable-pip-version-check", "--target", str(ck.site)]
    here = set(sys_tags())
    misfits = [w for w in wheels if not parse_wheel_filename(w.name)[3] & here]
    if not misfits:
        status, _ = ck.run([*pip, *map(str, wheels)], 300)
        if status == 0:
            ck.env["PYTHONPATH"] = ck._path(os.pathsep.join([str(ck.site), str(REPO)]))
        return ("ok" if status == 0 else "failed"), {**details, "installed_to": str(ck.site)}
    interpreters = {tag.interpreter for w in misfits for tag in parse_wheel_filename(w.name)[3]}
    target = next((f"{i[2]}.{i[3:]}" for i in sorted(interpreters) if i.startswith("cp") and len(i) > 3), "3.12")
    ck.say(f"{len(misfits)} of them are not for this interpreter (CPython {sys.version.split()[0]}) but for "
           f"CPython {target}: pip checks them for that target without installing; this interpreter's own "
           f"packages are used")
    from build_wheelhouse import DEFAULT_PLATFORM, expand_platforms  # the tags make gpu-wheels downloads for

    platforms = [arg for tag in expand_platforms([DEFAULT_PLATFORM]) for arg in ("--platform", tag)]
    status, _ = ck.run([*pip, "--dry-run", "--python-version", target, "--implementation", "cp", *platforms,
                        "--only-binary=:all:", *map(str, wheels)], 300)
    return ("checked" if status == 0 else "failed"), {**details, "checked_for": f"CPython {target}"}


def step_imports(ck: GpuCheck) -> tuple[str, dict[str, Any]]:
    status, found = ck.probe("imports")
    for name, error in found.get("failed", {}).items():
        ck.say(f"cannot import {name}: {error}")
    for line in found.get("unmet", []):
        ck.say(f"warning: paddy requires {line}")
    ok = status == 0 and found and not found.get("failed")
    versions = ck.summary["versions"] = found.get("versions", {})
    if ok:
        key = ("torch", "torchvision", "timm", "lightning", "hydra-core", "albumentations", "opencv-python-headless")
        ck.say(f"imported {len(IMPORTS)} modules: " + ", ".join(f"{n} {versions.get(n, '?')}" for n in key)
               + "; " + ", ".join(f"{n} from {path}" for n, path in found.get("from", {}).items()))
    return ("ok" if ok else "failed"), {k: found.get(k) for k in ("python", "from", "failed", "unmet")}


def step_commands(ck: GpuCheck) -> tuple[str, dict[str, Any]]:
    status, found = ck.probe("commands")
    for model, error in found.get("errors", {}).items():
        ck.say(f"the benchmark command for {model} does not compose: {error}")
    ok = status == 0 and found and not found.get("errors")
    return ("ok" if ok else "failed"), {"commands": {model: "python -m paddy.benchmark " + " ".join(argv)
                                                     for model, argv in benchmark_commands(
                                                         ck.bench_out, ck.photos).items()}}


def step_cuda(ck: GpuCheck) -> tuple[str, dict[str, Any]]:
    status, found = ck.probe("cuda")
    ck.summary["machine"] = found
    if status == 0 and found.get("available"):
        ck.say(f"CUDA device: {found['device']} (compute capability {found['capability']}, {found['memory_gib']} GiB), "
               f"torch {found['torch']} built with CUDA {found['cuda_build']}")
        return "ok", {}
    built = f"built with CUDA {found['cuda_build']}" if found.get("cuda_build") else "a CPU-only build"
    ck.say(f"no CUDA device: torch {found.get('torch', '?')} ({built}) sees no GPU on this machine "
           f"(CUDA_VISIBLE_DEVICES={found.get('visible_devices')}); the GPU check needs the lent GPU machine. "
           f"Stopped before the first CUDA step (pytest -m gpu); the steps that need no GPU ran.")
    return "no-cuda", {}


def step_tests(ck: GpuCheck) -> tuple[str, dict[str, Any]]:
    junit = ck.work / "junit.xml"
    status, _ = ck.run([sys.executable, "-m", "pytest", "-m", "gpu", "tests/test_gpu.py", "-p", "no:cacheprovider",
                        "-q", f"--junitxml={junit}"], 360)
    details: dict[str, Any] = {"exit_status": status}
    if junit.is_file():
        suite = ET.parse(junit).getroot()
        suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
        details.update({key: int(suite.get(key, 0)) for key in ("tests", "failures", "errors", "skipped")})
        details["durations_s"] = {f"{case.get('name')}": round(float(case.get("time", 0)), 1)
                                  for case in suite.iter("testcase")}
        details["failed"] = [case.get("name") for case in suite.iter("testcase")
                             if case.find("failure") is not None or case.find("error") is not None]
    return ("ok" if status == 0 else "failed"), details


def start_photos(ck: GpuCheck) -> None:
    """Write the 10,400 photos in the background (CPU work, while the tests use the GPU)."""
    ck.say(f"writing {PHOTOS[0]} JPEG photos of {PHOTOS[1]}x{PHOTOS[2]} to {ck.photos} in the background")
    with ck.photo_log.open("w") as handle:
        ck.photo_writer = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--probe", "photos",
                                            "--out", str(ck.bench_out), "--photos", str(ck.photos)],
                                           cwd=REPO, env=ck.env, stdout=handle, stderr=subprocess.STDOUT,
                                           start_new_session=True)


def wait_for_photos(ck: GpuCheck, timeout: float = 240) -> bool:
    if ck.photo_writer is None:
        start_photos(ck)
    try:
        status = ck.photo_writer.wait(timeout)
    except subprocess.TimeoutExpired:
        kill(ck.photo_writer)
        status = -1
    text = ck.photo_log.read_text(errors="replace").strip()
    ck.say(f"photos: {text.splitlines()[-1] if text else '(no output)'}")
    if status != 0:
        ck.say(f"writing the photos failed (exit status {status}):\n{text[-3000:]}")
    return status == 0


def benchmark_rows(path: Path) -> dict[str, Any]:
    """The numbers of one ``mode=throughput`` result file, by part: raw, in_device, jpeg."""
    rows = json.loads(path.read_text())["rows"]
    found: dict[str, Any] = {"rows": rows}
    for row in rows:
        label = row.get("measurement", "")
        part = ("raw" if label.startswith("raw") else "in_device" if "in-device" in label
                else "jpeg" if "JPEG" in label and "plain" not in label else None)
        if part is None:
            continue
        found[f"{part}_img_s"] = row.get("img_s")
        if row.get("ratio") is not None:
            found[f"{part}_ratio"] = row["ratio"]
        for key in ("first_epoch_img_s", "command_wall_s", "run_wall_s", "command_to_first_step_s", "val_acc_best"):
            if row.get(key) is not None:
                found[f"{part}_{key}"] = row[key]
    return found


def run_benchmark(ck: GpuCheck, model: str, timeout: float) -> bool:
    argv = benchmark_commands(ck.bench_out, ck.photos)[model]
    status, _ = ck.run([sys.executable, "-m", "paddy.benchmark", *argv], timeout)
    result = ck.bench_out / f"throughput_gpu_{model}.json"
    if ck.bundle_files:  # packed now: a check stopped later still leaves these
        bundle(ck)
    if status == 0 and result.is_file():
        ck.summary["results"][model] = benchmark_rows(result)
        return True
    return False


def step_throughput(ck: GpuCheck) -> tuple[str, dict[str, Any]]:
    if not wait_for_photos(ck):
        return "failed", {"photos": "not written"}
    ok = run_benchmark(ck, "lite0_ca", 300)
    return ("ok" if ok else "failed"), {}


def step_ratio(ck: GpuCheck) -> tuple[str, dict[str, Any]]:
    done = [model for model in RATIO_MODELS if run_benchmark(ck, model, 150)]
    return ("ok" if done == list(RATIO_MODELS) else "failed"), {"measured": done}


STEP_RUNNERS = {"wheels": step_wheels, "imports": step_imports, "commands": step_commands, "cuda": step_cuda,
                "tests": step_tests, "throughput": step_throughput, "ratio": step_ratio}


def judge_targets(ck: GpuCheck) -> None:
    """The issue's targets against what was measured (None: not measured)."""
    results = ck.summary["results"]
    verdicts = []
    for what, key, comparison, bound in TARGETS:
        model, name = key.split(".")
        value = results.get(model, {}).get(name)
        met = None if value is None else (value >= bound if comparison == ">=" else value < bound)
        verdicts.append({"target": what, "value": value, "needs": f"{comparison} {bound:g}", "met": met})
        shown = "not measured" if value is None else f"{value:.3f}" if value < 10 else f"{value:.0f}"
        ck.say(f"target {'MET' if met else 'not met' if met is False else '-'}: {what}: {shown} (needs "
               f"{comparison} {bound:g})")
    ck.summary["targets"] = verdicts


def check(ck: GpuCheck, steps: list[str]) -> int:
    ck.say(f"paddy GPU check: {REPO}, Python {sys.version.split()[0]} ({sys.executable}); steps: {', '.join(steps)}; "
           f"results in {ck.out}")
    failed = False
    for step in (s for s in STEPS if s in steps):
        started = time.perf_counter()
        status, details = STEP_RUNNERS[step](ck)
        ck.record(step, status, time.perf_counter() - started, **details)
        failed |= status == "failed"
        if status == "no-cuda":
            ck.summary["exit_status"] = 2
            ck.write_summary()
            return 2
        if step == "imports" and status == "failed":
            ck.say("stopped: what the check imports is missing (see above)")
            break
        if step == "cuda" and "throughput" in steps:
            start_photos(ck)
    if {"throughput", "ratio"} & set(steps):
        judge_targets(ck)
    ck.summary["exit_status"] = int(failed)
    ck.say(f"GPU check {'FAILED' if failed else 'passed'} in {time.perf_counter() - ck.started:.0f} s; "
           f"summary: {ck.out / 'gpu_check.json'}")
    ck.write_summary()
    return int(failed)


def bundle(ck: GpuCheck) -> None:
    """``--bundle``: the benchmarks' files in one archive in the results folder."""
    files = sorted(p for p in ck.bench_out.glob("throughput_gpu_*") if p.is_file()) if ck.bench_out.is_dir() else []
    if not files:
        return
    archive = ck.out / "gpu_check_benchmarks.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for path in files:
            tar.add(path, arcname=path.name)
    ck.say(f"packed {len(files)} benchmark files into {archive}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results",
                        help="results folder: gpu_check.json, gpu_check.log and the benchmarks' files")
    parser.add_argument("--wheels", type=Path, default=REPO / "gpu-wheels", help="the carried wheels (make gpu-wheels)")
    parser.add_argument("--steps", default=",".join(STEPS), help=f"comma-separated, of: {', '.join(STEPS)}")
    parser.add_argument("--bundle", action="store_true",
                        help="pack the benchmarks' files into <out>/gpu_check_benchmarks.tar.gz")
    parser.add_argument("--probe", choices=sorted(PROBES), help=argparse.SUPPRESS)  # the child side of a step
    parser.add_argument("--photos", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.steps = [s.strip() for s in args.steps.split(",") if s.strip()]
    unknown = sorted(set(args.steps) - set(STEPS))
    if unknown:
        parser.error(f"--steps: unknown {', '.join(unknown)} (steps: {', '.join(STEPS)})")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.probe:
        print(json.dumps(PROBES[args.probe](args), default=str), flush=True)
        return 0
    ck = GpuCheck(args)
    try:
        return check(ck, args.steps)
    except KeyboardInterrupt:
        ck.say("interrupted")
        return 130
    finally:
        ck.close()


if __name__ == "__main__":
    sys.exit(main())
