"""One case in, one record out: build, predict, count, time and measure, in a worker process.

CPU cases each run in a fresh process (forked from a warm fork server); CUDA cases run in one warm
worker per GPU, every GPU at once. A case that crashes, runs out of memory or overruns its time limit
is recorded with that status and the sweep goes on. Records are written to the store as each case ends.
"""

from __future__ import annotations

import functools
import gc
import math
import multiprocessing as mp
import os
import re
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch.nn.parameter import is_lazy

from attnbench import forkserver, interrupt, store
from attnbench.choices import Scope, Status, torch_dtype
from attnbench.env import environment
from attnbench.measure.latency import make_step, measure_latency, synchronized
from attnbench.measure.load import calibrate, noise_reasons, other_cores
from attnbench.measure.load import sample as load_sample
from attnbench.measure.macs import analyse_macs
from attnbench.measure.memory import available_memory, keep_freed_memory, peak_memory, predict_peak_memory
from attnbench.measure.params import count_params
from attnbench.measure.peak import matmul_peak_gflops
from attnbench.record import Case, Environment, Measurement, Record
from attnbench.registry import Inputs, why_not

MEMORY_HEADROOM = 1.25  # predicted peak x this must fit the memory available
MIN_RUN_TIME_S = 0.5  # default seconds of timed runs per case (torch.utils.benchmark autorange)
MAX_TIMEOUT_S = 7 * 24 * 3600  # a week: the system's timers overflow not far beyond (poll's 24.8 days)


def check_timeout(timeout: float) -> float:
    """``timeout`` if it is a usable time limit per case, in seconds; ValueError in one line otherwise."""
    if not 0 < timeout <= MAX_TIMEOUT_S:
        raise ValueError(f"a case's time limit is more than 0 and at most {MAX_TIMEOUT_S} s (a week), not "
                         f"{timeout:g} s")
    return timeout


NUM_CLASSES = 1000  # the networks measured at model scope classify ImageNet's classes


def input_shape(case: Case) -> tuple[int, ...]:
    """The shape of one case's input batch."""
    return (case.batch, case.dim if case.scope == Scope.MODULE else 3, case.res, case.res)


def output_shape(case: Case) -> tuple[int, ...]:
    """The shape a case's module must return: a variant's output is its input's shape (the registry's contract,
    at stride 1), a network's a logit per class and image."""
    return input_shape(case) if case.scope == Scope.MODULE else (case.batch, NUM_CLASSES)


def build_case(case: Case) -> tuple[torch.nn.Module, tuple[int, ...]]:
    """The module of one case, on the case's device and in its dtype, and its input's shape."""
    from attnbench.models import build_model
    from attnbench.registry import build_variant

    if case.scope == Scope.MODULE:
        module = build_variant(case.variant, case.dim, size=case.res, impl=case.impl, **case.variant_options)
    else:
        ours = {"impl": case.impl, "width": case.width, **case.variant_options} if case.variant else {}
        module = build_model(case.model, num_classes=NUM_CLASSES, image_size=case.res, **ours)
    module = module.to(case.device, torch_dtype(case.dtype))
    if any(is_lazy(p) for p in module.parameters()):  # nn.LazyLinear and its kin: shapes known after one forward
        training = module.training
        with torch.no_grad():  # in eval mode: running statistics stay as built
            module.eval()(torch.zeros(1, *input_shape(case)[1:], device=case.device, dtype=torch_dtype(case.dtype)))
        module.train(training)
    return module.to(memory_format=torch.channels_last) if case.channels_last else module, input_shape(case)


@functools.cache
def _modules(variant: str, model: str) -> tuple[str, ...]:
    from attnbench.models import get_model_spec
    from attnbench.registry import get_variant_spec

    return get_model_spec(model).modules() if model else get_variant_spec(variant).modules()


def case_environment(case: Case) -> Environment:
    """The environment that measures ``case`` here, now: its code hash covers attnbench's measuring code and
    the source of the plugin, timm or user package that defines the case's variant or network."""
    return environment(case.device, _modules(case.variant, case.model))


def too_large(case: Case) -> str | None:
    """Why a case cannot fit, known before anything is built: its input and one map of the same size
    (the layer's output, or the stem's, which is larger) must be held at once."""
    floor = 2 * math.prod(input_shape(case)) * torch_dtype(case.dtype).itemsize
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


