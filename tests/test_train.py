"""Training: a tiny CIFAR-format archive, exact resume, 2-process torchrun, and every bad input."""

import io
import math
import pickle
import re
import shutil
import subprocess
import sys
import tarfile
import warnings
import zipfile

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import stopped_midway

from attnbench import store
from attnbench.cli import main
from attnbench.data import CIFAR, PATTERNS, DataError, augment, load_cifar, load_dataset, make_longrange
from attnbench.evaluation import evaluate_at_sides
from attnbench.record import Environment, Epoch, Evaluation
from attnbench.train import TrainConfig, TrainError, build, load_checkpoint, loss_text, train

TINY = ["--model", "resnet26", "--width", "0.25", "--stem", "cifar", "--batch", "16", "--lr", "0.05"]


def write_cifar(root, n_train=64, n_test=32, archive=False, name="cifar100"):
    """A CIFAR python archive in the real format (CIFAR-100's two files, or CIFAR-10's five training
    batches and a test batch), with random images."""
    rng = np.random.default_rng(0)
    layout = CIFAR[name]
    folder = root / layout.folder
    folder.mkdir(parents=True)
    files = [(f, n_train // len(layout.train)) for f in layout.train] + [(f, n_test) for f in layout.test]
    for file, n in files:
        batch = {"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                 layout.label_key: rng.integers(0, layout.classes, n).tolist()}
        (folder / file).write_bytes(pickle.dumps(batch))
    if archive:
        with tarfile.open(root / f"{layout.folder}.tar.gz", "w:gz") as tar:
            tar.add(folder, arcname=layout.folder)
        shutil.rmtree(folder)
    return root


@pytest.mark.parametrize("name, n_train", [("cifar100", 64), ("cifar10", 60)])
def test_cifar_folder_and_archive_read_the_same(tmp_path, name, n_train):
    a = load_cifar(write_cifar(tmp_path / "a", n_train=n_train, name=name), name)
    b = load_cifar(write_cifar(tmp_path / "b", n_train=n_train, archive=True, name=name), name)
    assert a[0][0].shape == (n_train, 3, 32, 32) and a[1][0].shape == (32, 3, 32, 32)
    assert all(np.array_equal(x, y) for x, y in zip(a[0] + a[1], b[0] + b[1]))
    train, test = load_dataset(name, tmp_path / "a")
    assert train.num_classes == CIFAR[name].classes and train.augment and len(test.labels) == 32


def test_digits_and_longrange():
    train, test = load_dataset("digits")
    assert train.images.shape[1:] == (3, 32, 32) and len(train.labels) + len(test.labels) == 1797
    assert set(test.labels.tolist()) == set(range(10))
    x1, y1 = make_longrange(50, seed=3)
    x2, y2 = make_longrange(50, seed=3)
    assert torch.equal(x1, x2) and torch.equal(y1, y2) and 0 < y1.float().mean() < 1
    # the label is whether the two framed patterns are the same: recover it from the pixels
    frame = torch.ones(5, 5)
    frame[1:4, 1:4] = 0
    for img, label in zip(x1, y1):
        windows = torch.nn.functional.unfold(img[None, 1:2], 5)[0].T.reshape(-1, 5, 5)  # every 5x5 window
        corners = [divmod(i, 28) for i in range(len(windows)) if torch.equal(windows[i], frame)]
        inner = [img[0, r + 1 : r + 4, c + 1 : c + 4] for r, c in corners]
        assert len(inner) == 2 and all(any(torch.equal(p, q) for q in PATTERNS) for p in inner)
        assert abs(corners[0][1] - corners[1][1]) >= 19  # far apart
        assert torch.equal(inner[0], inner[1]) == bool(label)


def test_augment_is_a_crop_or_flip_of_the_image():
    x = torch.arange(4 * 3 * 32 * 32, dtype=torch.float32).view(4, 3, 32, 32) + 1
    y = augment(x, torch.Generator().manual_seed(0))
    assert y.shape == x.shape
    assert torch.equal(augment(x, torch.Generator().manual_seed(0)), y)
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
    for img, out in zip(padded, y):
        crops = [img[:, r : r + 32, c : c + 32] for r in range(9) for c in range(9)]
        assert any(torch.equal(out, crop) or torch.equal(out, crop.flip(-1)) for crop in crops)


def test_tiny_cifar_trains_one_epoch_and_evaluates(tmp_path, capsys):
    data = write_cifar(tmp_path / "data")
    db, out = tmp_path / "r.sqlite", tmp_path / "run"
    assert main(["train", *TINY, "--dataset", "cifar100", "--data-dir", str(data), "--epochs", "1",
                 "--out", str(out), "--db", str(db)]) == 0
    rows = store.load_training(db)
    assert len(rows) == 1 and rows.model[0] == "resnet26" and rows.params[0] > 0 and rows.macs_per_image[0] > 0
    assert 0 <= rows.top1_pct[0] <= rows.top5_pct[0] <= 100
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(out / "checkpoint.pt"), "--dataset", "cifar100",
                 "--data-dir", str(data), "--db", str(db)]) == 0
    assert f"top-1 {rows.top1_pct[0]:.2f} %" in capsys.readouterr().out


@pytest.mark.slow
def test_resume_continues_exactly(tmp_path):
    cfg = TrainConfig(model="conv_probe", dataset="digits", epochs=3, batch=64, lr=0.05, width=0.5, seed=1)
    straight = train(cfg, out=tmp_path / "a", progress=False)
    train(cfg, out=tmp_path / "b", stop_after_epoch=1, progress=False)  # an interrupted run
    resumed = train(cfg, out=tmp_path / "b", resume=tmp_path / "b" / "checkpoint.pt", progress=False)
    assert [h["train_loss"] for h in straight] == [h["train_loss"] for h in resumed]
    a, b = (load_checkpoint(tmp_path / d / "checkpoint.pt")["model"] for d in "ab")
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_two_process_torchrun_matches_one_process(tmp_path):
    common = ["train", "--model", "conv_probe", "--width", "0.5", "--dataset", "digits", "--batch", "64",
              "--lr", "0.05", "--epochs", "2", "--seed", "3"]
    single = tmp_path / "single"
    assert main([*common, "--out", str(single), "--db", str(tmp_path / "single.sqlite")]) == 0
    torchrun = shutil.which("torchrun")
    prefix = [torchrun] if torchrun else [sys.executable, "-m", "torch.distributed.run"]
    proc = subprocess.run([*prefix, "--standalone", "--nproc_per_node", "2", "-m", "attnbench", *common,
                           "--out", str(tmp_path / "ddp"), "--db", str(tmp_path / "ddp.sqlite")],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    one, two = store.load_training(tmp_path / "single.sqlite"), store.load_training(tmp_path / "ddp.sqlite")
    assert len(two) == 2 and (two.world_size == 2).all()  # only rank 0 stored, once per epoch
    # same data, order and averaged gradients; batch-norm statistics are per rank (32 images, not 64),
    # so the runs drift apart a little
    np.testing.assert_allclose(two.train_loss, one.train_loss, rtol=0.05)
    assert abs(two.top1_pct.iloc[-1] - one.top1_pct.iloc[-1]) < 5
    a = load_checkpoint(single / "checkpoint.pt")["model"]
    b = load_checkpoint(tmp_path / "ddp" / "checkpoint.pt")["model"]
    weights = [k for k in a if "running_" not in k and a[k].is_floating_point()]
    wa, wb = (torch.cat([w[k].flatten() for k in weights]) for w in (a, b))
    drift = ((wa - wb).norm() / wa.norm()).item()
    assert drift < 0.05, f"relative difference of all weights {drift:.3g}"


@pytest.mark.parametrize(
    "args, message",
    [
        (["--model", "gsa_resnet27", "--dataset", "digits"], "Unknown model 'gsa_resnet27'"),
        (["--model", "resnet26", "--dataset", "imagenet"], "invalid choice: 'imagenet'"),
        (["--model", "resnet26", "--dataset", "cifar100"], "cifar100 needs --data-dir"),
        (["--model", "resnet26", "--dataset", "cifar100", "--data-dir", "/nonexistent"], "does not exist"),
        (["--model", "resnet26", "--dataset", "digits", "--epochs", "0"], "epochs 0 must be at least 1"),
        # hyperparameters a run cannot train with are refused before anything runs
        (["--model", "conv_probe", "--dataset", "digits", "--momentum", "nan"],
         "Invalid momentum=nan: momentum must be at least 0 and below 1."),
        (["--model", "conv_probe", "--dataset", "digits", "--momentum", "-5"],
         "Invalid momentum=-5.0: momentum must be at least 0 and below 1."),
        (["--model", "conv_probe", "--dataset", "digits", "--momentum", "1"],  # its updates grow without end
         "Invalid momentum=1.0: momentum must be at least 0 and below 1."),
        (["--model", "conv_probe", "--dataset", "digits", "--weight-decay", "inf"],
         "Invalid weight_decay=inf: weight_decay must be at least 0 and at most 3.4e38 (float32's largest)."),
        (["--model", "conv_probe", "--dataset", "digits", "--weight-decay", "-1"],
         "Invalid weight_decay=-1.0: weight_decay must be at least 0 and at most 3.4e38 (float32's largest)."),
        # beyond float32: the optimizer could not convert it for the weights (a traceback after the data loaded)
        (["--model", "conv_probe", "--dataset", "digits", "--weight-decay", "1e39"],
         "Invalid weight_decay=1e+39: weight_decay must be at least 0 and at most 3.4e38 (float32's largest)."),
        (["--model", "conv_probe", "--dataset", "digits", "--lr", "1e39"],
         "Invalid lr=1e+39: lr must be above 0 and at most 3.4e38 (float32's largest)."),
        (["--model", "conv_probe", "--dataset", "digits", "--seed", "-1"],
         "Invalid seed=-1: seed must be a whole number of at least 0, below 2^32."),
        # whole numbers beyond what a store holds, or a seed beyond what the generators take
        (["--model", "conv_probe", "--dataset", "digits", "--seed", str(2**32)],
         "Invalid seed=4294967296: seed must be a whole number of at least 0, below 2^32."),
        (["--model", "conv_probe", "--dataset", "digits", "--steps", str(2**63)],
         "steps 9223372036854775808 is more than a store holds (at most 2^63 - 1)"),
        (["--model", "conv_probe", "--dataset", "digits", "--device", "foo"], "--device: unknown device 'foo'"),
        pytest.param(["--model", "conv_probe", "--dataset", "digits", "--device", "cuda"],
                     "--device: device 'cuda' requested but this machine has no CUDA device",
                     marks=pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")),
        (["--model", "conv_probe", "--dataset", "digits", "--out", "x" * 300], "File name too long"),
    ],
)
def test_bad_training_input(capsys, tmp_path, args, message, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--out", str(tmp_path / "run"), *args, "--db", str(tmp_path / "r.sqlite")]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


def test_a_truncated_cifar_archive_is_one_line(tmp_path, capsys):
    archive = write_cifar(tmp_path, archive=True) / "cifar-100-python.tar.gz"
    archive.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    with pytest.raises(DataError, match="cifar-100-python.tar.gz is not a readable .tar.gz archive .EOFError"):
        load_cifar(tmp_path)
    assert main(["train", "--model", "conv_probe", "--dataset", "cifar100", "--data-dir", str(tmp_path),
                 "--out", str(tmp_path / "run"), "--db", str(tmp_path / "r.sqlite")]) == 2
    err = capsys.readouterr().err
    assert "is not a readable .tar.gz archive (EOFError" in err and err.count("\n") == 1


def test_a_run_whose_loss_goes_non_finite_is_stored_as_diverged_never_as_finished(tmp_path, capsys):
    db, out = tmp_path / "r.sqlite", tmp_path / "run"
    args = ["train", "--model", "conv_probe", "--dataset", "digits", "--batch", "64", "--epochs", "3", "--lr", "1000",
            "--db", str(db), "--out", str(out)]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert f"seed 0: diverged in epoch 1 (the training loss is not finite), stored in {db} as such" in err
    (last,) = store.load_training(db).itertuples()  # it stopped in its first epoch
    assert last.stopped == "diverged" and 0 <= last.step < 1437 // 64 and pd.isna(last.train_loss)
    assert pd.isna(last.top1_pct) and pd.isna(last.test_loss)  # weights that are not finite are not evaluated
    assert not (out / "checkpoint.pt").exists()
    assert store.finished_runs(store.load_training(db)).empty  # not in the accuracy table, not --skip-finished
    assert main([*args, "--skip-finished"]) == 1  # trained again, not skipped


@pytest.mark.parametrize("value, decimals, text", [
    (0.69314, 3, "0.693"), (0.0021, 3, "0.002"), (9999.5, 4, "9999.5000"), (-2.5, 4, "-2.5000"),
    (1.2345e4, 3, "1.23e+04"), (3.3e38, 4, "3.3e+38"), (float("nan"), 3, "nan"), (float("inf"), 4, "inf"),
])
def test_a_loss_prints_in_a_few_characters_at_any_magnitude(value, decimals, text):
    """A diverging rate's losses reach 10^38 before they stop being finite; fixed decimals would print 39 digits
    into the stored account of --lr auto and every progress line."""
    assert loss_text(value, decimals) == text
    assert len(loss_text(value * 1e10, decimals)) <= 10


def test_momentum_zero_trains_with_plain_sgd(tmp_path):
    cfg = TrainConfig(model="conv_probe", dataset="digits", batch=256, width=0.5, momentum=0.0, steps=2)
    assert train(cfg, out=tmp_path, progress=False)[-1]["stopped"] == "budget"
    assert load_checkpoint(tmp_path / "checkpoint.pt")["optimizer"]["param_groups"][0]["nesterov"] is False


@pytest.mark.slow
def test_a_full_disk_while_writing_a_checkpoint_is_one_line(tmp_path):
    """Files over 256 KiB cannot be written (the kernel's file size limit, as a full disk): the checkpoint of a
    network of 0.3 MiB fails, in one line, and leaves no partial file."""
    import resource
    import signal

    def limited():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write fails (EFBIG) instead of killing the process
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 18, 1 << 18))

    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "attnbench", "train", "--model", "conv_probe", "--dataset", "digits",
                           "--width", "4", "--steps", "1", "--batch", "256", "--out", str(out),
                           "--db", str(tmp_path / "r.sqlite")], capture_output=True, text=True, preexec_fn=limited)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.strip() == (f"attnbench train: Cannot write the checkpoint {out / 'checkpoint.pt'}: the write "
                                   "failed (is the disk full?); the previous one, if any, is kept.")
    assert not out.exists() and not (tmp_path / "r.sqlite").exists()  # no partial file: nothing of the run's at all


