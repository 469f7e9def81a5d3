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

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}/lab/tree/{path}?token={self.token}"

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
