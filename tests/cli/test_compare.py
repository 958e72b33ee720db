"""`attnlab compare`: end to end, outputs, statistics, curves, robustness, and bad input."""

from __future__ import annotations

import json
import time

import pytest

from attnlab.cli import main
from attnlab.lab.compare.report import aggregate, plateau, time_to_accuracy, verdict

PNG = b"\x89PNG\r\n\x1a\n"
TINY = ["--train-size", "64", "--val-size", "32", "--batch-size", "32", "--robust-scenes", "32"]


def check_outputs(out, variants, seeds, epochs):
    results = json.loads((out / "results.json").read_text())
    assert [r["variant"] for r in results["rows"]] == variants
    assert len(results["runs"]) == len(variants) * seeds
    for row in results["rows"]:
        acc = row["acc"]
        assert len(row["accs"]) == seeds and acc["n"] == seeds
        assert acc["mean"] == pytest.approx(sum(row["accs"]) / seeds)
        if seeds > 1:
            assert acc["lo"] <= acc["mean"] <= acc["hi"] and acc["std"] >= 0
        assert row["params"] > 0 and row["macs"] > 0 and row["latency_ms"] > 0
        assert row["epoch_time"] > 0
        # Learning curves: one mean and one std per epoch, the mean of the runs' histories.
        runs = [r for r in results["runs"] if r["variant"] == row["variant"]]
        assert all(len(r["history"]) == epochs for r in runs)
        last = sum(r["history"][-1]["val_acc"] for r in runs) / seeds
        assert len(row["curve_mean"]) == len(row["curve_std"]) == epochs
        assert row["curve_mean"][-1] == pytest.approx(last)
        assert set(row["plateau"]) == {"from_epoch", "to_epoch", "change", "reached"}
        # Robustness: the same models on the harder split, drop = val - harder, per seed.
        assert len(row["robust_accs"]) == seeds and all(0 <= a <= 1 for a in row["robust_accs"])
        drops = [a - b for a, b in zip(row["accs"], row["robust_accs"], strict=True)]
        assert row["drop"]["mean"] == pytest.approx(sum(drops) / seeds)
        assert row["to_target"]["runs"] == seeds
    reference = results["rows"][0]
    assert "vs_baseline" not in reference
    for row in results["rows"][1:]:
        d = row["vs_baseline"]
        assert d["diff"] == pytest.approx(row["acc"]["mean"] - reference["acc"]["mean"])
    assert results["target_acc"] == pytest.approx(0.9 * reference["acc"]["mean"])
    table = (out / "results.md").read_text()
    assert all(f"| {v} |" in table for v in variants)
    assert "| harder split % |" in table and "Plateau check" in table
    for name in ("results.png", "curves.png"):
        assert (out / name).read_bytes()[:8] == PNG
    for v in variants:  # every run keeps its own folder with metrics and checkpoints
        slug = "".join(c if c.isalnum() else "-" for c in v)
        assert (out / slug / "seed0" / "metrics.jsonl").exists()
        assert (out / slug / "seed0" / "last.pt").exists()
    check_inspection(out, results, seeds)
    return results


def check_inspection(out, results, seeds):
    """The localisation column (synthetic data) and one gallery PNG per variant."""
    from PIL import Image

    from attnlab.lab.compare import GALLERY_IMAGES

    table = (out / "results.md").read_text()
    assert "| pointing game (Grad-CAM) |" in table
    for row in results["rows"]:
        assert len(row["pointings"]) == seeds and all(0 <= p <= 1 for p in row["pointings"])
        assert row["pointing"]["mean"] == pytest.approx(sum(row["pointings"]) / seeds)
        assert 0 <= row["energy_mean"] <= 1
        line = next(x for x in table.splitlines() if x.startswith(f"| {row['variant']} |"))
        std = row["pointing"]["std"]
        std = "n/a" if std is None else f"{100 * std:.1f}"  # one seed: null in strict JSON
        assert line.endswith(f"| {100 * row['pointing']['mean']:.1f} ± {std} % |")
        slug = "".join(c if c.isalnum() else "-" for c in row["variant"])
        assert row["gallery"] == f"gallery-{slug}.png"
        with Image.open(out / row["gallery"]) as gallery:
            assert gallery.format == "PNG" and gallery.height == round(1.4 * 80 * GALLERY_IMAGES)