def test_wrong_files_in_data_dir(tmp_path, capsys):
    (tmp_path / "cifar-100-python").mkdir()
    (tmp_path / "cifar-100-python" / "train").write_bytes(b"not a pickle")
    (tmp_path / "cifar-100-python" / "test").write_bytes(b"not a pickle")
    with pytest.raises(DataError, match="is not a CIFAR python-pickle batch"):
        load_cifar(tmp_path)


@pytest.mark.parametrize("archive", [False, True], ids=["folder", "tar.gz"])
def test_a_cifar_batch_whose_pickle_would_run_code_is_refused_and_runs_nothing(tmp_path, capsys, archive):
    marker = tmp_path / "ran"
    data = write_cifar(tmp_path / "data")
    hostile = {"data": np.zeros((1, 3072), np.uint8), "fine_labels": [0], "x": _RunsCode(marker)}
    (data / "cifar-100-python" / "test").write_bytes(pickle.dumps(hostile))
    if archive:
        with tarfile.open(data / "cifar-100-python.tar.gz", "w:gz") as tar:
            tar.add(data / "cifar-100-python", arcname="cifar-100-python")
        shutil.rmtree(data / "cifar-100-python")
    with pytest.raises(DataError, match=r"its pickle names io\.open, which a CIFAR batch never holds"):
        load_cifar(data)
    assert main(["train", *TINY, "--dataset", "cifar100", "--data-dir", str(data), "--epochs", "1",
                 "--out", str(tmp_path / "run"), "--db", str(tmp_path / "r.sqlite")]) == 2
    err = capsys.readouterr().err
    assert "io.open" in err and err.count("\n") == 1
    assert not marker.exists()


def test_cifar_batches_load_as_every_python_and_numpy_pickles_them(tmp_path):
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (4, 3072), dtype=np.uint8)
    labels = [3, 1, 4, 1]
    batch = {"data": images, "labels": labels, "batch_label": "testing batch 1 of 1",
             "filenames": [b"a.png", b"b.png", b"c.png", b"d.png"]}
    protocol2 = pickle.dumps(batch, protocol=2)
    pickles = {
        "protocol 5": pickle.dumps(batch, protocol=5),  # numpy's _frombuffer
        "protocol 2": protocol2,  # numpy's _reconstruct, bytes through _codecs.encode
        "numpy 1's names": protocol2.replace(b"numpy._core.", b"numpy.core."),  # as the archives hold them
        "numpy numbers": pickle.dumps({**batch, "labels": list(np.array(labels, dtype=np.int64))}, protocol=2),
    }
    for how, raw in pickles.items():
        folder = tmp_path / how / "cifar-10-batches-py"
        folder.mkdir(parents=True)
        for name in CIFAR["cifar10"].train + CIFAR["cifar10"].test:
            (folder / name).write_bytes(raw)
        (xtr, ytr), (xte, yte) = load_cifar(tmp_path / how, "cifar10")
        assert np.array_equal(xte.reshape(4, -1), images) and yte.tolist() == labels, how
        assert len(xtr) == 20 and ytr.tolist() == labels * 5, how


@pytest.mark.parametrize("content, named", [
    (np.array([b"x" * 3072], dtype=object), "an array of object"),
    (np.zeros(2, dtype=[("a", "u1")]), "an array of |V1"),  # records: void, then fields
    (np.ma.masked_array(np.zeros((1, 3072), np.uint8)), "numpy.ma.core._mareconstruct"),
], ids=["objects", "records", "subclass"])
def test_a_cifar_batch_of_anything_but_numbers_is_refused(tmp_path, content, named):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    for name in ("train", "test"):
        (folder / name).write_bytes(pickle.dumps({"data": content, "fine_labels": [0]}, protocol=2))
    with pytest.raises(DataError, match=f"its pickle names {re.escape(named)}"):
        load_cifar(tmp_path)


def assert_refused_by_eval_and_resume(path, message, tmp_path, capsys) -> None:
    """`eval --checkpoint` and `train --resume` both refuse ``path`` with one line saying ``message``; train
    before it makes its --out folder or its store."""
    for args in (["eval", "--checkpoint", str(path), "--dataset", "digits", "--db", str(tmp_path / "r.sqlite")],
                 ["train", "--model", "conv_probe", "--dataset", "digits", "--resume", str(path),
                  "--out", str(tmp_path / "y"), "--db", str(tmp_path / "t.sqlite")]):
        assert main(args) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1
    assert not (tmp_path / "y").exists() and not (tmp_path / "t.sqlite").exists()
    assert not (tmp_path / "r.sqlite").exists() or store.load_evaluations(tmp_path / "r.sqlite").empty