@dataclass(frozen=True)
class Counts:
    """Parameters and MACs of one shape (:func:`shape_key`): counted by its first case, handed to the others."""

    params: int
    params_trainable: int
    macs_per_image: int
    macs_counter: str
    uncounted_ops: str | dict[str, int]  # {op: count}, or its JSON text as a Measurement stores it

    @classmethod
    def of(cls, measurement: Measurement, batch: int) -> Counts | None:
        """What a measured case counted (None when it counted nothing)."""
        if measurement.macs is None:
            return None
        return cls(measurement.params, measurement.params_trainable, measurement.macs // batch,
                   measurement.macs_counter, measurement.uncounted_ops)

    def fields(self, batch: int) -> dict:
        """The measurement fields of a case of this shape with ``batch`` images."""
        return {"params": self.params, "params_trainable": self.params_trainable,
                "macs": self.macs_per_image * batch, "macs_counter": self.macs_counter,
                "uncounted_ops": self.uncounted_ops}


def shape_key(case: Case) -> tuple:
    """What parameters and MACs depend on: the network or module and one image's shape, not the batch,
    dtype, mode, device, implementation or timm-style options (MACs are the mechanism's)."""
    return case.scope, case.variant, case.arch, case.model, case.width, case.res, case.dim, case.options


def measure_case(case: Case, min_run_time: float = MIN_RUN_TIME_S, counts: Counts | None = None) -> Measurement:
    """Measure one case in this process; ``counts`` of its shape, when known, are taken instead of counted."""
    torch.set_num_threads(case.threads)
    torch.manual_seed(0)
    record: dict = {}
    try:
        if case.impl:  # (a network from elsewhere has none to choose)
            inputs = Inputs(torch.device(case.device).type, torch_dtype(case.dtype), case.mode == "train",
                            input_shape(case) if case.scope == Scope.MODULE else None)
            unfit = why_not(case.variant, case.impl, inputs)
            if unfit:
                return Measurement(Status.SKIPPED, unfit)
        reason = too_large(case)
        if reason:
            return Measurement(Status.SKIPPED, reason)
        module, shape = build_case(case)
        dtype = torch_dtype(case.dtype)
        predicted = predict_peak_memory(module, shape, case.mode, dtype=dtype, device=case.device)
        record["predicted_mem_bytes"] = predicted
        available = available_memory(case.device)
        if available is not None and predicted * MEMORY_HEADROOM > available:
            return Measurement(Status.SKIPPED, f"predicted peak {predicted / 2**20:.0f} MiB exceeds the "
                               f"{available / 2**20:.0f} MiB available on {case.device}", predicted_mem_bytes=predicted)
        x = torch.randn(*shape, device=case.device, dtype=dtype)
        if case.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if counts is None:
            count = analyse_macs(module, x[:1])
            counts = Counts(**count_params(module), macs_per_image=count.macs, macs_counter="fvcore+attnbench",
                            uncounted_ops=count.uncounted_ops)
        record.update(counts.fields(case.batch))
        autocast = torch_dtype(case.amp) if case.amp else None
        if case.compile:
            module = torch.compile(module, mode=case.compile)
        step = make_step(module, x, case.mode, autocast=autocast)
        start = time.perf_counter()
        out = synchronized(step, torch.device(case.device))()  # warm-up (and compilation): not part of the peak
        if case.compile:
            record["compile_s"] = time.perf_counter() - start
        got, expected = tuple(getattr(out, "shape", ())), output_shape(case)
        if got != expected:  # a broken variant is a failed case, not a measurement
            what = "variant" if case.scope == Scope.MODULE else "network"
            return Measurement(Status.ERROR, f"the {what}'s output has shape {got}, not {expected}",
                               predicted_mem_bytes=predicted)
        record.update(peak_memory(step, case.device))
        record.update(timed(step, case, min_run_time))
        record["status"] = Status.OK
    except Exception as err:  # noqa: BLE001 - every failure becomes the case's status
        status = Status.OOM if _is_oom(err) else "error"
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


def _measure(case: Case, min_run_time: float, counts: Counts | None) -> tuple[Measurement, Environment | None]:
    try:
        return measure_case(case, min_run_time, counts), case_environment(case)
    except BaseException as err:  # the parent must always hear back
        return Measurement(Status.ERROR, "".join(traceback.format_exception_only(err)).strip()[:500]), None


UNRECOVERABLE = ("CUDA error", "CUBLAS_STATUS", "cuDNN error")  # after these, a CUDA context cannot be trusted


