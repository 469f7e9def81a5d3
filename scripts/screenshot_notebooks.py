"""Run notebooks in a real JupyterLab (headless Debian Chromium) and screenshot every cell's output.

    python scripts/screenshot_notebooks.py                          # every notebook in notebooks/
    python scripts/screenshot_notebooks.py notebooks/01_quickstart.ipynb

A copy of each notebook runs (Run > Run All Cells) in a throw-away server; the screenshots land in
``artifacts/notebooks/<notebook>/cell<N>.png``, to be looked at. Needs /usr/bin/chromium
(``scripts/install_browser.sh``) and Playwright (installed by ``scripts/setup.sh``).
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "browser"))
from labserver import CHROMIUM, CHROMIUM_ARGS, Lab, open_notebook  # noqa: E402


def screenshot(notebooks: list[Path], out: Path = ROOT / "artifacts" / "notebooks") -> None:
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as tmp:
        root, work = Path(tmp) / "root", Path(tmp) / "work"
        root.mkdir()
        work.mkdir()
        for nb in notebooks:
            shutil.copy(nb, root / nb.name)
        shutil.copytree(
            ROOT / "notebooks", root, dirs_exist_ok=True, ignore=shutil.ignore_patterns("*.ipynb")
        )
        with Lab(root, work) as lab, sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1300, "height": 1000})
            for nb in notebooks:
                shots = out / nb.stem
                shutil.rmtree(shots, ignore_errors=True)
                shots.mkdir(parents=True)
                # a workspace per notebook: the default one would reopen the notebooks before it as well
                url = lab.url(nb.name, app=f"lab/workspaces/{nb.stem}/tree")
                open_notebook(page, url)
                page.click(".lm-MenuBar-itemLabel >> text=Run")
                page.click(".lm-Menu-itemLabel >> text=Run All Cells")
                page.wait_for_function(  # every code cell ran: its prompt shows a number, none "[*]" or "[ ]"
                    r"""() => {
                        const p = [...document.querySelectorAll('.jp-CodeCell .jp-InputArea-prompt')];
                        return p.length > 0 && p.every(e => /\[\d+\]/.test(e.textContent));
                    }""",
                    timeout=600_000,
                )
                page.wait_for_timeout(3_000)  # the last figures draw after the kernel goes idle
                outputs = page.locator(".jp-Cell .jp-Cell-outputArea")
                for i in range(outputs.count()):
                    if (
                        not outputs.nth(i).inner_text(timeout=5_000).strip()
                        and not outputs.nth(i).locator("svg, canvas, img").count()
                    ):
                        continue
                    outputs.nth(i).scroll_into_view_if_needed(timeout=10_000)
                    outputs.nth(i).screenshot(path=str(shots / f"cell{i}.png"), timeout=30_000)
                print(f"{nb.name}: {len(list(shots.iterdir()))} screenshots in {shots}")
            browser.close()


if __name__ == "__main__":
    paths = [Path(p).resolve() for p in sys.argv[1:]] or sorted((ROOT / "notebooks").glob("*.ipynb"))
    screenshot(paths)
