"""Targets build, load tiny slices of their real data, train, evaluate and pretrain resumably."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
import torch

from target_models import CheckpointError, DataUnavailableError, UnknownTargetError, get_target
from target_models.checkpoints import atomic_save
from target_models.data import CIFAR10, load_image_classification
from target_models.device import autocast
from target_models.training import TrainConfig, TrainProgress, make_optimizer, train
from tests.helpers import REPO, TINY, needs_data, script_env


def test_unknown_target_names_the_choices():
    with pytest.raises(UnknownTargetError, match="cnn_cifar10, vgg16_cifar10, lstm_imdb, cartpole_policy"):
        get_target("resnet50")


def test_missing_data_directory_says_which_variable_to_set(tmp_path):
    with pytest.raises(DataUnavailableError, match="PRUNE_ENV_DATA_DIR"):
        load_image_classification(CIFAR10, tmp_path / "nowhere", limit=10)
    with pytest.raises(DataUnavailableError, match="no train-\\*.parquet"):
        load_image_classification(CIFAR10, tmp_path, limit=10)


@needs_data
@pytest.mark.parametrize("name", ["cnn_cifar10", "vgg16_cifar10", "lstm_imdb"])
def test_supervised_target_trains_a_few_real_steps_and_evaluates(name):
    target = get_target(name, limit=TINY)
    data = target.data
    assert len(data.y_train) == len(data.y_val) == len(data.y_test) == TINY
    torch.manual_seed(0)
    model = target.build_model()
    x, y = target.split_tensors("train", 64)
    model.eval()
    loss_before = target.loss(model(x), y).item()
    cfg = replace(target.train_config, epochs=1, batch_size=64, autocast=False)
    cfg = replace(cfg, lr=1e-3 if cfg.optimizer == "adam" else 0.01)
    for _ in range(3):  # three passes over the same 64 examples must lower their loss
        train(model, data.x_train[:64], data.y_train[:64], target.to_batch, target.loss, cfg, show_progress=False)
    assert target.loss(model(x), y).item() < loss_before
    metric = target.evaluator("val")(model)
    xv, yv = target.split_tensors("val")
    with torch.no_grad(), autocast(torch.device("cpu"), target.eval_autocast):  # bfloat16 where the CPU has it
        logits = model.eval()(xv).float()
    predicted = logits.argmax(1) if logits.shape[-1] > 1 else (logits.squeeze(-1) > 0).long()
    assert metric == pytest.approx(float((predicted == yv).float().mean()), abs=1e-6)


@needs_data
def test_validation_slice_is_carved_from_train_and_cached():
    target = get_target("cnn_cifar10", limit=TINY)
    first = target.data
    again = get_target("cnn_cifar10", limit=TINY).data
    assert first.fingerprint() == again.fingerprint()
    train_rows = {row.tobytes() for row in first.x_train.reshape(len(first.x_train), -1)}
    assert not any(row.tobytes() in train_rows for row in first.x_val.reshape(len(first.x_val), -1))


@needs_data
def test_imdb_tokens_are_front_padded_ids_within_the_vocabulary():
    data = get_target("lstm_imdb", limit=TINY).data
    assert data.x_train.shape[1] == 256 and data.x_train.max() < 20000
    short = (data.x_train == 0).any(axis=1)
    assert short.any()
    row = data.x_train[np.argmax(short)]
    first_word = np.argmax(row != 0)
    assert (row[:first_word] == 0).all() and (row[first_word:] != 0).all()
    assert set(np.unique(data.y_train)) == {0, 1}


def test_cartpole_evaluation_is_seeded_and_untrained_policy_is_poor():
    target = get_target("cartpole_policy")
    torch.manual_seed(0)
    model = target.build_model()
    evaluate = target.evaluator("val", size=8)
    first = evaluate(model)
    assert first == evaluate(model)
    assert first < 200


def test_interrupted_training_resumes_to_the_same_weights():
    """Ctrl-C mid-epoch, resume from the saved progress: the same weights as one run."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 4)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)

    def to_batch(xb, yb, augment, r):  # an augmentation that draws from the epoch's generator
        noise = r.normal(scale=0.1, size=xb.shape).astype(np.float32) if augment else 0.0
        return torch.from_numpy(xb + noise), torch.from_numpy(yb)

    loss = torch.nn.functional.cross_entropy
    cfg = TrainConfig(epochs=2, batch_size=32, lr=0.01)
    torch.manual_seed(0)
    straight = torch.nn.Linear(4, 2)
    start = {k: v.clone() for k, v in straight.state_dict().items()}
    train(straight, x, y, to_batch, loss, cfg, show_progress=False)

    interrupted = torch.nn.Linear(4, 2)
    interrupted.load_state_dict(start)
    optimizer = make_optimizer(interrupted, cfg)
    calls, saved = [0], {}

    def flaky_batch(xb, yb, augment, r):
        calls[0] += 1
        if calls[0] == 10:  # in the second epoch (7 batches per epoch)
            raise KeyboardInterrupt
        return to_batch(xb, yb, augment, r)

    def save_state(p: TrainProgress):
        saved.update(model=interrupted.state_dict(), optimizer=optimizer.state_dict(), progress=p.as_dict())

    with pytest.raises(KeyboardInterrupt):
        train(interrupted, x, y, flaky_batch, loss, cfg, optimizer=optimizer, save_state=save_state,
              show_progress=False)
    assert saved["progress"]["epoch"] == 1 and saved["progress"]["step"] == 2
    resumed = torch.nn.Linear(4, 2)
    resumed.load_state_dict(saved["model"])
    optimizer = make_optimizer(resumed, cfg)
    optimizer.load_state_dict(saved["optimizer"])
    train(resumed, x, y, to_batch, loss, cfg, optimizer=optimizer,
          progress=TrainProgress(**saved["progress"]), show_progress=False)
    for k, v in straight.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[k], v)


