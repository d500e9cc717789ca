"""One case in, one record out: build, predict, count, time and measure, each case in its own process.

A case that crashes, runs out of memory or overruns its time limit is recorded with that status;
the sweep goes on. Records are written to the store as each case finishes.
"""

from __future__ import annotations

import math
import multiprocessing as mp
import os
import re
import tempfile
import time
import traceback
import uuid
from collections.abc import Callable, Iterable
from dataclasses import replace
from pathlib import Path

import torch

from attnbench import store
from attnbench.env import environment
from attnbench.measure.latency import make_step, measure_latency, synchronized
from attnbench.measure.load import calibrate, noise_reasons, other_cores
from attnbench.measure.load import sample as load_sample
from attnbench.measure.macs import analyse_macs
from attnbench.measure.memory import available_memory, peak_memory, predict_peak_memory
from attnbench.measure.params import count_params
from attnbench.measure.peak import matmul_peak_gflops
from attnbench.record import Case, Environment, Measurement, Record
from attnbench.registry import get_impl
from attnbench.sweep import DTYPES

MEMORY_HEADROOM = 1.25  # predicted peak x this must fit the memory available
MIN_RUN_TIME_S = 0.5  # default seconds of timed runs per case (torch.utils.benchmark autorange)


def input_shape(case: Case) -> tuple[int, ...]:
    """The shape of one case's input batch."""
    return (case.batch, case.dim if case.scope == "module" else 3, case.res, case.res)


def build_case(case: Case) -> tuple[torch.nn.Module, tuple[int, ...]]:
    """The module of one case, on the case's device and in its dtype, and its input's shape."""
    from attnbench.models import model_for_variant
    from attnbench.registry import build_variant

    if case.scope == "module":
        module = build_variant(case.variant, case.dim, size=case.res, impl=case.impl, **case.variant_options)
    else:
        module = model_for_variant(case.variant, case.arch, image_size=case.res, impl=case.impl,
                                   **case.variant_options)
    module = module.to(case.device, DTYPES[case.dtype])
    return module.to(memory_format=torch.channels_last) if case.channels_last else module, input_shape(case)


def too_large(case: Case) -> str | None:
    """Why a case cannot fit, known before anything is built: its input and one map of the same size
    (the layer's output, or the stem's, which is larger) must be held at once."""
    floor = 2 * math.prod(input_shape(case)) * DTYPES[case.dtype].itemsize
    available = available_memory(case.device)
    if available is not None and floor * MEMORY_HEADROOM > available:
        return (f"the input and one map of its size alone need {floor / 2**20:.0f} MiB, more than the "
                f"{available / 2**20:.0f} MiB available on {case.device}")
    return None


def _is_oom(err: BaseException) -> bool:
    if isinstance(err, torch.cuda.OutOfMemoryError):
        return True
    text = str(err)
    return isinstance(err, RuntimeError) and ("can't allocate memory" in text or "out of memory" in text)


Counts = dict  # params, params_trainable, macs_per_image, macs_counter, uncounted_ops of one case's shape


def shape_key(case: Case) -> tuple:
    """What parameters and MACs depend on: the network or module and one image's shape, not the batch,
    dtype, mode, device, implementation or timm-style options (MACs are the mechanism's)."""
    return case.scope, case.variant, case.arch, case.res, case.dim, case.options


