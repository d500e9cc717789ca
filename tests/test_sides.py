"""Test-time resolution: every variant at a side it was not built for, the tables interpolated as documented,
every data set made at another side, and `eval --res` / `train --eval-res` storing one row per side."""

import math
import sqlite3
from dataclasses import asdict

import numpy as np
import pytest
import torch
from conftest import VARIANTS, randomize_norms
from naive import NAIVE

import attnbench
from attnbench import store
from attnbench.cli import main
from attnbench.data import DataError, load_at_side, load_dataset, make_longrange
from attnbench.evaluation import evaluate_at_sides, network_at, resize_bias, resize_offsets
from attnbench.report import load
from attnbench.train import TrainConfig, build, train

# What a layer built for one side does on a larger one (its docstring says why): the same function (nothing is
# sized to the map), GSA's reach (the offsets its tables hold; farther keys contribute nothing), or a refusal.
LARGER = {"conv": "same", "nonlocal": "same", "efficient": "same", "local": "same", "neighborhood": "same",
          "window": "same", "gsa": "reach", "axial": "refuses", "mhsa": "refuses"}
# The variants whose probes have tables sized to the training map (or a window sized to the image) to interpolate.
INTERPOLATED = {"gsa", "axial", "mhsa", "window"}


def layer(variant: str, size: int) -> torch.nn.Module:
    torch.manual_seed(0)
    return randomize_norms(attnbench.build_variant(variant, 16, size=size)).double().eval()


@pytest.mark.parametrize("variant", sorted(LARGER))
def test_every_variant_at_a_smaller_and_a_larger_side_than_built_for(variant):
    assert set(LARGER) == set(VARIANTS), "a variant without a documented behaviour at other sides"
    m = layer(variant, 8)
    smaller, larger = (torch.randn(1, 16, s, s, dtype=torch.float64) for s in (5, 10))
    with torch.no_grad():  # a smaller side: the offsets it has (central rows of whole-axis tables), as the naive loops
        torch.testing.assert_close(m(smaller), NAIVE[variant](m, smaller))
        if LARGER[variant] == "refuses":
            with pytest.raises(ValueError, match="input side 10 exceeds size=8"):
                m(larger)
            return
        torch.testing.assert_close(m(larger), NAIVE[variant](m, larger))  # gsa: keys beyond r contribute nothing
        other = layer(variant, 10)
        if LARGER[variant] == "same":  # nothing sized to the map: the same weights, the same function
            other.load_state_dict(m.state_dict())
            torch.testing.assert_close(other(larger), m(larger))
        else:  # gsa's reach is a span of 2 size - 1: a layer of that span with the same tables
            spanned = attnbench.build_variant("gsa", 16, size=10, span=15).double().eval()
            spanned.load_state_dict(m.state_dict())
            torch.testing.assert_close(spanned(larger), m(larger))


def test_gsa_positional_layer_ignores_keys_out_of_its_tables_reach():
    m = attnbench.build_variant("gsa", 16, size=8, content=False).double().eval()
    randomize_norms(m)
    x = torch.randn(1, 16, 10, 10, dtype=torch.float64)
    far = x.clone()
    far[:, :, 9, 9] += 5.0  # 9 rows and columns from pixel (0, 0): beyond offset 7 on both axes
    with torch.no_grad():
        a, b = m(x), m(far)
    assert torch.equal(a[..., 0, 0], b[..., 0, 0]) and not torch.allclose(a[..., 9, 9], b[..., 9, 9])


def linear_rows(table: np.ndarray, rows: int) -> np.ndarray:
    """Linear interpolation over the rows with half-pixel centres, clamped at the ends: numpy's interp."""
    src = np.clip((np.arange(rows) + 0.5) * len(table) / rows - 0.5, 0, len(table) - 1)
    return np.stack([np.interp(src, np.arange(len(table)), column) for column in table.T], axis=1)