def test_compare_small_end_to_end(tmp_path, capsys):
    out = tmp_path / "cmp"
    code = main(["compare", "--variants", "baseline", "cbam", "--seeds", "2", "--epochs", "2",
                 *TINY, "--jobs", "1", "--out", str(out)])  # fmt: skip
    assert code == 0
    results = check_outputs(out, ["baseline", "cbam"], 2, 2)
    printed = capsys.readouterr().out
    assert "| baseline |" in printed and "| cbam |" in printed
    assert results["recipe"]["epochs"] == 2 and results["seeds"] == [0, 1]
    assert results["recipe"]["difficulty"] == "medium"
    assert results["harder_split"] == {"difficulty": "cluttered", "length": 32}
    # The claims this pair of variants allows: CBAM's time against its MACs.
    assert [c["claim"] for c in results["claims"]] == ["CBAM costs more time than its FLOPs say"]
    assert "Claims checked:" in (out / "results.md").read_text()
    # The seeds are real: the two runs of a variant are different trainings.
    cbam_runs = [r for r in results["runs"] if r["variant"] == "cbam"]
    assert cbam_runs[0]["seed"] != cbam_runs[1]["seed"]
    assert cbam_runs[0]["history"] != cbam_runs[1]["history"]
    assert 0 < results["setup_seconds"] < results["total_seconds"]


@pytest.mark.slow
def test_compare_quick_in_parallel_processes(tmp_path):
    start = time.perf_counter()
    # One seed and two of the six variants: agreement across seeds and processes is
    # test_parallel_and_serial_runs_…, every variant of a set is test_compare_cbam_ablation_….
    assert main(["compare", "--quick", "--variants", "baseline", "cbam", "--seeds", "1",
                 "--jobs", "2", "--out", str(tmp_path / "q")]) == 0  # fmt: skip
    results = check_outputs(tmp_path / "q", ["baseline", "cbam"], 1, 2)
    assert results["jobs"] == 2 and results["threads_per_run"] == 1
    # Budget (≤ 1 minute on 2 cores): measured by benchmarks/compare_budget.py, not asserted
    # here, as timing on shared machines is noisy; the figure is printed for the record.
    print(f"compare --quick took {time.perf_counter() - start:.1f} s")


