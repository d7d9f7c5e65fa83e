"""The Jupyter server extension, in a real ``jupyter server`` on 127.0.0.1 with a token: it is
enabled by installing nbray; its routes list the clusters of this machine (one started with
``nbray start``, one embedded by the server's own kernel) and return their state as JSON;
the dashboard page is served through Jupyter's port; a request without the token gets 403
and learns nothing; the cluster key appears in no answer and no log line. The page in a
browser is checked in ``test_browser.py``."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import urllib.error
import urllib.request

import pytest

from conftest import processes_under, wait_until

pytest.importorskip("jupyter_server")
jupyter_client = pytest.importorskip("jupyter_client")

pytestmark = pytest.mark.timeout(180)
TOKEN = "nbray-test-token"

KERNEL_CODE = """
import numpy as np, nbray
nbray.init(num_workers=1)

@nbray.remote
def square(x):
    return x * x

@nbray.remote
class Keeper:
    def __nbray_state__(self):
        return {"kept": 1}

keeper = Keeper.remote()
big = nbray.put(np.ones(100_000))
print(sum(nbray.get([square.remote(i) for i in range(5)])))
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, tmp_path):
        self.root = str(tmp_path / "run")
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.runtime = str(tmp_path / "jrt")
        self.env = dict(os.environ, NBRAY_RUN_ROOT=self.root,
                        JUPYTER_CONFIG_DIR=str(tmp_path / "jcfg"), JUPYTER_RUNTIME_DIR=self.runtime)
        self.log_path = tmp_path / "server.log"
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "jupyter_server", "--no-browser", "--allow-root",
             f"--port={self.port}", "--ServerApp.port_retries=0", "--ServerApp.ip=127.0.0.1",
             f"--IdentityProvider.token={TOKEN}", f"--ServerApp.root_dir={tmp_path}"],
            env=self.env, stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True)

        def up():
            assert self.proc.poll() is None, self.log_path.read_text()
            try:
                return self.get("/api/status")[0] == 200
            except OSError:
                return False
        wait_until(up, 60, "the Jupyter server to answer")

    def get(self, path: str, token: str | None = TOKEN) -> tuple:
        url = self.url + path + (("&" if "?" in path else "?") + f"token={token}" if token else "")
        try:
            with urllib.request.urlopen(url, timeout=30) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    def call(self, method: str, path: str, body: dict | None = None):
        req = urllib.request.Request(f"{self.url}{path}?token={TOKEN}", method=method,
                                     data=None if body is None else json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=60) as r:
            text = r.read()
            return json.loads(text) if text else None

    def cli(self, *args) -> str:
        out = subprocess.run([sys.executable, "-m", "nbray.cli", *args], env=self.env,
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stdout + out.stderr
        return out.stdout

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, 9)
            self.proc.wait(10)
        self.log.close()
        subprocess.run([sys.executable, "-m", "nbray.cli", "stop", "--all"], env=self.env,
                       capture_output=True, timeout=60)
        wait_until(lambda: not processes_under(self.root), 30,
                   f"the clusters' processes to exit: {processes_under(self.root)}")


@pytest.fixture
def server(tmp_path, no_cluster):
    s = Server(tmp_path)
    try:
        yield s
    finally:
        s.stop()


def _kernel(server: Server) -> tuple:
    """A kernel of the server's (started through its REST API) and a client of it."""
    kid = server.call("POST", "/api/kernels", {"name": "python3"})["id"]
    kc = jupyter_client.BlockingKernelClient(
        connection_file=os.path.join(server.runtime, f"kernel-{kid}.json"))
    kc.load_connection_file()
    kc.start_channels()
    kc.wait_for_ready(timeout=60)
    return kid, kc


def _run(kc, code: str) -> str:
    msg_id = kc.execute(code)
    out = []
    while True:
        msg = kc.get_iopub_msg(timeout=120)
        if msg["parent_header"].get("msg_id") != msg_id:
            continue
        kind, content = msg["msg_type"], msg["content"]
        if kind == "stream":
            out.append(content["text"])
        elif kind in ("execute_result", "display_data"):
            out.append(content["data"].get("text/plain", ""))
        elif kind == "error":
            raise AssertionError("\n".join(content["traceback"]))
        elif kind == "status" and content["execution_state"] == "idle":
            return "".join(out)


