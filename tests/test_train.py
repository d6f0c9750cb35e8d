"""Training: exact resume, Ctrl-C leaves a loadable checkpoint, 2-process gloo DDP equals one process."""

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from maskclip_core.checkpoint import load_checkpoint
from maskclip_core.config import get_config
from maskclip_core.data.synth import synthesize
from maskclip_core.train import TrainArgs, cosine_lr, param_groups, train

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    # 4 small images (2 real, 2 partial) of one generator: 2 steps per epoch at batch 2.
    return synthesize(
        tmp_path_factory.mktemp("synth"),
        seed=0,
        train_count=4,
        test_count=0,
        generators=["sd15-like"],
        min_size=64,
        max_size=80,
    )


def _args(data, out, **kw):
    base = dict(
        data=str(data),
        split="train",
        out=str(out),
        config="tiny",
        batch_size=2,
        epochs=2,
        workers=0,
        log_every=1,
        lr=1e-3,
    )
    return TrainArgs(**{**base, **kw})


def _weights(run):
    return load_file(str(Path(run) / "last" / "model.safetensors"))


def test_schedule_and_param_groups():
    assert cosine_lr(1e-4, 0, 10) == pytest.approx(1e-4)
    assert cosine_lr(1e-4, 5, 10) == pytest.approx(5e-5)
    assert cosine_lr(1e-4, 10, 10) == pytest.approx(0.0, abs=1e-20)
    from maskclip_core.model import build_model

    model = build_model("tiny")
    decay, no_decay = param_groups(model, 0.05)
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert len(decay["params"]) + len(no_decay["params"]) == len(trainable)
    assert all(p.ndim >= 2 for p in decay["params"]) and all(p.ndim <= 1 for p in no_decay["params"])
    assert not any(p.requires_grad for p in model.clip.parameters())


def test_resume_is_exact(data, tmp_path):
    # 2 steps per epoch, 2 epochs; stopping at 3 resumes mid-epoch 1.
    train(_args(data, tmp_path / "full"))
    train(_args(data, tmp_path / "half", max_steps=3))
    state = json.loads((tmp_path / "half/last/training_state.json").read_text())
    assert state["step"] == 3 and state["epoch"] == 1
    train(_args(data, tmp_path / "half", resume=str(tmp_path / "half/last")))
    full, resumed = _weights(tmp_path / "full"), _weights(tmp_path / "half")
    assert full.keys() == resumed.keys()
    for k in full:
        torch.testing.assert_close(resumed[k], full[k], rtol=0, atol=1e-6, msg=k)
    logs = [json.loads(line) for line in (tmp_path / "half/log.jsonl").read_text().splitlines()]
    full_logs = [json.loads(line) for line in (tmp_path / "full/log.jsonl").read_text().splitlines()]
    assert [r["total"] for r in logs] == pytest.approx([r["total"] for r in full_logs], abs=1e-6)


def _cli(*args):
    return [sys.executable, "-c", "from maskclip_core.cli import train; train()", *args]


def test_ctrl_c_leaves_a_loadable_checkpoint(data, tmp_path):
    out = tmp_path / "run"
    cmd = _cli(
        "--data",
        str(data),
        "--split",
        "train",
        "--out",
        str(out),
        "--config",
        "tiny",
        "--batch",
        "2",
        "--epochs",
        "1000",
        "--workers",
        "0",
        "--log-every",
        "1",
    )
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    log = out / "log.jsonl"
    deadline = time.time() + 120
    while not (log.exists() and log.read_text().strip()) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err.decode()[-2000:]
    assert b"Traceback" not in err
    model = load_checkpoint(out / "last")
    state = json.loads((out / "last/training_state.json").read_text())
    assert state["step"] >= 1 and model.config.name == "tiny"


def _without_key_bias(name: str, tensor: torch.Tensor) -> torch.Tensor:
    if name.endswith(("in_proj_bias", "qkv.bias")):  # packed [q; k; v]
        return tensor.view(3, -1)[[0, 2]]
    return tensor[:0] if name.endswith(".k.bias") else tensor


def test_ddp_two_gloo_processes_match_one_process(data, tmp_path):
    """Global batch 4: one process x 4 images vs two gloo processes x 2 images.

    Dropout and drop-path are off (their random streams differ per rank by design). Every loss
    term is a mean over equally sized per-image terms, so the mean of the two half-batch losses
    IS the global-batch loss and the all-reduced mean gradient IS its gradient; only the float32
    summation order differs (~1e-7 relative), so we allow 1e-5 relative on losses (steps 2 and 3
    run on the updated weights, so they check the synchronised update too) and 1e-5 absolute on
    weights after 3 AdamW steps. Attention KEY biases are left out of the weight check: softmax
    ignores them, so their true gradient is 0 and what they get is rounding noise, which Adam
    normalises into steps of size ~lr in either direction.
    """
    cfg = get_config("tiny")
    cfg = replace(
        cfg,
        name="tiny-nodrop",
        vsa_dropout=0.0,
        mae=replace(cfg.mae, drop_path_rate=0.0),
        decoder=replace(cfg.decoder, dropout=0.0),
    )
    config = tmp_path / "tiny-nodrop.json"
    config.write_text(cfg.to_json())
    common = [
        "--data",
        str(data),
        "--split",
        "train",
        "--config",
        str(config),
        "--epochs",
        "3",
        "--max-steps",
        "3",
        "--workers",
        "0",
        "--log-every",
        "1",
        "--lr",
        "1e-4",
        "--device",
        "cpu",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    single = subprocess.run(
        _cli(*common, "--out", str(tmp_path / "one"), "--batch", "4"),
        cwd=ROOT,
        env=env,
        capture_output=True,
        timeout=300,
    )
    assert single.returncode == 0, single.stderr.decode()[-2000:]
    ddp = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            "-m",
            "maskclip_core.cli",
            *common,
            "--out",
            str(tmp_path / "two"),
            "--batch",
            "2",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        timeout=300,
    )
    assert ddp.returncode == 0, ddp.stderr.decode()[-3000:]
    one = [json.loads(x) for x in (tmp_path / "one/log.jsonl").read_text().splitlines()]
    two = [json.loads(x) for x in (tmp_path / "two/log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in one] == [r["step"] for r in two] == [1, 2, 3]
    for key in ("total", "ce", "bce", "edge"):
        assert [r[key] for r in two] == pytest.approx([r[key] for r in one], rel=1e-5, abs=1e-7), key
    w1, w2 = _weights(tmp_path / "one"), _weights(tmp_path / "two")
    for k in w1:
        torch.testing.assert_close(_without_key_bias(k, w2[k]), _without_key_bias(k, w1[k]), rtol=0, atol=1e-5, msg=k)
    assert json.loads((tmp_path / "two/last/training_state.json").read_text())["world_size"] == 2
