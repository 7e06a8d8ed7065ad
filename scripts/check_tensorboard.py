#!/usr/bin/env python
"""Serve a run directory with TensorBoard and check that it shows the run: scalars, images, HPARAMS.

    python scripts/check_tensorboard.py outputs/2026-11-23/10-41-07 [--port N] [--no-browser]

1. Starts ``tensorboard --logdir RUN_DIR --host 127.0.0.1 --port N`` (a free port unless given) and
   waits until it answers.
2. Asks TensorBoard's own HTTP data API (the assertions): ``/data/plugin/scalars/tags`` must list
   the expected scalar tags (``--scalar``), ``/data/plugin/images/tags`` the expected image tags
   (``--image``), and ``/data/plugin/hparams/experiment`` + ``/session_groups`` an HPARAMS table whose
   sessions have the expected columns (``--hparam``) and metric values (``--hparam-metric``).
3. Unless ``--no-browser``: opens ``#scalars`` and ``#hparams`` in headless Chromium and checks that
   the rendered page shows those names, then saves a screenshot and the page's text into
   ``RUN_DIR/tensorboard_check/``. TensorBoard's dashboards are web components whose content lives
   in shadow roots, which ``chromium --dump-dom`` does not serialise; so the page is driven through
   the DevTools protocol over ``--remote-debugging-pipe`` and its text is read through every shadow
   root.

Exit status 0 when everything was seen (what was seen is printed), 1 otherwise (with the reason). The
TensorBoard and Chromium processes are always stopped.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import fcntl
import json
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

DEFAULT_SCALARS = ("train/loss", "val/loss", "val/acc", "val/f1")
DEFAULT_HPARAMS = ("model.name", "optimizer.lr")
DEFAULT_HPARAM_METRICS = ("hparams/val_acc_best",)
# String columns whose values the browser must show in the HPARAMS table (displayed by default).
ROW_VALUE_KEYS = ("model.name", "backbone.name", "attention.name")
STATUSES = ("STATUS_UNKNOWN", "STATUS_SUCCESS", "STATUS_FAILURE", "STATUS_RUNNING")
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars", "--mute-audio")
# The visible text of the page, including the content of every (nested) shadow root.
DEEP_TEXT_JS = """(() => {
  const parts = [];
  const walk = (node) => {
    if (node.nodeType === Node.TEXT_NODE) { parts.push(node.textContent); return; }
    if (node.nodeType !== Node.ELEMENT_NODE && node.nodeType !== Node.DOCUMENT_FRAGMENT_NODE) return;
    if (node.nodeName === 'SCRIPT' || node.nodeName === 'STYLE') return;
    if (node.shadowRoot) walk(node.shadowRoot);
    for (const child of node.childNodes) walk(child);
  };
  walk(document.body);
  return parts.join(' ').replace(/\\s+/g, ' ');
})()"""


class CheckFailed(RuntimeError):
    """Something the run should show is missing (the message says what)."""


# ---------------------------------------------------------------------- processes


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def stop(process: subprocess.Popen) -> None:
    """Stop ``process`` and its process group (it was started in a session of its own)."""
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


@contextlib.contextmanager
def tensorboard_server(logdir: Path, port: int, log_path: Path) -> Iterator[subprocess.Popen]:
    """A TensorBoard serving ``logdir`` on 127.0.0.1:``port`` (stopped on exit)."""
    command = [sys.executable, "-m", "tensorboard.main", "--logdir", str(logdir), "--host", "127.0.0.1",
               "--port", str(port), "--load_fast", "false", "--reload_interval", "2"]
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            yield process
        finally:
            stop(process)


def wait_for(what: str, probe: Callable[[], Any], timeout: float, process: subprocess.Popen | None = None,
             log_path: Path | None = None) -> Any:
    """Call ``probe`` until it returns a truthy value (returned) or ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            tail = log_path.read_text(errors="replace")[-2000:] if log_path and log_path.exists() else ""
            raise CheckFailed(f"{what}: the process exited with status {process.returncode}\n{tail}")
        last = probe()
        if last:
            return last
        time.sleep(0.5)
    raise CheckFailed(f"{what}: not within {timeout:.0f} s")


