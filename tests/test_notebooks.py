"""The notebooks run from top to bottom, and are committed with the outputs of one such run, so that they
read on a repository page (refresh them with `jupyter nbconvert --to notebook --execute --inplace`); what a
notebook that trains nothing prints is checked against what it computes now."""

import copy
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("*.ipynb"))


def test_there_are_notebooks():
    assert {p.name for p in NOTEBOOKS} >= {"attention_maps.ipynb", "results.ipynb"}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_committed_with_the_outputs_of_one_whole_run(path):
    nb = nbformat.read(path, as_version=4)
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    assert [cell.execution_count for cell in code] == list(range(1, len(code) + 1)), \
        f"{path.name}: run it top to bottom in a fresh kernel before committing"
    outputs = [o for cell in code for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"], f"{path.name} was committed with an error"
    assert any("image/png" in o.get("data", {}) for o in outputs), f"{path.name} was committed without its figures"


COMPARED = ["results.ipynb"]  # trains nothing, runs in seconds: executed and compared below
# What a notebook that trains runs with here, set after its parameters (its first code cell, which assigns each
# name): every cell runs, on a shorter training than a reader's (one step: the training cell's every line runs, and
# each step's backward through GSA took 10-25 s), and its share table over fewer test images (the same code per image)
QUICK = {"attention_maps.ipynb": {"STEPS": 1, "IMAGES": 20}}
# ... and on a smaller draw of the generated data set (the notebook reads IMAGES test images): its training and
# evaluation at a reader's size (10,000 and 2,000 images) took most of the notebook's time for 5 steps
SMALL_DATA = {"attention_maps.ipynb": "import attnbench.data\nattnbench.data.LONGRANGE_SIZES = (640, 200)"}


@pytest.mark.slow
@pytest.mark.parametrize("path", [p for p in NOTEBOOKS if p.name not in COMPARED], ids=lambda p: p.name)
def test_notebook_executes(path):
    nb = nbformat.read(path, as_version=4)
    quick = QUICK.get(path.name, {})
    if quick:
        first = next(i for i, cell in enumerate(nb.cells) if cell.cell_type == "code")
        assert all(f"{name} = " in nb.cells[first].source for name in quick), f"{path.name}: its parameters moved"
        nb.cells.insert(first + 1, nbformat.v4.new_code_cell("\n".join(
            [f"{k} = {v!r}" for k, v in quick.items()] + [SMALL_DATA.get(path.name, "")])))
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}).execute()
    images = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if "image/png" in o.get("data", {})]
    assert images, f"{path.name} drew no figure"


def _texts(nb) -> list[tuple[int, str, str]]:
    """What each code cell printed and displayed, as text (a figure by its text form), one entry per output
    (consecutive prints to one stream joined, however the kernel flushed them): what a reader reads."""
    texts: list[tuple[int, str, str]] = []
    for number, cell in enumerate((c for c in nb.cells if c.cell_type == "code"), 1):
        for o in cell.outputs:
            if o.output_type == "stream":
                if texts and texts[-1][:2] == (number, o.name):
                    texts[-1] = (number, o.name, texts[-1][2] + o.text)
                    continue
                texts.append((number, o.name, o.text))
            elif o.output_type == "error":
                texts.append((number, "error", f"{o.ename}: {o.evalue}"))
            else:
                texts.append((number, o.output_type, o.data.get("text/plain", "")))
    return texts


@pytest.mark.parametrize("name", COMPARED)
def test_committed_outputs_are_what_the_notebook_computes_now(name):
    path = Path(__file__).resolve().parent.parent / "notebooks" / name
    committed = nbformat.read(path, as_version=4)
    fresh = copy.deepcopy(committed)
    where = {"metadata": {"path": str(path.parent)}}
    NotebookClient(fresh, timeout=300, kernel_name="python3", resources=where).execute()
    now, then = _texts(fresh), _texts(committed)
    for new, old in zip(now, then):
        assert new == old, (f"{name}: code cell {old[0]} shows what its stores no longer give; rerun the notebook "
                            f"and commit it.\ncommitted:\n{old[2][:1500]}\nnow:\n{new[2][:1500]}")
    assert len(now) == len(then), f"{name}: {len(then)} outputs committed, {len(now)} now; rerun and commit it"