def test_parallel_and_serial_runs_give_the_same_results(tmp_path):
    """Every run is seeded on its own: process or order does not change what it learns."""
    args = ["compare", "--variants", "baseline", "--seeds", "2", "--epochs", "1", *TINY]
    assert main([*args, "--jobs", "1", "--threads", "1", "--out", str(tmp_path / "a")]) == 0
    assert main([*args, "--jobs", "3", "--out", str(tmp_path / "b")]) == 0
    a, b = (json.loads((tmp_path / d / "results.json").read_text()) for d in "ab")
    assert a["jobs"] == 1 and b["jobs"] == 2  # never more processes than runs
    assert [r["seed"] for r in b["runs"]] == [0, 1]  # rows in the jobs' order
    for x, y in zip(a["runs"], b["runs"], strict=True):
        assert x["history"][0]["val_loss"] == y["history"][0]["val_loss"]
        assert x["robust_acc"] == y["robust_acc"]


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["compare", "--variants", "baseline", "nope"], "unknown variant(s) nope"),
        (["compare", "--seeds", "0"], "--seeds must be >= 1"),
        (["compare", "--jobs", "0"], "--jobs must be >= 1"),
        (["compare", "--difficulty", "extreme"], "--difficulty must be one of"),
        (["compare", "--precise-bn-images", "-1"], "precise_bn_images"),
        (["compare", "--data", "cifar10", "--data-dir", "/nonexistent/x", "--seeds", "1",
          "--variants", "baseline"], "/nonexistent/x"),
        (["compare", "--data", "cifar10", "--seeds", "1", "--variants", "baseline"], "data-dir"),
    ],
)  # fmt: skip
def test_bad_input_is_one_line_and_exit_code_2(argv, needle, capsys, tmp_path):
    assert main([*argv, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("attnlab: error:") and needle in err and "\n" not in err
    assert "Traceback" not in err


def test_any_registered_attention_is_a_variant():
    """`--variants NAME` takes every registered attention: it trains in a ResNet-20 block."""
    from attnlab.lab.compare import VARIANT_SETS, variant_options
    from attnlab.lab.compare.runs import warm_up
    from attnlab.registry import list_attention

    names = list_attention()
    variants = variant_options("main", ["baseline", *names])
    for name in names:
        expected = VARIANT_SETS["main"].get(name, {"attn": name})
        assert variants[name] == expected
    # One training step of every such model (small images keep it cheap).
    assert warm_up(variants, {"model": "resnet20", "image_size": 16}) > 0


@pytest.mark.slow
def test_compare_cbam_ablation_end_to_end(tmp_path):
    out = tmp_path / "abl"
    code = main(
        ["compare", "--ablation", "cbam", "--seeds", "1", "--epochs", "1", "--train-size", "32",
         "--val-size", "16", "--batch-size", "16", "--robust-scenes", "16", "--jobs", "1",
         "--out", str(out)]
    )  # fmt: skip
    assert code == 0
    variants = ["baseline", "se", "cbam k=7", "cbam k=3", "cbam spatial→channel",
                "cbam parallel", "cbam pool avg", "cbam pool max"]  # fmt: skip
    results = json.loads((out / "results.json").read_text())
    assert [r["variant"] for r in results["rows"]] == variants
    # Each ablation trained the model it names: the options reach the saved model config.
    configs = {r["variant"]: r["model_config"] for r in results["runs"]}
    assert configs["cbam k=3"]["attn_kwargs"] == {"kernel_size": 3}
    assert configs["cbam parallel"]["attn_kwargs"] == {"order": "parallel"}
    assert configs["cbam pool max"]["attn_kwargs"] == {"pool_types": ["max"]}
    assert configs["se"]["attn"] == "se" and configs["baseline"]["attn"] is None
    params = {r["variant"]: r["params"] for r in results["rows"]}
    assert params["cbam k=3"] < params["cbam k=7"]  # 2·3² vs 2·7² spatial-conv weights
    # One seed: no interval, and the table says so rather than calling anything significant.
    table = (out / "results.md").read_text()
    assert "| cbam pool avg |" in table and "needs ≥ 2 seeds" in table
    # The ablation's claims are all checked, each undecided with one seed.
    accuracy_claims = [c for c in results["claims"] if c["kind"] != "slower"]
    assert len(accuracy_claims) == 6
    assert {c["verdict"] for c in accuracy_claims} == {"needs ≥ 2 seeds"}


def test_compare_on_an_image_folder(tmp_path, capsys):
    from PIL import Image

    data = tmp_path / "imgs"  # data_dir/{train,val}/<class>/<images>
    for split, count in (("train", 6), ("val", 2)):
        for name, colour in {"cat": (200, 30, 30), "dog": (30, 30, 200)}.items():
            (data / split / name).mkdir(parents=True)
            for i in range(count):
                Image.new("RGB", (20 + i, 18), colour).save(data / split / name / f"{i}.png")
    out = tmp_path / "cmp"
    code = main(
        ["compare", "--data", "folder", "--data-dir", str(data), "--variants", "baseline", "se",
         "--seeds", "1", "--epochs", "1", "--image-size", "16", "--batch-size", "4",
         "--jobs", "1", "--out", str(out)]
    )  # fmt: skip
    assert code == 0, capsys.readouterr().err
    # Strict JSON: one seed's undefined std and interval are null, never NaN.
    text = (out / "results.json").read_text()
    results = json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} in results.json"))
    assert results["rows"][0]["acc"]["std"] is None and results["rows"][0]["acc"]["n"] == 1
    assert results["recipe"]["data"] == "folder" and results["harder_split"] is None
    assert [r["variant"] for r in results["rows"]] == ["baseline", "se"]
    for run in results["runs"]:
        assert run["model_config"]["num_classes"] == 2
    # No masks and no harder split: "n/a" in those columns; galleries of the first val images.
    assert all("pointing" not in r and "robust" not in r for r in results["rows"])
    table = (out / "results.md").read_text()
    assert "| baseline |" in table and table.count("| n/a |") >= 2
    for row in results["rows"]:
        with Image.open(out / row["gallery"]) as gallery:
            assert gallery.format == "PNG" and gallery.height == round(1.4 * 80 * 4)


# The statistics behind the table, on hand-made runs (no training). -----------------------------


def test_plateau_logic():
    # Last quarter of 8 epochs: epochs 6 → 8.
    flat = plateau([0.2, 0.5, 0.7, 0.78, 0.8, 0.805, 0.81, 0.809])
    assert (flat["from_epoch"], flat["to_epoch"], flat["reached"]) == (6, 8, True)
    assert flat["change"] == pytest.approx(0.004)
    rising = plateau([0.2, 0.4, 0.5, 0.6, 0.7, 0.75, 0.8, 0.85])
    assert not rising["reached"] and rising["change"] == pytest.approx(0.1)
    falling = plateau([0.5, 0.6, 0.7, 0.8, 0.8, 0.8, 0.79, 0.78])
    assert not falling["reached"] and falling["change"] == pytest.approx(-0.02)
    assert plateau([0.5])["from_epoch"] == 0 and not plateau([0.5])["reached"]
    assert plateau([0.1, 0.5, 0.5], tolerance=0.05)["reached"]  # window: epochs 2 → 3
    with pytest.raises(ValueError, match="compare.plateau"):
        plateau([])


def test_time_to_accuracy():
    assert time_to_accuracy([0.1, 0.5, 0.8], [2.0, 3.0, 4.0], 0.5) == (2, 5.0)
    assert time_to_accuracy([0.1, 0.5, 0.8], [2.0, 3.0, 4.0], 0.9) == (None, None)
    assert time_to_accuracy([0.9], [7.0], 0.1) == (1, 7.0)


def _run(variant, seed, curve, robust):
    history = [{"val_acc": a, "time": 10.0} for a in curve]
    return {"variant": variant, "seed": seed, "val_acc": curve[-1], "history": history,
            "epoch_time": 10.0, "robust_acc": robust, "gallery": None}  # fmt: skip


def test_aggregate_on_hand_made_runs():
    runs = [
        _run("baseline", 0, [0.4, 0.70, 0.80], 0.60),
        _run("baseline", 1, [0.5, 0.72, 0.82], 0.62),
        _run("baseline", 2, [0.3, 0.68, 0.81], 0.61),
        _run("better", 0, [0.6, 0.90, 0.95], 0.90),
        _run("better", 1, [0.6, 0.92, 0.96], 0.91),
        _run("better", 2, [0.6, 0.91, 0.94], 0.92),
        _run("same", 0, [0.4, 0.7, 0.79], 0.60),
        _run("same", 1, [0.4, 0.7, 0.84], 0.60),
        _run("same", 2, [0.4, 0.7, 0.80], 0.60),
    ]
    summary = aggregate(runs, ["baseline", "better", "same"])
    base, better, same = summary["rows"]
    assert summary["reference"] == "baseline"
    assert summary["target_acc"] == pytest.approx(0.9 * 0.81)
    assert base["acc"]["mean"] == pytest.approx(0.81) and base["acc"]["n"] == 3
    assert base["curve_mean"] == pytest.approx([0.4, 0.70, 0.81])
    assert base["curve_std"][0] == pytest.approx(0.1)
    assert better["vs_baseline"]["distinguishable"] and better["vs_baseline"]["diff"] > 0
    assert verdict(better["vs_baseline"]) == "better than baseline"
    assert not same["vs_baseline"]["distinguishable"]
    assert verdict(same["vs_baseline"]) == "not distinguishable from noise"
    assert base["drop"]["mean"] == pytest.approx(0.81 - 0.61)
    # 90 % of 0.81 = 0.729: the baseline reaches it at epoch 3 (30 s), "better" at epoch 2.
    assert base["to_target"] == {"reached": 3, "runs": 3, "epochs": 3.0, "seconds": 30.0}
    assert better["to_target"]["epochs"] == 2.0 and better["to_target"]["seconds"] == 20.0


def test_harder_split_is_deterministic_and_held_out():
    import torch

    from attnlab.data.synthetic import SyntheticScenes
    from attnlab.lab.compare.probe import harder_scenes

    a_images, a_labels = harder_scenes("cluttered-hard", length=6, size=32, num_classes=6)
    b_images, b_labels = harder_scenes("cluttered-hard", length=6, size=32, num_classes=6)
    assert torch.equal(a_images, b_images) and torch.equal(a_labels, b_labels)
    # Drawn from the test stream: not the training or validation scenes of the same index.
    for split in ("train", "val"):
        other = SyntheticScenes(split=split, length=6, difficulty="cluttered-hard").scene(0)
        assert not torch.equal(other.image, a_images[0])
