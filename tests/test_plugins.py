"""Third-party variants arrive through the attnbench.variants entry-point group: tests/plugin_example
holds a minimal one (with the .dist-info that installing it would write)."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from attnbench import store
from attnbench.console import WHY

EXAMPLE = Path(__file__).resolve().parent / "plugin_example"


def attnbench(*args, path=(EXAMPLE,)):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(map(str, path))}
    return subprocess.run([sys.executable, "-m", "attnbench", *args], capture_output=True, text=True, env=env,
                          timeout=600)


@pytest.fixture(scope="module")
def listed():
    """`attnbench list` with the example plugin installed: one command for the tests that read it."""
    return attnbench("list")


@pytest.mark.slow
def test_a_plugins_variant_is_listed_swept_built_into_networks_and_reported(tmp_path, listed):
    assert listed.returncode == 0 and "  gate: sigmoid-gated 1x1 convolution" in listed.stdout
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


@pytest.mark.slow
def test_the_projects_own_tests_cover_the_shipped_variants_only():
    """An installed plugin's variant is its own to test: the suite parametrises over the shipped variants, and its
    checks that every variant has a naive reference, a documented auto rule and shipped facts hold beside it."""
    env = {**os.environ, "PYTHONPATH": str(EXAMPLE)}
    listed = subprocess.run([sys.executable, "-c", "import attnbench; print(attnbench.list_variants(builtin=False), "
                             "attnbench.get_variant_spec('gate').source)"], capture_output=True, text=True, env=env)
    assert listed.stdout.split() == ["['gate']", "attnbench_gate"]  # the plugin is installed
    tests = Path(__file__).resolve().parent
    files = [str(tests / f) for f in ("test_variants.py", "test_macs.py", "test_models.py", "test_train.py")]
    collected = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", *files], capture_output=True,
                               text=True, env=env, cwd=tests.parent, timeout=600)
    ids = [line for line in collected.stdout.splitlines() if "::" in line]
    assert collected.returncode == 0 and "tests/test_variants.py::test_shape_and_dtype[gsa]" in ids
    assert not [i for i in ids if "gate" in i]
    checks = ["test_models.py::test_shipped_variant_facts_are_current",
              "test_variants.py::test_every_variant_has_a_naive_reference",
              "test_variants.py::test_auto_follows_the_documented_rule_per_input_device"]
    ran = subprocess.run([sys.executable, "-m", "pytest", "-q", *(str(tests / c) for c in checks)],
                         capture_output=True, text=True, env=env, cwd=tests.parent, timeout=600)
    assert ran.returncode == 0, ran.stdout[-2000:]


@pytest.mark.slow
def test_a_plugins_network_is_listed_and_measured(tmp_path, listed):
    assert listed.returncode == 0 and "gated_tiny" in listed.stdout
    db = str(tmp_path / "r.sqlite")
    run = attnbench("run", "--model", "gated_tiny", "--res", "16", "--width", "1,2", "--min-run-time", "0.01",
                    "--threads", "1", "--db", db)
    assert run.returncode == 0, run.stderr
    frame = store.load_results(db)
    assert frame.status.tolist() == ["ok", "ok"] and set(frame.variant) == {"gate"}
    # params of a 3x3 stem to c channels, two 1x1 convolutions c -> c, and the classifier, at c = 8 and 16
    assert frame.params.tolist() == [27 * c + c + 2 * (c * c + c) + c * 1000 + 1000 for c in (8, 16)]


@pytest.mark.slow
def test_a_change_to_a_plugins_code_measures_its_cases_again(tmp_path):
    plugin = tmp_path / "plugin"
    shutil.copytree(EXAMPLE, plugin, ignore=shutil.ignore_patterns("__pycache__"))
    db = str(tmp_path / "r.sqlite")
    sweep = ("run", "--scope", "module", "--variants", "gate,conv", "--res", "8", "--dim", "8", "--min-run-time",
             "0.01", "--threads", "1", "--db", db)
    assert attnbench(*sweep, path=(plugin,)).returncode == 0
    assert attnbench(*sweep, path=(plugin,)).returncode == 0
    assert len(store.load_results(db)) == 2  # nothing changed: nothing measured again
    source = plugin / "attnbench_gate" / "__init__.py"
    source.write_text(source.read_text().replace("* torch.sigmoid(", "* torch.sigmoid(0.5 * "))
    assert attnbench(*sweep, path=(plugin,)).returncode == 0
    frame = store.load_results(db)
    assert sorted(frame.variant) == ["conv", "gate", "gate"]  # the plugin's case again, conv's not
    assert frame[frame.variant == "gate"].code_hash.nunique() == 2


def test_a_change_to_a_plugins_implementation_of_a_shipped_variant_measures_its_cases_again(tmp_path):
    source = ("from attnbench.registry import register_impl\n"
              "from attnbench.variants import conv\n\n"
              "@register_impl('conv', 'scaled', description='the convolution, scaled')\n"
              "def scaled(self, x):\n"
              "    return conv.native(self, x) * 1.0\n")
    (tmp_path / "plugin").mkdir()
    plugin = install(tmp_path / "plugin", "scaled_conv", source)
    db = str(tmp_path / "r.sqlite")
    sweep = ("run", "--scope", "module", "--variants", "conv", "--impl", "scaled", "--res", "8", "--dim", "8",
             "--min-run-time", "0.01", "--threads", "1", "--db", db)
    for _ in range(2):
        assert attnbench(*sweep, path=(plugin,)).returncode == 0
    assert len(store.load_results(db)) == 1  # nothing changed: nothing measured again
    (plugin / "scaled_conv.py").write_text(source.replace("* 1.0", "* 2.0"))
    assert attnbench(*sweep, path=(plugin,)).returncode == 0
    frame = store.load_results(db)
    assert frame.impl.tolist() == ["scaled", "scaled"] and frame.code_hash.nunique() == 2


@pytest.mark.slow
def test_a_variant_whose_name_holds_an_underscore_gets_its_networks_and_reports(tmp_path):
    """Nothing splits a network's name to find its variant: `two_gate_probe` is the probe of `two_gate`."""
    source = (EXAMPLE / "attnbench_gate" / "__init__.py").read_text()
    plugin = install(tmp_path, "two_gate", source.replace('"gate", GateConfig', '"two_gate", GateConfig').replace(
        'register_impl("gate"', 'register_impl("two_gate"'))
    db = str(tmp_path / "r.sqlite")
    run = attnbench("run", "--variants", "two_gate", "--arch", "probe", "--res", "16", "--min-run-time", "0.01",
                    "--threads", "1", "--db", db, path=(plugin,))
    assert run.returncode == 0, run.stderr
    trained = attnbench("train", "--model", "two_gate_probe", "--dataset", "longrange", "--steps", "1", "--batch",
                        "64", "--db", db, "--out", str(tmp_path / "run"), path=(plugin,))
    assert trained.returncode == 0, trained.stderr
    assert store.load_results(db).model.tolist() == ["two_gate_probe"]
    assert store.load_training(db).variant.unique().tolist() == ["two_gate"]
    rep = attnbench("report", "--db", db, "--out", str(tmp_path / "report"), path=(plugin,))
    assert rep.returncode == 0, rep.stderr
    assert "| two_gate_probe | two_gate " in (tmp_path / "report" / "tables" / "accuracy.md").read_text()


