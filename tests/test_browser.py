"""The dashboard in a real browser: JupyterLab on 127.0.0.1, a notebook opened in Debian's
chromium driven by playwright, run, and the DOM checked for every panel and plot and for values
that change while tasks run; a click on a task of the graph shows its details. Screenshots go
to ``$NBRAY_ARTIFACTS`` (default ``test-artifacts/``).

Marked ``browser``: not in the default run; ``pytest -m browser`` (``.ci/run`` does) runs it.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import wait_until

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
TOKEN = "nbray-test"
ARTIFACTS = Path(os.environ.get("NBRAY_ARTIFACTS", Path(__file__).parent.parent /
                                "test-artifacts"))

pytestmark = [pytest.mark.browser, pytest.mark.timeout(240),
              pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="needs Debian's chromium")]

def _cells(init: str, stop: str) -> list:
    return [
        f"import nbray\n{init}\n%load_ext nbray",
        "%nbray dashboard --interval 0.2",
        # tasks for a while, in waves, with a dependency and a failure, while the dashboard draws
        """import time
@nbray.remote
def step(x):
    time.sleep(0.02)
    return x + 1

@nbray.remote
def join(a, b):
    return a + b

@nbray.remote
def fails(x):
    raise ValueError(x)

import os
bad = fails.remote(0)
done = 0
t0 = time.time()
while not os.path.exists(STOP) and time.time() - t0 < 180:   # the test says when
    refs = [join.remote(step.remote(i), step.remote(i)) for i in range(10)]
    done += len(nbray.get(refs, progress=False))
print('waves done', done)""".replace("STOP", repr(stop)),
    ]


#: the notebook of each engine: how it starts, and the column of the scheduler's bars that
#: its tasks fill (Ray does not tell where its scheduler put a task, and the view says so)
NOTEBOOKS = {
    "nbray": ("nbray.init(num_workers=2)", "kept local"),
    "ray": ('nbray.init(backend="ray", num_cpus=2, include_dashboard=True)',
            "not told by the engine"),
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _children(pid: int) -> list:
    import psutil
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


@pytest.fixture(scope="module")
def jlab(tmp_path_factory):
    import nbformat
    root = tmp_path_factory.mktemp("lab")
    for engine, (init, _) in NOTEBOOKS.items():
        nb = nbformat.v4.new_notebook()
        nb.cells = [nbformat.v4.new_code_cell(c) for c in _cells(init, f"stop-{engine}")]
        nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3 (ipykernel)",
                                     "language": "python"}
        nbformat.write(nb, root / f"dashboard-{engine}.ipynb")
    settings = root / "_settings"
    settings.mkdir()
    (settings / "overrides.json").write_text(json.dumps({
        "@jupyterlab/notebook-extension:tracker": {"windowingMode": "none"},
        "@jupyterlab/apputils-extension:notification": {
            "fetchNews": "false", "checkForUpdates": False, "doNotDisturbMode": True}}))
    port = _free_port()
    env = dict(os.environ, JUPYTER_CONFIG_DIR=str(root / "_cfg"),
               JUPYTER_RUNTIME_DIR=str(root / "_rt"))
    cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root", f"--port={port}",
           "--ServerApp.port_retries=0", "--ServerApp.ip=127.0.0.1",
           f"--ServerApp.token={TOKEN}", f"--ServerApp.root_dir={root}",
           f"--LabApp.app_settings_dir={settings}", f"--LabApp.workspaces_dir={root / '_ws'}"]
    log = open(root / "jlab.log", "w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                            start_new_session=True)
    base = f"http://127.0.0.1:{port}"

    def up():
        if proc.poll() is not None:
            raise RuntimeError((root / "jlab.log").read_text()[-3000:])
        try:
            urllib.request.urlopen(f"{base}/api/status?token={TOKEN}", timeout=2)
            return True
        except OSError:
            return False
    wait_until(up, 90, "JupyterLab to answer", interval=0.2)
    try:
        yield base, proc, root
    finally:
        leftovers = _children(proc.pid)
        proc.send_signal(signal.SIGTERM)        # it shuts its kernels down, then exits
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        wait_until(lambda: not [p for p in leftovers if p.is_running() and
                                p.status() != "zombie"], 20,
                   "the kernel and its cluster's processes to exit")


def _bokeh(page, name: str, attr: str):
    """A property of the bokeh model named ``name``, read in the page."""
    return page.evaluate("""([name, attr]) => {
        for (const d of window.Bokeh.documents) {
            const m = d.get_model_by_name(name);
            if (m) {
                const v = m[attr];
                if (!(v instanceof Map)) { return v; }
                const out = {};          // columns may be typed arrays (numpy on the kernel)
                for (const [k, c] of v) { out[k] = ArrayBuffer.isView(c) ? Array.from(c) : c; }
                return out; }
        }
        return null; }""", [name, attr])


def _assert_drawn(page) -> None:
    """Every plot has a range it can draw (one that collapsed to a point draws nothing)."""
    spans = page.evaluate("""() => { const out = {};
        for (const d of window.Bokeh.documents) {
            for (const name of ['task_graph_plot', 'latency_bars', 'latency_histogram',
                                'scheduler_bars']) {
                const m = d.get_model_by_name(name);
                if (m) { out[name] = [m.x_range.factors ? m.x_range.factors.length :
                                      m.x_range.end - m.x_range.start,
                                      m.y_range.factors ? m.y_range.factors.length :
                                      m.y_range.end - m.y_range.start]; } } }
        return out; }""")
    assert len(spans) == 4 and all(x > 0 and y > 0 for x, y in spans.values()), spans


def _shutdown_kernels(base: str) -> None:
    """End the notebook's kernel (and the cluster it started) before the next test."""
    url = f"{base}/api/kernels?token={TOKEN}"
    for k in json.loads(urllib.request.urlopen(url, timeout=10).read()):
        urllib.request.urlopen(urllib.request.Request(
            f"{base}/api/kernels/{k['id']}?token={TOKEN}", method="DELETE"), timeout=60)