def _run(args, home, check=True):
    result = subprocess.run([sys.executable, *args], cwd=REPO, env=script_env(home),
                            capture_output=True, text=True, timeout=600)
    if check and result.returncode != 0:
        raise AssertionError(result.stderr[-2000:])
    return result


@needs_data
def test_pretrain_script_writes_a_checkpoint_and_resumes(isolated_home):
    first = _run(["scripts/pretrain.py", "--target", "cnn_cifar10", "--limit", "300", "--epochs", "1",
                  "--quiet"], isolated_home)
    meta = json.loads(first.stdout[first.stdout.index("{"):])
    assert meta["complete"] and meta["epochs_done"] == 1
    target = get_target("cnn_cifar10", limit=300)  # the checkpoint's metric is the saved network's
    assert meta["test_metric"] == pytest.approx(target.evaluator("test")(target.load_pretrained()), abs=1e-6)
    again = _run(["scripts/pretrain.py", "--target", "cnn_cifar10", "--limit", "300", "--quiet"], isolated_home,
                 check=False)  # never overwrites the checkpoint by accident
    assert again.returncode == 2 and "finished); pass --resume to continue it, or --force" in again.stderr
    resumed = _run(["scripts/pretrain.py", "--target", "cnn_cifar10", "--limit", "300", "--epochs", "2",
                    "--resume", "--quiet"], isolated_home)
    assert "resuming cnn_cifar10 from epoch 1" in resumed.stdout
    ckpt = torch.load(isolated_home / "checkpoints" / "cnn_cifar10.pt", weights_only=True)
    assert ckpt["meta"]["epochs_done"] == 2
    assert [h["epoch"] for h in ckpt["progress"]["history"]] == [1, 2]
    assert ckpt["meta"]["data_fingerprint"] == get_target("cnn_cifar10", limit=300).data.fingerprint()


@needs_data
def test_an_interrupted_pretraining_is_finished_before_it_is_pruned(isolated_home):
    target = get_target("cnn_cifar10", limit=300)
    target.ensure_pretrained(show_progress=False, start=False)  # the scripts that prune: never start one
    assert not target.has_checkpoint()
    target.pretrain(epochs=1, show_progress=False)
    ckpt = torch.load(target.checkpoint_path, weights_only=True)  # as if stopped after 1 of 2 epochs
    ckpt["meta"].update(complete=False, epochs_planned=2)
    atomic_save(ckpt, target.checkpoint_path)
    target.ensure_pretrained(show_progress=False, start=False)  # but finish one
    meta = torch.load(target.checkpoint_path, weights_only=True)["meta"]
    assert meta["complete"] and meta["epochs_done"] == 2
    before = target.checkpoint_path.stat().st_mtime_ns
    target.ensure_pretrained(show_progress=False)  # finished: used as it is
    assert target.checkpoint_path.stat().st_mtime_ns == before