# ---------------------------------------------------------------------- TensorBoard's HTTP API


class TensorBoardAPI:
    """The few routes of TensorBoard's data API this check reads."""

    def __init__(self, port: int):
        self.base = f"http://127.0.0.1:{port}"

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(self.base + path, timeout=10) as response:
            return json.loads(response.read().decode())

    def post(self, path: str, body: dict[str, Any]) -> Any:
        request = urllib.request.Request(self.base + path, data=json.dumps(body).encode(), method="POST",
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read().decode())

    def answers(self) -> bool:
        try:
            self.get("/data/environment")
            return True
        except (urllib.error.URLError, ConnectionError, TimeoutError, ValueError):
            return False

    def tags(self, plugin: str) -> dict[str, set[str]]:
        """``{run: {tag, ...}}`` of a plugin (``scalars``, ``images``)."""
        return {run: set(tags) for run, tags in self.get(f"/data/plugin/{plugin}/tags").items()}

    def hparams(self) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """The HPARAMS experiment (columns) and its session groups (rows)."""
        experiment = self.post("/data/plugin/hparams/experiment", {"experimentName": ""})
        groups = self.post("/data/plugin/hparams/session_groups", {
            "experimentName": "", "allowedStatuses": list(STATUSES), "colParams": [],
            "aggregationType": "AGGREGATION_AVG", "startIndex": 0, "sliceSize": 10_000,
        })
        return experiment, groups.get("sessionGroups", [])


def check_data(api: TensorBoardAPI, scalars: list[str], images: list[str], hparams: list[str],
               hparam_metrics: list[str], timeout: float) -> dict[str, Any]:
    """Wait until the API lists everything expected; return what it lists. Raises :class:`CheckFailed`."""
    seen: dict[str, Any] = {}

    def probe() -> bool:
        scalar_tags = set().union(*api.tags("scalars").values()) if api.tags("scalars") else set()
        image_tags = set().union(*api.tags("images").values()) if api.tags("images") else set()
        experiment, groups = api.hparams()
        columns = [info["name"] for info in experiment.get("hparamInfos", [])]
        metrics = [info["name"]["tag"] for info in experiment.get("metricInfos", [])]
        sessions = [session for group in groups for session in group.get("sessions", [])]
        rows = [{"run": session["name"], "hparams": group.get("hparams", {}),
                 "metrics": {value["name"]["tag"]: value.get("value") for value in session.get("metricValues", [])}}
                for group in groups for session in group.get("sessions", [])]
        seen.update(scalars=scalar_tags, images=image_tags, columns=columns, metrics=metrics, rows=rows,
                    sessions=len(sessions))
        return not _data_problems(seen, scalars, images, hparams, hparam_metrics)

    try:
        wait_for("TensorBoard's data API lists the run", probe, timeout)
    except CheckFailed as err:
        problems = _data_problems(seen, scalars, images, hparams, hparam_metrics) if seen else ["no answer"]
        raise CheckFailed(f"{err}: " + "; ".join(problems)) from None
    return seen


def _data_problems(seen: dict[str, Any], scalars: list[str], images: list[str], hparams: list[str],
                   hparam_metrics: list[str]) -> list[str]:
    problems = []
    if missing := [t for t in scalars if t not in seen["scalars"]]:
        problems.append(f"scalar tags missing: {missing} (have {len(seen['scalars'])})")
    if missing := [t for t in images if t not in seen["images"]]:
        problems.append(f"image tags missing: {missing} (have {sorted(seen['images'])})")
    if not seen["rows"]:
        problems.append("the HPARAMS table has no session")
    if missing := [h for h in hparams if h not in seen["columns"]]:
        problems.append(f"HPARAMS columns missing: {missing} (have {seen['columns']})")
    if missing := [m for m in hparam_metrics if m not in seen["metrics"]]:
        problems.append(f"HPARAMS metric columns missing: {missing} (have {seen['metrics']})")
    for row in seen["rows"]:
        if empty := [m for m in hparam_metrics if row["metrics"].get(m) is None]:
            problems.append(f"HPARAMS row {row['run']!r} has no value for {empty}")
    return problems


# ---------------------------------------------------------------------- the browser