@pytest.mark.parametrize("engine", list(NOTEBOOKS))
def test_the_dashboard_renders_and_updates_live(jlab, tmp_path, engine):
    """On nbray's runtime, and on Ray (in a local Ray instance the notebook starts)."""
    from playwright.sync_api import sync_playwright
    if engine == "ray":
        pytest.importorskip("ray", reason='the Ray backend needs pip install -e ".[ray]"')
    base, _, root = jlab
    placed_column = NOTEBOOKS[engine][1]
    stop = root / f"stop-{engine}"
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM,
                                     args=["--no-sandbox", "--disable-dev-shm-usage"])
        page = browser.new_page(viewport={"width": 1400, "height": 2400})
        errors = []
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        try:
            page.goto(f"{base}/lab/workspaces/t{int(time.time() * 1000)}/tree/"
                      f"dashboard-{engine}.ipynb?reset&token={TOKEN}")
            page.get_by_text(re.compile(r"\(ipykernel\) \| Idle$")).wait_for(timeout=90_000)
            page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(r"^Run$")).click()
            page.locator(".lm-Menu-itemLabel", has_text=re.compile(r"^Run All Cells$")).click()

            tasks = page.locator(".nbray-tasks .widget-html-content")
            for css in (".nbray-cluster", ".nbray-tasks", ".nbray-actors", ".nbray-task-graph",
                        ".nbray-latency", ".nbray-scheduler"):
                page.locator(css).first.wait_for(state="attached", timeout=60_000)
            canvas = page.locator(".nbray-task-graph canvas").first
            canvas.wait_for(state="attached", timeout=30_000)
            assert "Click to show javascript error" not in page.content()

            def graph_count():
                text = _bokeh(page, "task_graph_status", "text") or ""
                m = re.search(r"tasks: (\d+) drawn", text)
                return int(m.group(1)) if m else 0
            wait_until(lambda: ">step<" in tasks.inner_text() or "step" in tasks.inner_text(),
                       60, "the task panel to list step")
            first_tasks, first_count = tasks.inner_text(), graph_count()
            canvas.scroll_into_view_if_needed()
            first_img = canvas.screenshot()
            page.screenshot(path=str(ARTIFACTS / f"dashboard-{engine}-running.png"),
                            full_page=True)
            wait_until(lambda: graph_count() > first_count and tasks.inner_text() != first_tasks,
                       30, "the graph and the task panel to change while tasks run")
            wait_until(lambda: canvas.screenshot() != first_img, 20, "the graph to be redrawn")
            hist = _bokeh(page, "latency_hist", "data")
            assert hist and sum(hist["count"]) > 0
            assert "p50" in (_bokeh(page, "latency_status", "text") or "")
            nodes = _bokeh(page, "scheduler_nodes", "data")
            assert nodes and sum(nodes[placed_column]) > 0
            _assert_drawn(page)

            # a click on a task: select it as the tap tool does, and its details show
            page.evaluate("""() => { for (const d of window.Bokeh.documents) {
                const m = d.get_model_by_name('task_graph_nodes');
                if (m) { m.selected.indices = [0]; } } }""")
            wait_until(lambda: "attempts" in (_bokeh(page, "task_details", "text") or ""), 10,
                       "the task's details")
            details = page.locator(".bk-Div .bk-clearfix", has_text="attempts").first
            details.wait_for(state="attached", timeout=10_000)
            assert "arguments:" in details.inner_text()

            stop.write_text("")
            page.get_by_text(re.compile(r"waves done \d+")).wait_for(timeout=60_000)
            failed = _bokeh(page, "task_graph_nodes", "data")
            assert failed and "failed" in failed["state"] or "fails" in tasks.inner_text()
        finally:
            stop.write_text("")
            page.screenshot(path=str(ARTIFACTS / f"dashboard-{engine}-final.png"),
                            full_page=True)
            browser.close()
            _shutdown_kernels(base)
    assert not [e for e in errors if "Could not create a view" in e], errors