@needs_data
def test_a_resumed_pretraining_keeps_the_epochs_it_was_planned_with(isolated_home):
    """--resume without --epochs continues the run as planned (its cosine schedule too), not
    the config's default epoch count."""
    target = get_target("cnn_cifar10", limit=300)
    target.pretrain(epochs=1, show_progress=False)
    ckpt = torch.load(target.checkpoint_path, weights_only=True)  # as if stopped after 1 of 3 epochs
    ckpt["meta"].update(complete=False, epochs_planned=3)
    atomic_save(ckpt, target.checkpoint_path)
    meta = target.pretrain(resume=True, show_progress=False)
    assert meta["complete"] and meta["epochs_done"] == 3 and meta["epochs_planned"] == 3


def test_missing_corrupt_and_mismatched_checkpoints_give_clear_errors(isolated_home):
    target = get_target("cartpole_policy")
    with pytest.raises(CheckpointError, match="python scripts/pretrain.py --target cartpole_policy"):
        target.load_pretrained()
    target.checkpoint_path.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="corrupt") as err:
        target.load_pretrained()
    assert str(target.checkpoint_path) in str(err.value)
    atomic_save({"state_dict": {}, "meta": {"target": "lstm_imdb"}}, target.checkpoint_path)
    with pytest.raises(CheckpointError, match="made for 'lstm_imdb'"):
        target.load_pretrained()
    wrong = get_target("cartpole_policy").build_model([8, 8]).state_dict()
    atomic_save({"state_dict": wrong, "meta": {"target": "cartpole_policy", "complete": True}},
                target.checkpoint_path)
    with pytest.raises(CheckpointError, match="does not fit"):
        target.load_pretrained()


def test_a_checkpoint_loads_without_its_data_when_no_data_is_needed(isolated_home, tmp_path):
    """Exporting needs no data: the data-fingerprint check, which loads the data set (from
    the hub when no local copy is set), is skipped there."""
    empty = tmp_path / "empty"
    empty.mkdir()
    target = get_target("cnn_cifar10", data_dir=empty)
    atomic_save({"state_dict": target.build_model().state_dict(),
                 "meta": {"target": "cnn_cifar10", "complete": True, "data_fingerprint": "elsewhere"}},
                target.checkpoint_path)
    assert target.load_pretrained(check_data=False) is not None
    with pytest.raises(DataUnavailableError, match="unset PRUNE_ENV_DATA_DIR to load it from the hub"):
        target.load_pretrained()


def test_scripts_reject_bad_input_with_one_line(isolated_home):
    bad_target = _run(["scripts/inspect_target.py", "--target", "nope"], isolated_home, check=False)
    assert bad_target.returncode == 2 and "unknown target 'nope'" in bad_target.stderr
    assert "Traceback" not in bad_target.stderr
    bad_keep = _run(["scripts/inspect_target.py", "--target", "cartpole_policy", "--keep", "0",
                     "--untrained"], isolated_home, check=False)
    assert bad_keep.returncode == 2 and "--keep must be in (0, 1]" in bad_keep.stderr
    no_ckpt = _run(["scripts/inspect_target.py", "--target", "cartpole_policy"], isolated_home, check=False)
    assert no_ckpt.returncode == 2 and "scripts/pretrain.py --target cartpole_policy" in no_ckpt.stderr


def test_inspect_target_prints_original_and_pruned_json(isolated_home):
    out = _run(["scripts/inspect_target.py", "--target", "vgg16_cifar10", "--untrained", "--keep", "0.5",
                "--json"], isolated_home)
    report = json.loads(out.stdout)
    assert report["flops"] == 313_754_624
    assert [layer["units"] for layer in report["pruned"]["layers"]][:3] == [32, 32, 64]
    assert 0.2 < report["pruned"]["flops"] / report["flops"] < 0.3
    assert report["pruned"]["params"] < report["params"]
