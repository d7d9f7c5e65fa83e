"""Every notebook in ``notebooks/`` runs from top to bottom in a real kernel (nbclient), with no
error, and leaves nothing behind: no process, no record or socket in its run root, no
shared-memory segment.

Under CI the notebooks run at small sizes; ``NBRAY_NOTEBOOK_FULL=1 pytest tests/test_notebooks.py``
runs them at full size (each notebook reads the variable)."""
from __future__ import annotations

import glob
import os

import pytest

from nbray.runtime import object_store
from conftest import processes_under, wait_until

nbclient = pytest.importorskip("nbclient")
nbformat = pytest.importorskip("nbformat")

NOTEBOOKS = sorted(glob.glob(os.path.join(os.path.dirname(__file__), "..", "notebooks",
                                          "*.ipynb")))
FULL = os.environ.get("NBRAY_NOTEBOOK_FULL") == "1"

pytestmark = pytest.mark.timeout(3600 if FULL else 300)


def _segments() -> set:
    return set(glob.glob(os.path.join(object_store.store_dir(), f"{object_store.PREFIX}*")))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[os.path.basename(p) for p in NOTEBOOKS])
def test_the_notebook_runs(path, no_cluster, tmp_path, monkeypatch):
    root = str(tmp_path / "run")
    monkeypatch.setenv("NBRAY_RUN_ROOT", root)          # the kernel's clusters live here
    before = _segments()
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=3000 if FULL else 240, kernel_name="python3",
                                     resources={"metadata": {"path": os.path.dirname(path)}})
    client.execute()
    errors = [o for cell in nb.cells if cell.cell_type == "code"
              for o in cell.get("outputs", ()) if o.get("output_type") == "error"]
    assert not errors, errors
    wait_until(lambda: not processes_under(root), 15,
               f"the notebook's cluster processes to exit: {processes_under(root)}")
    wait_until(lambda: not os.path.isdir(root) or not os.listdir(root), 10,
               f"its run root to be empty: {os.listdir(root) if os.path.isdir(root) else ''}")
    wait_until(lambda: _segments() <= before, 10,
               f"its shared-memory segments to go: {_segments() - before}")


# ---- the same notebook on the Ray backend ---------------------------------------------------
@pytest.mark.ray
def test_a_backend_neutral_notebook_runs_on_ray(tmp_path, monkeypatch):
    """The dataflow IR's notebook, unchanged, with ``NBRAY_BACKEND=ray``: its
    ``nbray.init()`` starts a Ray instance of the kernel's own, which its shutdown stops."""
    from conftest import descendants
    monkeypatch.setenv("NBRAY_BACKEND", "ray")
    monkeypatch.setenv("NBRAY_RUN_ROOT", str(tmp_path / "run"))
    before = {p.pid for p in descendants()}
    path = next(p for p in NOTEBOOKS if p.endswith("05_dataflow_ir.ipynb"))
    nb = nbformat.read(path, as_version=4)
    check = ("from nbray import backends as _b\n"
             "assert _b.engine is not None and _b.engine.name == 'ray'")
    first = next(i for i, c in enumerate(nb.cells) if "nbray.init(" in c.source)
    nb.cells.insert(first + 1, nbformat.v4.new_code_cell(check))   # after the cell that inits
    client = nbclient.NotebookClient(nb, timeout=240, kernel_name="python3",
                                     resources={"metadata": {"path": os.path.dirname(path)}})
    client.execute()
    errors = [o for cell in nb.cells if cell.cell_type == "code"
              for o in cell.get("outputs", ()) if o.get("output_type") == "error"]
    assert not errors, errors
    wait_until(lambda: not [p for p in descendants() if p.pid not in before], 30,
               f"the kernel's Ray processes to exit: {descendants()}")