def measure_case(case: Case, min_run_time: float = MIN_RUN_TIME_S, counts: Counts | None = None) -> Measurement:
    """Measure one case in this process; ``counts`` of its shape, when known, are taken instead of counted."""
    torch.set_num_threads(case.threads)
    torch.manual_seed(0)
    record: dict = {}
    try:
        impl = get_impl(case.variant, case.impl)
        unsupported = impl.unsupported(torch.device(case.device).type, case.mode == "train")
        if unsupported:
            return Measurement("skipped", f"implementation {case.impl}: {unsupported}")
        reason = too_large(case)
        if reason:
            return Measurement("skipped", reason)
        module, shape = build_case(case)
        dtype = DTYPES[case.dtype]
        predicted = predict_peak_memory(module, shape, case.mode, dtype=dtype, device=case.device)
        record["predicted_mem_bytes"] = predicted
        available = available_memory(case.device)
        if available is not None and predicted * MEMORY_HEADROOM > available:
            return Measurement("skipped", f"predicted peak {predicted / 2**20:.0f} MiB exceeds the "
                               f"{available / 2**20:.0f} MiB available on {case.device}", predicted_mem_bytes=predicted)
        x = torch.randn(*shape, device=case.device, dtype=dtype)
        if case.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if counts is None:
            count = analyse_macs(module, x[:1])
            counts = {**count_params(module), "macs_per_image": count.macs, "macs_counter": "fvcore+attnbench",
                      "uncounted_ops": count.uncounted_ops}
        record.update({k: v for k, v in counts.items() if k != "macs_per_image"},
                      macs=counts["macs_per_image"] * case.batch)
        autocast = DTYPES[case.amp] if case.amp else None
        if case.compile:
            module = torch.compile(module, mode=case.compile)
        step = make_step(module, x, case.mode, autocast=autocast)
        start = time.perf_counter()
        synchronized(step, torch.device(case.device))()  # warm-up (and compilation): not part of the peak
        if case.compile:
            record["compile_s"] = time.perf_counter() - start
        record.update(peak_memory(step, case.device))
        record.update(timed(step, case, min_run_time))
        record["status"] = "ok"
    except Exception as err:  # noqa: BLE001 - every failure becomes the case's status
        status = "oom" if _is_oom(err) else "error"
        record.update(status=status, reason=f"{type(err).__name__}: {err}".splitlines()[0][:500])
    return Measurement(**record)


def timed(step: Callable[[], object], case: Case, min_run_time: float) -> dict:
    """The latency fields of a case; on a CPU, with other processes' use of the cores during the timed
    runs and a calibration before and after, either of which can mark the timing noisy (and say why)."""
    if torch.device(case.device).type != "cpu":
        return measure_latency(step, case.device, batch=case.batch, threads=case.threads, min_run_time=min_run_time)
    calibration = [calibrate(case.threads)]
    before = load_sample()
    latency = measure_latency(step, case.device, batch=case.batch, threads=case.threads, min_run_time=min_run_time)
    other = other_cores(before, load_sample())
    calibration.append(calibrate(case.threads))
    reasons = [latency["latency_noise_reason"]] if latency["latency_noisy"] else []
    reasons += noise_reasons(other, (calibration[0], calibration[1]), os.cpu_count() or 1)
    return {**latency, "latency_noisy": bool(reasons), "latency_noise_reason": "; ".join(reasons) or None,
            "other_load_cores": round(other, 3)}


def _child(case: Case, min_run_time: float, counts: Counts | None, conn) -> None:
    try:
        result = measure_case(case, min_run_time, counts), environment(case.device)
    except BaseException as err:  # the parent must always hear back
        result = Measurement("error", "".join(traceback.format_exception_only(err)).strip()[:500]), None
    try:
        conn.send(result)
    except OSError:  # the sweep was interrupted and no longer listens: nothing to report to
        pass
    finally:
        conn.close()


_FORKSERVER: mp.context.BaseContext | None = None
MAX_SOCKET_DIR = 80  # the fork server's socket lives in the temporary folder; Unix socket paths end at 108 bytes


def _context(device: str) -> mp.context.BaseContext:
    """How a case's process starts.

    CPU cases fork from one clean fork-server process that has imported and warmed torch once.
    CUDA cases start a fresh interpreter ("spawn"): CUDA cannot be used in a process forked from
    one where it was initialised, and the tracer and fake tensors used by every case may do that.
    """
    global _FORKSERVER
    if (torch.device(device).type == "cuda" or "forkserver" not in mp.get_all_start_methods()
            or len(tempfile.gettempdir()) > MAX_SOCKET_DIR):
        return mp.get_context("spawn")
    if _FORKSERVER is None:
        _FORKSERVER = mp.get_context("forkserver")
        _FORKSERVER.set_forkserver_preload(["attnbench.worker"])
    return _FORKSERVER


def oom_kills() -> int:
    """How many processes the kernel's out-of-memory killer has killed since boot (0 where unknown)."""
    try:
        match = re.search(r"^oom_kill (\d+)$", Path("/proc/vmstat").read_text(), re.MULTILINE)
    except OSError:
        return 0
    return int(match.group(1)) if match else 0


