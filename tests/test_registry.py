"""How `impl="auto"` chooses: each variant's order per device type, filtered by every implementation's reasons
(device type, dtype, a backward, checks of the input), one error naming them all when none fits, and a plugin's
implementation registered to go first."""

from dataclasses import dataclass

import pytest
import torch

from attnbench import registry
from attnbench.choices import Status
from attnbench.harness import measure_case
from attnbench.record import Case
from attnbench.registry import (
    Inputs,
    NoImplementationError,
    Variant,
    VariantConfig,
    build_variant,
    register_impl,
    register_variant,
    resolve_impl,
    why_not,
)
from attnbench.sweep import planned_impl

SHAPE = (2, 4, 3, 3)


@dataclass(frozen=True)
class Config(VariantConfig):
    pass


def scale(factor: float):
    """An implementation that multiplies its input by ``factor``: the output tells which one ran."""
    return lambda module, x: x * factor


def ordered(**limits) -> str:
    """Variant 'ordered': implementations a (x1), b (x2) and the reference c (x3), registered in that order, with
    ``limits[name]`` as their register_impl arguments; auto prefers b, then a, on CPUs."""
    register_variant("ordered", Config, description="test", paper="none", arxiv="none", reference="c",
                     preference={"cpu": ("b", "a")})(type("Ordered", (Variant,), {}))
    for factor, name in enumerate("abc", start=1):
        register_impl("ordered", name, description=name, **limits.get(name, {}))(scale(factor))
    return "ordered"


def ran(x: torch.Tensor) -> str:
    """Which implementation of 'ordered' (auto) runs on ``x``."""
    return "abc"[round((build_variant("ordered", x.shape[1])(x) / x).flatten()[0].item()) - 1]


def test_auto_tries_the_preference_then_the_reference_then_the_rest(scratch):
    spec = registry.get_variant_spec(ordered())
    assert spec.auto_order("cpu") == ("b", "a", "c")
    assert spec.auto_order("cuda") == ("c", "a", "b")  # no preference there: the reference first
    assert resolve_impl("ordered", "auto", "cpu") == "b" and resolve_impl("ordered", "auto", "cuda") == "c"
    assert ran(torch.ones(SHAPE)) == "b"


LIMITS = {  # a limit on b, an input it rules out, and the reason it gives
    "dtype": ({"dtypes": (torch.float32,)}, {"dtype": torch.float64}, "computes in float32 only"),
    "grad": ({"backward": False}, {"grad": True}, "has no backward"),
    "device": ({"devices": ("cuda",)}, {}, "runs on cuda only"),
    "size": ({"check": lambda i: [f"{i.shape[-1]} pixels wide, more than 2"] if i.shape[-1] > 2 else None}, {},
             "3 pixels wide, more than 2"),
}


@pytest.mark.parametrize("limit", LIMITS)
def test_a_first_choice_that_cannot_run_an_input_gives_way_to_the_next_and_says_why(scratch, limit):
    register, ruled_out, reason = LIMITS[limit]
    ordered(b=register)
    inputs = Inputs("cpu", **{"dtype": torch.float32, "grad": False, **ruled_out}, shape=SHAPE)
    assert registry.choose_impl("ordered", inputs) == "a"
    assert why_not("ordered", "b", inputs) == f"implementation b: {reason}"
    assert why_not("ordered", "a", inputs) is None and why_not("ordered", "auto", inputs) is None
    assert ran(torch.ones(SHAPE, dtype=inputs.dtype, requires_grad=inputs.grad)) == "a"  # a forward chooses alike
    assert ran(torch.ones(1, 4, 2, 2)) == ("a" if limit == "device" else "b")  # b again where it can


