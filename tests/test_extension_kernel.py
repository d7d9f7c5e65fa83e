"""The extension in a real Jupyter kernel: remote output streams into the cell that started the
work, as it happens, even once that cell is over; the kernel's interrupt cancels the cell's
remote work and the notebook stays usable (run by nbclient, as a notebook is)."""
from __future__ import annotations

import os
import queue
import time

import pytest

jupyter_client = pytest.importorskip("jupyter_client")
nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

from conftest import wait_until

pytestmark = pytest.mark.timeout(180)


class Outputs:
    """Every iopub message, kept by the cell (execute request) it belongs to."""

    def __init__(self, kc):
        self.kc = kc
        self.by_cell: dict[str, list] = {}

    def drain(self, timeout: float = 0.05) -> None:
        while True:
            try:
                msg = self.kc.get_iopub_msg(timeout=timeout)
            except queue.Empty:
                return
            parent = msg["parent_header"].get("msg_id")
            self.by_cell.setdefault(parent, []).append(msg)

    def text(self, cell: str) -> str:
        return "".join(m["content"]["text"] for m in self.by_cell.get(cell, [])
                       if m["msg_type"] == "stream")

    def errors(self, cell: str) -> list:
        return [m["content"] for m in self.by_cell.get(cell, []) if m["msg_type"] == "error"]

    def finished(self, cell: str) -> bool:
        return any(m["msg_type"] == "status" and m["content"]["execution_state"] == "idle"
                   for m in self.by_cell.get(cell, []))


def _run(kc, out: Outputs, code: str, timeout: float = 60) -> str:
    cell = kc.execute(code)
    wait_until(lambda: out.drain() or out.finished(cell), timeout, f"cell {code[:40]!r}")
    assert not out.errors(cell), out.errors(cell)
    return cell


def test_remote_output_streams_into_the_cell_that_started_it(kernel, tmp_path):
    km, kc = kernel
    out = Outputs(kc)
    go = str(tmp_path / "go")
    _run(kc, out, f"%load_ext nbray\n%nbray init --workers 2\nmarker = {go!r}")
    # a cell whose task prints, then waits for the test to have seen the line
    streaming = kc.execute("%%remote\nimport os, time\nprint('first line', flush=True)\n"
                           "while not os.path.exists(marker):\n    time.sleep(0.01)\n"
                           "print('second line')\n'done'")
    wait_until(lambda: out.drain() or "first line" in out.text(streaming), 30,
               "the first line while the task still runs")
    assert not out.finished(streaming)
    open(go, "w").close()
    wait_until(lambda: out.drain() or out.finished(streaming), 30, "the cell to end")
    text = out.text(streaming)
    assert "second line" in text and "(cell[" in text and "pid=" in text
    # an --async cell ends at once; what it prints later still lands in it, not in the
    # cell running then
    os.unlink(go)
    later = _run(kc, out, "%%remote --async -o late\nimport os, time\n"
                          "while not os.path.exists(marker):\n    time.sleep(0.01)\n"
                          "print('late line')\nlate = 1")
    now = kc.execute(f"open(marker, 'w').close()\nprint('result', get(late))")
    wait_until(lambda: out.drain() or out.finished(now), 30, "the cell that waits")
    wait_until(lambda: out.drain() or "late line" in out.text(later), 10,
               "the late line in the cell that started it")
    assert "late line" not in out.text(now) and "result 1" in out.text(now)


def test_a_notebook_interrupt_cancels_the_cells_remote_work(tmp_path):
    marker = str(tmp_path / "t")
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(src) for src in (
        f"%load_ext nbray\n%nbray init --workers 2\nmarker = {marker!r}",
        # runs until the kernel is interrupted (nbclient does that at the cell's timeout)
        "@remote\ndef forever(marker):\n    import time, pathlib\n"
        "    pathlib.Path(marker + '.started').touch()\n    try:\n        time.sleep(600)\n"
        "    except BaseException:\n        pathlib.Path(marker + '.cancelled').touch()\n"
        "        raise\n"
        "ref = forever.remote(marker)\nget(ref)",
        "import os, time\ndeadline = time.time() + 30\n"
        "while not os.path.exists(marker + '.cancelled') and time.time() < deadline:\n"
        "    time.sleep(0.05)\nprint('cancelled remotely:', os.path.exists(marker + "
        "'.cancelled'))",
        "try:\n    get(ref, timeout=30)\nexcept Exception as e:\n    print(type(e).__name__)",
        "%%remote\n'still usable'",
        "%nbray shutdown",
    )]
    forever_cell = nb.cells[1]
    # the endless cell is interrupted after 6 s (time enough for its task to start); the
    # others have a minute
    client = nbclient.NotebookClient(
        nb, timeout=60, timeout_func=lambda cell: 6 if cell is forever_cell else 60,
        interrupt_on_timeout=True, allow_errors=True, kernel_name="python3")
    started = time.monotonic()
    client.execute()
    assert time.monotonic() - started < 150
    outputs = [c.outputs for c in nb.cells]
    assert any(o.get("ename") == "KeyboardInterrupt" for o in outputs[1]), outputs[1]
    assert any("cancelled 1 remote task" in o.get("text", "") for o in outputs[1])
    assert "cancelled remotely: True" in outputs[2][0]["text"]
    assert "TaskCancelledError" in outputs[3][0]["text"]
    assert outputs[4][0]["data"]["text/plain"] == "'still usable'"