def run_isolated(case: Case, timeout: float, min_run_time: float = MIN_RUN_TIME_S,
                 counts: Counts | None = None) -> tuple[Measurement, Environment]:
    """Measure ``case`` in a fresh child process; a crash or an overrun becomes the measurement's status.
    The environment is the child's, as it measured (the parent's, now, when the child could not say)."""
    ctx = _context(case.device)
    recv, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(case, min_run_time, counts, send), daemon=True)
    start = time.monotonic()
    oom_before = oom_kills()
    proc.start()
    send.close()
    env = None
    try:
        if recv.poll(timeout):
            measurement, env = recv.recv()
            proc.join(10)
        else:
            measurement = Measurement("timeout", f"no result within the {timeout:g} s time limit")
    except EOFError:  # the child died without a word
        proc.join(10)
        code = proc.exitcode
        reason = f"the case's process died (exit code {code})"
        status = "error"
        if code == -9:
            if oom_kills() > oom_before:
                status, reason = "oom", "the case's process was killed by the kernel's out-of-memory killer"
            else:
                status, reason = "killed", "the case's process was killed (SIGKILL) by another process"
        measurement = Measurement(status, reason)
    finally:
        if proc.is_alive():
            proc.kill()
            proc.join()
        recv.close()
    return replace(measurement, wall_s=time.monotonic() - start), env or environment(case.device)


def worth_retrying(stored: dict, device: str, timeout: float) -> bool:
    """Whether a stored failure may now succeed: a time-out given a longer limit than the one it ran
    out of, or a case skipped or killed for memory that its prediction says now fits. Errors and other
    kills are this code's answer (a code change measures everything again); ``--retry-failed`` forces."""
    if stored["status"] == "timeout":
        return stored["wall_s"] is None or timeout > 1.05 * stored["wall_s"]
    if stored["status"] in ("skipped", "oom") and stored["predicted_mem_bytes"]:
        available = available_memory(device)
        return available is not None and stored["predicted_mem_bytes"] * MEMORY_HEADROOM <= available
    return False


def run_cases(
    cases: Iterable[Case],
    db: str,
    *,
    timeout: float = 600,
    min_run_time: float = MIN_RUN_TIME_S,
    force: bool = False,
    retry_failed: bool = False,
    on_case: Callable[[Case, Record | None], None] | None = None,
) -> list[Record]:
    """Measure every case not yet stored for this environment (all of them with ``force``), and stored
    failures that may now succeed (:func:`worth_retrying`; every failure with ``retry_failed``).

    Each record is written as soon as its case ends. ``on_case(case, record)`` is called after each
    case, with None for cases skipped because they were already stored. Returns the records written.
    """
    run_id = uuid.uuid4().hex[:12]
    cases = list(cases)
    done = {dev: store.stored_cases(db, environment(dev).key) for dev in {c.device for c in cases}}
    peaks: dict[tuple[str, str, int], float] = {}  # measured once per device, dtype and threads
    counted: dict[tuple, Counts] = {}  # parameters and MACs, counted once per shape (shape_key)
    records = []
    with store.Writer(db) as writer:
        for case in cases:
            stored = done[case.device].get(case.key)
            again = stored is not None and stored["status"] != "ok" and (
                retry_failed or worth_retrying(stored, case.device, timeout))
            if not force and stored is not None and not again:
                if on_case:
                    on_case(case, None)
                continue
            peak_key = (case.device, case.dtype, case.threads)
            if peak_key not in peaks:
                peaks[peak_key] = matmul_peak_gflops(case.device, DTYPES[case.dtype], case.threads)
            measurement, env = run_isolated(case, timeout, min_run_time, counted.get(shape_key(case)))
            if measurement.macs is not None and shape_key(case) not in counted:
                counted[shape_key(case)] = {
                    "params": measurement.params, "params_trainable": measurement.params_trainable,
                    "macs_per_image": measurement.macs // case.batch, "macs_counter": measurement.macs_counter,
                    "uncounted_ops": measurement.uncounted_ops}
            record = Record(case, replace(measurement, device_peak_gflops=peaks[peak_key]), env, run_id)
            writer.write(record, replace=force or again)
            records.append(record)
            if on_case:
                on_case(case, record)
    return records