class Chromium:
    """Headless Chromium driven over the DevTools protocol on ``--remote-debugging-pipe``."""

    def __init__(self, executable: str, profile_dir: Path, width: int = 1600, height: int = 1000):
        to_browser_read, self._to_browser = os.pipe()
        self._from_browser, from_browser_write = os.pipe()

        def wire_pipes() -> None:
            # In the child, before exec: the protocol reads commands from fd 3 and writes replies to fd 4.
            # Copy both ends above fd 9 first so that placing one cannot overwrite the other.
            high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in (to_browser_read, from_browser_write)]
            for target, fd in zip((3, 4), high):
                os.dup2(fd, target)
                os.set_inheritable(target, True)

        command = [executable, *CHROMIUM_FLAGS, f"--user-data-dir={profile_dir}", "--remote-debugging-pipe",
                   f"--window-size={width},{height}", "about:blank"]
        self.process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL, close_fds=False, preexec_fn=wire_pipes,
                                        start_new_session=True)
        os.close(to_browser_read)
        os.close(from_browser_write)
        self._buffer = b""
        self._next_id = 0
        self._session: str | None = None
        self._target: str | None = None
        self.size = (width, height)

    def call(self, method: str, params: dict[str, Any] | None = None, timeout: float = 30.0,
             page: bool = True) -> dict[str, Any]:
        """Send one protocol command (to the open page unless ``page=False``) and return its result."""
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if page and self._session is not None:
            message["sessionId"] = self._session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            reply = self._read(deadline)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise CheckFailed(f"chromium: {method} failed: {reply['error']}")
                return reply.get("result", {})

    def _read(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._from_browser], [], [], left)[0]:
                raise CheckFailed("chromium did not answer in time")
            chunk = os.read(self._from_browser, 1 << 20)
            if not chunk:
                raise CheckFailed(f"chromium exited (status {self.process.poll()})")
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def open(self, url: str) -> None:
        """Open ``url`` in a new tab (closing the previous one, so no earlier page's DOM remains)."""
        if self._target is not None:
            self.call("Target.closeTarget", {"targetId": self._target}, page=False)
            self._target = self._session = None
        self._target = self.call("Target.createTarget", {"url": "about:blank"}, page=False)["targetId"]
        self._session = self.call("Target.attachToTarget", {"targetId": self._target, "flatten": True},
                                  page=False)["sessionId"]
        width, height = self.size
        self.call("Emulation.setDeviceMetricsOverride",
                  {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False})
        self.call("Page.navigate", {"url": url})

    def text(self) -> str:
        """The page's text, shadow roots included."""
        result = self.call("Runtime.evaluate", {"expression": DEEP_TEXT_JS, "returnByValue": True})
        return str(result.get("result", {}).get("value") or "")

    def screenshot(self, path: Path) -> None:
        data = self.call("Page.captureScreenshot", {"format": "png"})["data"]
        path.write_bytes(base64.b64decode(data))

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self._to_browser)
        with contextlib.suppress(OSError):
            os.close(self._from_browser)
        stop(self.process)


def check_page(browser: Chromium, url: str, expected: list[str], out_dir: Path, name: str,
               timeout: float) -> tuple[list[str], Path]:
    """Open ``url``, wait until its text shows every string of ``expected``, save a screenshot and
    the text; returns (what was seen, screenshot path). Raises :class:`CheckFailed`."""
    browser.open(url)
    text = ""

    def probe() -> bool:
        nonlocal text
        text = browser.text()
        return all(item in text for item in expected)

    try:
        wait_for(f"the browser shows {url}", probe, timeout)
        time.sleep(1.0)  # let charts finish drawing before the screenshot
    finally:
        screenshot = out_dir / f"{name}.png"
        browser.screenshot(screenshot)
        (out_dir / f"{name}.txt").write_text(browser.text() or text)
    missing = [item for item in expected if item not in text]
    if missing:
        raise CheckFailed(f"the browser page {url} does not show {missing}")
    return [item for item in expected if item in text], screenshot


