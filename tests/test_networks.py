"""Any network on the harness: the network registry, networks named directly (registered, timm:NAME,
module:callable), the width axis, and a code hash that follows the code that measured."""

import os
import re
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn

import attnbench
from attnbench import store
from attnbench.measure.params import count_params
from attnbench.models import get_model_spec, list_models, register_model
from attnbench.models import registry as models

FAST = ["--min-run-time", "0.01", "--threads", "1"]


@pytest.fixture
def scratch_registry(monkeypatch):
    """Networks registered by a test are gone after it."""
    monkeypatch.setattr(models, "_MODELS", dict(models._MODELS))
    monkeypatch.setattr(models, "_ALIASES", dict(models._ALIASES))


def test_register_model_is_a_decorator_that_refuses_a_name_twice(scratch_registry):
    @register_model(variant="gsa")
    def tiny_gsa_net(num_classes=1000, **options):
        """Two GSA layers on a 3x3 stem."""
        return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), attnbench.build_variant("gsa", 8, heads=2, **options),
                             nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, num_classes))

    spec = get_model_spec("tiny_gsa_net")
    assert (spec.variant, spec.arch, spec.description) == ("gsa", "tiny_gsa_net", "Two GSA layers on a 3x3 stem.")
    assert spec.source == __name__ and "tiny_gsa_net" in list_models("tiny_*")
    assert attnbench.build_model("tiny_gsa_net", num_classes=3)(torch.randn(2, 3, 8, 8)).shape == (2, 3)
    with pytest.raises(ValueError, match="Network 'tiny_gsa_net' is already registered"):
        register_model(name="tiny_gsa_net")(lambda num_classes=1000: None)
    with pytest.raises(ValueError, match="':' marks networks from elsewhere"):
        register_model(name="timm:mine")(lambda num_classes=1000: None)
    with pytest.raises(ValueError, match="',' separates the names of --model"):  # `--model a,b` is two names
        register_model(name="gsa,local")(lambda num_classes=1000: None)
    assert "gsa,local" not in list_models()


def test_a_network_whose_variant_is_not_registered_is_refused_in_one_line(scratch_registry, tmp_path, capsys):
    """A package's network may name a variant that no package registers (misspelt, or its plugin not installed):
    it is refused by name, where `run` ended in UnknownVariantError's traceback."""
    from attnbench.cli import main

    @register_model(variant="gsaa")
    def misspelt_net(num_classes=1000):
        return nn.Sequential(nn.Flatten(), nn.LazyLinear(num_classes))

    said = (f"Network 'misspelt_net' (from {__name__}) holds the variant 'gsaa', which is not registered. "
            f"Variants: {', '.join(attnbench.list_variants())}.")
    with pytest.raises(KeyError) as refused:
        attnbench.build_model("misspelt_net")
    assert str(refused.value) == said
    db = tmp_path / "r.sqlite"
    assert main(["run", "--model", "conv_probe,misspelt_net", "--res", "16", "--db", str(db), *FAST]) == 2
    err = capsys.readouterr().err  # (where torch warns on stderr too, its lines come first)
    assert err.endswith(f"\nattnbench run: --model: {said}\n") or err == f"attnbench run: --model: {said}\n"
    assert "Traceback" not in err and not db.exists()


def test_a_network_registered_in_a_session_without_a_file_is_refused_before_the_sweep(scratch_registry, monkeypatch,
                                                                                      tmp_path):
    """A notebook or `python -c` registers a network in a __main__ that has no file: the cases' processes, which
    import __main__ from its file, never see it, and every case failed with "Unknown model". A script's __main__
    is imported by them, so its networks run."""
    import types

    from attnbench.sweep import Sweep

    def session_net(num_classes=1000, image_size=224, width=1.0, impl="auto"):
        return nn.Sequential(nn.Flatten(), nn.LazyLinear(num_classes))

    session_net.__module__ = "__main__"
    register_model(variant="conv")(session_net)
    monkeypatch.setitem(sys.modules, "__main__", types.ModuleType("__main__"))  # a notebook's: no __file__
    with pytest.raises(ValueError, match=r"^--model: session_net is registered in this interactive session, whose "
                                         r"code the cases' processes cannot import: register it in a module"):
        Sweep(model=["conv_probe", "session_net"], res=[16], device=["cpu"]).cases()
    script = tmp_path / "script.py"
    script.write_text("")
    sys.modules["__main__"].__file__ = str(script)
    assert [c.model for c in Sweep(model=["session_net"], res=[16], device=["cpu"]).cases()] == ["session_net"]