def install(folder: Path, name: str, source: str | None = None) -> Path:
    """A plugin ``name`` as installing it would leave it in ``folder``: its module (unless None) and its
    .dist-info, whose entry point names the module."""
    if source is not None:
        (folder / f"{name}.py").write_text(source)
    info = folder / f"{name}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[attnbench.variants]\n{name} = {name if source else 'no_such_module'}\n")
    return folder


def test_a_broken_plugin_is_reported_and_left_out(tmp_path):
    install(tmp_path, "broken")
    listed = attnbench("list", path=(EXAMPLE, tmp_path))
    assert listed.returncode == 0 and "  gate: " in listed.stdout and "  gsa: " in listed.stdout
    assert "the variant plugin 'broken' (no_such_module) did not load: ModuleNotFoundError" in listed.stderr


@pytest.mark.slow
def test_a_plugin_that_exits_at_import_is_reported_and_the_sweep_runs(tmp_path):
    install(tmp_path, "quitter", "import sys\nsys.exit(0)\n")
    db = str(tmp_path / "r.sqlite")
    swept = attnbench("run", "--scope", "module", "--variants", "conv,gate", "--res", "8", "--dim", "8",
                      "--min-run-time", "0.01", "--threads", "1", "--db", db, path=(EXAMPLE, tmp_path))
    assert swept.returncode == 0, swept.stderr
    assert swept.stderr.count("did not load") == 1
    assert "the variant plugin 'quitter' (quitter) did not load: SystemExit: 0" in swept.stderr
    frame = store.load_results(db)
    assert sorted(frame.variant) == ["conv", "gate"] and set(frame.status) == {"ok"}