def test_checkpoints_of_another_model_or_corrupted(tmp_path, capsys):
    cfg = TrainConfig(model="conv_probe", dataset="digits", epochs=1, batch=64, width=0.5)
    train(cfg, out=tmp_path / "run", progress=False)
    ckpt = tmp_path / "run" / "checkpoint.pt"
    code = main(["train", "--model", "gsa_probe", "--dataset", "digits", "--epochs", "1", "--batch", "64",
                 "--width", "0.5", "--resume", str(ckpt), "--out", str(tmp_path / "x"),
                 "--db", str(tmp_path / "r.sqlite")])
    err = capsys.readouterr().err
    assert code == 2 and "is for model='conv_probe', not 'gsa_probe'" in err
    assert main(["eval", "--checkpoint", str(ckpt), "--dataset", "longrange", "--db", str(tmp_path / "r.sqlite")]) == 2
    assert "was trained on digits, not longrange" in capsys.readouterr().err
    bad = tmp_path / "bad.pt"
    bad.write_bytes(ckpt.read_bytes()[:1000])
    assert_refused_by_eval_and_resume(bad, "not a readable checkpoint", tmp_path, capsys)
    assert_refused_by_eval_and_resume(tmp_path / "run", f"{tmp_path / 'run'} is a folder, not a checkpoint (name the "
                                      "checkpoint.pt inside it).", tmp_path, capsys)
    assert_refused_by_eval_and_resume("", "No checkpoint named (an empty path).", tmp_path, capsys)
    # one weight's bytes damaged in place (a bad copy or disk): the archive still reads, torch.load takes it and
    # eval stored a nan loss and a top-1 as ok; its record's checksum tells
    raw = bytearray(ckpt.read_bytes())
    with zipfile.ZipFile(ckpt) as archive:
        record = max(archive.infolist(), key=lambda info: info.file_size)
        at = raw.find(archive.read(record)) + record.file_size // 2
    raw[at : at + 8] = b"\xff\xff\xff\x7f\xff\xff\xff\x7f"
    (tmp_path / "damaged.pt").write_bytes(bytes(raw))
    assert_refused_by_eval_and_resume(tmp_path / "damaged.pt", f"its record {record.filename} does not match the "
                                      "checksum it was saved with", tmp_path, capsys)
    # the same damage written with a fresh checksum (saved again): its weights are not finite, which no training
    # leaves in a checkpoint (a diverged run keeps its last finite one)
    saved = load_checkpoint(ckpt)
    saved["model"]["stem.0.weight"][0, 0, 0, 0] = float("nan")
    torch.save(saved, tmp_path / "nan.pt")
    assert main(["eval", "--checkpoint", str(tmp_path / "nan.pt"), "--dataset", "digits", "--db",
                 str(tmp_path / "nan.sqlite")]) == 2
    err = capsys.readouterr().err
    assert "weight stem.0.weight is not finite (nan or inf)" in err and err.count("\n") == 1
    with pytest.raises(TrainError, match="weight stem.0.weight is not finite"):
        train(cfg, out=tmp_path / "resumed", resume=tmp_path / "nan.pt", progress=False)
    assert evaluate_at_sides(ckpt, "digits")[0].top1_pct >= 0


def test_checkpoints_of_a_newer_attnbench_bad_values_or_other_weights(tmp_path, capsys):
    """A checkpoint whose configuration has a key this attnbench does not know (a newer one wrote it) loads,
    with a warning; an unknown network, values it cannot use or weights of another shape are one line each."""
    train(TrainConfig(model="conv_probe", dataset="digits", batch=256, width=0.5, steps=1), out=tmp_path / "run",
          progress=False)
    good = load_checkpoint(tmp_path / "run" / "checkpoint.pt")

    def variant(name, change):
        ckpt = {**good, "config": dict(good["config"])}
        change(ckpt)
        torch.save(ckpt, tmp_path / name)
        return tmp_path / name

    newer = variant("newer.pt", lambda c: c["config"].update(ema_decay=0.999))
    with pytest.warns(UserWarning, match="written with options this attnbench does not know, ignored: ema_decay"):
        assert evaluate_at_sides(newer, "digits")[0].top1_pct == evaluate_at_sides(
            tmp_path / "run" / "checkpoint.pt", "digits")[0].top1_pct
    for name, change, message in [
        ("model.pt", lambda c: c["config"].update(model="zzz_probe"), "Unknown model 'zzz_probe'"),
        ("width.pt", lambda c: c["config"].update(width=-3.0), "Invalid width=-3.0: width must be a finite number"),
        ("batch.pt", lambda c: c["config"].update(batch="x"), "Invalid batch='x': batch must be a whole number"),
        ("kernel.pt", lambda c: c["config"].update(options="kernel_size=2"), "network cannot be built"),
    ]:
        assert main(["eval", "--checkpoint", str(variant(name, change)), "--dataset", "digits"]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
    # its data set edited: a 10-class network is not evaluated on longrange's 2 classes
    other = variant("dataset.pt", lambda c: c["config"].update(dataset="longrange"))
    assert main(["eval", "--checkpoint", str(other), "--dataset", "longrange", "--db", str(tmp_path / "e.sqlite")]) == 2
    err = capsys.readouterr().err
    assert f"Checkpoint {other}'s network has 10 classes; longrange has 2." in err and err.count("\n") == 1, err
    weights = variant("weights.pt", lambda c: c.update(model={k: v[:1] if v.dim() else v
                                                               for k, v in good["model"].items()}))
    assert main(["eval", "--checkpoint", str(weights), "--dataset", "digits"]) == 2
    assert "does not fit network conv_probe" in capsys.readouterr().err
    assert main(["train", "--model", "conv_probe", "--dataset", "digits", "--batch", "256", "--width", "0.5",
                 "--steps", "1", "--resume", str(weights), "--out", str(tmp_path / "y"),
                 "--db", str(tmp_path / "r.sqlite")]) == 2
    err = capsys.readouterr().err
    assert f"Checkpoint {weights} does not fit network conv_probe" in err and err.count("\n") == 1
    renamed = variant("renamed.pt", lambda c: c.update(model={k.replace("fc.", "head."): v
                                                               for k, v in good["model"].items()}))
    assert main(["eval", "--checkpoint", str(renamed), "--dataset", "digits"]) == 2
    assert ("conv_probe: 2 weights of the network missing (fc.bias, ...); 2 weights it does not have (head.bias, "
            "...).") in capsys.readouterr().err
    for name, weights, said in (  # only missing, only extra (one not even a name): an IndexError, a TypeError
            ("lacking.pt", {k: v for k, v in good["model"].items() if k != "fc.bias"},
             "conv_probe: 1 weight of the network missing (fc.bias, ...)."),
            ("extra.pt", {**good["model"], 7: torch.zeros(1)}, "conv_probe: 1 weight it does not have (7, ...).")):
        assert main(["eval", "--checkpoint", str(variant(name, lambda c, w=weights: c.update(model=w))),
                     "--dataset", "digits"]) == 2
        err = capsys.readouterr().err
        assert said in err and err.count("\n") == 1, err
    # on the command line the newer checkpoint's warning is one line, not Python's file, line and source
    done = subprocess.run([sys.executable, "-m", "attnbench", "eval", "--checkpoint", str(newer), "--dataset",
                           "digits", "--db", str(tmp_path / "w.sqlite")], capture_output=True, text=True)
    assert done.returncode == 0 and done.stderr == (f"attnbench: warning: {newer} was written with options this "
                                                    "attnbench does not know, ignored: ema_decay\n")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_eval_on_a_device_this_machine_lacks_is_one_line(tmp_path, capsys):
    for device, message in (("cuda", "device 'cuda' requested but this machine has no CUDA device"),
                            ("foo", "unknown device 'foo'")):
        assert main(["eval", "--checkpoint", str(tmp_path / "any.pt"), "--dataset", "digits", "--device", device]) == 2
        err = capsys.readouterr().err
        assert f"attnbench eval: --device: {message}" in err and err.count("\n") == 1


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))  # creates the marker file when unpickled


def test_a_checkpoint_that_would_run_code_is_refused(tmp_path, capsys):
    marker = tmp_path / "ran"
    evil = tmp_path / "evil.pt"
    torch.save({"format": "attnbench-checkpoint-1", "payload": _RunsCode(marker)}, evil)
    assert_refused_by_eval_and_resume(evil, "holds more than weights", tmp_path, capsys)
    assert not marker.exists()