def test_list_models_filters_with_wildcards_in_natural_order():
    every = list_models()
    assert list_models("*_resnet50") == sorted(f"{v}_resnet50" for v in attnbench.list_variants() if v != "conv")
    assert list_models("gsa_*") == ["gsa_probe", "gsa_resnet26", "gsa_resnet38", "gsa_resnet50", "gsa_resnet101"]
    assert [n for n in every if n.startswith("resnet")] == ["resnet26", "resnet38", "resnet50", "resnet101"]
    assert list_models("nothing*") == []


def test_a_sweep_of_networks_from_elsewhere_alone_and_a_timm_pattern_of_list_say_what_they_lack(capsys):
    """--impl or --opt naming a variant in a sweep of networks from elsewhere only said "(...sweep ())"; and
    `attnbench list 'timm:*'` said no network matches, as if attnbench knew timm's and none matched."""
    from attnbench.cli import main
    from attnbench.sweep import Sweep

    for given in (dict(impl=["gsa=plain"]), dict(opt=["gsa.heads=2"])):
        with pytest.raises(ValueError, match=r"'gsa' is not a variant of this sweep \(it has none: its networks "
                                             r"come from elsewhere\)\.$"):
            Sweep(model=["collections:OrderedDict"], res=[16], device=["cpu"], **given).cases()
    for pattern, theirs in (("timm:*", "*"), ("timm:swin*", "swin*"), ("timm:", "*")):
        assert main(["list", pattern]) == 2
        assert capsys.readouterr().err == ("attnbench list lists attnbench's own variants and networks; timm's are "
                                           f"listed by timm.list_models('{theirs}').\n")


def test_a_users_builder_is_a_network(tmp_path, monkeypatch):
    (tmp_path / "user_nets.py").write_text(textwrap.dedent("""
        from torch import nn

        def build(num_classes=1000):
            return nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, num_classes))

        def sized(image_size):
            return nn.Sequential(nn.Flatten(), nn.Linear(3 * image_size * image_size, 10))

        not_callable = 3
    """))
    monkeypatch.chdir(tmp_path)  # found from the working folder, as the command line finds it
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    spec = get_model_spec("user_nets:build")
    assert (spec.variant, spec.arch, spec.kind, spec.foreign) == ("", "custom", "custom", True)
    assert spec.build(num_classes=7)(torch.randn(1, 3, 9, 9)).shape == (1, 7)
    # a builder gets what it names of (num_classes, image_size), nothing else
    assert spec.build(num_classes=7, image_size=5)[3].out_features == 7
    assert get_model_spec("user_nets:sized").build(image_size=5)[1].in_features == 75
    with pytest.raises(ValueError, match="user_nets:build is a network from elsewhere: it takes no width"):
        spec.build(width=0.5)
    with pytest.raises(KeyError, match="user_nets has no callable 'not_callable'"):
        get_model_spec("user_nets:not_callable")
    with pytest.raises(KeyError, match="Cannot import no_such_nets for the network 'no_such_nets:build'"):
        get_model_spec("no_such_nets:build")


