"""The benchmark scripts' control flow, with a stand-in `attnbench` on PATH that records each call and exits as
told: what they run and how they end, not what attnbench measures (tested everywhere else)."""

import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def script(name, args, tmp_path, exits):
    """Run benchmarks/``name``; the stand-in exits with ``exits`` (a shell case on its arguments), else 0.
    Returns the exit code, stderr and the calls made (each call's arguments, joined)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    calls = tmp_path / "calls"
    fake = bin_dir / "attnbench"
    fake.write_text(f'#!/usr/bin/env bash\necho "$*" >> {calls}\ncase "$*" in {exits} esac\nexit 0\n')
    fake.chmod(0o755)
    done = subprocess.run(["bash", str(ROOT / "benchmarks" / name), *args], capture_output=True, text=True,
                          cwd=tmp_path, env={**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}, timeout=60)
    return done.returncode, done.stderr, calls.read_text().splitlines() if calls.exists() else []


def test_accuracy_goes_on_past_a_diverged_run_and_exits_1_at_its_end(tmp_path):
    code, _, calls = script("accuracy.sh", ["t.sqlite", "conv gsa"], tmp_path,
                            '*"--model conv_probe --dataset longrange"*) exit 1;; export*) echo "[]";;')
    trains = [c for c in calls if c.startswith("train")]
    setups = [" ".join(c.split()[1:5]) for c in trains]
    assert code == 1 and setups == ["--model conv_probe --dataset longrange", "--model gsa_probe --dataset longrange",
                                    "--model conv_probe --dataset digits", "--model gsa_probe --dataset digits"]
    assert all("--db t.sqlite" in c and "--skip-finished --continue" in c for c in trains)


def test_accuracy_stops_at_any_other_failure_and_needs_its_store(tmp_path):
    code, _, calls = script("accuracy.sh", ["t.sqlite", "conv gsa"], tmp_path, '*"--model gsa_probe"*) exit 2;;')
    assert code == 2 and len(calls) == 2
    (tmp_path / "bare").mkdir()
    code, err, calls = script("accuracy.sh", [], tmp_path / "bare", "")
    assert code == 2 and err.startswith("usage: bash benchmarks/accuracy.sh STORE") and calls == []
    code, err, calls = script("accuracy.sh", ["t.sqlite", "gsa,local"], tmp_path / "bare", "")
    assert code == 2 and err.startswith("variants are separated by spaces, not commas") and calls == []
    code, err, calls = script("accuracy.sh", ["t.sqlite", "conv gsa;local"], tmp_path / "bare", "")
    assert code == 2 and err.startswith("not a variant's name: 'gsa;local' (attnbench list names them)") and calls == []
    code, err, calls = script("accuracy.sh", ["t.sqlite", " "], tmp_path / "bare", "")  # a traceback at export
    assert code == 2 and err.startswith("no variant named: usage:") and calls == []


STORED = ('[{"model": "nonlocal_probe", "width": 2.0, "options": "zero_init=False,heads=2"},'
          ' {"model": "conv_probe", "width": 1.0, "options": ""},'
          ' {"model": "nonlocal_probe", "width": 2.0, "options": "zero_init=False,heads=2"}]')


def test_accuracy_then_times_every_trained_network_as_trained_going_on_past_a_failed_case(tmp_path):
    code, _, calls = script("accuracy.sh", ["t.sqlite", "conv"], tmp_path,
                            f"export*) echo '{STORED}';; *\"--model conv_probe --width\"*) exit 1;;")
    assert calls[2] == "export --db t.sqlite --table training --columns model,width,options --format json"
    assert calls[3:] == ["run --model conv_probe --width 1.0 --res 32 --batch 1 --db t.sqlite",
                         "run --model nonlocal_probe --width 2.0 --opt zero_init=False --opt heads=2 --res 32 --batch 1"
                         " --db t.sqlite"]
    assert code == 1  # the failed case: after the other network's
    (tmp_path / "stops").mkdir()
    code, _, calls = script("accuracy.sh", ["u.sqlite", "conv"], tmp_path / "stops",
                            f"export*) echo '{STORED}';; run*) exit 2;;")
    assert code == 2 and [c.split()[0] for c in calls] == ["train", "train", "export", "run"]


def test_reference_needs_a_store_named_and_runs_every_sweep_into_it(tmp_path):
    code, err, calls = script("reference.sh", [], tmp_path, "")
    assert code == 2 and "committed reports/reference.sqlite" in err and calls == []
    code, _, calls = script("reference.sh", ["cpu.sqlite"], tmp_path, "")
    assert code == 0 and len(calls) == 4 and all(c.startswith("run ") and c.endswith("--db cpu.sqlite") for c in calls)