# ---------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path, help="a run directory (or any TensorBoard logdir)")
    parser.add_argument("--port", type=int, default=None, help="port on 127.0.0.1 (default: a free one)")
    parser.add_argument("--scalar", action="append", default=None,
                        help=f"a scalar tag that must exist (repeatable; default: {', '.join(DEFAULT_SCALARS)})")
    parser.add_argument("--image", action="append", default=[], help="an image tag that must exist (repeatable)")
    parser.add_argument("--hparam", action="append", default=None,
                        help=f"an HPARAMS column that must exist (default: {', '.join(DEFAULT_HPARAMS)})")
    parser.add_argument("--hparam-metric", action="append", default=None,
                        help=f"an HPARAMS metric every row must have (default: {', '.join(DEFAULT_HPARAM_METRICS)})")
    parser.add_argument("--no-browser", action="store_true", help="check the HTTP API only")
    parser.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium",
                        help="the Chromium executable")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for each step")
    args = parser.parse_args(argv)
    scalars = args.scalar or list(DEFAULT_SCALARS)
    hparams = args.hparam or list(DEFAULT_HPARAMS)
    hparam_metrics = args.hparam_metric or list(DEFAULT_HPARAM_METRICS)

    run_dir = args.run_dir.resolve()
    if not run_dir.is_dir():
        print(f"check_tensorboard: {run_dir} is not a directory", file=sys.stderr)
        return 1
    if not any(run_dir.rglob("events.out.tfevents.*")):
        print(f"check_tensorboard: no TensorBoard event files under {run_dir}", file=sys.stderr)
        return 1
    if not args.no_browser and not Path(args.chromium).is_file():
        print(f"check_tensorboard: no Chromium at {args.chromium} (apt-get install -y chromium, "
              f"or --no-browser)", file=sys.stderr)
        return 1
    out_dir = run_dir / "tensorboard_check"
    out_dir.mkdir(exist_ok=True)
    port = args.port or free_port()
    log_path = out_dir / "tensorboard.log"
    try:
        with tensorboard_server(run_dir, port, log_path) as server:
            api = TensorBoardAPI(port)
            wait_for(f"TensorBoard on 127.0.0.1:{port}", api.answers, args.timeout, server, log_path)
            print(f"TensorBoard {api.base} (logdir {run_dir})")
            seen = check_data(api, scalars, args.image, hparams, hparam_metrics, args.timeout)
            _print_data(seen, scalars)
            if args.no_browser:
                return 0
            with tempfile.TemporaryDirectory(prefix="paddy-chromium-") as profile:
                browser = Chromium(args.chromium, Path(profile))
                try:
                    # Values the HPARAMS table shows (headline string columns of each row).
                    row_values = sorted({str(row["hparams"][key]) for row in seen["rows"] for key in ROW_VALUE_KEYS
                                         if isinstance(row["hparams"].get(key), str)})
                    # The scalars dashboard opens only its first tag groups: filter it to the expected tags.
                    tag_filter = urllib.parse.quote("^(" + "|".join(re.escape(t) for t in scalars) + ")$", safe="")
                    pages = (("scalars", f"{api.base}/#scalars&tagFilter={tag_filter}", scalars),
                             ("hparams", f"{api.base}/#hparams", [*hparams, *hparam_metrics, *row_values]))
                    for name, url, expected in pages:
                        shown, shot = check_page(browser, url, expected, out_dir, name, args.timeout)
                        print(f"browser {url}: shows {', '.join(shown)}; screenshot {shot}")
                finally:
                    browser.close()
    except CheckFailed as err:
        print(f"check_tensorboard: FAILED: {err}", file=sys.stderr)
        return 1
    print("check_tensorboard: OK")
    return 0


def _print_data(seen: dict[str, Any], scalars: list[str]) -> None:
    print(f"scalar tags ({len(seen['scalars'])}): {', '.join(sorted(seen['scalars']))}")
    print(f"image tags: {', '.join(sorted(seen['images'])) or '-'}")
    print(f"HPARAMS: {seen['sessions']} session(s); columns: {', '.join(seen['columns'])}; "
          f"metrics: {', '.join(seen['metrics'])}")
    for row in seen["rows"]:
        values = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row["metrics"].items())
        print(f"  row {row['run']}: {values}")


if __name__ == "__main__":
    sys.exit(main())
