"""What the processes of the store's tests run. Those processes are spawned, and a spawned process imports the
module of its target: this one imports the store alone (not torch, as the test modules do), so that each
process starts in a fraction of a second."""

import zlib

from attnbench import store
from attnbench.record import Record


def row(name: str, env: str = "e1", **extra) -> Record:
    """A measured case called ``name`` (which sets its side) on host ``env``."""
    base = dict(run_id="r", scope="module", variant="gsa", arch="", res=zlib.crc32(name.encode()) % 10**6 + 1,
                batch=1, dim=16, dtype="fp32", device="cpu", mode="infer", threads=1, impl="pixelmajor",
                status="ok", macs=10, uncounted_ops={"aten::softmax": 1}, host=env)
    return Record.from_row({**base, **extra})


def write_rows(db: str, start: int) -> None:
    """Write the cases k<start> to k<start + 24>, one write each."""
    for i in range(start, start + 25):
        store.write(db, row(f"k{i}"))


def open_together(db: str, barrier) -> None:
    """Open the store at ``db`` once every process of ``barrier`` is about to."""
    barrier.wait()
    store.open_store(db).close()