def test_a_users_network_with_lazy_layers_is_measured_as_it_trains(tmp_path, monkeypatch):
    """nn.LazyLinear learns its input width at the first forward: the memory prediction cloned its uninitialised
    weight and the case was an error, though the network trains. The case's network is run once on a zero image
    first (eval mode, no gradient: its batch norm's statistics untouched); then parameters and MACs are the
    materialised network's (a hand count) and its running statistics those it was built with."""
    from attnbench.harness import build_case, measure_case
    from attnbench.record import Case

    (tmp_path / "lazy_nets.py").write_text(textwrap.dedent("""
        from torch import nn

        def build(num_classes=1000):
            return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(4),
                                 nn.Flatten(), nn.LazyLinear(num_classes))
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    for mode in ("infer", "train"):
        case = Case("model", "", "custom", 16, 2, 0, "fp32", "cpu", mode, 1, "", model="lazy_nets:build")
        module, _ = build_case(case)
        assert module.training and module[5].weight.shape == (1000, 128)  # as built (the harness sets the mode)
        assert module[1].running_mean.abs().sum() == 0 and module[1].num_batches_tracked == 0
        measured = measure_case(case, min_run_time=0.01)
        assert measured.status == "ok", measured.reason
        conv, linear = 3 * 8 * 9 * 16 * 16, 8 * 4 * 4 * 1000
        assert measured.params == (3 * 8 * 9 + 8) + 2 * 8 + (128 * 1000 + 1000)
        assert measured.macs == 2 * (conv + linear)  # the batch of 2


def attnbench_cli(*args, cwd, path=()):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([*map(str, path), *sys.path])}
    return subprocess.run([sys.executable, "-m", "attnbench", *args], capture_output=True, text=True, env=env,
                          timeout=600, cwd=cwd)


def test_a_sweep_from_a_script_read_from_standard_input_measures_its_cases(tmp_path):
    """`python - <<EOF` names its __main__ '<stdin>', which multiprocessing ran again in each case's process (and
    the fork server), where no such file exists: every case died, exit code 1."""
    db = str(tmp_path / "r.sqlite")
    script = ("import attnbench\n"
              f"rows = attnbench.run(variants=['conv'], arch='probe', res=[8], device=['cpu'], db={db!r},"
              " min_run_time=0.01, threads=1)\n"
              "print([status == 'ok' for status in rows.status])\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run([sys.executable, "-"], input=script, capture_output=True, text=True, env=env, timeout=600,
                          cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[True]", done.stdout + done.stderr


@pytest.mark.slow
def test_a_users_network_is_measured_beside_ours_and_again_when_its_code_changes(tmp_path):
    """`run --model mypkg.nets:build,conv_probe`: one sweep, one table; a change to the builder's package
    measures it again (its source is part of the code hash), and nothing else does."""
    package = tmp_path / "mypkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "layers.py").write_text("from torch import nn\nWIDTH = 6\n")
    (package / "nets.py").write_text(textwrap.dedent("""
        from torch import nn
        from mypkg.layers import WIDTH

        def build(num_classes=1000):
            return nn.Sequential(nn.Conv2d(3, WIDTH, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                                 nn.Flatten(), nn.Linear(WIDTH, num_classes))
    """))
    db = str(tmp_path / "r.sqlite")
    sweep = ["run", "--model", "mypkg.nets:build,conv_probe", "--res", "16", "--db", db, *FAST]
    first = attnbench_cli(*sweep, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert "mypkg.nets:build" in first.stdout and "conv_probe" in first.stdout
    rows = store.load_results(db).set_index("model")
    assert set(rows.status) == {"ok"} and rows.loc["mypkg.nets:build", "variant"] == ""
    # parameters and MACs by the same rule as ours: conv 3x3 (3 -> 6) and linear (6 -> 1000)
    assert rows.loc["mypkg.nets:build", "params"] == 3 * 6 * 9 + 6 + 6 * 1000 + 1000
    assert rows.loc["mypkg.nets:build", "macs"] == 16 * 16 * 3 * 6 * 9 + 6 * 1000
    again = attnbench_cli(*sweep, cwd=tmp_path)
    assert again.returncode == 0 and len(store.load_results(db)) == 2  # nothing changed: nothing measured
    (package / "layers.py").write_text("from torch import nn\nWIDTH = 5\n")  # a module the builder imports
    changed = attnbench_cli(*sweep, cwd=tmp_path)
    assert changed.returncode == 0, changed.stderr
    after = store.load_results(db)
    assert len(after) == 3  # the user's network again; conv_probe's code did not change
    mine = after[after.model == "mypkg.nets:build"].sort_values("created_utc")
    assert mine.params.tolist() == [3 * 6 * 9 + 6 + 6 * 1000 + 1000, 3 * 5 * 9 + 5 + 5 * 1000 + 1000]
    assert mine.code_hash.nunique() == 2


def test_a_cpu_case_is_timed_in_the_steady_state_of_a_process_that_reuses_freed_memory(tmp_path):
    """Each CPU case runs in a fresh process, where glibc maps every large block anew and the timed runs
    would pay page faults for their activations; the case's process keeps freed memory instead (as a warm
    process mostly does), so a forward pass that makes and frees 64 MiB mostly faults nothing once settled."""
    (tmp_path / "faulting.py").write_text(textwrap.dedent("""
        import os, resource
        import torch
        from torch import nn

        class Faults(nn.Module):
            def __init__(self, num_classes):
                super().__init__()
                self.head = nn.Linear(3, num_classes)

            def forward(self, x):
                before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
                torch.ones(16 * 2**20).add_(1)  # a 64 MiB activation, made and freed
                with open(os.environ["FAULTS_FILE"], "a") as f:
                    print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before, file=f)
                return self.head(x.mean((2, 3)))

        def build(num_classes=1000):
            return Faults(num_classes)
    """))
    faults = tmp_path / "faults.txt"
    os.environ["FAULTS_FILE"] = str(faults)
    try:
        done = attnbench_cli("run", "--model", "faulting:build", "--res", "8", "--db", str(tmp_path / "r.sqlite"),
                             *FAST, cwd=tmp_path)
    finally:
        del os.environ["FAULTS_FILE"]
    assert done.returncode == 0, done.stderr
    per_forward = [int(line) for line in faults.read_text().split()]
    # the warm-up, the block-size estimate and at least three timed runs (MIN_TIMED_RUNS; more on an idle machine)
    assert len(per_forward) >= 5 and max(per_forward) >= 16384 * 0.9  # a first use faults the block in
    timed = sorted(per_forward[len(per_forward) // 2:])  # the later half: the timed runs
    assert timed[len(timed) // 2] <= 100, per_forward  # settled: most fault nothing (16384 pages each without it)


def test_the_width_axis_measures_each_network_at_its_width(tmp_path):
    db = str(tmp_path / "r.sqlite")
    frame = attnbench.run(variants=["conv", "gsa"], arch="probe", width=[0.5, 1.0], res=[16], device=["cpu"],
                          threads=1, db=db, min_run_time=0.01)
    assert frame.status.tolist() == ["ok"] * 4
    for r in frame.itertuples():
        net = attnbench.build_model(r.model, width=r.width, image_size=16)
        assert r.params == count_params(net)["params"], (r.model, r.width)
    assert frame[frame.model == "gsa_probe"].params.is_monotonic_increasing


@pytest.mark.parametrize("width", [0.5, 0.5625, 0.875, 1.0, 1.375, 1.625, 2.0])
def test_a_probe_at_an_accepted_width_has_exactly_width_times_16_channels(width):
    """Not a clamped or truncated count: 0.5 and 0.5625 are 8 and 9 channels."""
    c = 16 * width
    net = attnbench.build_model("conv_probe", num_classes=10, width=width, image_size=32)
    # a 3x3 stem from 3 channels, two 3x3 convolutions of c to c, three batch norms and a classifier of c features
    assert sum(p.numel() for p in net.parameters()) == 27 * c + 2 * 9 * c * c + 3 * 2 * c + 10 * c + 10


def test_every_probe_has_width_times_16_channels_at_the_widths_the_accuracy_table_trains_at():
    for width in (0.875, 1.375, 1.625, 2.0):  # as train --match params picks them
        for variant in attnbench.list_variants(builtin=True):
            net = get_model_spec(f"{variant}_probe").build_on_meta(num_classes=10, width=width, image_size=32)
            assert net.fc.weight.shape == (10, 16 * width), (variant, width)


def test_a_networks_options_are_checked_at_the_channels_of_its_layers():
    """3 heads divide a probe's 15 channels (width 15/16) and a ResNet-50's at width 0.75 (48 to 384), not those
    at width 1: each sweep is planned where its layers take them, and refused where they do not."""
    for model, width, other in (("window_probe", 0.9375, 1.0), ("gsa_resnet50", 0.75, 1.0)):
        cases = attnbench.api.plan(model=[model], width=[width], opt=["heads=3"], res=[32], device=["cpu"], threads=1)
        assert [(c.width, c.options) for c in cases] == [(width, "heads=3")]
        net = attnbench.build_model(model, width=width, image_size=32, **cases[0].variant_options)
        layers = [m for m in net.modules() if isinstance(m, attnbench.registry.Variant) and m.cfg.heads == 3]
        assert layers and all(m.cfg.dim % 3 == 0 for m in layers)
        with pytest.raises(ValueError, match=f"--opt for {model} at width 1, .* must be divisible by heads=3"):
            attnbench.api.plan(model=[model], width=[width, other], opt=["heads=3"], res=[32], device=["cpu"])


def test_the_code_hash_covers_the_measuring_code_only(tmp_path, monkeypatch):
    """A help text or a plot colour measures nothing again; a variant, network or measurement does."""
    from attnbench import env

    copy = tmp_path / "attnbench"
    shutil.copytree(env.PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(env, "PACKAGE", copy)

    def code() -> str:
        env.measuring_code_hash.cache_clear()
        return env.code_hash()

    first = code()
    for path in ("cli.py", "plots.py", "report.py", "console.py"):
        (copy / path).write_text((copy / path).read_text() + "\n# a comment\n")
    assert code() == first
    for path in ("variants/gsa.py", "models/resnet.py", "measure/latency.py", "harness.py"):
        before = code()
        (copy / path).write_text((copy / path).read_text() + "\n# a comment\n")
        assert code() != before, path


def test_the_code_hash_covers_the_package_that_defines_a_network_from_elsewhere(tmp_path, monkeypatch):
    from attnbench import env

    (tmp_path / "other_pkg").mkdir()
    (tmp_path / "other_pkg" / "__init__.py").write_text("")
    (tmp_path / "other_pkg" / "deep.py").write_text("X = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    base = env.code_hash()
    with_pkg = env.code_hash(["other_pkg.nets"])
    assert with_pkg != base and env.code_hash(["attnbench.models.resnet", "torch.nn"]) != base  # torch: its files
    assert env.code_hash(["attnbench.variants.gsa"]) == base  # attnbench's own: the measuring code's hash
    (tmp_path / "other_pkg" / "deep.py").write_text("X = 2\n")
    env.package_hash.cache_clear()
    changed = env.code_hash(["other_pkg.nets"])
    assert changed != with_pkg
    # what an editor leaves while a file is open (Emacs' lock: a dangling link named .#deep.py), a folder named
    # like a module and an unreadable file are no source: the hash is made all the same (it raised)
    (tmp_path / "other_pkg" / ".#deep.py").symlink_to("root@host.12345:1700000000")
    (tmp_path / "other_pkg" / "data.py").mkdir()
    env.package_hash.cache_clear()
    assert env.code_hash(["other_pkg.nets"]) == changed
    # a subpackage linked in from elsewhere is the package's own code (rglob skipped linked folders: an edit there
    # served the old rows); a link back up the tree ends; a file name that is not UTF-8 is hashed by its bytes
    (tmp_path / "shared").mkdir()
    (tmp_path / "shared" / "layers.py").write_text("WIDTH = 8\n")
    (tmp_path / "other_pkg" / "sub").symlink_to(tmp_path / "shared", target_is_directory=True)
    (tmp_path / "shared" / "loop").symlink_to(tmp_path / "other_pkg", target_is_directory=True)
    (tmp_path / "other_pkg" / os.fsdecode(b"\xff.py")).write_text("Y = 1\n")
    env.package_hash.cache_clear()
    linked = env.code_hash(["other_pkg.nets"])
    (tmp_path / "shared" / "layers.py").write_text("WIDTH = 16\n")
    env.package_hash.cache_clear()
    assert env.code_hash(["other_pkg.nets"]) not in (linked, changed)


def test_the_code_hash_of_a_module_in_no_package_covers_the_modules_beside_it(tmp_path, monkeypatch):
    """A flat folder (flat_nets.py importing flat_layers.py, no __init__.py): a change to the module it imports
    measures again. The hash covered flat_nets.py alone, and a sweep served the old network's stored rows."""
    from attnbench import env

    (tmp_path / "flat_layers.py").write_text("WIDTH = 6\n")
    (tmp_path / "flat_nets.py").write_text("from flat_layers import WIDTH\n")
    (tmp_path / "notes.txt").write_text("not code\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    env.package_hash.cache_clear()
    before = env.code_hash(["flat_nets"])
    (tmp_path / "notes.txt").write_text("still not code\n")
    env.package_hash.cache_clear()
    assert env.code_hash(["flat_nets"]) == before
    (tmp_path / "flat_layers.py").write_text("WIDTH = 12\n")
    env.package_hash.cache_clear()
    assert env.code_hash(["flat_nets"]) != before


def test_an_exports_summary_names_the_code_where_rows_of_different_code_meet(tmp_path, capsys):
    """A builder changed and measured again leaves both measurements in the store: the summary's rows would read
    as one case twice (same network, side and batch, different parameters), so ``code`` follows ``network``
    there, as in the report's tables; a store of one code keeps the summary's columns."""
    import io
    import sqlite3

    import pandas as pd

    from attnbench.cli import main

    db = tmp_path / "r.sqlite"
    assert main(["run", "--model", "conv_probe", "--res", "8", "--db", str(db), *FAST]) == 0
    capsys.readouterr()
    assert main(["export", "--db", str(db), "--columns", "summary"]) == 0
    assert "code" not in pd.read_csv(io.StringIO(capsys.readouterr().out)).columns
    with sqlite3.connect(db) as conn:  # the same case measured by other code: its row copied under another hash
        names = [r[1] for r in conn.execute("PRAGMA table_info(results)")]
        other = {"code_hash": "'0123456789abcdef'", "env_key": "env_key || '+other'"}
        conn.execute(f"INSERT INTO results ({', '.join(names)}) SELECT {', '.join(other.get(n, n) for n in names)} "
                     "FROM results")
    conn.close()
    every = store.load_results(db)
    assert main(["export", "--db", str(db), "--columns", "summary"]) == 0
    summary = pd.read_csv(io.StringIO(capsys.readouterr().out), dtype={"code": str})
    assert list(summary.columns[:2]) == ["network", "code"] and summary.network.tolist() == ["conv_probe"] * 2
    assert summary.code.tolist() == every.code_hash.str[:8].tolist() and summary.code.nunique() == 2


# ---- timm (its tests run in .ci/run's second environment, where timm imports) --------------------------------


def _timm():
    try:
        import timm
    except Exception as err:  # noqa: BLE001 - missing, or its torchvision broken beside this torch
        pytest.skip(f"timm does not import here ({type(err).__name__}); .ci/run tests it in its timm environment")
    return timm


@pytest.mark.timm
def test_a_timm_network_is_built_as_timm_builds_it(capsys, tmp_path):
    from attnbench.cli import main

    timm = _timm()
    spec = get_model_spec("timm:resnet18")
    assert (spec.variant, spec.arch, spec.kind) == ("", "timm", "timm") and spec.source.startswith("timm.")
    ours, theirs = spec.build(num_classes=10), timm.create_model("resnet18", pretrained=False, num_classes=10)
    assert [(n, p.shape) for n, p in ours.named_parameters()] == [(n, p.shape) for n, p in theirs.named_parameters()]
    with pytest.raises(KeyError, match="Unknown timm model 'resnet19'.*Did you mean"):
        get_model_spec("timm:resnet19")
    # the hint is true: the close names are timm's, and the search it names finds them (attnbench list lists none)
    for name, pattern in (("resnet18x", "*resnet*"), ("nope", "resnet*")):
        message = str(pytest.raises(KeyError, get_model_spec, f"timm:{name}").value)
        assert "attnbench list" not in message and "\n" not in message
        assert message.endswith(f"Search timm's {len(timm.list_models())} models by pattern with "
                                f"timm.list_models('{pattern}').") and timm.list_models(pattern)
        close = re.search(r"Did you mean (.*)\?", message)
        assert bool(close) == (name == "resnet18x")
        names = close.group(1).split(", ") if close else []
        assert all(timm.is_model(n) for n in names) and ("resnet18" in names) == (name == "resnet18x")
    assert main(["run", "--model", "timm:nope", "--db", str(tmp_path / "r.sqlite")]) == 2
    err = capsys.readouterr().err  # (the CUDA build of torch that timm needs warns of no CUDA as it imports)
    assert err.splitlines()[-1].startswith("attnbench run: --model: Unknown timm model 'nope'.")
    assert "Traceback" not in err and "attnbench list" not in err
    # a network sized to its input (Swin) is built for the side measured
    swin = get_model_spec("timm:swin_tiny_patch4_window7_224").build(image_size=112)
    assert swin(torch.randn(1, 3, 112, 112)).shape == (1, 1000)


@pytest.mark.timm
@pytest.mark.slow
def test_timm_networks_are_measured_beside_ours_in_one_sweep(tmp_path):
    """MACs by our rule, checked against an independent count: torch's FlopCounterMode (2 FLOPs per MAC) on
    timm's resnet18, whose every counted op is a convolution or a matrix product."""
    from torch.utils.flop_counter import FlopCounterMode

    timm = _timm()
    db = str(tmp_path / "r.sqlite")
    frame = attnbench.run(model=["timm:resnet18", "gsa_probe"], res=[32], device=["cpu"], threads=1, db=db,
                          min_run_time=0.01)
    assert frame.status.tolist() == ["ok", "ok"], frame.reason.tolist()
    row = frame.set_index("model").loc["timm:resnet18"]
    net = timm.create_model("resnet18", pretrained=False).eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        net(torch.randn(1, 3, 32, 32))
    assert row.macs == counter.get_total_flops() // 2
    assert row.params == sum(p.numel() for p in net.parameters())
    assert (row.variant, row.impl, row.arch) == ("", "", "timm")


@pytest.mark.timm
def test_train_a_timm_network_where_its_input_suits_the_data_and_say_when_it_does_not(tmp_path, capsys):
    from attnbench.cli import main

    _timm()
    db = str(tmp_path / "r.sqlite")
    common = ["train", "--dataset", "digits", "--steps", "2", "--batch", "32", "--db", db]
    assert main([*common, "--model", "timm:resnet10t", "--out", str(tmp_path / "a")]) == 0
    runs = store.load_training(db)
    assert runs.model.unique().tolist() == ["timm:resnet10t"] and runs.variant.unique().tolist() == [""]
    assert main([*common, "--model", "timm:resnet10t", "--width", "0.5", "--out", str(tmp_path / "b")]) == 2
    assert "--width applies to attnbench's networks" in capsys.readouterr().err
    # a ViT's position embedding is sized for its input: built for digits' 32 x 32, it trains
    assert main([*common, "--model", "timm:vit_tiny_patch16_224", "--out", str(tmp_path / "c")]) == 0
    # Inception-v3's stem leaves a 32 x 32 image too small for its kernels: refused before training, in one line
    assert main([*common, "--model", "timm:inception_v3", "--out", str(tmp_path / "d")]) == 2
    err = capsys.readouterr().err
    assert "timm:inception_v3 cannot take 32 x 32 images of digits: RuntimeError" in err and len(err.splitlines()) == 1
    assert set(store.load_training(db).model) == {"timm:resnet10t", "timm:vit_tiny_patch16_224"}


def test_folders_named_after_a_network_from_elsewhere_are_plain_and_distinct(tmp_path, monkeypatch, capsys):
    """A network's name in a path the tool makes keeps to [A-Za-z0-9._+-] and '=' escapes (no ':' or '/', which
    break Windows, scp and make), and two names never share a folder."""
    from attnbench.cli import main

    (tmp_path / "user_nets.py").write_text(textwrap.dedent("""
        from torch import nn

        def build(num_classes=1000):
            return nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, num_classes))
    """))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    assert main(["train", "--model", "user_nets:build", "--dataset", "digits", "--steps", "1", "--batch", "64",
                 "--db", "r.sqlite"]) == 0
    assert [p.name for p in (tmp_path / "runs").iterdir()] == ["user_nets=3Abuild-digits-s0"]
    assert (tmp_path / "runs" / "user_nets=3Abuild-digits-s0" / "checkpoint.pt").is_file()
    assert main(["profile", "--scope", "model", "--model", "user_nets:build", "--res", "16", "--iters", "1",
                 "--out", "prof", "--threads", "1"]) == 0
    traces = [p.name for p in (tmp_path / "prof" / "traces").iterdir()]
    assert traces and all(name.startswith("user_nets=3Abuild_") for name in traces)
    assert "user_nets:build" in capsys.readouterr().out  # printed as it is named
    from attnbench.files import safe_name

    assert safe_name("timm:vit_base_patch16_224.augreg_in21k") == "timm=3Avit_base_patch16_224.augreg_in21k"
    assert safe_name("a=3Ab") != safe_name("a:b")


def test_a_builder_that_returns_no_module_is_refused_before_the_sweep(tmp_path, monkeypatch, capsys):
    from attnbench.cli import main
    from attnbench.sweep import Sweep

    (tmp_path / "odd_nets.py").write_text(textwrap.dedent("""
        import torch
        from torch import nn

        def three(num_classes=1000):
            return 3

        def nothing():
            return None

        def logged(num_classes=1000, image_size=224):
            with open("calls.txt", "a") as f:
                f.write(f"{torch.empty(1).device} {image_size}\\n")
            return nn.Linear(3, num_classes)

        def reads_a_value(num_classes=1000):  # cannot build on the meta device: left to its cases
            net = nn.Linear(3, num_classes)
            net.bias.sum().item()
            return net
    """))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    db = tmp_path / "r.sqlite"
    for name, returned in (("three", "int"), ("nothing", "None")):
        assert main(["run", "--model", f"conv_probe,odd_nets:{name}", "--res", "16", "--db", str(db), *FAST]) == 2
        out, err = capsys.readouterr()
        assert err == f"attnbench run: --model: odd_nets:{name} returned {returned}, not a torch.nn.Module.\n"
        assert not out and (not db.exists() or store.load_results(db).empty)  # nothing measured, conv_probe neither
    cases = Sweep(model=["odd_nets:logged"], res=[16, 48], device=["cpu"]).cases()
    assert len(cases) == 2 and (tmp_path / "calls.txt").read_text() == "meta 48\n"  # once, on the meta device
    assert len(Sweep(model=["odd_nets:reads_a_value"], res=[16], device=["cpu"]).cases()) == 1


def test_a_builder_or_its_module_that_calls_sys_exit_is_a_failure_said_in_one_line(tmp_path, monkeypatch, capsys):
    """A user's code that ends the process (a script parsing sys.argv on import, a builder calling sys.exit) fails
    like any other: one line and exit code 2 where it is refused, an error case where a sweep runs it; never a
    silent exit of attnbench (with code 0 for sys.exit(0))."""
    from attnbench.cli import main
    from attnbench.sweep import Sweep

    (tmp_path / "script_nets.py").write_text("raise SystemExit(2)  # as argparse does when an option is missing\n")
    (tmp_path / "quitting_nets.py").write_text(textwrap.dedent("""
        import sys

        def build(num_classes=1000):
            sys.exit(0)
    """))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    with pytest.raises(KeyError, match=r"Cannot import script_nets for the network 'script_nets:build': it called "
                                       r"sys.exit\(2\)"):
        get_model_spec("script_nets:build")
    with pytest.raises(RuntimeError, match=r"quitting_nets:build called sys.exit\(0\) instead of returning a network"):
        get_model_spec("quitting_nets:build").build()
    assert len(Sweep(model=["quitting_nets:build"], res=[16], device=["cpu"]).cases()) == 1  # left to its case
    assert main(["train", "--model", "quitting_nets:build", "--dataset", "digits", "--steps", "1", "--db", "r.sqlite",
                 "--out", "runs"]) == 2
    assert capsys.readouterr().err == ("attnbench train: quitting_nets:build could not be built for 32 x 32 images "
                                       "of digits: RuntimeError: quitting_nets:build called sys.exit(0) instead of "
                                       "returning a network.\n")


def test_training_says_whether_a_builder_failed_or_its_network_cannot_take_the_images(tmp_path, monkeypatch, capsys):
    from attnbench.cli import main

    (tmp_path / "picky_nets.py").write_text(textwrap.dedent("""
        from torch import nn

        def broken(num_classes=1000):
            raise ValueError("no weights here")

        def text(num_classes=1000):
            return "a network"

        def large(num_classes=1000):
            return nn.Sequential(nn.Conv2d(3, 4, 33), nn.Flatten(), nn.LazyLinear(num_classes))
    """))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    said = {}
    for name in ("broken", "text", "large"):
        assert main(["train", "--model", f"picky_nets:{name}", "--dataset", "digits", "--steps", "1", "--db",
                     "r.sqlite", "--out", name]) == 2
        said[name] = capsys.readouterr().err
    assert said["broken"] == ("attnbench train: picky_nets:broken could not be built for 32 x 32 images of digits: "
                              "ValueError: no weights here\n")
    assert said["text"] == "attnbench train: picky_nets:text returned str, not a torch.nn.Module.\n"
    assert said["large"].startswith("attnbench train: picky_nets:large cannot take 32 x 32 images of digits: "
                                    "RuntimeError: ") and len(said["large"].splitlines()) == 1
    assert not (tmp_path / "r.sqlite").exists() or store.load_training(tmp_path / "r.sqlite").empty