def _page_follows_the_tasks(url: str, work, screenshot: str) -> None:
    """The dashboard page at ``url`` draws, then shows 100 ``work`` tasks run meanwhile."""
    from playwright.sync_api import sync_playwright
    import nbray
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM,
                                     args=["--no-sandbox", "--disable-dev-shm-usage"])
        page = browser.new_page(viewport={"width": 1000, "height": 2400})
        try:
            page.goto(url)
            page.locator(".bk-Div .bk-clearfix", has_text="drawn").first.wait_for(
                state="attached", timeout=60_000)
            before = _bokeh(page, "task_graph_status", "text")
            assert nbray.get([work.remote(i) for i in range(100)]) == list(range(100))
            wait_until(lambda: _bokeh(page, "task_graph_status", "text") != before and
                       "100 finished" in _bokeh(page, "task_graph_status", "text"), 30,
                       "the page to show the 100 tasks")
            assert "work" in (_bokeh(page, "nbray-tasks", "text") or "")
            _assert_drawn(page)
        finally:
            page.screenshot(path=str(ARTIFACTS / screenshot), full_page=True)
            browser.close()


def test_the_dashboard_server_outside_jupyter(tmp_path, monkeypatch):
    """``nbray start --head --dashboard-port``: the same views in a bokeh server page."""
    import nbray
    from nbray.config import CONFIG
    root = str(tmp_path / "run")
    monkeypatch.setattr(CONFIG, "run_root", root)
    env = dict(os.environ, NBRAY_RUN_ROOT=root)
    nbray_cli = [sys.executable, "-m", "nbray.cli"]
    subprocess.run([*nbray_cli, "start", "--head", "--num-workers", "2", "--dashboard-port",
                    "0"], env=env, check=True, capture_output=True, timeout=90)
    try:
        status = subprocess.run([*nbray_cli, "status"], env=env, capture_output=True,
                                text=True, timeout=30).stdout
        (record,) = [json.loads(p.read_text()) for p in Path(root).glob("*.json")]
        url = re.search(r"dashboard: (http://\S+)", status).group(1)
        nbray.init(address="auto")

        @nbray.remote
        def work(x):
            time.sleep(0.01)
            return x
        _page_follows_the_tasks(url, work, "dashboard-server.png")
    finally:
        if nbray.is_initialized():
            nbray.shutdown()
        subprocess.run([*nbray_cli, "stop", "--all"], env=env, capture_output=True,
                       timeout=60)
    import psutil
    wait_until(lambda: not [p for p in record["pids"] if psutil.pid_exists(p) and
                            psutil.Process(p).status() != "zombie"], 15,
               "the cluster and its dashboard to exit")


def test_the_dashboard_page_of_the_jupyter_server(tmp_path, monkeypatch):
    """The same views through Jupyter's own port and login (the server extension): the page
    loads with the token's cookie and shows the tasks a driver runs meanwhile."""
    import nbray
    from nbray.config import CONFIG
    from test_jupyter_server import TOKEN as JTOKEN, Server
    server = Server(tmp_path)
    monkeypatch.setattr(CONFIG, "run_root", server.root)
    try:
        server.cli("start", "--head", "--num-workers", "2")
        (cluster,) = json.loads(server.get("/nbray/api/clusters")[1])
        nbray.init(address=cluster["address"])

        @nbray.remote
        def work(x):
            time.sleep(0.01)
            return x
        _page_follows_the_tasks(f"{server.url}{cluster['dashboard']}?token={JTOKEN}", work,
                                "dashboard-jupyter-server.png")
    finally:
        if nbray.is_initialized():
            nbray.shutdown()
        server.stop()
