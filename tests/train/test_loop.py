"""Training on the real fixture radiographs: outputs, determinism, kill-then-resume, and the refusals that come
before any work (bad settings, a finished run folder, a resume with other settings)."""

from __future__ import annotations

import argparse
import csv
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from _models import FIXTURES, TINY_RUN_EXTRA, TINY_TRAIN_ARGS
from torch.optim.lr_scheduler import LambdaLR
from torch.optim.swa_utils import AveragedModel

from bonefrac import FractureDetector
from bonefrac.datasets import content_digest
from bonefrac.errors import BonefracError
from bonefrac.models import registry
from bonefrac.train.augment import Augment
from bonefrac.train.config import ARCHS, ConfigError, TrainConfig, check_start
from bonefrac.train.loop import fit, restore, resume_state
from bonefrac.train.precision import MixedPrecision, autocast_dtype
from bonefrac.train.run_folder import resume_command
from bonefrac.train.schedule import warmed_up_ema, warmup_cosine

ARGS = [*TINY_TRAIN_ARGS, "--no-progress"]


def train_args(out: Path, cache: Path, *extra: str) -> list[str]:
    return ["train", str(FIXTURES), "--out", str(out), "--cache-dir", str(cache), *ARGS, *extra]


def train(out: Path, cache: Path, *extra: str, wait: bool = True) -> subprocess.Popen[str]:
    cmd = [sys.executable, "-m", "bonefrac", *train_args(out, cache, *extra)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if wait:
        output, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, output
    return proc


def refused(out: Path, cache: Path, *extra: str) -> str:
    """Run a `bonefrac train` that must be refused at once; returns its one-line message.

    At once: before torch is imported (which alone takes a second or more), so under a second on any
    machine where Python starts; and before anything is written (no run folder, no split, no cache).
    """
    before = _files(out), _files(cache)
    cmd = [sys.executable, "-X", "importtime", "-m", "bonefrac", *train_args(out, cache, *extra)]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    seconds = time.perf_counter() - t0
    imports = [line.rsplit("|", 1)[-1].strip() for line in r.stderr.splitlines() if line.startswith("import time:")]
    lines = [line for line in r.stderr.splitlines() if not line.startswith("import time:")]
    assert r.returncode == 1 and len(lines) == 1 and lines[0].startswith("bonefrac: error: "), r.stderr[-2000:]
    assert "torch" not in imports, "refused only after importing torch"
    assert seconds < 10, seconds  # generous for a loaded test machine; the import check above is the real bound
    assert (_files(out), _files(cache)) == before  # nothing written: no run folder, split, or decoded image
    return lines[0]


def _files(folder: Path) -> list[Path] | None:
    return sorted(folder.rglob("*")) if folder.exists() else None


def _state(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "last.pt", weights_only=True)["model"]


@pytest.mark.slow  # trains the session's tiny_run when no test before it did
def test_train_writes_a_loadable_run(tiny_run: Path) -> None:
    run = tiny_run  # 4 epochs, the 454 px fixtures read at 1/2 (--reduce-from 2); only read here
    for name in (
        "model.pt",
        "model.pt.sha256",
        "last.pt",
        "history.csv",
        "learning_curve.png",
        "split.json",
        "run.json",
    ):
        assert (run / name).is_file(), name
    history = list(csv.DictReader(open(run / "history.csv")))
    assert [int(h["epoch"]) for h in history] == [1, 2, 3, 4]
    split = json.loads((run / "split.json").read_text())
    assert set(split.values()) == {"train", "val"} and len(split) == 14
    # duplicate groups never straddle the split
    assert split["IMG0001763.jpg"] == split["IMG0002615.jpg"]
    info = json.loads((run / "run.json").read_text())
    assert info["versions"]["torch"] == torch.__version__
    [only] = info["invocations"]
    assert only["command"][1:3] == ["train", str(FIXTURES)] and only["first_epoch"] == 1 and only["time"]
    det = FractureDetector.load(run, backend="torch")
    assert det.spec.arch == "seed_cnn" and det.spec.image_size == 64 and det.spec.reduce_from == 2
    assert info["config"]["reduce_from"] == 2
    v = det.info["validation"]
    assert set(v["operating_points"]) == {"default", "high_sensitivity", "high_specificity"}
    assert det.operating_points["default"] == v["operating_points"]["default"]["threshold"]
    # Platt scaling fitted on the validation logits (or the identity, with the reason, where it cannot be).
    assert det.info["calibration"]["n_images"] == v["n"] and set(v["calibration"]) == {
        "ece_before",
        "ece_after",
        "brier_before",
        "brier_after",
    }
    assert (det.spec.calibration == {"scale": 1.0, "bias": 0.0}) == (det.info["calibration"]["error"] is not None)
    # What the model saw, by content: the digests of exactly the images of each side of the split.
    digests = det.info["image_digests"]
    images = FIXTURES / "images"
    assert sorted(digests["train"]) == sorted(content_digest(images / k) for k, v in split.items() if v == "train")
    assert sorted(digests["validation"]) == sorted(content_digest(images / k) for k, v in split.items() if v == "val")


@pytest.mark.slow
@pytest.mark.numeric  # resume equality: make test runs it again on AVX2 kernels
def test_kill_mid_run_then_resume_matches_uninterrupted(
    tmp_path: Path, tiny_run: Path, record_property: Callable[[str, object], None]
) -> None:
    cache = tmp_path / "cache"
    straight = tiny_run  # TINY_RUN_ARGS: 4 epochs; only read here
    killed = tmp_path / "killed"
    # SIGKILL as soon as the first epoch's checkpoint lands: the run dies inside a later epoch (or between).
    proc0 = train(killed, cache, *TINY_RUN_EXTRA, wait=False)
    deadline = time.time() + 120
    while not (killed / "last.pt").exists() and time.time() < deadline and proc0.poll() is None:
        time.sleep(0.02)
    os.kill(proc0.pid, signal.SIGKILL)
    proc0.wait()
    assert (killed / "last.pt").exists()
    done_before = len(list(csv.DictReader(open(killed / "history.csv"))))
    # A resume with other settings is refused, naming them; so is a restart without --resume.
    message = refused(killed, cache, "--epochs", "4", "--resume", "--image-size", "96", "--lr", "0.001")
    assert "--image-size 96 (run: 64)" in message and "--lr 0.001 (run: 0.0006)" in message
    assert "--resume" in refused(killed, cache, "--epochs", "4")
    proc = train(killed, cache, *TINY_RUN_EXTRA, "--resume")
    assert proc.returncode == 0
    commands = [i["command"] for i in json.loads((killed / "run.json").read_text())["invocations"]]
    assert len(commands) == 2 and "--resume" not in commands[0] and "--resume" in commands[1]
    history = list(csv.DictReader(open(killed / "history.csv")))
    assert [int(h["epoch"]) for h in history] == [1, 2, 3, 4]
    assert done_before >= 1
    # Same kernels, same thread count, same data order: the resumed epochs repeat the straight run's operations in
    # the same order, so a difference is state that last.pt failed to restore (the RNGs, Adam's moments, the EMA,
    # the loss scale). Allowed: 10 float32 eps of each tensor's norm, for sums a thread pool may split otherwise.
    a, b = _state(straight), _state(killed)
    worst = max(float((a[k].double() - b[k].double()).norm() / a[k].double().norm().clamp_min(1e-30)) for k in a)
    record_property("resume_rel_diff", worst)
    for k in a:
        assert (a[k].double() - b[k].double()).norm() <= 1.2e-6 * a[k].double().norm(), k


@pytest.mark.slow
def test_init_from_starts_at_the_given_weights(tmp_path: Path, tiny_run: Path) -> None:
    cache = tmp_path / "cache"
    first = tmp_path / "first"
    shutil.copytree(tiny_run, first)  # a finished run, overwritten below
    tuned = tmp_path / "tuned"
    train(tuned, cache, "--epochs", "1", "--init-from", str(first / "model.pt"), "--lr", "0")
    start = torch.load(first / "model.pt", weights_only=True)["state_dict"]
    after = _state(tuned)
    # lr 0: the weights are exactly the checkpoint's (BatchNorm running statistics still move)
    weights = [k for k in start if k.endswith("weight")]
    assert weights and all(torch.equal(start[k], after[k]) for k in weights)
    bad = tmp_path / "bad"
    proc = train(bad, cache, "--epochs", "1", "--init-from", str(first), "--image-size", "96", wait=False)
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode == 1 and "seed_cnn at 64px" in output and "Traceback" not in output
    assert not (bad / "split.json").exists()  # refused before the data was split or decoded

    # A finished run folder is kept unless asked: --overwrite starts it again (a new split, a new run.json).
    assert "--overwrite" in refused(first, cache, "--epochs", "1")
    train(first, cache, "--epochs", "1", "--overwrite", "--seed", "1")
    assert len(json.loads((first / "run.json").read_text())["invocations"]) == 1
    assert json.loads((first / "run.json").read_text())["config"]["seed"] == 1
    assert len(list(csv.DictReader(open(first / "history.csv")))) == 1


@pytest.mark.slow
def test_ctrl_c_says_how_to_resume_and_that_command_finishes_the_run(tmp_path: Path) -> None:
    run, cache = tmp_path / "run", tmp_path / "cache"
    proc = train(run, cache, "--epochs", "6", wait=False)  # interrupted after the first of six epochs
    deadline = time.time() + 120
    while not (run / "last.pt").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, output
    last = output.strip().splitlines()[-1]
    assert last.startswith("bonefrac: interrupted; to continue: bonefrac train ") and "Traceback" not in output
    command = shlex.split(last.split("to continue: ", 1)[1])
    assert command[1:] == [*train_args(run, cache, "--epochs", "6"), "--resume"]
    r = subprocess.run([sys.executable, "-m", *command], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert [int(h["epoch"]) for h in csv.DictReader(open(run / "history.csv"))] == [1, 2, 3, 4, 5, 6]


# ---------------------------------------------------------------- refusals before any work
@pytest.mark.parametrize(
    ("option", "value", "says"),
    [
        ("--arch", "resnet50", "--arch resnet50: unknown; choose one of efficientnet_lite0"),
        ("--epochs", "0", "--epochs 0: must be a whole number of at least 1"),
        ("--val-fraction", "0", "--val-fraction 0.0: must be above 0 and at most 0.5"),
        ("--val-fraction", "1", "--val-fraction 1.0: must be above 0 and at most 0.5"),
        ("--image-size", "-5", "--image-size -5: must be a whole number of at least 32"),
        ("--lr", "-1", "--lr -1.0: must be a number of at least 0"),
        ("--batch-size", "0", "--batch-size 0: must be a whole number of at least 1"),
        ("--patience", "0", "--patience 0: must be a whole number of at least 1"),
        ("--warmup-epochs", "-1", "--warmup-epochs -1.0: must be a number of at least 0"),
        ("--reduce-from", "1", "--reduce-from 1: must be a whole number of at least 2"),
    ],
)
def test_bad_settings_are_refused_at_once_with_one_line(tmp_path: Path, option: str, value: str, says: str) -> None:
    assert refused(tmp_path / "run", tmp_path / "cache", option, value).startswith(f"bonefrac: error: {says}")


def test_a_finished_run_folder_needs_resume_or_overwrite(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "model.pt").write_bytes(b"a finished run's model")
    message = refused(run, tmp_path / "cache")
    assert "already holds a trained run (model.pt)" in message and "--resume" in message and "--overwrite" in message
    assert "choose one" in refused(run, tmp_path / "cache", "--resume", "--overwrite")


def test_resume_with_other_settings_is_refused_and_says_which(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    saved = asdict(TrainConfig(str(FIXTURES), str(run), arch="seed_cnn", image_size=224, batch_size=4))
    (run / "run.json").write_text(json.dumps({"config": {**saved, "val_fraction": 0.34, "epochs": 3}}))
    message = refused(run, tmp_path / "cache", "--resume")  # ARGS: 64 px, and 12 epochs (may change)
    assert message == f"bonefrac: error: --resume: {run} was trained with other settings: --image-size 64 (run: 224)"


@pytest.mark.parametrize(
    ("change", "says"),
    [
        ({"val_fraction": 0.7}, "--val-fraction 0.7"),
        ({"loc_weight": -0.5}, "--loc-weight -0.5"),
        ({"lr": float("nan")}, "--lr nan"),
        ({"ema_decay": 1.0}, "--ema-decay 1.0"),
        ({"threads": 0}, "--threads 0"),
        ({"seed": -1}, "--seed -1"),
        ({"max_train_images": 0}, "--max-train-images 0"),
        ({"epochs": 2.5}, "--epochs 2.5"),
        ({"device": "tpu"}, "--device tpu: unknown; choose one of auto, cpu, cuda"),
        ({"precision": "fp8"}, "--precision fp8: unknown; choose one of auto, fp32, bf16, fp16"),
        ({"arch": "lite0_centernet", "crop_size": 100}, "--crop-size 100: must be a multiple of 8"),
        ({"arch": "lite0_centernet", "crop_size": 512}, "--crop-size 512: must be a multiple of 8, at most"),
        ({"backbone_lr_scale": -1.0}, "--backbone-lr-scale -1.0"),
        ({"dataset": "/no/such/dataset"}, "/no/such/dataset: no such dataset"),
        ({"split_file": "/no/such/split.json"}, "--split /no/such/split.json: no such file"),
        ({"init_from": "/no/such/model.pt"}, "--init-from /no/such/model.pt: no such file"),
    ],
)
def test_config_check_names_the_setting(tmp_path: Path, change: dict[str, object], says: str) -> None:
    good = TrainConfig(str(FIXTURES), str(tmp_path / "run"))
    assert good.check() is good
    with pytest.raises(BonefracError) as e:
        replace(good, **change).check()
    assert str(e.value).startswith(says) and "\n" not in str(e.value)


def test_fit_refuses_bad_settings_before_writing_anything(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--epochs 0"):  # today's loop would have said "model written"
        fit(TrainConfig(str(FIXTURES), str(tmp_path / "run"), epochs=0, cache_dir=str(tmp_path / "cache")))
    assert not list(tmp_path.iterdir())


def test_under_torchrun_the_global_batch_is_a_multiple_of_the_processes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")  # torchrun sets it before any process group exists
    monkeypatch.setenv("RANK", "1")  # not the run folder's owner: only the settings are checked
    cfg = TrainConfig(str(FIXTURES), str(tmp_path / "run"), batch_size=3)
    with pytest.raises(ConfigError, match="--batch-size 3 is the global batch: it must be a multiple of 2 processes"):
        check_start(cfg)
    check_start(replace(cfg, batch_size=4))


def test_the_arch_names_are_the_model_registry() -> None:
    assert set(ARCHS) == set(registry.ARCHS)  # every architecture the registry builds


def test_resume_differences_ignore_run_length_and_equal_paths(tmp_path: Path) -> None:
    cfg = TrainConfig(str(FIXTURES), str(tmp_path / "run"), epochs=20, patience=9, threads=1)
    saved = asdict(TrainConfig(os.path.relpath(FIXTURES), "elsewhere", epochs=12, patience=5))
    assert cfg.differences(saved) == []
    assert cfg.differences({**saved, "image_size": 128, "seed": 3}) == [
        "--image-size 256 (run: 128)",
        "--seed 0 (run: 3)",
    ]


def test_resume_command_repeats_the_command_with_resume() -> None:
    argv = ["train", "data dir", "--out", "runs/a", "--overwrite", "--epochs", "3"]
    assert resume_command(argv) == "bonefrac train 'data dir' --out runs/a --epochs 3 --resume"
    assert resume_command([*argv[:4], "--resume"]) == "bonefrac train 'data dir' --out runs/a --resume"


# ---------------------------------------------------------------- pieces of the loop
def test_augment_apply_always_returns_images_and_masks() -> None:
    aug = Augment()
    x = torch.rand(3, 1, 32, 32)
    params = aug.sample(3, torch.Generator().manual_seed(0))
    images, masks = aug.apply(x, params)
    assert masks is None and images.shape == x.shape
    with_masks, warped = aug.apply(x, params, torch.ones(3, 1, 32, 32))
    assert torch.equal(with_masks, images) and warped is not None and warped.shape == x.shape


def _resumable(tmp_path: Path, device: torch.device, precision: MixedPrecision) -> SimpleNamespace:
    """What `resume_state` and `restore` read and write of a `Run`."""
    model = torch.nn.Linear(2, 1)
    opt = torch.optim.AdamW(model.parameters())
    return SimpleNamespace(
        out=tmp_path,
        device=device,
        model=model,
        ema=AveragedModel(model, multi_avg_fn=warmed_up_ema(0.9), use_buffers=True),
        opt=opt,
        schedule=LambdaLR(opt, warmup_cosine(10, 2)),
        precision=precision,
        best_score=0.7,
        stale=0,
        history=[{"epoch": 1}],
        first_epoch=0,
        sampler=None,  # a classifier's run: no crops, no hard negatives
    )


def test_resume_state_carries_the_cuda_generator(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """On a GPU, dropout draws from the device's generator: last.pt saves it and `restore` puts it back."""
    cuda_state = torch.arange(16, dtype=torch.uint8)
    restored: list[tuple[torch.Tensor, torch.device]] = []
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device: cuda_state)
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device: restored.append((state, device)))
    # cuda: only compared, nothing is moved there
    run = _resumable(tmp_path, torch.device("cuda", 0), MixedPrecision("fp32", torch.device("cpu")))
    state = resume_state(run, epoch=0)
    assert torch.equal(state["cuda_rng"], cuda_state)
    torch.save(state, tmp_path / "last.pt")
    restore(run)
    assert run.first_epoch == 1 and len(restored) == 1 and torch.equal(restored[0][0], cuda_state)
    run.device = torch.device("cpu")
    assert "cuda_rng" not in resume_state(run, epoch=0)  # nothing to save on the CPU


def test_an_fp16_runs_loss_scale_survives_a_resume(tmp_path: Path) -> None:
    """fp16 training skips steps while its loss scale settles: last.pt keeps the scale, so a resumed run does
    not start that again (an fp32 or bf16 run saves an empty scaler state, and restores nothing)."""
    precision = MixedPrecision("fp32", torch.device("cpu"))
    precision.scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)  # enabled: fp16's, on the CPU for the test
    run = _resumable(tmp_path, torch.device("cpu"), precision)
    torch.save(resume_state(run, epoch=2), tmp_path / "last.pt")
    precision.scaler = torch.amp.GradScaler("cpu", init_scale=2.0)
    restore(run)
    assert precision.scaler.get_scale() == 1024.0 and run.first_epoch == 3
    precision.scaler = torch.amp.GradScaler("cpu", enabled=False)  # resumed where fp16 is off: nothing to restore
    restore(run)
    assert not precision.scaler.is_enabled()


def test_the_ema_schedule_and_optimiser_resume_where_they_were(tmp_path: Path) -> None:
    """last.pt holds the EMA's average and count, Adam's moments and the schedule's step: restored into fresh
    ones, they continue exactly as the originals (same operations on the same values: bit-equal)."""
    torch.manual_seed(0)
    a = _resumable(tmp_path, torch.device("cpu"), MixedPrecision("fp32", torch.device("cpu")))
    x = torch.randn(8, 2)

    def steps(run: SimpleNamespace, n: int) -> None:
        for _ in range(n):
            run.precision.step(run.model(x).square().mean(), run.opt)
            run.ema.update_parameters(run.model)
            run.schedule.step()

    steps(a, 3)
    torch.save(resume_state(a, epoch=0), tmp_path / "last.pt")
    b = _resumable(tmp_path, torch.device("cpu"), MixedPrecision("fp32", torch.device("cpu")))
    restore(b)
    steps(a, 4)
    steps(b, 4)
    assert (
        b.schedule.last_epoch == a.schedule.last_epoch == 7
        and b.opt.param_groups[0]["lr"] == a.opt.param_groups[0]["lr"]
    )
    for one, two in ((a.model, b.model), (a.ema, b.ema)):
        assert all(torch.equal(p, q) for p, q in zip(one.state_dict().values(), two.state_dict().values(), strict=True))


def test_a_last_pt_of_the_hand_written_loop_is_refused_in_one_line(tmp_path: Path) -> None:
    run = _resumable(tmp_path, torch.device("cpu"), MixedPrecision("fp32", torch.device("cpu")))
    state = resume_state(run, epoch=0)
    del state["schedule"]
    torch.save({**state, "ema_updates": 3}, tmp_path / "last.pt")
    with pytest.raises(ConfigError, match="written by an earlier bonefrac; start again with --overwrite"):
        restore(run)


def test_ema_warms_up_then_decays_at_its_rate() -> None:
    """The k-th update averages with decay min(decay, (1 + k) / (10 + k)): the first copies the model."""
    model = torch.nn.Linear(1, 1, bias=False)
    ema = AveragedModel(model, multi_avg_fn=warmed_up_ema(0.5), use_buffers=True)
    expected = None
    for k, w in enumerate([1.0, 2.0, 4.0, 8.0, 16.0], start=1):
        model.weight.data.fill_(w)
        ema.update_parameters(model)
        d = min(0.5, (1 + k) / (10 + k))  # 0.25, 0.29, 0.33, then 0.5
        expected = w if expected is None else d * expected + (1 - d) * w
        assert ema.module.weight.item() == pytest.approx(expected, rel=1e-6), k  # float32 rounding of a few ops


def test_the_schedule_warms_up_linearly_then_follows_a_cosine_to_one_percent() -> None:
    factor = warmup_cosine(total=12, warmup=2)
    assert [factor(s) for s in (0, 1)] == [0.5, 1.0]
    assert factor(2) == 1.0 and factor(7) == pytest.approx(0.505) and factor(12) == pytest.approx(0.01)
    assert warmup_cosine(total=5, warmup=0)(0) == 1.0  # no warm-up


@pytest.mark.parametrize(
    ("device", "precision", "cuda", "bf16", "expected"),
    [
        ("cpu", "auto", False, False, None),  # fp32 on a CPU: bf16 autocast is slower without AVX512-BF16
        ("cpu", "bf16", False, False, torch.bfloat16),  # asked for
        ("cuda", "auto", True, True, torch.bfloat16),  # Ampere and later: bf16, no loss scaling
        ("cuda", "auto", True, False, torch.float16),  # older GPUs: fp16 with a GradScaler
        ("cuda", "fp32", True, True, None),
        ("cpu", "fp16", False, False, "--precision fp16: needs a GPU"),
        ("cuda", "auto", False, False, "--device cuda: torch sees no CUDA GPU"),
    ],
)
def test_precision_follows_the_device(
    monkeypatch: pytest.MonkeyPatch, device: str, precision: str, cuda: bool, bf16: bool, expected: object
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)  # set for GPUs; restored after the test
    dev = torch.device("cuda", 0) if device == "cuda" else torch.device("cpu")  # only compared
    if isinstance(expected, str):
        with pytest.raises(ConfigError, match=expected):
            autocast_dtype(precision, dev)
    else:
        assert autocast_dtype(precision, dev) == expected


def test_the_device_choice_picks_the_process_device(monkeypatch: pytest.MonkeyPatch) -> None:
    from bonefrac.train import distributed

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setenv("LOCAL_RANK", "1")  # torchrun's second process on this node: its own GPU
    try:
        assert [distributed.init_from_env(c) or distributed.device() for c in ("auto", "cuda", "cpu")] == [
            torch.device("cuda", 1),
            torch.device("cuda", 1),
            torch.device("cpu"),
        ]
        monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
        distributed.choose_device("auto")
        assert distributed.device() == torch.device("cpu")
        with pytest.raises(ValueError, match="tpu"):
            distributed.choose_device("tpu")
    finally:
        distributed.choose_device("auto")


def test_device_and_precision_may_change_on_resume(tmp_path: Path) -> None:
    cfg = TrainConfig(str(FIXTURES), str(tmp_path / "run"), device="cuda", precision="bf16")
    assert cfg.differences(asdict(TrainConfig(str(FIXTURES), "elsewhere"))) == []


def test_train_help_shows_every_default() -> None:
    from bonefrac.apps.cli import build_parser

    subparsers = next(a for a in build_parser()._actions if a.dest == "command")
    train_parser = subparsers.choices["train"]
    for action in train_parser._actions:
        if action.dest in ("help", "dataset", "out") or action.help == argparse.SUPPRESS:
            continue  # nothing to default: the help flag, and the two things every run must name
        assert action.help and "default" in action.help, action.option_strings
        if action.default not in (None, False):
            assert "%(default)" in action.help or str(action.default) in action.help, action.option_strings
