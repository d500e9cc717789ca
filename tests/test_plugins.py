"""Third-party variants arrive through the attnbench.variants entry-point group: tests/plugin_example
holds a minimal one (with the .dist-info that installing it would write)."""

import os
import subprocess
import sys
from pathlib import Path

from attnbench import store

EXAMPLE = Path(__file__).resolve().parent / "plugin_example"


def attnbench(*args, path=(EXAMPLE,)):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(map(str, path))}
    return subprocess.run([sys.executable, "-m", "attnbench", *args], capture_output=True, text=True, env=env,
                          timeout=600)


def test_a_plugins_variant_is_listed_swept_built_into_networks_and_reported(tmp_path):
    listed = attnbench("list")
    assert listed.returncode == 0 and "gate       sigmoid-gated 1x1 convolution" in listed.stdout
    assert "gate_resnet50" in listed.stdout
    db = str(tmp_path / "r.sqlite")
    fast = ["--min-run-time", "0.01", "--threads", "1", "--db", db]
    assert attnbench("run", "--scope", "module", "--variants", "gate,conv", "--res", "8,16,24", "--dim", "8",
                     *fast).returncode == 0
    net = attnbench("run", "--variants", "gate", "--arch", "resnet26", "--res", "32", *fast)
    assert net.returncode == 0, net.stderr
    frame = store.load_results(db)
    assert set(frame.status) == {"ok"} and {"gate", "conv"} == set(frame.variant)
    rep = attnbench("report", "--db", db, "--out", str(tmp_path / "report"))
    assert rep.returncode == 0, rep.stderr
    exponents = (tmp_path / "report" / "tables" / "scaling_exponents.md").read_text()
    assert "| gate " in exponents  # its expected exponent came from the registry, not the shipped table


def test_a_broken_plugin_is_reported_and_left_out(tmp_path):
    info = tmp_path / "broken-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: broken\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[attnbench.variants]\nbroken = no_such_module\n")
    listed = attnbench("list", path=(EXAMPLE, tmp_path))
    assert listed.returncode == 0 and "  gate " in listed.stdout and "  gsa " in listed.stdout
    assert "the variant plugin 'broken' (no_such_module) did not load: ModuleNotFoundError" in listed.stderr