def _oversized_checkpoint(path, compressed: bool, nbytes: int) -> None:
    """A checkpoint of conv_probe whose stem weight is ``nbytes`` of zeros: as torch.save writes it, or with its
    records compressed (a file of a few hundred KB that inflates to ``nbytes``)."""
    from dataclasses import asdict

    cfg = TrainConfig(model="conv_probe", dataset="digits", width=0.5)
    weights = build(cfg, 10).state_dict()
    weights["stem.0.weight"] = torch.empty(nbytes // 4)  # pages never touched: no memory here
    optimizer = {"state": {}, "param_groups": [{"params": list(range(len(weights)))}]}
    plain = path.with_suffix(".plain") if compressed else path
    torch.save({"format": "attnbench-checkpoint-1", "config": asdict(cfg), "epoch": 1, "run_id": "r",
                "num_classes": 10, "model": weights, "optimizer": optimizer, "history": [{}]}, plain)
    if compressed:
        with zipfile.ZipFile(plain) as src, zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as dst:
            for info in src.infolist():
                with src.open(info) as record, dst.open(info.filename, "w", force_zip64=True) as out:
                    shutil.copyfileobj(record, out, 1 << 22)
        plain.unlink()


@pytest.mark.parametrize("compressed, nbytes", [(True, 256 << 20), (False, 64 << 20)],
                         ids=["compressed-256MiB-in-a-small-file", "stored-64MiB"])
@pytest.mark.slow
def test_a_checkpoint_with_a_huge_tensor_is_refused_before_it_is_in_memory(tmp_path, compressed, nbytes):
    path = tmp_path / "huge.pt"
    _oversized_checkpoint(path, compressed, nbytes)
    assert path.stat().st_size < (1 << 20) if compressed else path.stat().st_size > nbytes
    code = ("import sys\n"
            "from attnbench.evaluation import evaluate_at_sides\n"
            "from attnbench.train import TrainConfig, TrainError, build, datasets, train\n"
            "cfg = TrainConfig('conv_probe', 'digits', width=0.5)\n"
            "import tqdm, attnbench.measure.macs, attnbench.measure.params  # what either path loads anyway, before\n"
            "build(cfg, 10), datasets(cfg)  # the peak is reset\n"
            "def kib(field):\n"
            "    return int(open('/proc/self/status').read().split(field + ':')[1].split()[0])\n"
            "open('/proc/self/clear_refs', 'w').write('5')  # the peak from here\n"
            "base = kib('VmRSS')\n"
            "for load in (lambda: evaluate_at_sides(sys.argv[1], 'digits'),\n"
            "             lambda: train(cfg, out=sys.argv[2], resume=sys.argv[1], progress=False)):\n"
            "    try:\n"
            "        load()\n"
            "    except TrainError as e:\n"
            "        print(str(e))\n"
            "print(kib('VmHWM') - base)\n")
    proc = subprocess.run([sys.executable, "-c", code, str(path), str(tmp_path / "run")], capture_output=True,
                          text=True)
    *refusals, grown_kib = proc.stdout.splitlines()
    message = "compressed or larger than the file" if compressed else "its weight stem.0.weight is shape"
    assert len(refusals) == 2 and all(message in line for line in refusals), proc.stdout + proc.stderr
    assert int(grown_kib) << 10 < nbytes // 8, f"{int(grown_kib) >> 10} MiB more in memory before the refusals"


def test_a_checkpoint_missing_keys_is_named(tmp_path):
    path = tmp_path / "partial.pt"
    torch.save({"format": "attnbench-checkpoint-1", "config": {}}, path)
    with pytest.raises(TrainError, match="incomplete attnbench checkpoint .no epoch, run_id"):
        load_checkpoint(path)


@pytest.mark.parametrize("args, message", [
    (["--dataset", "cifar10"], "cifar10 needs --data-dir"),
    (["--dataset", "digits", "--batch", "100000"], "larger than the 1442 training images"),
    (["--dataset", "digits", "--seeds", "0,1", "--batch", "100000"], "larger than the 1442 training images")])
def test_a_train_refused_as_its_data_loads_leaves_nothing_it_made(tmp_path, capsys, args, message):
    """The store and the --out folders are made after every check that makes nothing, but a data set is checked
    as it loads: a refusal there left an empty store and empty folders behind."""
    (tmp_path / "mine").mkdir()
    assert main(["train", "--model", "conv_probe", *args, "--steps", "1", "--out", str(tmp_path / "o" / "deep"),
                 "--db", str(tmp_path / "s.sqlite")]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]
    db = tmp_path / "mine" / "s.sqlite"  # a store already there stays, empty or not
    store.check_writable(db)
    assert main(["train", "--model", "conv_probe", *args, "--steps", "1", "--out", str(tmp_path / "mine" / "o"),
                 "--db", str(db)]) == 2
    assert sorted(p.name for p in (tmp_path / "mine").iterdir()) == ["s.sqlite"]


def test_outputs_made_are_removed_where_they_hold_nothing_however_the_block_ends(tmp_path):
    """What a train makes (the store, its new folder, the --out folders and what is made empty inside them, as a
    learning-rate search's lr-0.1) goes again while it holds nothing, on failure and on success alike (every seed
    trained already); what held something or was there before stays."""
    (tmp_path / "mine").mkdir()
    db, outs = tmp_path / "new" / "s.sqlite", [tmp_path / "o" / "s0", tmp_path / "mine" / "s1"]
    with pytest.raises(KeyboardInterrupt), store.outputs_made(str(db), map(str, outs)):
        assert db.exists() and all(out.is_dir() for out in outs)
        (outs[0] / "lr-search" / "lr-0.1").mkdir(parents=True)
        raise KeyboardInterrupt
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"] and not any((tmp_path / "mine").iterdir())
    with store.outputs_made(str(db), map(str, outs)):  # nothing to do: the same, without an error
        pass
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]
    with store.outputs_made(str(db), map(str, outs)):
        (outs[0] / "lr-search" / "lr-0.1").mkdir(parents=True)
        (outs[0] / "lr-search" / "lr-0.1" / "checkpoint.pt").write_bytes(b"x")
        (outs[0] / "lr-search" / "lr-0.2").mkdir()
        store.write_evaluation(db, Evaluation(run_id="r", model="gsa_probe", dataset="digits", image_size=32,
                                              side=32, top1_pct=90.0, num_classes=10))
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == [
        "mine", "new", "new/s.sqlite", "o", "o/s0", "o/s0/lr-search", "o/s0/lr-search/lr-0.1",
        "o/s0/lr-search/lr-0.1/checkpoint.pt"]