def test_installing_nbray_enables_the_extension(tmp_path):
    out = subprocess.run([sys.executable, "-m", "jupyter_server", "extension", "list"],
                         capture_output=True, text=True, timeout=60,
                         env=dict(os.environ, JUPYTER_CONFIG_DIR=str(tmp_path)))
    text = out.stdout + out.stderr
    assert "nbray.jupyter" in text and "enabled" in text.split("nbray.jupyter", 1)[1][:40]


def test_the_routes_show_the_machines_clusters_and_their_state(server):
    server.cli("start", "--head", "--num-workers", "1")
    kid, kc = _kernel(server)
    try:
        assert "30" in _run(kc, KERNEL_CODE)
        status, body = server.get("/nbray/api/clusters")
        assert status == 200
        clusters = {c["kind"]: c for c in json.loads(body)}
        assert set(clusters) == {"started", "embedded"}
        assert clusters["started"]["nodes"] == 1 and clusters["started"]["workers"] >= 1
        kernel_pid = int(_run(kc, "import os; print(os.getpid())"))
        emb = clusters["embedded"]
        assert emb["driver_pid"] == kernel_pid and emb["uptime_s"] > 0
        assert emb["dashboard"] == f"/nbray/dashboard/{emb['id']}/"
        cid = emb["id"]
        page = f"{server.url}/nbray/dashboard/{cid}/"
        # the magics link to it (no token in the link: the browser is logged in already)
        out = _run(kc, "%load_ext nbray\n%nbray status")
        assert f"nbray dashboard: {page}" in out and TOKEN not in out
        assert f"nbray dashboard (opens in a new tab): {page}" in \
            _run(kc, "%nbray dashboard --tab")

        def state(what):
            status, body = server.get(f"/nbray/api/clusters/{cid}/{what}")
            assert status == 200, body
            return json.loads(body)
        # the task records reach the head within about a second
        wait_until(lambda: sum(t["name"] == "square" for t in state("tasks")) == 5, 20,
                   "the kernel's five tasks in the task log")
        assert [a["class_name"] for a in state("actors")] == ["Keeper"]
        assert [n["state"] for n in state("nodes")] == ["alive"]
        assert any(o["size"] >= 800_000 for o in state("objects"))        # the 800 KB put
        summary = state("summary")
        assert summary["tasks"]["square"]["finished"] == 5 and summary["nodes"] == {"alive": 1}
        assert server.get("/nbray/api/clusters/ffff/nodes")[0] == 404
        status, page = server.get(f"/nbray/dashboard/{cid}/")
        assert status == 200 and "nbray dashboard" in page and \
            f"/nbray/dashboard/{cid}/static/js/bokeh" in page
        js = server.get(f"/nbray/dashboard/{cid}/static/js/bokeh.min.js")
        assert js[0] == 200 and len(js[1]) > 100_000
        answers = [body, page] + [server.get(f"/nbray/api/clusters/{cid}/{w}")[1]
                                  for w in ("tasks", "actors", "nodes", "objects", "summary")]
        keys = []
        for name in os.listdir(server.root):
            if name.endswith(".json"):
                with open(os.path.join(server.root, name)) as f:
                    keys.append(json.load(f)["key"])
        assert len(keys) == 2
    finally:
        kc.stop_channels()
        server.call("DELETE", f"/api/kernels/{kid}")       # its cluster goes with it
    logs = server.log_path.read_text()
    for d, _, files in os.walk(server.root):
        for name in files:
            if name.endswith(".log"):
                with open(os.path.join(d, name), errors="replace") as f:
                    logs += f.read()
    for key in keys:                    # the key is in no answer, URL or log line
        assert all(key not in a for a in answers) and key not in logs


def test_without_the_token_every_route_is_403_and_says_nothing(server):
    server.cli("start", "--head", "--num-workers", "1")
    status, body = server.get("/nbray/api/clusters")
    cid = json.loads(body)[0]["id"]
    for path in ["/nbray/api/clusters", f"/nbray/api/clusters/{cid}/tasks",
                 f"/nbray/api/clusters/{cid}/summary", f"/nbray/dashboard/{cid}/",
                 f"/nbray/dashboard/{cid}/static/js/bokeh.min.js",
                 "/nbray/api/clusters/0000/nodes"]:
        for token in (None, "wrong"):
            status, body = server.get(path, token=token)
            assert status == 403, (path, status)
            assert cid not in body and "127.0.0.1:" not in body