def _serve(conn, reuse: bool) -> None:
    """A worker's loop: measure each case it is sent, answer, and release what the case held; one case
    only unless ``reuse``. A CUDA error other than out-of-memory ends the worker (its context is broken)."""
    try:
        while True:
            try:
                job = conn.recv()
            except EOFError:
                return
            if job is None:
                return
            if torch.device(job[0].device).type == "cpu":
                keep_freed_memory()  # time the steady state a warm process sees, not the page faults of a fresh one
            measurement, env = _measure(*job)
            try:
                conn.send((measurement, env))
            except OSError:  # the sweep was interrupted and no longer listens: nothing to report to
                return
            if not reuse or any(text in (measurement.reason or "") for text in UNRECOVERABLE):
                return
            gc.collect()
            if torch.cuda.is_initialized():
                torch.cuda.empty_cache()  # an out-of-memory case leaves the next one the whole device
    finally:
        conn.close()


def _context(device: str) -> mp.context.BaseContext:
    """How a case's process starts.

    CPU cases fork from the fork server (:mod:`attnbench.forkserver`), a clean process that has imported
    and warmed torch and attnbench once. CUDA cases start a fresh interpreter ("spawn"): CUDA cannot be
    used in a process forked from one where it was initialised, and the tracer and fake tensors used by
    every case may do that. Spawn too where there can be no fork server.
    """
    server = forkserver.context() if torch.device(device).type == "cpu" else None
    return server or mp.get_context("spawn")


def oom_kills() -> int:
    """How many processes the kernel's out-of-memory killer has killed since boot (0 where unknown)."""
    try:
        match = re.search(r"^oom_kill (\d+)$", Path("/proc/vmstat").read_text(), re.MULTILINE)
    except OSError:
        return 0
    return int(match.group(1)) if match else 0


class Worker:
    """A process that measures the cases of one device, one at a time.

    With ``reuse`` (the default for CUDA devices) the process stays between cases, so torch and CUDA
    start once per sweep; an out-of-memory case is recovered in place (status ``oom``, memory released).
    A crash, a hang past the time limit or a CUDA error that breaks the context ends the process and only
    its case: the next case starts a fresh one. Without ``reuse`` every case gets a fresh process (CPU
    cases: each case's peak resident memory is its own).
    """

    def __init__(self, device: str, *, reuse: bool | None = None) -> None:
        self.device = device
        self.reuse = torch.device(device).type == "cuda" if reuse is None else reuse
        self.proc = None
        self.conn = None

    def __enter__(self) -> Worker:
        return self

    def __exit__(self, exc_type, *exc) -> None:
        self.close(ask=exc_type is None)  # an interrupt does not wait for the case to end

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None and self.proc.is_alive() else None

    def _start(self) -> None:
        ctx = _context(self.device)
        conn, theirs = ctx.Pipe(duplex=True)
        proc = ctx.Process(target=_serve, args=(theirs, self.reuse), daemon=True)
        try:
            with forkserver.main_without_a_file():
                proc.start()
        finally:
            theirs.close()
        self.proc, self.conn = proc, conn  # only a process that started is ever joined

    def close(self, *, ask: bool = True) -> None:
        """End the process: asked to finish (unless not ``ask``: a hung one), then killed."""
        if self.proc is None:
            return
        try:
            if ask and self.proc.is_alive():
                self.conn.send(None)
                self.proc.join(5)
        except OSError:
            pass
        finally:
            if self.proc.is_alive():
                self.proc.kill()
            self.proc.join()
            self.conn.close()
            self.proc = self.conn = None

    def run(self, case: Case, timeout: float, min_run_time: float = MIN_RUN_TIME_S,
            counts: Counts | None = None) -> tuple[Measurement, Environment]:
        """Measure ``case``; a crash or an overrun becomes the measurement's status. The environment is the
        worker's, as it measured (the parent's, now, when the worker could not say)."""
        if self.proc is None or not self.proc.is_alive():
            self.close()
            self._start()
        start = time.monotonic()
        oom_before = oom_kills()
        env = None
        try:
            self.conn.send((case, min_run_time, counts))
            if self.conn.poll(timeout):
                measurement, env = self.conn.recv()
            else:
                measurement = Measurement(Status.TIMEOUT, f"no result within the {timeout:g} s time limit")
                self.close(ask=False)  # a hung worker is replaced
        except (EOFError, OSError):  # the worker died without a word
            self.proc.join(10)
            measurement = _death(self.proc.exitcode, oom_kills() > oom_before)
            self.close(ask=False)
        if not self.reuse:
            self.close()
        return replace(measurement, wall_s=time.monotonic() - start), env or case_environment(case)