FASTER_CONV = """
import pytest
import torch

from attnbench.registry import get_impl, register_impl

native = get_impl("conv", "native").forward

@register_impl("conv", "mine", description="the native convolution, as a plugin's kernel", preferred_on=("cpu",),
               dtypes=(torch.float32,))
def mine(self, x):
    return native(self, x)
"""


@pytest.mark.slow
def test_a_plugins_implementation_registered_first_on_a_device_is_auto_there_where_it_can_run(tmp_path):
    install(tmp_path, "faster_conv", FASTER_CONV)
    db = str(tmp_path / "r.sqlite")
    run = attnbench("run", "--scope", "module", "--variants", "conv", "--res", "8", "--dim", "8", "--dtype",
                    "fp32,bf16", "--min-run-time", "0.01", "--threads", "1", "--db", db, path=(tmp_path,))
    assert run.returncode == 0, run.stderr
    rows = store.load_results(db).set_index("dtype")
    assert rows.impl.to_dict() == {"fp32": "mine", "bf16": "native"} and set(rows.status) == {"ok"}


GATE_WITH = """
from dataclasses import dataclass
from attnbench_gate import Gate, GateConfig, eager
from attnbench.registry import register_impl, register_variant

@dataclass(frozen=True)
class Config(GateConfig):
    def validate(self):
        {check}

@register_variant("{name}", Config, description="a gate with a bug", paper="none", arxiv="none", reference="eager")
class Buggy(Gate):
    pass

@register_impl("{name}", "eager", description="the gate, then {forward}")
def forward(self, x):
    return {forward}
"""


@pytest.mark.slow
def test_a_variant_whose_output_has_the_wrong_shape_is_an_error_not_a_measurement(tmp_path):
    install(tmp_path, "halver", GATE_WITH.format(name="halver", check="pass", forward="eager(self, x)[:, :, ::2]"))
    install(tmp_path, "widener", GATE_WITH.format(name="widener", check="pass",
                                                  forward="eager(self, x).repeat(1, 2, 1, 1)"))
    db = str(tmp_path / "r.sqlite")
    swept = attnbench("run", "--scope", "module", "--variants", "halver,widener,gate", "--res", "8", "--dim", "4",
                      "--batch", "2", "--min-run-time", "0.01", "--threads", "1", "--db", db, path=(EXAMPLE, tmp_path))
    assert swept.returncode == 1 and swept.stderr.splitlines()[-1] == (
        f"attnbench run: 2 of 3 cases failed (error 2, ok 1); {WHY}, and every other case's result is stored."
    ), swept.stderr
    rows = store.load_results(db).set_index("variant")
    assert rows.status.to_dict() == {"halver": "error", "widener": "error", "gate": "ok"}
    assert rows.reason.halver == "the variant's output has shape (2, 4, 4, 8), not (2, 4, 8, 8)"
    assert rows.reason.widener == "the variant's output has shape (2, 8, 8, 8), not (2, 4, 8, 8)"
    assert rows.loc[["halver", "widener"], ["macs", "latency_ms_median", "peak_mem_bytes"]].isna().all().all()


@pytest.mark.slow
def test_a_plugins_config_check_that_fails_in_any_way_refuses_the_sweep_in_one_line(tmp_path):
    install(tmp_path, "fragile", GATE_WITH.format(name="fragile", check="1 / 0", forward="eager(self, x)"))
    swept = attnbench("run", "--scope", "module", "--variants", "fragile", "--res", "8", "--dim", "4",
                      "--db", str(tmp_path / "r.sqlite"), path=(EXAMPLE, tmp_path))
    assert swept.returncode == 2 and "Traceback" not in swept.stderr
    assert swept.stderr.strip().splitlines()[-1] == ("attnbench run: --dim 4 for variant 'fragile': Variant 'fragile' "
                                                     "could not check its options: ZeroDivisionError: division by zero")