def test_out_and_report_out_empty_are_refused(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    store.write_evaluation("r.sqlite", Evaluation(run_id="r", model="gsa_probe", dataset="digits", image_size=32,
                                                  side=32, top1_pct=90.0, num_classes=10))
    assert main(["report", "--db", "r.sqlite", "--out", ""]) == 2
    err = capsys.readouterr().err
    assert "--out is empty: name a folder." in err and err.count("\n") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.sqlite"]


def _edited_checkpoint(tmp_path, name, edit):
    """A real checkpoint (conv_probe, one step) with ``edit`` applied to its fields, saved as ``name``."""
    run = tmp_path / "run"
    if not (run / "checkpoint.pt").exists():
        train(TrainConfig("conv_probe", "digits", width=0.5, batch=64, steps=1), out=run, progress=False)
    ckpt = torch.load(run / "checkpoint.pt", weights_only=True)
    edit(ckpt)
    torch.save(ckpt, tmp_path / name)
    return tmp_path / name


def test_a_checkpoint_naming_code_of_a_module_calls_nothing_unless_the_user_names_it(
        tmp_path, monkeypatch, capsys):
    """The network a checkpoint names is data: `module:callable` there imported and called whatever a crafted file
    named (`os:abort` ended the process)."""
    (tmp_path / "planted.py").write_text(f"open({str(tmp_path / 'ran')!r}, 'w').close()\ndef build(**kw): pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    path = _edited_checkpoint(tmp_path, "crafted.pt", lambda c: c["config"].update(model="planted:build"))
    db = tmp_path / "r.sqlite"
    for args in (["eval", "--checkpoint", str(path), "--dataset", "digits", "--db", str(db)],
                 ["train", "--model", "conv_probe", "--dataset", "digits", "--resume", str(path), "--db", str(db),
                  "--out", str(tmp_path / "again")]):
        assert main(args) == 2
        err = capsys.readouterr().err
        assert "holds the network planted:build, built by code of yours" in err and err.count("\n") == 1
    assert not (tmp_path / "ran").exists() and "planted" not in sys.modules and not db.exists()
    assert load_checkpoint(path, model="planted:build")["config"]["model"] == "planted:build"  # named: let through
    assert not (tmp_path / "ran").exists()  # (loading imports nothing; building it would)
    # a module imported already is no exception: os:abort would end the process
    aborts = _edited_checkpoint(tmp_path, "aborts.pt", lambda c: c["config"].update(model="os:abort"))
    assert main(["eval", "--checkpoint", str(aborts), "--dataset", "digits", "--db", str(db)]) == 2
    err = capsys.readouterr().err
    assert "holds the network os:abort, built by code of yours: a checkpoint calls no code it names; give --model " \
           "os:abort to build it." in err and err.count("\n") == 1


@pytest.mark.parametrize("field, value, said", [
    ("epoch", "x", "its epoch is str 'x', not int"), ("run_id", 123, "its run_id is int '123', not str"),
    ("num_classes", True, "its num_classes is bool 'True', not int"), ("history", {}, "its history is dict"),
    ("network", 7, "its network is int '7', not str"),
    ("epoch", 0, "its epoch is 0, where its history holds 1 epochs"),
    ("epoch", 10**30, "its epoch is 1000000000000000000000000000000, where its history holds 1 epochs"),
    ("history", [1], "its history holds entries that are not epochs"),
    ("num_classes", 0, "its num_classes is 0"), ("num_classes", 10**12, "its num_classes is 1000000000000"),
    ("run_id", "", "its run_id '' is not one line"), ("run_id", "a\nb", "its run_id 'a\\nb' is not one line"),
    ("run_id", "x" * 301, "its run_id 'xxxxxxxxxx")])
def test_a_checkpoint_field_of_the_wrong_kind_is_refused_before_anything_is_stored(tmp_path, capsys, field, value,
                                                                                  said):
    """An epoch 'x' was stored as it was, and every later report refused the store as damaged; an epoch beyond
    SQLite's integers, a run_id of many lines and a head of 10**12 classes were tracebacks."""
    def edit(ckpt):
        if field == "network":
            ckpt["config"]["model"] = value
        else:
            ckpt[field] = value

    path = _edited_checkpoint(tmp_path, f"{field}.pt", edit)
    db = tmp_path / "r.sqlite"
    assert main(["eval", "--checkpoint", str(path), "--dataset", "digits", "--db", str(db)]) == 2
    err = capsys.readouterr().err
    assert f"{path} is not a valid attnbench checkpoint: {said}" in err and err.count("\n") == 1
    assert not db.exists()


def _first(ckpt, suffix):
    """The name of the checkpoint's first weight whose name ends with ``suffix``."""
    return next(name for name in ckpt["model"] if name.endswith(suffix))


def _set_weight(suffix, make):
    def edit(ckpt):
        name = _first(ckpt, suffix)
        ckpt["model"][name] = make(ckpt["model"][name])
    return edit


def _set_momentum(make):
    def edit(ckpt):
        state = ckpt["optimizer"]["state"][0]
        state["momentum_buffer"] = make(state["momentum_buffer"])
    return edit


@pytest.mark.parametrize("edit, said", [
    (lambda c: c["history"][-1].update(step=2**70), "its history holds entries that are not epochs"),
    (lambda c: c["history"][-1].update(train_loss="abc"), "its history holds entries that are not epochs"),
    (lambda c: c["run"].update(epochs=2**70), "what it says of its run is not plain values"),
    (lambda c: c["run"].update(lr_source="validation\nevil"), "what it says of its run is not plain values"),
    (lambda c: c["config"].update(image_size=10**9), "Invalid image_size=1000000000: image_size must be 32 for digits"),
    (_set_weight("weight", lambda t: torch.empty(t.shape, device="meta")), "is a strided float32 on meta tensor"),
    (_set_weight("weight", lambda t: t.to_sparse()), "is a sparse_coo float32 on cpu tensor"),
    (_set_weight("weight", lambda t: t.long()), "is a strided int64 on cpu tensor, where training writes dense "
                                                "float32 ones in memory: a damaged file; refused."),
    (_set_weight("running_var", lambda t: -t), "running_var is negative somewhere: a damaged file; refused."),
    (_set_momentum(lambda t: torch.empty(t.shape, device="meta")), "optimizer state 0 is a strided float32 on meta"),
    (_set_momentum(lambda t: "x"), "does not fit network conv_probe: its optimizer state 0 is str"),
    (lambda c: [g.update(momentum=5.0) for g in c["optimizer"]["param_groups"]],
     "optimizer has momentum 5.0, where its config trains with 0.9: a damaged file; refused."),
    (lambda c: c["optimizer"]["param_groups"][0]["params"].reverse(), "holds the optimizer state of another network"),
    (lambda c: c["optimizer"]["param_groups"][0]["params"].__setitem__(0, "0"),
     "holds the optimizer state of another network"),
    (_set_momentum(lambda t: torch.full_like(t, math.nan)), "optimizer state is not finite (nan or inf)"),
    (lambda c: c["run"].update(epochs=-5), "its run's epochs is -5, not a count"),
], ids=["step", "loss", "epochs", "lr_source", "image_size", "meta", "sparse", "int64", "variance", "meta state",
        "text state", "momentum", "ids swapped", "id text", "nan state", "epochs -5"])
def test_a_damaged_checkpoint_is_refused_in_one_line_by_eval_and_by_resume(tmp_path, capsys, edit, said):
    """Fields a store cannot hold (a step of 2**70: OverflowError, and an empty store left), text of many lines,
    tensors that are not dense float32 ones in memory (meta and sparse: tracebacks; int64: evaluated as they
    were, a negative variance: a loss of nan stored as ok), and an optimizer edited to momentum 5 (trained on
    to a loss of 1e10, stored as finished; its parameters numbered otherwise: a traceback, or a momentum dropped):
    each is one line and exit 2, and leaves nothing."""
    path = _edited_checkpoint(tmp_path, "damaged.pt", edit)
    db = tmp_path / "new" / "r.sqlite"
    optimizer = "optimizer" in said  # read by a resumed train only
    commands = [["train", "--model", "conv_probe", "--dataset", "digits", "--width", "0.5", "--batch", "64",
                 "--steps", "1", "--resume", str(path), "--out", str(tmp_path / "again"), "--db", str(db)]]
    if not optimizer:
        commands.append(["eval", "--checkpoint", str(path), "--dataset", "digits", "--res", "32,24", "--db", str(db)])
    for args in commands:
        assert main(args) == 2, args
        err = capsys.readouterr().err
        assert said in err and err.count("\n") == 1, err
        assert sorted(p.name for p in tmp_path.iterdir()) == ["damaged.pt", "run"]


def test_train_skip_finished_says_where_no_checkpoint_is_to_evaluate_and_exits_1(tmp_path, capsys):
    db = tmp_path / "r.sqlite"
    common = ["train", "--model", "conv_probe", "--dataset", "digits", "--width", "0.5", "--batch", "64", "--steps",
              "2", "--db", str(db)]
    assert main([*common, "--out", str(tmp_path / "first")]) == 0
    assert main([*common, "--out", str(tmp_path / "second"), "--skip-finished", "--eval-res", "24"]) == 1
    captured = capsys.readouterr()
    assert (f"seed 0: no checkpoint of its finished run in {tmp_path / 'second'} to evaluate at --eval-res's sides; "
            "name the --out it was trained into") in captured.err and captured.err.count("\n") == 1
    assert store.load_evaluations(db).empty and not (tmp_path / "second").exists()
    assert main([*common, "--out", str(tmp_path / "first"), "--skip-finished", "--eval-res", "24"]) == 0
    assert store.load_evaluations(db).side.tolist() == [24]
    capsys.readouterr()
    # every side asked for is stored: nothing to evaluate, so no checkpoint is needed (a rebuilt workspace's table)
    assert main([*common, "--out", str(tmp_path / "third"), "--skip-finished", "--eval-res", "24"]) == 0
    assert f"seed 0: evaluated at every --eval-res side in {db} already" in capsys.readouterr().out
    assert not (tmp_path / "third").exists()
    # another run trained into the finished run's folder since (another store): its checkpoint is not the one to
    # evaluate for the finished run's missing side
    other = [a if a != str(db) else str(tmp_path / "other.sqlite") for a in common]
    assert main([*other, "--out", str(tmp_path / "first"), "--overwrite", "--seed", "1"]) == 0
    capsys.readouterr()
    assert main([*common, "--out", str(tmp_path / "first"), "--skip-finished", "--eval-res", "24,40"]) == 1
    assert "seed 0: no checkpoint of its finished run in" in capsys.readouterr().err
    assert store.load_evaluations(db).side.tolist() == [24]


def test_train_eval_res_evaluates_a_run_once_it_has_ended_not_midway(tmp_path, capsys):
    db = tmp_path / "r.sqlite"
    common = ["train", "--model", "conv_probe", "--dataset", "digits", "--width", "0.5", "--batch", "64", "--epochs",
              "2", "--db", str(db), "--out", str(tmp_path / "run"), "--eval-res", "24"]
    assert main([*common, "--stop-after-epoch", "1"]) == 0
    assert "seed 0: stopped before its end; --eval-res evaluates it once --continue ends it" in capsys.readouterr().out
    assert store.load_evaluations(db).empty  # a network midway is not the run's result
    ckpt = tmp_path / "run" / "checkpoint.pt"  # eval of it is the user's to ask: it says what it evaluates
    with pytest.warns(UserWarning, match=f"{re.escape(str(ckpt))} is its run's checkpoint at epoch 1, before the run"):
        assert main(["eval", "--checkpoint", str(ckpt), "--dataset", "digits", "--res", "24"]) == 0
    assert main([*common, "--continue"]) == 0
    evaluated = store.load_evaluations(db)
    assert evaluated.side.tolist() == [24] and evaluated.epoch.tolist() == [2]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the finished run's checkpoint: no warning
        assert main(["eval", "--checkpoint", str(ckpt), "--dataset", "digits", "--res", "24"]) == 0


def test_names_too_long_for_the_system_are_one_line(tmp_path, capsys):
    long = "a" * 300
    for args, said in ((["train", "--model", "conv_probe", "--dataset", "digits", "--width", "0.5", "--steps", "1",
                         "--out", str(tmp_path / "o"), "--db", str(tmp_path / f"{long}.sqlite")], "File name too long"),
                       (["eval", "--checkpoint", str(tmp_path / f"{long}.pt"), "--dataset", "digits"],
                        "File name too long")):
        assert main(args) == 2
        err = capsys.readouterr().err
        assert said in err and err.count("\n") == 1, err
    assert not any(tmp_path.iterdir())


def test_eval_whose_data_set_cannot_load_leaves_no_store(tmp_path, capsys):
    path = _edited_checkpoint(tmp_path, "cifar.pt", lambda c: c["config"].update(dataset="cifar10"))
    db = tmp_path / "new" / "s.sqlite"
    assert main(["eval", "--checkpoint", str(path), "--dataset", "cifar10", "--data-dir", str(tmp_path / "none"),
                 "--db", str(db)]) == 2
    err = capsys.readouterr().err
    assert "none does not exist; it should hold cifar-10-batches-py" in err and err.count("\n") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cifar.pt", "run"]


# How each probe's blocks are built: (the branch is the block's output less its input (an inserted block,
# residual of its own), the branch ends with the variant's own normalisation). Every variant must be listed.
PROBE_BLOCKS = {"conv": (False, True), "axial": (False, True), "gsa": (False, False), "local": (False, False),
                "window": (False, False), "neighborhood": (False, False), "mhsa": (False, False),
                "nonlocal": (True, True), "efficient": (True, False)}


@pytest.mark.parametrize("variant", sorted(PROBE_BLOCKS))
def test_every_probe_wraps_its_blocks_alike(variant):
    """relu(x + norm(branch(x))) for every variant: one normalisation (the variant's own, else a batch norm) and
    one ReLU per block, and an inserted block's own residual is not doubled."""
    from conftest import VARIANTS, randomize_norms

    import attnbench

    assert set(PROBE_BLOCKS) == set(VARIANTS), "a variant without a declared probe structure"
    inserted, own_norm = PROBE_BLOCKS[variant]
    net = randomize_norms(attnbench.build_model(f"{variant}_probe", num_classes=2, image_size=12)).eval()
    x = torch.randn(2, 3, 12, 12)
    with torch.no_grad():
        h = net.stem(x)
        for block, norm in zip(net.blocks, net.norms):
            assert isinstance(norm, torch.nn.Identity if own_norm else torch.nn.BatchNorm2d)
            out = block(h)
            branch = out - h if inserted else out
            h = torch.relu(h + (branch if own_norm else torch.nn.functional.batch_norm(
                branch, norm.running_mean, norm.running_var, norm.weight, norm.bias, eps=norm.eps)))
        features = net.features(x)
    torch.testing.assert_close(features, h)
    assert (features >= 0).all() and (features == 0).any()  # each block ends with a ReLU
    if variant == "nonlocal":  # the paper's zero-initialised output scale: the blocks start as the identity
        fresh = attnbench.build_model("nonlocal_probe", num_classes=2, image_size=12).eval()
        with torch.no_grad():
            assert torch.equal(fresh.features(x), fresh.stem(x))


@pytest.mark.parametrize("losses, patience, expected", [
    ([1.0, 0.8, 0.7], 1, False),
    ([1.0, 0.8, 0.795], 1, True),  # 0.6 % better than the best before: not an improvement
    ([1.0, 0.8, 0.81, 0.795], 2, True),  # two epochs, neither 1 % better than 0.8
    ([1.0, 0.8, 0.81, 0.79], 2, False),  # 1.25 % better than 0.8 within the window
    ([1.0], 1, False),
])
def test_the_plateau_rule(losses, patience, expected):
    from attnbench.train import plateaued

    assert plateaued(losses, patience) == expected


def test_a_step_budget_a_plateau_and_train_accuracy_are_stored(tmp_path):
    db = tmp_path / "r.sqlite"
    budget = TrainConfig(model="conv_probe", dataset="digits", batch=64, lr=0.05, width=0.5, steps=30)
    history = train(budget, out=tmp_path / "a", db=db, progress=False)
    per_epoch = 1437 // 64  # 22 steps an epoch: the budget ends inside the second
    assert [h["step"] for h in history] == [per_epoch, 30] and history[-1]["stopped"] == "budget"
    assert all(0 <= h["train_top1_pct"] <= 100 for h in history)
    flat = TrainConfig(model="conv_probe", dataset="digits", batch=256, lr=1e-9, width=0.5, epochs=6, plateau=1)
    history = train(flat, out=tmp_path / "b", db=db, progress=False)  # a learning rate that learns nothing
    assert len(history) == 2 and history[-1]["stopped"] == "plateau"
    rows = store.load_training(db)
    assert rows.step.tolist() == [per_epoch, 30, 5, 10] and rows.stopped.tolist()[-1] == "plateau"
    assert rows.train_top1_pct.notna().all() and rows.top5_pct.notna().all()  # digits: ten classes


def test_top5_is_left_out_with_five_classes_or_fewer(tmp_path):
    cfg = TrainConfig(model="conv_probe", dataset="longrange", batch=128, lr=0.05, width=0.5, steps=3)
    history = train(cfg, out=tmp_path, progress=False)
    assert history[-1]["top5_pct"] is None and history[-1]["stopped"] == "budget"


def test_seeds_give_mean_spread_and_significance(tmp_path, capsys):
    from attnbench.tables import accuracy_table

    db = tmp_path / "r.sqlite"
    common = ["train", "--dataset", "digits", "--model", "conv_probe", "--batch", "128", "--steps", "4",
              "--db", str(db)]
    assert main([*common, "--width", "0.5", "--seeds", "0,1,2", "--out", str(tmp_path / "half")]) == 0
    assert main([*common, "--width", "0.75", "--seeds", "0,1", "--out", str(tmp_path / "three-quarters")]) == 0
    training = store.load_training(db)
    assert training.run_id.nunique() == 5 and sorted(training.seed.unique()) == [0, 1, 2]
    table = accuracy_table(store.load_results(db), training).set_index("width")
    last = training.sort_values("epoch").groupby("run_id").tail(1)
    for model, n in ((0.5, 3), (0.75, 2)):
        runs = last[last.width == model].top1_pct
        assert table.loc[model, "seeds"] == n
        assert table.loc[model, "top-1 (%)"] == round(runs.mean(), 2)
        assert table.loc[model, "top-1 std"] == round(float(np.std(runs, ddof=1)), 2)
    best, other = table["top-1 (%)"].idxmax(), table["top-1 (%)"].idxmin()
    gap = table.loc[best, "top-1 (%)"] - table.loc[other, "top-1 (%)"]
    spread = table.loc[best, "top-1 std"] + table.loc[other, "top-1 std"]
    assert table.loc[best, "vs best"] == "best"
    assert table.loc[other, "vs best"] == ("within spread" if gap <= spread else f"-{gap:.2f}")
    assert main([*common, "--seeds", "0,1", "--seed", "3"]) == 2
    assert "give --seed or --seeds, not both" in capsys.readouterr().err


def test_skip_finished_resumes_a_table_trained_in_sittings(tmp_path, capsys):
    db = tmp_path / "r.sqlite"
    common = ["train", "--dataset", "digits", "--model", "conv_probe", "--width", "0.5", "--batch", "128",
              "--steps", "2", "--db", str(db), "--out", str(tmp_path / "runs"), "--skip-finished"]
    assert main([*common, "--seeds", "0"]) == 0
    assert main([*common, "--seeds", "0,1"]) == 0
    out = capsys.readouterr().out
    assert "seed 0: already trained to its end" in out and "seed 1: checkpoint" in out
    assert store.load_training(db).groupby("seed").run_id.nunique().tolist() == [1, 1]


@pytest.mark.slow
def test_continue_takes_up_a_sitting_stopped_midway_where_it_stopped_the_rate_search_included(tmp_path, capsys):
    """A table trained in sittings: the first stopped after an epoch of each seed (as a killed one keeps its
    last epoch); --continue reads the finished rate search back instead of training it again and continues
    each seed's run (which then ends as one trained straight through: test_resume_continues_exactly)."""
    common = ["train", "--dataset", "digits", "--model", "conv_probe", "--width", "0.5", "--batch", "256",
              "--steps", "10", "--lr", "auto", "--seeds", "0,1"]
    sittings = tmp_path / "sittings"
    db = str(tmp_path / "r.sqlite")
    assert main([*common, "--out", str(sittings), "--db", db, "--stop-after-epoch", "1"]) == 0
    search = sorted((sittings / "s0" / "lr-search").glob("lr-*/checkpoint.pt"))
    searched = {path: path.read_bytes() for path in search}
    first = store.load_training(db)
    assert len(search) >= 4 and first.groupby("seed").epoch.max().tolist() == [1, 1]
    capsys.readouterr()
    assert main([*common, "--out", str(sittings), "--db", db]) == 2  # refused without --continue, as before
    assert "holds the checkpoint of an earlier run" in capsys.readouterr().err
    assert main([*common, "--out", str(sittings), "--db", db, "--continue"]) == 0
    assert all(path.read_bytes() == kept for path, kept in searched.items())  # read back, not trained again
    rows = store.load_training(db)
    assert rows.groupby("seed").run_id.unique().map(list).tolist() == \
        first.groupby("seed").run_id.unique().map(list).tolist()  # continued, not replaced
    assert sorted(rows.epoch.tolist()) == [1, 1, 2, 2]
    assert [load_checkpoint(sittings / seed / "checkpoint.pt")["epoch"] for seed in ("s0", "s1")] == [2, 2]
    assert main([*common, "--out", str(sittings), "--db", db, "--continue", "--overwrite"]) == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_a_budget_in_epochs_is_part_of_the_setup_and_runs_stored_before_stop_reasons_count_as_finished(
        tmp_path, capsys):
    from attnbench.tables import accuracy_table

    db = tmp_path / "r.sqlite"
    common = ["train", "--dataset", "digits", "--model", "conv_probe", "--width", "0.5", "--batch", "512",
              "--db", str(db), "--skip-finished"]
    assert main([*common, "--epochs", "1", "--out", str(tmp_path / "one")]) == 0
    assert main([*common, "--epochs", "2", "--out", str(tmp_path / "two")]) == 0  # another setup: trained
    assert "already trained" not in capsys.readouterr().out
    rows = store.load_training(db)
    table = accuracy_table(store.load_results(db), rows)
    assert sorted(table.steps) == [2, 4] and list(table.seeds) == [1, 1]  # 2 steps an epoch, not merged
    # a run stored before runs said why they stopped: its last epoch is the last of its epochs
    one = rows[rows.epochs == 1].iloc[0]
    store.write_training(db, Epoch(
        run_id="legacy", epoch=1, epochs=1, model="conv_probe", dataset="digits", step=2, top1_pct=90.0,
        train_top1_pct=91.0, params=int(one.params), macs_per_image=int(one.macs_per_image), image_size=32,
        batch=512, lr=0.1, width=0.5, stem="cifar", dtype="fp32", device="cpu", world_size=1, seed=1,
        environment=Environment(device_name=one.device_name)))
    assert main([*common, "--epochs", "1", "--seeds", "0,1", "--out", str(tmp_path / "one")]) == 0
    assert "seed 1: already trained to its end" in capsys.readouterr().out
    assert list(accuracy_table(store.load_results(db), store.load_training(db)).seeds) == [2, 1]


def test_lr_auto_chooses_on_held_out_training_images_and_stores_how(tmp_path, capsys):
    import re

    from attnbench.tables import accuracy_table
    from attnbench.train import LR_CANDIDATES, choose_lr

    db, out = tmp_path / "r.sqlite", tmp_path / "run"
    common = ["train", "--dataset", "digits", "--model", "conv_probe", "--width", "0.5", "--batch", "128",
              "--steps", "8", "--lr", "auto", "--db", str(db), "--out", str(out), "--skip-finished"]
    assert main([*common, "--seeds", "0,1"]) == 0
    assert main([*common, "--seeds", "0,1,2"]) == 0  # a later sitting: seed 2 takes the rate from the store
    rows = store.load_training(db)
    assert sorted(set(rows.seed)) == [0, 1, 2] and rows.lr_source.nunique() == 1 and rows.lr.nunique() == 1
    assert [(out / f"s{seed}" / "lr-search").exists() for seed in (0, 1, 2)] == [True, False, False]
    source = rows.lr_source.iloc[-1]
    assert source.endswith("held-out training images of seed 0") and "each 4 steps" in source  # half of 8
    scores = {float(lr): (float(top1), float(loss))
              for lr, top1, loss in re.findall(r"([\d.]+) \(([\d.]+) %, loss ([\d.na]+)\)", source)}
    held = int(len(load_dataset("digits")[0].labels) * 0.1)  # a tenth of the training split
    assert set(scores) >= set(LR_CANDIDATES) and f"on {held} held-out training images" in source
    best = choose_lr(scores, held)
    assert best not in (max(scores), min(scores)) or best in (1.6, 0.0025)  # never an edge of the grid tried
    assert source.startswith(f"validation: {best:g} of") and set(rows.lr) == {best}
    assert "seed 0: learning rate validation" in capsys.readouterr().out
    assert accuracy_table(store.load_results(db), rows).lr.tolist() == [f"auto: {best:g}"]
    assert main([*common, "--seeds", "3", "--db", str(tmp_path / "new.sqlite")]) == 0  # a new store: tuned anew
    assert (out / "lr-search").exists()


@pytest.mark.parametrize("scores, n, expected", [
    ({0.2: (90.0, 0.30), 0.1: (80.0, 0.20)}, 1000, 0.2),  # 10 points apart: top-1 decides
    ({0.2: (54.5, 0.690), 0.1: (51.3, 0.680), 0.05: (50.0, 0.693)}, 1000, 0.1),  # within noise: the loss decides
    ({0.2: (54.5, 0.690), 0.1: (51.3, 0.680)}, 10000, 0.2),  # ten times the images: 3.2 points are significant
    ({0.4: (50.0, float("nan")), 0.2: (50.0, 0.69)}, 1000, 0.2),  # a diverged run has the worst loss
    ({0.2: (100.0, 0.01), 0.1: (100.0, 0.01)}, 1000, 0.1),  # a full tie: the smaller rate
])
def test_choose_lr_decides_by_top1_where_it_separates_the_rates_else_by_loss(scores, n, expected):
    from attnbench.train import choose_lr, separated

    assert choose_lr(scores, n) == expected
    # the two-proportion rule against its formula: 55.8 % vs 51.3 % on 1000 images is z = 2.02
    p = (0.558 + 0.513) / 2
    z = (0.558 - 0.513) / math.sqrt(p * (1 - p) * 2 / 1000)
    assert separated(55.8, 51.3, 1000) == (z > 2.0) and not separated(55.8, 51.3, 900)


def test_lr_auto_extends_the_grid_past_an_edge_that_wins(tmp_path, monkeypatch):
    """Candidates are scored as trained; here a held-out loss that is lowest at 0.8 (top-1 tied): the grid climbs
    0.4, 0.8, 1.6 and settles on 0.8; one that is lowest below the grid climbs down to its limit."""
    import attnbench.train as tr

    trained, peak = [], {}

    def fake_train(cfg, *, out, data, progress, resume, overwrite):
        assert overwrite and resume is None  # the search's runs are scratch, replaced by the next search
        trained.append(cfg.lr)
        if cfg.lr == 0.2 and peak["lr"] == 0.05:  # the third search: its largest rate diverges
            return [{"top1_pct": None, "test_loss": None, "stopped": "diverged"}]
        if cfg.lr == 0.02 and peak["lr"] == 0.05:  # and its last step leaves the weights of 0.02 non-finite
            return [{"top1_pct": 8.3, "test_loss": float("nan"), "stopped": "budget"}]
        return [{"top1_pct": 90.0, "test_loss": abs(math.log(cfg.lr / peak["lr"]))}]

    monkeypatch.setattr(tr, "train", fake_train)
    cfg = TrainConfig(model="conv_probe", dataset="digits", batch=128, steps=8)
    for peak["lr"], chosen, tried in ((0.8, 0.8, [0.2, 0.1, 0.05, 0.02, 0.4, 0.8, 1.6]),
                                      (1e-4, 0.0025, [0.2, 0.1, 0.05, 0.02, 0.01, 0.005, 0.0025])):
        trained.clear()
        heard = []
        lr, source = tr.tune_lr(cfg, tmp_path, say=heard.append)
        assert lr == chosen and trained == tried
        # one line as each candidate ends, in the order trained, with its score
        assert heard == [f"learning rate {x:g} (candidate {i}, 4 steps): 90.0 % top-1, loss "
                         f"{abs(math.log(x / peak['lr'])):.3f} on the held-out images" for i, x in enumerate(tried, 1)]
        assert f"(grid extended by {', '.join(f'{x:g}' for x in tried[4:])});" in source  # in the order tried
    peak["lr"] = 0.05
    lr, source = tr.tune_lr(cfg, tmp_path, say=heard.append)
    assert lr == 0.05 and heard[-4] == "learning rate 0.2 (candidate 1, 4 steps): diverged"
    assert source.startswith("validation: 0.05 of 0.2 (diverged), 0.1 (90.0 %, loss 0.693), ")
    assert "0.02 (diverged)" in source and heard[-1] == "learning rate 0.02 (candidate 4, 4 steps): diverged"


def test_lr_auto_where_every_rate_diverges_trains_nothing_and_exits_1(tmp_path, capsys):
    """A weight decay of 10^4 diverges at every rate: the search goes down to its lower limit, then says so in
    one line and exits 1 with nothing trained or stored (it trained a full run at a rate that had diverged, and
    stored it as chosen by validation)."""
    db, out = tmp_path / "r.sqlite", tmp_path / "run"
    code = main(["train", "--model", "conv_probe", "--dataset", "digits", "--width", "0.5", "--steps", "30",
                 "--batch", "64", "--lr", "auto", "--weight-decay", "1e4", "--seeds", "0,1", "--db", str(db),
                 "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 1
    tried = [line for line in captured.out.splitlines() if "(candidate" in line]
    assert len(tried) == 7 and all(line.endswith("diverged") for line in tried)  # 0.2 down to 0.0025
    assert ("seed 0: every learning rate tried diverged, nothing trained (validation: none of 0.2 (diverged)"
            in captured.err) and captured.err.count("\n") == 1
    assert not db.exists() and not (out / "s0" / "checkpoint.pt").exists()  # the empty store it made is gone


def test_a_resumed_lr_auto_run_trains_on_at_the_rate_its_search_chose(tmp_path, capsys, monkeypatch):
    """--resume (or --continue) of a --lr auto run takes the rate and its account from the checkpoint: the search
    ran again first (about as long as the run); a run trained at a given rate is refused for --lr auto."""
    import attnbench.study as study

    db, out = tmp_path / "r.sqlite", tmp_path / "run"
    common = ["train", "--model", "conv_probe", "--dataset", "digits", "--width", "0.5", "--steps", "44",
              "--batch", "64", "--lr", "auto", "--db", str(db), "--out", str(out)]
    assert main([*common, "--stop-after-epoch", "1"]) == 0
    chosen = store.load_training(db).lr_source.iloc[0]
    monkeypatch.setattr(study, "tune_lr", lambda *a, **k: pytest.fail("searched again"))
    capsys.readouterr()
    assert main([*common, "--resume", str(out / "checkpoint.pt")]) == 0
    rows = store.load_training(db)
    assert rows.epoch.tolist() == [1, 2] and set(rows.lr_source) == {chosen}
    assert f"learning rate {chosen}" in capsys.readouterr().out
    assert main([*common, "--resume", str(out / "checkpoint.pt")]) == 0  # finished: nothing more, and it says so
    assert "was trained to its end (epoch 2): nothing more to train or store" in capsys.readouterr().out
    assert len(store.load_training(db)) == 2
    # finished, with sides to evaluate at: the sides not stored yet are evaluated, as for a seed skipped as finished
    assert main([*common, "--resume", str(out / "checkpoint.pt"), "--eval-res", "24"]) == 0
    assert "digits at 24 x 24 (trained at 32): test loss" in capsys.readouterr().out
    evaluated = store.load_evaluations(db)
    assert evaluated.side.tolist() == [24] and evaluated.run_id.tolist() == [store.load_training(db).run_id[0]]
    given = tmp_path / "given"
    assert main([*common[:-4], "--lr", "0.1", "--stop-after-epoch", "1", "--out", str(given), "--db", str(db)]) == 0
    assert main([*common[:-2], "--out", str(given), "--resume", str(given / "checkpoint.pt")]) == 2
    assert "was trained at a given learning rate (0.1)" in capsys.readouterr().err


def test_match_picks_the_width_with_the_reference_cost(tmp_path, capsys):
    import attnbench

    def params(model, width):
        return sum(p.numel() for p in attnbench.build_model(model, num_classes=10, width=width, stem="cifar",
                                                            image_size=32).parameters())

    db = tmp_path / "r.sqlite"
    assert main(["train", "--dataset", "digits", "--model", "gsa_probe", "--match", "params", "--batch", "128",
                 "--steps", "2", "--db", str(db), "--out", str(tmp_path / "run")]) == 0
    rows = store.load_training(db)
    width, target = rows.width.iloc[-1], params("conv_probe", 1.0)
    assert abs(params("gsa_probe", width) - target) <= 0.05 * target
    assert rows.params.iloc[-1] == params("gsa_probe", width) and width != 1.0
    assert rows.width_source.iloc[-1].startswith("matched to conv_probe at width 1 in params: ")
    # window and neighbourhood probes: one channel moves their parameters by about 7 % (heads, and bias tables,
    # change), so the closest width is 6-7 % off, inside the 10 % tolerance
    from attnbench.train import match_width

    for model in ("window_probe", "neighborhood_probe"):
        width, cost, target = match_width(model, "conv_probe", "params", num_classes=10)
        assert 0.05 < abs(cost - target) / target <= 0.1 and cost == params(model, width)
    code = main(["train", "--dataset", "digits", "--model", "local_probe", "--match", "params", "--steps", "2",
                 "--opt", "heads=8", "--out", str(tmp_path / "no")])  # 8 heads of even width: 16-channel steps
    err = capsys.readouterr().err
    assert code == 2 and "No width of local_probe matches conv_probe's params" in err and "closest is width 2" in err


PROBE_WIDTHS = "probe widths are multiples of 1/16 (one channel), at least 0.5 (8 channels); nearest:"


@pytest.mark.parametrize("args, message", [
    # the options at the network's channels (16 at width 1; 32 at width 2), not at 64: a traceback, or a nearest
    # valid width of 63 channels
    (["--model", "window_probe", "--opt", "heads=32"], "--opt for window_probe at width 1, whose window layers "
     "have 16 channels: Invalid dim=16: dim must be divisible by heads=32 (nearest valid: 32)."),
    (["--model", "window_probe", "--opt", "heads=3"], "--opt for window_probe at width 1, whose window layers "
     "have 16 channels: Invalid dim=16: dim must be divisible by heads=3 (nearest valid: 15)."),
    (["--model", "gsa_probe", "--width", "2", "--opt", "heads=3"], "--opt for gsa_probe at width 2, whose gsa "
     "layers have 32 channels: Invalid dim=32: dim must be divisible by heads=3 (nearest valid: 30)."),
    # widths that gave a clamped or truncated network, stored as the width asked for
    (["--model", "conv_probe", "--width", "0.001"], f"conv_probe at width 0.001 would have 0.016 channels: "
     f"{PROBE_WIDTHS} 0.5."),
    (["--model", "gsa_probe", "--width", "0.55"], f"gsa_probe at width 0.55 would have 8.8 channels: "
     f"{PROBE_WIDTHS} 0.5, 0.5625."),
    # with --match, --width is the reference's
    (["--model", "gsa_probe", "--match", "params", "--width", "0.55"], f"conv_probe at width 0.55 would have 8.8 "
     f"channels: {PROBE_WIDTHS} 0.5, 0.5625."),
    (["--model", "gsa_probe", "--match", "params", "--opt", "span=2"], "gsa_probe builds at none of the widths "
     "--match tries, 0.5 to 8: Invalid span=2: span must be a positive odd integer (or None)."),
])
def test_a_networks_width_and_options_are_refused_at_its_channels_before_anything_is_made(capsys, tmp_path, args,
                                                                                            message):
    code = main(["train", "--dataset", "digits", "--steps", "1", "--batch", "16", "--db", str(tmp_path / "r.sqlite"),
                 "--out", str(tmp_path / "runs" / "x"), *args])
    assert (code, capsys.readouterr().err) == (2, f"attnbench train: {message}\n")
    assert list(tmp_path.iterdir()) == []


def test_a_networks_options_are_accepted_at_channels_they_suit():
    """3 heads divide the 15 channels of a window probe at width 15/16, and --match tries only widths a probe
    takes, whole channels of at least 8."""
    from attnbench.models import get_model_spec
    from attnbench.study import Study, _config
    from attnbench.train import WIDTHS

    cfg, source = _config(Study(model="window_probe", dataset="digits", width=0.9375, opt=["heads=3"]), print)
    assert (cfg.width, cfg.options, source) == (0.9375, "heads=3", "given")
    assert {block.cfg.heads for block in build(cfg, 10).blocks} == {3}
    for width in WIDTHS:
        net = get_model_spec("conv_probe").build_on_meta(width=width, image_size=32)
        assert net.fc.weight.shape[1] == 16 * width


def test_probe_heads_are_the_most_of_eight_channels_or_more_that_the_variant_accepts():
    import attnbench

    def heads(model, width, **options):
        net = attnbench.build_model(model, num_classes=2, width=width, image_size=32, **options)
        return [block.cfg.heads for block in net.blocks]

    assert heads("local_probe", 1.0) == [2, 2] and heads("gsa_probe", 1.5) == [3, 3]  # 16 and 24 channels
    # 26 channels: 3 heads do not divide them and 2 leave local's head width odd (13), so 1; gsa takes 2
    assert heads("local_probe", 1.625) == [1, 1] and heads("gsa_probe", 1.625) == [2, 2]
    assert heads("local_probe", 1.625, heads=13) == [13, 13]  # heads given win
    # as `run --arch probe` builds them: with an implementation, which is not a config option
    from attnbench.models import model_spec_for
    from attnbench.registry import iter_specs, list_impls

    for spec in iter_specs(builtin=True):
        if "heads" in spec.options():
            net = model_spec_for(spec.name, "probe").build(num_classes=2, image_size=32,
                                                           impl=list_impls(spec.name)[0])
            assert [block.cfg.heads for block in net.blocks] == [2, 2], spec.name


@pytest.mark.slow
def test_variant_options_reach_the_network_are_stored_and_make_their_own_setup(tmp_path, capsys, monkeypatch):
    from attnbench.tables import accuracy_table

    monkeypatch.setattr("attnbench.data.LONGRANGE_SIZES", (300, 100))  # generated: a small draw is enough here
    db = tmp_path / "r.sqlite"
    common = ["train", "--dataset", "longrange", "--model", "nonlocal_probe", "--batch", "128", "--steps", "1",
              "--db", str(db), "--skip-finished"]
    assert main([*common, "--out", str(tmp_path / "zero")]) == 0
    assert main([*common, "--opt", "zero_init=false", "--out", str(tmp_path / "one")]) == 0
    assert main([*common, "--opt", "zero_init=false", "--out", str(tmp_path / "again")]) == 0
    assert "seed 0: already trained to its end" in capsys.readouterr().out  # the same setup, options included
    # the network each run's stored config builds: the output batch norm's scale starts at 0 by default, at 1
    # with the option
    scales = {}
    for name in ("zero", "one"):
        net = build(TrainConfig(**load_checkpoint(tmp_path / name / "checkpoint.pt")["config"]), 2)
        scales[name] = {float(v) for k, t in net.state_dict().items() if k.endswith("bn.weight") for v in t.unique()}
    assert scales == {"zero": {0.0}, "one": {1.0}}
    rows = store.load_training(db)
    assert sorted(rows.groupby("run_id").options.first()) == ["", "zero_init=False"]
    table = accuracy_table(store.load_results(db), rows)
    assert sorted(table.model) == ["nonlocal_probe", "nonlocal_probe (zero_init=False)"]
    assert main([*common, "--opt", "zero_init=maybe", "--out", str(tmp_path / "bad")]) == 2
    assert main([*common, "--opt", "span=3", "--out", str(tmp_path / "bad")]) == 2
    err = capsys.readouterr().err
    assert ("--opt for nonlocal_probe at width 1, whose nonlocal layers have 16 channels: Invalid zero_init='maybe': "
            "zero_init must be true or false") in err
    assert "no variant of this sweep has an option 'span'" in err


QUICK = ["train", "--dataset", "digits", "--model", "conv_probe", "--width", "0.5", "--batch", "128", "--steps", "2"]


def test_a_second_train_into_the_same_out_is_refused_unless_it_resumes_or_overwrites(tmp_path, capsys):
    out, db = tmp_path / "run", str(tmp_path / "r.sqlite")
    ckpt = out / "checkpoint.pt"
    assert main([*QUICK, "--out", str(out), "--db", db]) == 0
    first = ckpt.read_bytes()
    capsys.readouterr()
    assert main([*QUICK, "--steps", "1", "--out", str(out), "--db", db]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "holds the checkpoint of an earlier run" in err and "--overwrite" in err
    assert ckpt.read_bytes() == first and store.load_training(db).run_id.nunique() == 1
    # --seeds: every seed's folder is checked before any seed trains
    (tmp_path / "seeds" / "s1").mkdir(parents=True)
    shutil.copy(ckpt, tmp_path / "seeds" / "s1" / "checkpoint.pt")
    assert main([*QUICK, "--seeds", "0,1", "--out", str(tmp_path / "seeds"), "--db", db]) == 2
    assert "s1 holds the checkpoint of an earlier run" in capsys.readouterr().err
    assert not (tmp_path / "seeds" / "s0" / "checkpoint.pt").exists()
    # the run's own checkpoint continues; --overwrite replaces it
    assert main([*QUICK, "--steps", "4", "--out", str(out), "--db", db, "--resume", str(ckpt)]) == 2  # other budget
    assert main([*QUICK, "--out", str(out), "--db", db, "--overwrite"]) == 0
    assert load_checkpoint(ckpt)["run_id"] != torch.load(io.BytesIO(first), weights_only=True)["run_id"]
    assert store.load_training(db).run_id.nunique() == 2 and not list(out.glob(".*"))


@pytest.mark.slow
def test_two_trains_into_one_folder_at_once_the_second_is_refused_naming_the_first(tmp_path, capsys):
    out = tmp_path / "run"
    call = (f"module.train(module.TrainConfig('conv_probe', 'digits', width=0.5, batch=128, steps=2), "
            f"out={str(out)!r}, progress=False)")
    with stopped_midway("attnbench.train", "_save", call) as first:  # training, about to save its checkpoint
        assert main([*QUICK, "--out", str(out), "--db", str(tmp_path / "r.sqlite")]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"is in use by attnbench train (pid {first.pid} on " in err
    assert main([*QUICK, "--out", str(out), "--db", str(tmp_path / "r.sqlite")]) == 0  # the holder is gone


def test_progress_lines_are_due_every_n_steps_or_seconds_whichever_first():
    from attnbench.streams import Every

    now = [0.0]
    due = Every(steps=3, seconds=10.0, clock=lambda: now[0])
    ticks = []
    for step, t in enumerate([1, 2, 3, 4, 5, 16, 17, 18, 19, 40], 1):  # seconds at each step
        now[0] = t
        if due():
            ticks.append(step)
    # steps 3 (three steps), 6 (16 s: ten seconds since step 3), 9 (three steps), 10 (21 s since step 9)
    assert ticks == [3, 6, 9, 10]


@pytest.mark.parametrize("quiet", [False, True])
def test_train_says_where_it_is_within_an_epoch_unless_quiet(tmp_path, capsys, monkeypatch, quiet):
    import attnbench.streams

    monkeypatch.setattr(attnbench.streams, "EVERY_STEPS", 5)  # digits: 22 steps an epoch at batch 64
    args = ["train", "--model", "conv_probe", "--width", "0.5", "--dataset", "digits", "--batch", "64",
            "--steps", "12", "--out", str(tmp_path / "run"), "--db", str(tmp_path / "r.sqlite")]
    assert main(args + ["--quiet"] * quiet) == 0
    out = capsys.readouterr().out  # captured: not a terminal
    steps = [line for line in out.splitlines() if line.startswith("epoch 1/1, step ")]
    assert [line.split(",")[1].split()[1] for line in steps] == ([] if quiet else ["5/12", "10/12"])
    assert all(" img/s" in line and "loss " in line for line in steps)
    assert "epoch 1/1 (step 12/12): loss" in out  # the epoch's line either way