def _death(code: int | None, oom_killed: bool) -> Measurement:
    """What a worker's exit code says of the case it was measuring."""
    if code == -9:
        if oom_killed:
            return Measurement(Status.OOM, "the case's process was killed by the kernel's out-of-memory killer")
        return Measurement(Status.KILLED, "the case's process was killed (SIGKILL) by another process")
    return Measurement(Status.ERROR, f"the case's process died (exit code {code})")


def run_isolated(case: Case, timeout: float, min_run_time: float = MIN_RUN_TIME_S,
                 counts: Counts | None = None) -> tuple[Measurement, Environment]:
    """Measure ``case`` in a fresh process of its own (see :class:`Worker`)."""
    with Worker(case.device, reuse=False) as worker:
        return worker.run(case, timeout, min_run_time, counts)


def worth_retrying(stored: dict, device: str, timeout: float) -> bool:
    """Whether a stored failure may now succeed: a time-out given a longer limit than the one it ran
    out of, or a case skipped or killed for memory that its prediction says now fits. Errors and other
    kills are this code's answer (a code change measures everything again); ``--retry-failed`` forces."""
    if stored["status"] == Status.TIMEOUT:
        return stored["wall_s"] is None or timeout > 1.05 * stored["wall_s"]
    if stored["status"] in (Status.SKIPPED, Status.OOM) and stored["predicted_mem_bytes"]:
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
    check_timeout(timeout)
    run_id = uuid.uuid4().hex[:12]
    cases = list(cases)
    keys = {c: case_environment(c).key for c in cases}
    done = {key: store.stored_cases(db, key) for key in set(keys.values())}
    peaks: dict[tuple[str, str, int], float] = {}  # measured once per device, dtype and threads
    counted: dict[tuple, Counts] = {}  # parameters and MACs, counted once per shape (shape_key)
    lock = threading.Lock()  # devices run in threads of their own: one caller of on_case at a time

    def device_cases(device: str, mine: list[tuple[int, Case]]) -> list[tuple[int, Record]]:
        records = []
        with store.Writer(db) as writer, Worker(device) as worker:
            for i, case in mine:
                stored = done[keys[case]].get(case.key)
                again = stored is not None and stored["status"] != Status.OK and (
                    retry_failed or worth_retrying(stored, case.device, timeout))
                if not force and stored is not None and not again:
                    if on_case:
                        with lock:
                            on_case(case, None)
                    continue
                measurement, env = worker.run(case, timeout, min_run_time, counted.get(shape_key(case)))
                if interrupt.caught():  # its worker was ended by the interrupt: not a result
                    break
                # after the case, not before: the fork server, which may be starting still, is up by then and
                # takes no core from this timing
                peak_key = (case.device, case.dtype, case.threads)
                if peak_key not in peaks:
                    peaks[peak_key] = matmul_peak_gflops(case.device, torch_dtype(case.dtype), case.threads)
                counts = Counts.of(measurement, case.batch)
                if counts is not None:
                    counted.setdefault(shape_key(case), counts)
                record = Record(case, replace(measurement, device_peak_gflops=peaks[peak_key]), env, run_id)
                writer.write(record, replace=force or again)
                records.append((i, record))
                if on_case:
                    with lock:
                        on_case(case, record)
        return records

    by_device: dict[str, list[tuple[int, Case]]] = {}
    for i, case in enumerate(cases):
        by_device.setdefault(case.device, []).append((i, case))
    gpus = [d for d in by_device if torch.device(d).type == "cuda"]
    parallel = gpus if len(gpus) > 1 else []  # every GPU at once; the rest after, one device at a time, alone
    done_records: list[tuple[int, Record]] = []
    if parallel:
        with ThreadPoolExecutor(len(parallel), thread_name_prefix="attnbench-gpu") as pool:
            try:
                for records in pool.map(lambda d: device_cases(d, by_device[d]), parallel):
                    done_records += records
            except KeyboardInterrupt:
                interrupt.end_children()  # the workers, so that the threads waiting on them end now
                raise
    for device in [d for d in by_device if d not in parallel]:
        done_records += device_cases(device, by_device[device])
    return [record for _, record in sorted(done_records, key=lambda pair: pair[0])]
