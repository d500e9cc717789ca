from dataclasses import replace

import pytest

from attnbench.record import Case
from attnbench.registry import resolve_impl
from attnbench.sweep import Subject, Sweep, expand, shard


def sweep(variants=("gsa", "conv"), **kw):
    base = dict(subjects=[Subject(v) for v in variants], res=[32, 16], batch=[1, 2], dims=[8],
                dtypes=["fp32", "bf16"], devices=["cpu"], modes=["infer"], scope="module", threads=1)
    return expand(**{**base, **kw})


def test_cross_product_and_order():
    cases = sweep()
    assert len(cases) == 2 * 2 * 2 * 2
    assert len({c.key for c in cases}) == len(cases)
    gsa = [c.res for c in cases if c.variant == "gsa" and c.batch == 1 and c.dtype == "fp32"]
    assert gsa == [16, 32]  # each variant's resolutions smallest first


def test_keys_are_stable_text():
    c = Case("module", "gsa", "", 16, 1, 8, "fp32", "cpu", "infer", 2, "batched")
    assert c.key == ("scope=module/variant=gsa/arch=/res=16/batch=1/dim=8/dtype=fp32/device=cpu/mode=infer/threads=2/"
                     "impl=batched")
    assert replace(c, options="span=3").key == c.key + "/options=span=3"  # optional fields named only when set
    assert replace(c, amp="bf16", compile="default").key == c.key + "/amp=bf16/compile=default"
    assert replace(c, channels_last=True).key == c.key + "/channels_last=True"


def test_implementations_resolve_per_device_without_duplicates():
    cases = sweep(res=[16], batch=[1], dtypes=["fp32"], devices=["cpu", "cuda:0"], impls=["auto", "pixelmajor"])
    got = sorted((c.device, c.variant, c.impl) for c in cases)
    assert got == [("cpu", "conv", "native"), ("cpu", "gsa", "pixelmajor"),
                   ("cuda:0", "conv", "native"), ("cuda:0", "gsa", "batched"), ("cuda:0", "gsa", "pixelmajor")]
    named = sweep(res=[16], batch=[1], dtypes=["fp32"], impls=["gsa=plain", "gsa=batched"])
    assert sorted(c.impl for c in named) == ["batched", "native", "plain"]
    # each case's progress line names its implementation: two cases that differ by it alone read apart
    assert sorted(c.label for c in named) == ["conv/native res=16 b=1 fp32 cpu infer",
                                              "gsa/batched res=16 b=1 fp32 cpu infer",
                                              "gsa/plain res=16 b=1 fp32 cpu infer"]


def test_model_scope_ignores_dim():
    assert {c.dim for c in sweep(scope="model", dims=[8, 16])} == {0}


def test_networks_by_name_beside_variants_take_their_variant_from_the_registry():
    cases = Sweep(variants=["gsa"], model=["botnet50", "resnet50", "gsa_resnet50"], res=[32], device=["cpu"],
                  threads=1).cases()
    got = [(c.model, c.variant, c.arch, c.impl) for c in cases]
    # gsa_resnet50 is named twice (by --variants and --model): one case; botnet50's variant is mhsa, whose impl
    # resolves for the CPU as any variant's does
    auto = {v: resolve_impl(v, "auto", "cpu") for v in ("gsa", "mhsa", "conv")}
    assert got == [("gsa_resnet50", "gsa", "resnet50", auto["gsa"]), ("botnet50", "mhsa", "botnet50", auto["mhsa"]),
                   ("resnet50", "conv", "resnet50", auto["conv"])]
    alone = Sweep(model=["gsa_resnet50"], res=[32], device=["cpu"], threads=1).cases()
    assert [c.key for c in alone] == [cases[0].key]  # the same network is the same case, however it was named
    aliased = Sweep(model=["conv_resnet50"], res=[32], device=["cpu"], threads=1).cases()
    assert [c.key for c in aliased] == [cases[2].key]


def test_a_lone_item_where_a_list_is_expected_is_that_one_item():
    """From Python, ``model="botnet50"`` or ``res=32`` names one network or side, as ``["botnet50"]`` and ``[32]``
    do: a string was read letter by letter ("Unknown model 'b'"), a number raised TypeError."""
    listed = Sweep(variants=["gsa"], model=["botnet50"], res=[32], batch=[2], dtype=["fp32"], mode=["infer"],
                   device=["cpu"], width=[1.0], threads=1).cases()
    lone = Sweep(variants="gsa", model="botnet50", res=32, batch=2, dtype="fp32", mode="infer", device="cpu",
                 width=1.0, threads=1).cases()
    assert [c.key for c in lone] == [c.key for c in listed] and len(listed) == 2


def test_width_is_an_axis_of_networks_with_its_own_keys():
    from attnbench.harness import shape_key

    cases = Sweep(variants=["conv"], arch="probe", width=[0.5, 1.0], res=[32], device=["cpu"], threads=1).cases()
    assert [c.width for c in cases] == [0.5, 1.0]
    assert cases[0].key == cases[1].key + "/width=0.5" and shape_key(cases[0]) != shape_key(cases[1])


@pytest.mark.parametrize("sweep_args, message", [
    (dict(scope="module", model=["resnet50"]), "--model applies to --scope model only"),
    (dict(scope="module", width=[0.5]), "--width applies to --scope model only"),
    (dict(model=["resnet50"], arch="probe"), "--arch applies to --variants"),
    (dict(model=["collections:OrderedDict"], width=[0.5]), "--width applies to attnbench's networks"),
    (dict(model=["gsa_resnet51"]), "--model: Unknown model 'gsa_resnet51'.*Did you mean 'gsa_resnet50'"),
    (dict(model=["timmm:x"]), "--model: Cannot import timmm"),
    (dict(model=["os:nothing_here"]), "os has no callable 'nothing_here'"),
    (dict(variants=["conv"], width=[0.0]), "Invalid width=0.0"),
])
def test_bad_networks_are_refused_in_one_line(sweep_args, message):
    with pytest.raises(ValueError, match=message):
        Sweep(res=[32], device=["cpu"], **sweep_args).cases()


@pytest.mark.parametrize("n", [1, 2, 3, 5])
def test_shards_partition_the_sweep(n):
    cases = sweep()
    parts = [shard(cases, i, n) for i in range(1, n + 1)]
    assert sorted(c.key for p in parts for c in p) == sorted(c.key for c in cases)
    assert max(map(len, parts)) - min(map(len, parts)) <= 1


@pytest.mark.parametrize("i, n", [(3, 2), (0, 2), (1, 0)])
def test_bad_shard(i, n):
    with pytest.raises(ValueError, match="Invalid shard"):
        shard(sweep(), i, n)
