from dataclasses import replace

import pytest

from attnbench.record import Case
from attnbench.sweep import expand, shard


def sweep(**kw):
    base = dict(variants=["gsa", "conv"], res=[32, 16], batch=[1, 2], dims=[8], dtypes=["fp32", "bf16"],
                devices=["cpu"], modes=["infer"], scope="module", arch="resnet50", threads=1)
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


def test_model_scope_ignores_dim():
    assert {c.dim for c in sweep(scope="model", dims=[8, 16])} == {0}


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
