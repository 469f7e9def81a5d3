"""A throw-away JupyterLab server and headless Debian Chromium, for the browser test.

The server serves a temporary root (Lab autosaves outputs into notebooks), runs in its own process
group with its own runtime, config and settings directories, and is stopped by killing that group.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import nbformat

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]
# Keep the "Jupyter news?" toast out of screenshots; render every cell (no virtual windowing).
SETTINGS = {
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {
        "checkForUpdates": False,
        "fetchNews": "false",
    },
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
    # as scripts/lab-overrides.json sets it for scripts/lab.sh: widget state saved with the notebook
    "@jupyter-widgets/jupyterlab-manager/plugin.jupyterlab-settings": {"saveState": True},
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Lab:
    """``with Lab(root, workdir) as lab:`` -> ``lab.url(path)`` opens a notebook under ``root``."""

    def __init__(self, root: Path, workdir: Path) -> None:
        self.root, self.workdir = root, workdir
        self.token = secrets.token_hex(16)
        self.port = _free_port()
        self.proc: subprocess.Popen | None = None

    def url(self, path: str, app: str = "lab/tree") -> str:
        """``path`` opened in JupyterLab, or in Notebook 7 with ``app='notebooks'``."""
        return f"http://127.0.0.1:{self.port}/{app}/{path}?token={self.token}"

    def __enter__(self) -> Lab:
        settings = self.workdir / "settings"
        for name, value in SETTINGS.items():
            (settings / name).parent.mkdir(parents=True, exist_ok=True)
            (settings / name).write_text(json.dumps(value))
        env = dict(
            os.environ,
            JUPYTER_RUNTIME_DIR=str(self.workdir / "runtime"),
            JUPYTER_CONFIG_DIR=str(self.workdir / "config"),
            HF_HUB_OFFLINE="1",
            OMP_NUM_THREADS="1",
        )
        cmd = [
            sys.executable, "-m", "jupyterlab", "--no-browser", f"--port={self.port}",
            "--ServerApp.ip=127.0.0.1", f"--IdentityProvider.token={self.token}",
            f"--ServerApp.root_dir={self.root}", f"--LabApp.workspaces_dir={self.workdir / 'workspaces'}",
            f"--LabApp.user_settings_dir={settings}",
        ]  # fmt: skip
        if os.geteuid() == 0:
            cmd.append("--allow-root")
        self.log = open(self.workdir / "lab.log", "w")  # noqa: SIM115 (closed in __exit__)
        self.proc = subprocess.Popen(
            cmd, stdout=self.log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"jupyter lab exited ({self.proc.returncode}); see {self.workdir}/lab.log")
            try:
                urllib.request.urlopen(self.url("").replace("/lab/tree/", "/api/status"), timeout=1)
                return self
            except OSError:
                time.sleep(0.25)
        self.__exit__()
        raise RuntimeError(f"jupyter lab did not answer in 60 s; see {self.workdir / 'lab.log'}")

    def __exit__(self, *exc) -> None:
        """Stop the server and its kernels (its process group)."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self.log.close()


def watch(page, events: dict) -> None:
    """Record the page's console messages, page errors, failed requests and dialogs (dismissed) in the lists
    ``events['console' | 'pageerror' | 'requestfailed' | 'dialog']``."""
    page.on("console", lambda m: events["console"].append(f"{m.type}: {m.text}"[:400]))
    page.on("pageerror", lambda e: events["pageerror"].append(str(e)[:400]))
    page.on("requestfailed", lambda r: events["requestfailed"].append(f"{r.url[:200]} {r.failure}"))
    page.on("dialog", lambda d: (events["dialog"].append(d.message), d.dismiss()))


# anywidget's start-up deadline (2 s) passing for a model, as on a busy machine. It is harmless for this
# package's figures, whose messages wait for their own start (test_browser.py: "when the page is busy"),
# and all the models on the test pages are this package's.
SLOW_START = "[anywidget] Failed to initialize model."


def assert_no_js_errors(events: dict) -> None:
    """No page error, failed request or console error (but SLOW_START) was recorded by :func:`watch`."""
    errors = [e for e in events["pageerror"] if e != SLOW_START]
    assert errors == [], errors
    assert events["requestfailed"] == [], events["requestfailed"]
    bad = [m for m in events["console"] if m.startswith("error") and SLOW_START not in m]
    assert bad == [], bad


def code_notebook(path: Path, cells: list[str]) -> Path:
    """Write a notebook of code ``cells`` for the python3 kernel to ``path``."""
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(c) for c in cells]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)
    return path


def open_notebook(page, url: str) -> None:
    """Open a notebook in JupyterLab and wait until its kernel is idle."""
    page.goto(url, wait_until="domcontentloaded")
    page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=60_000)
    page.wait_for_selector("#jp-main-statusbar >> text=Idle", timeout=60_000)


def run_all(page, done: str) -> None:
    """Run > Run All Cells, then wait until an output shows ``done`` and the kernel is idle again."""
    page.click(".lm-MenuBar-itemLabel >> text=Run")
    page.click(".lm-Menu-itemLabel >> text=Run All Cells")
    page.wait_for_selector(f".jp-OutputArea-output >> text={done}", timeout=120_000)
    page.wait_for_selector("#jp-main-statusbar >> text=Idle", timeout=60_000)


def open_offline(browser, path: Path, **page_args):
    """Open a static page from disk with every request outside ``file:`` refused; returns the page and the
    lists of refused URLs and of page errors / dialogs, filled as they happen."""
    blocked, errors = [], []

    def only_files(route):
        if route.request.url.startswith("file:"):
            return route.continue_()
        blocked.append(route.request.url)
        return route.abort()

    page = browser.new_page(**page_args)
    page.route("**/*", only_files)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("dialog", lambda d: (errors.append("dialog " + d.message), d.dismiss()))
    page.goto(path.as_uri())
    return page, blocked, errors