def cubic_weights(t: float, a: float = -0.75) -> list[float]:
    """Keys' cubic convolution weights of the four neighbours at -1, 0, 1, 2 for a point t past the second."""
    def w(d):
        d = abs(d)
        return (a + 2) * d**3 - (a + 3) * d**2 + 1 if d <= 1 else a * d**3 - 5 * a * d**2 + 8 * a * d - 4 * a
    return [w(1 + t), w(t), w(1 - t), w(2 - t)]


def bicubic(image: np.ndarray, side: int) -> np.ndarray:
    """Bicubic resampling written out (half-pixel centres, neighbours clamped at the border)."""
    n = image.shape[0]
    out = np.zeros((side, side))
    for i in range(side):
        for j in range(side):
            sy, sx = (i + 0.5) * n / side - 0.5, (j + 0.5) * n / side - 0.5
            y0, x0 = math.floor(sy), math.floor(sx)
            wy, wx = cubic_weights(sy - y0), cubic_weights(sx - x0)
            out[i, j] = sum(wy[a] * wx[b] * image[min(max(y0 - 1 + a, 0), n - 1), min(max(x0 - 1 + b, 0), n - 1)]
                            for a in range(4) for b in range(4))
    return out


@pytest.mark.parametrize("rows, entries", [(63, 95), (63, 47), (5, 5)])
def test_offset_tables_resize_linearly_over_the_offsets(rows, entries):
    table = torch.randn(rows, 4, dtype=torch.float64)
    got = resize_offsets(table, entries)
    np.testing.assert_allclose(got.numpy(), linear_rows(table.numpy(), entries), atol=1e-12)
    torch.testing.assert_close(got[entries // 2], table[rows // 2])  # offset 0 stays offset 0


@pytest.mark.parametrize("entries", [21, 9])
def test_bias_tables_resize_bicubically(entries):
    table = torch.randn(2, 13, 13, dtype=torch.float64)
    got = resize_bias(table, entries)
    for head in range(2):
        np.testing.assert_allclose(got[head].numpy(), bicubic(table[head].numpy(), entries), atol=1e-10)


@pytest.mark.parametrize("variant", sorted(LARGER))
def test_a_trained_network_at_another_side_as_trained_and_interpolated(variant):
    cfg = TrainConfig(model=f"{variant}_probe", dataset="digits")  # trained at 32
    torch.manual_seed(0)
    state = randomize_norms(build(cfg, 10)).state_dict()
    ckpt = {"config": asdict(cfg), "num_classes": 10, "model": state}
    assert network_at(ckpt, "c.pt", 32, "interpolated") is None  # at the side trained at: nothing to change
    for side in (24, 48):
        x = torch.randn(2, 3, side, side)
        trained = network_at(ckpt, "c.pt", side, "trained")
        with torch.no_grad():
            if variant == "mhsa" and side > 32 or variant == "axial" and side > 32:
                with pytest.raises(ValueError, match="exceeds size=32"):
                    trained(x)
            else:
                assert trained(x).shape == (2, 10)
        net = network_at(ckpt, "c.pt", side, "interpolated")
        if variant not in INTERPOLATED:
            assert net is None
            continue
        with torch.no_grad():
            assert net(x).shape == (2, 10) and torch.isfinite(net(x)).all()
        got = net.state_dict()
        resized = {k for k in got if got[k].shape != state[k].shape}
        for key in resized:
            if variant == "window":  # the window scaled with the side, the bias resized bicubically
                window = math.floor(7 * side / 32 + 0.5)
                assert got[key].shape == (2, 2 * window - 1, 2 * window - 1) and key.endswith("rpb")
                for head in range(2):
                    np.testing.assert_allclose(got[key][head].numpy(), bicubic(state[key][head].double().numpy(),
                                                                               2 * window - 1), atol=1e-5)
            else:  # whole-axis tables: 2 side - 1 rows, linear over the offsets
                assert got[key].shape[0] == 2 * side - 1
                np.testing.assert_allclose(got[key].numpy(), linear_rows(state[key].double().numpy(), 2 * side - 1),
                                           atol=1e-5)
        expected = {"gsa": 4, "axial": 4, "mhsa": 4, "window": 2}[variant]  # two tables per block, two blocks
        assert len(resized) == expected and all(torch.equal(got[k], state[k]) for k in got if k not in resized)
    spanned = TrainConfig(model="gsa_probe", dataset="digits", options="span=5")  # a fixed span: nothing sized
    spanned_ckpt = {"config": asdict(spanned), "num_classes": 10, "model": build(spanned, 10).state_dict()}
    assert network_at(spanned_ckpt, "c.pt", 48, "interpolated") is None


# ---- data sets at other sides ------------------------------------------------------------------------------


def framed_patterns(image: torch.Tensor) -> list[tuple[int, int]]:
    """Top-left corners of the 5x5 frames of channel 1 (the two marked patterns)."""
    frame = torch.ones(5, 5)
    frame[1:4, 1:4] = 0
    side = image.shape[-1]
    windows = torch.nn.functional.unfold(image[None, 1:2], 5)[0].T.reshape(-1, 5, 5)
    return [divmod(i, side - 4) for i in range(len(windows)) if torch.equal(windows[i], frame)]


@pytest.mark.parametrize("side", [24, 25, 48])
def test_longrange_at_another_side_keeps_its_patterns_farther_apart(side):
    from attnbench.data import PATTERNS

    images, labels = make_longrange(40, seed=5, side=side)
    assert images.shape == (40, 3, side, side)
    for img, label in zip(images, labels):
        corners = framed_patterns(img)
        inner = [img[0, r + 1 : r + 4, c + 1 : c + 4] for r, c in corners]
        assert len(inner) == 2 and all(any(torch.equal(p, q) for q in PATTERNS) for p in inner)
        assert abs(corners[0][1] - corners[1][1]) >= side - 10  # the marks keep to the edges
        assert torch.equal(inner[0], inner[1]) == bool(label)
    with pytest.raises(DataError, match="at least 24"):
        make_longrange(1, seed=0, side=23)


@pytest.mark.slow
def test_in_memory_data_sets_at_their_own_side_are_the_training_ones_and_elsewhere_normalised_alike():
    for name in ("digits", "longrange"):
        own, at32 = load_dataset(name, seed=1), load_at_side(name, 32, seed=1)
        assert all(torch.equal(a.images, b.images) for a, b in zip(own, at32))
    train32, _ = load_dataset("digits", seed=1)
    train48, test48 = load_at_side("digits", 48, seed=1)
    assert train48.images.shape[1:] == (3, 48, 48) and torch.equal(train48.labels, train32.labels)
    # normalised with the statistics at 32: the mean intensity of each image survives the upsampling
    torch.testing.assert_close(train48.images.mean(dim=(1, 2, 3)), train32.images.mean(dim=(1, 2, 3)),
                               atol=0.05, rtol=0.05)


def test_cifar_at_another_side_is_its_images_resized_as_pil_resizes_them(tmp_path):
    from PIL import Image
    from test_train import write_cifar

    data = write_cifar(tmp_path / "data", n_train=20, n_test=10, archive=True)
    _, own = load_dataset("cifar100", data)
    train, test = load_at_side("cifar100", 24, data)
    assert test.images.shape == (10, 3, 24, 24) and train.augment and not test.augment
    for image, small in zip(own.images[:3], test.images[:3]):
        for channel, resized in zip(image, small):
            pil = Image.fromarray(channel.numpy(), mode="F").resize((24, 24), Image.Resampling.BILINEAR)
            np.testing.assert_allclose(resized.numpy(), np.asarray(pil), atol=1e-4)


@pytest.mark.parametrize("dataset", ["longrange", "cifar10"])
@pytest.mark.slow
def test_evaluation_at_sides_of_longrange_and_cifar(tmp_path, monkeypatch, dataset):
    from test_train import write_cifar

    monkeypatch.setattr("attnbench.data.LONGRANGE_SIZES", (300, 100))  # generated: a small draw is enough here
    data = str(write_cifar(tmp_path / "data", n_train=60, n_test=20, name="cifar10")) if dataset == "cifar10" else None
    cfg = TrainConfig(model="gsa_probe", dataset=dataset, data_dir=data, batch=20, steps=2, width=0.5)
    history = train(cfg, out=tmp_path / "run", progress=False)
    rows = evaluate_at_sides(tmp_path / "run" / "checkpoint.pt", dataset, [24, 32, 48], db=tmp_path / "r.sqlite")
    assert [(r.side, r.tables, r.status) for r in rows] == [
        (24, "trained", "ok"), (24, "interpolated", "ok"), (32, "trained", "ok"), (48, "trained", "ok"),
        (48, "interpolated", "ok")]
    at32 = rows[2]
    assert at32.top1_pct == history[-1]["top1_pct"] and at32.test_images == (100 if dataset == "longrange" else 20)
    assert at32.train_images == (300 if dataset == "longrange" else 60) and at32.num_classes in (2, 10)
    assert len(store.load_evaluations(tmp_path / "r.sqlite")) == 5


def test_imagefolder_at_another_side_resizes_its_centre_crop(tmp_path):
    from test_imagefolder import write_tree

    from attnbench.imagefolder import read_image

    root = write_tree(tmp_path / "tree")
    cfg = TrainConfig(model="conv_probe", dataset="imagefolder", data_dir=str(root), batch=6, steps=2, width=0.5,
                      image_size=24)
    train(cfg, out=tmp_path / "run", progress=False)
    _, test = load_at_side("imagefolder", 40, root)
    x, _ = next(test.eval_batches(2))
    torch.testing.assert_close(x[0], read_image(test.paths[0], 40, False, 0))
    rows = evaluate_at_sides(tmp_path / "run" / "checkpoint.pt", "imagefolder", [24, 40], db=tmp_path / "r.sqlite")
    assert [(r.side, r.tables, r.image_size, r.status) for r in rows] == [(24, "trained", 24, "ok"),
                                                                         (40, "trained", 24, "ok")]
    assert all(r.train_top1_pct is None and r.test_images == len(test.labels) for r in rows)  # streamed: not cheap


# ---- eval --res and train --eval-res -------------------------------------------------------------------------


@pytest.mark.slow
def test_eval_at_several_sides_prints_and_stores_one_row_per_side(tmp_path, capsys):
    from attnbench.tables import accuracy_table

    db = tmp_path / "r.sqlite"
    cfg = TrainConfig(model="axial_probe", dataset="digits", batch=64, steps=2, width=0.5, seed=3, lr=0.05)
    history = train(cfg, out=tmp_path / "run", db=db, progress=False)
    training = store.load_training(db)
    table = accuracy_table(store.load_results(db), training)
    ckpt = str(tmp_path / "run" / "checkpoint.pt")
    assert main(["eval", "--checkpoint", ckpt, "--dataset", "digits", "--res", "24,32,40", "--db", str(db)]) == 0
    out = capsys.readouterr().out
    rows = store.load_evaluations(db)
    assert list(zip(rows.side, rows.tables, rows.status)) == [
        (24, "trained", "ok"), (24, "interpolated", "ok"), (32, "trained", "ok"), (40, "trained", "refused"),
        (40, "interpolated", "ok")]
    assert "5 evaluations (4 ok, 1 refused) stored" in out and out.count("digits at ") == 5  # refused: exit 0
    refused = rows[rows.status == "refused"].iloc[0]
    assert "exceeds size=32" in refused.reason and math.isnan(refused.top1_pct)
    assert "digits at 40 x 40 (trained at 32): refused: axial: input side 40 exceeds size=32" in out
    # everything that identifies the run, and at the side trained at the training's own result
    assert set(rows.run_id) == set(training.run_id) and set(rows.model) == {"axial_probe"}
    assert set(rows.variant) == set(training.variant) == {"axial"}
    with sqlite3.connect(db) as conn:  # as evaluations stored before they carried it: the report takes the run's
        conn.execute("UPDATE evaluations SET variant = NULL")
    assert set(load([db])[2].variant) == {"axial"}
    assert set(rows.seed) == {3} and set(rows.width) == {0.5} and set(rows.image_size) == {32}
    assert set(rows.epochs) == set(training.epochs) and set(rows.world_size) == {1}
    at32 = rows[rows.side == 32].iloc[0]
    assert at32.top1_pct == history[-1]["top1_pct"] and at32.test_loss == pytest.approx(history[-1]["test_loss"])
    assert at32.train_images == 1442 and 0 <= at32.train_top1_pct <= 100 and at32.num_classes == 10
    assert at32.macs_per_image == training.macs_per_image.iloc[-1] and rows.params.iloc[1] != rows.params.iloc[0]
    # the accuracy table reads training epochs only: evaluations change nothing in it
    assert store.load_training(db).equals(training)
    assert accuracy_table(store.load_results(db), store.load_training(db)).equals(table)
    # evaluated again: the rows are replaced, not doubled
    assert main(["eval", "--checkpoint", ckpt, "--dataset", "digits", "--res", "32", "--db", str(db)]) == 0
    assert len(store.load_evaluations(db)) == 5
    capsys.readouterr()
    # --model names the checkpoint's own network: another name builds nothing and is refused, not ignored
    assert main(["eval", "--checkpoint", ckpt, "--dataset", "digits", "--model", "gsa_probe", "--db", str(db)]) == 2
    err = capsys.readouterr().err
    assert f"{ckpt} holds the network axial_probe, not gsa_probe" in err and err.count("\n") == 1
    assert len(store.load_evaluations(db)) == 5


def test_a_side_whose_images_do_not_fit_in_memory_is_an_error_row_and_the_other_sides_go_on(tmp_path, capsys,
                                                                                           monkeypatch):
    """eval --res 100000 of digits asked for 72 TB of images: a traceback, and the sides after it lost."""
    import attnbench.evaluation

    db = tmp_path / "r.sqlite"
    train(TrainConfig(model="conv_probe", dataset="digits", batch=64, steps=1, width=0.5), out=tmp_path / "run",
          progress=False)
    real = attnbench.evaluation.load_at_side

    def load_at_side(dataset, side, *args, **kwargs):
        if side == 100_000:  # as a 72 TB allocation fails, without asking the machine for it
            raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 71880000000000 "
                               "bytes.\nError code 12")
        return real(dataset, side, *args, **kwargs)

    monkeypatch.setattr(attnbench.evaluation, "load_at_side", load_at_side)
    # exit 1 as a sweep with a failed case does, so that a script notices; the other sides are stored all the same
    assert main(["eval", "--checkpoint", str(tmp_path / "run" / "checkpoint.pt"), "--dataset", "digits", "--res",
                 "24,100000,40", "--db", str(db)]) == 1
    rows = store.load_evaluations(db)
    assert list(zip(rows.side, rows.status)) == [(24, "ok"), (100_000, "error"), (40, "ok")]
    assert rows.reason[1] == ("digits at side 100000: RuntimeError: DefaultCPUAllocator: can't allocate memory: "
                              "you tried to allocate 71880000000000 bytes.")
    out, err = capsys.readouterr()
    assert "digits at 100000 x 100000 (trained at 32): error: digits at side 100000" in out
    assert f"3 evaluations (2 ok, 1 error) stored in {db}" in out
    assert err == "attnbench eval: 1 evaluation failed; its row above says why\n"
    # train --eval-res as eval: exit 1, and a line saying so
    assert main(["train", "--model", "conv_probe", "--dataset", "digits", "--width", "0.5", "--steps", "1", "--out",
                 str(tmp_path / "trained"), "--db", str(db), "--eval-res", "24,100000"]) == 1
    assert capsys.readouterr().err == "seed 0: 1 evaluation failed; its row above says why\n"
    assert len(store.load_evaluations(db)) == 5


@pytest.mark.slow
def test_train_eval_res_evaluates_each_seed_and_a_later_sitting_only_what_is_missing(tmp_path, capsys):
    db = tmp_path / "r.sqlite"
    common = ["train", "--dataset", "digits", "--model", "conv_probe", "--width", "0.5", "--batch", "128",
              "--steps", "2", "--db", str(db), "--out", str(tmp_path / "runs"), "--skip-finished"]
    assert main([*common, "--seeds", "0,1", "--eval-res", "24,32"]) == 0
    rows = store.load_evaluations(db)
    assert sorted(zip(rows.seed, rows.side)) == [(0, 24), (0, 32), (1, 24), (1, 32)] and set(rows.tables) == {"trained"}
    capsys.readouterr()
    assert main([*common, "--seeds", "0,1", "--eval-res", "24,32,40"]) == 0  # trained: only 40 is new
    out = capsys.readouterr().out
    assert out.count("digits at ") == 2 and out.count("digits at 40 x 40") == 2
    assert len(store.load_evaluations(db)) == 6 and store.load_training(db).run_id.nunique() == 2


@pytest.mark.parametrize("command, dataset, sides, message", [
    ("eval", "longrange", "16,32", "attnbench eval: longrange images need a side of at least 24"),
    ("eval", "digits", "0", "resolution 0 must be at least 1"),
    ("train", "longrange", "16", "attnbench train: --eval-res: longrange images need a side of at least 24"),
])
def test_bad_sides_are_refused_before_any_work(tmp_path, capsys, command, dataset, sides, message):
    db, out = tmp_path / "r.sqlite", tmp_path / "run"
    if command == "eval":
        train(TrainConfig(model="conv_probe", dataset=dataset, batch=128, steps=1, width=0.5), out=out, progress=False)
        args = ["eval", "--checkpoint", str(out / "checkpoint.pt"), "--dataset", dataset, "--res", sides]
    else:
        args = ["train", "--model", "conv_probe", "--dataset", dataset, "--eval-res", sides, "--out", str(out)]
    assert main([*args, "--db", str(db)]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not db.exists() or store.load_evaluations(db).empty and store.load_training(db).empty


def test_a_side_whose_images_cannot_fit_is_an_error_row_and_the_other_sides_go_on(tmp_path, monkeypatch):
    """Held in memory, digits' 1797 images at side s take 1797 x 3 s^2 floats, twice while normalised: 2.8 MB at 8,
    176 MB at 64. With 10 MiB available, 64 is refused before any of it is allocated (where the allocator would
    grant it and the machine could not hold it, the kernel's OOM killer would end a process) and 8 is evaluated."""
    import attnbench.measure.memory as memory

    train(TrainConfig(model="conv_probe", dataset="digits", batch=256, steps=1, width=0.5), out=tmp_path / "run",
          progress=False)
    monkeypatch.setattr(memory, "available_memory", lambda device: 10 * 2**20)
    with pytest.raises(MemoryError, match=r"^its images at 64 x 64 need about 0.2 GiB; 0.0 GiB is available$"):
        load_at_side("digits", 64)
    rows = evaluate_at_sides(tmp_path / "run" / "checkpoint.pt", "digits", [64, 8])
    assert [(r.side, r.status) for r in rows] == [(64, "error"), (8, "ok")]
    assert rows[0].reason == ("digits at side 64: MemoryError: its images at 64 x 64 need about 0.2 GiB; 0.0 GiB is "
                              "available")