def test_when_no_implementation_fits_one_error_names_every_one_with_all_its_reasons(scratch):
    def small(inputs):
        return "needs at most 4 pixels" if inputs.shape is None or inputs.shape[-1] * inputs.shape[-2] > 4 else None

    ordered(a={"devices": ("cuda",)}, b={"dtypes": (torch.float32,), "backward": False}, c={"check": small})
    message = ("No implementation of variant 'ordered' runs a cpu float64 input (2, 4, 3, 3) with gradients: "
               "b (computes in float32 only; has no backward), a (runs on cuda only), c (needs at most 4 pixels).")
    with pytest.raises(NoImplementationError) as err:
        registry.choose_impl("ordered", Inputs("cpu", torch.float64, True, SHAPE))
    assert str(err.value) == message
    with pytest.raises(NoImplementationError) as err:  # a module's forward on such an input says the same
        build_variant("ordered", 4)(torch.ones(SHAPE, dtype=torch.float64, requires_grad=True))
    assert str(err.value) == message
    # a sweep plans such a case as auto, and it is skipped saying every reason; the others still run
    assert planned_impl("ordered", "auto", "cpu", "fp32", "train", SHAPE) == "auto"
    assert planned_impl("ordered", "auto", "cpu", "bf16", "infer", (2, 4, 2, 2)) == "c"
    skipped = measure_case(Case("module", "ordered", "", 3, 2, 4, "fp32", "cpu", "train", 1, "auto"), 0.01)
    assert (skipped.status, skipped.reason) == (Status.SKIPPED, "No implementation of variant 'ordered' runs a cpu "
                                                "float32 input (2, 4, 3, 3) with gradients: b (has no backward), a "
                                                "(runs on cuda only), c (needs at most 4 pixels).")


def test_a_check_that_fails_is_a_reason_not_a_crash(scratch):
    ordered(b={"check": lambda inputs: 1 / 0})
    assert why_not("ordered", "b", Inputs("cpu")) == "implementation b: its check failed: ZeroDivisionError: " \
                                                     "division by zero"
    assert resolve_impl("ordered", "auto", "cpu") == "a"


def test_an_implementation_registered_first_on_a_device_is_chosen_there_before_the_variants_own(scratch):
    assert resolve_impl("conv", "auto", "cpu") == "native"
    register_impl("conv", "halved", description="half the native output", preferred_on=("cpu",),
                  dtypes=(torch.float32,))(lambda m, x: registry._IMPLS["conv"]["native"].forward(m, x) / 2)
    assert registry.get_variant_spec("conv").auto_order("cpu") == ("halved", "native")
    assert (resolve_impl("conv", "auto", "cpu"), resolve_impl("conv", "auto", "cuda")) == ("halved", "native")
    assert resolve_impl("conv", "auto", "cpu", dtype=torch.float64) == "native"  # it cannot: the next one runs
    m = build_variant("conv", 4).eval()
    x = torch.randn(1, 4, 5, 5)
    with torch.no_grad():
        auto = m(x)
        m.impl = "native"
        torch.testing.assert_close(auto, m(x) / 2)


def test_a_preference_naming_no_registered_implementation_is_refused(scratch):
    register_variant("typo", Config, description="test", paper="none", arxiv="none", reference="c",
                     preference={"cuda": "fats"})(type("Typo", (Variant,), {}))
    register_impl("typo", "c", description="c")(scale(3))
    assert resolve_impl("typo", "auto", "cpu") == "c"
    with pytest.raises(ValueError, match=r"Variant 'typo' names implementations that are not registered: fats "
                                         r"\(registered: c\)"):
        resolve_impl("typo", "auto", "cuda")


def test_memory_is_predicted_on_the_reference_where_the_chosen_implementation_cannot_run_on_fake_tensors(scratch):
    from torch._subclasses.fake_tensor import FakeTensor

    from attnbench.measure.memory import predict_peak_memory

    def real_only(module, x):
        if isinstance(x, FakeTensor):
            raise RuntimeError("cannot run on fake tensors")
        return x * 2

    ordered()
    registry._IMPLS["ordered"]["b"] = registry.ImplSpec("b", real_only, "b", fakeable=False)
    m = build_variant("ordered", 4)
    assert ran(torch.ones(SHAPE)) == "b"  # auto runs it on real tensors
    with torch.no_grad():
        predicted = predict_peak_memory(m, SHAPE, "infer")
    m.impl = "c"
    with torch.no_grad():
        assert predicted == predict_peak_memory(m, SHAPE, "infer") > 0
    assert not m.fake_inputs


def test_list_marks_where_auto_runs_each_implementation_and_lists_a_variant_none_can_run_on_a_device(scratch):
    from attnbench.catalog import catalog

    ordered(a={"devices": ("cuda",)}, b={"devices": ("cuda",)}, c={"devices": ("cuda",)})
    impls = [line.split(":")[0].strip() for line in catalog("ordered") if line.strip().startswith("impl ")]
    assert impls == ["impl c [auto on cuda]", "impl a", "impl b"]  # on CPUs none can: no mark, and no error
