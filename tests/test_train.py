"""Training: exact resume, Ctrl-C leaves a loadable checkpoint, 2-process gloo DDP equals one process."""

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from maskclip_core.checkpoint import load_checkpoint
from maskclip_core.cli import train as train_command
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
        random_init=True,
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


@pytest.fixture(scope="module")
def full_run(data, tmp_path_factory):
    """The whole 4-step run (2 steps per epoch, 2 epochs) that interrupted and resumed runs must equal."""
    out = tmp_path_factory.mktemp("full")
    train(_args(data, out))
    return out


def _assert_same_run(run, full_run):
    full, resumed = _weights(full_run), _weights(run)
    assert full.keys() == resumed.keys()
    for k in full:
        torch.testing.assert_close(resumed[k], full[k], rtol=0, atol=1e-6, msg=k)
    logs = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    full_logs = [json.loads(line) for line in (full_run / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logs] == [r["step"] for r in full_logs]
    assert [r["total"] for r in logs] == pytest.approx([r["total"] for r in full_logs], abs=1e-6)


def test_resume_is_exact(data, full_run, tmp_path):
    # stopping at 3 resumes mid-epoch 1.
    train(_args(data, tmp_path / "half", max_steps=3))
    state = json.loads((tmp_path / "half/last/training_state.json").read_text())
    assert state["step"] == 3 and state["epoch"] == 1
    train(_args(data, tmp_path / "half", resume=str(tmp_path / "half/last")))
    _assert_same_run(tmp_path / "half", full_run)


def test_resume_alone_continues_with_the_run_options(data, full_run, tmp_path, monkeypatch):
    """An interrupted run (as by Ctrl-C at step 3, no --max-steps) resumed by `--resume DIR` and nothing else."""
    import maskclip_core.train as train_module

    real_stop = train_module.Trainer._stop_requested
    monkeypatch.setattr(
        train_module.Trainer, "_stop_requested", lambda self, stop: self.step == 3 or real_stop(self, stop)
    )
    with pytest.raises(KeyboardInterrupt):
        train(_args(data, tmp_path / "half"))
    monkeypatch.undo()
    result = CliRunner().invoke(train_command, ["--resume", str(tmp_path / "half" / "last")])
    assert result.exit_code == 0, result.output
    _assert_same_run(tmp_path / "half", full_run)
    stored = json.loads((tmp_path / "half" / "args.json").read_text())
    assert stored == {**asdict(_args(data, tmp_path / "half")), "resume": str(tmp_path / "half" / "last")}


@pytest.mark.parametrize(
    "option", [("--batch", "4"), ("--seed", "1"), ("--split", "test"), ("--config", "opensdi-vitl14")]
)
def test_resume_refuses_options_that_fix_what_a_step_means(full_run, option, monkeypatch):
    import maskclip_core.train as train_module

    probe = _BuildProbe()
    monkeypatch.setattr(train_module, "Trainer", probe)
    result = CliRunner().invoke(train_command, ["--resume", str(full_run / "last"), *option])
    assert result.exit_code == 2 and probe.calls == 0
    assert any(option[0] in param.opts for param in train_command.params)  # refused as a conflict, not unknown


def test_resume_takes_options_that_only_change_the_rest_of_the_run(data, full_run, tmp_path):
    """Another --out, a longer schedule cap and other logging: the run goes on from its checkpoint."""
    out = tmp_path / "more"
    args = ["--resume", str(full_run), "--out", str(out), "--epochs", "3", "--log-every", "2"]
    result = CliRunner().invoke(train_command, args)
    assert result.exit_code == 0, result.output
    state = json.loads((out / "last" / "training_state.json").read_text())
    assert state["step"] == 6 and state["args"]["data"] == str(data) and state["args"]["log_every"] == 2
    assert [json.loads(line)["step"] for line in (out / "log.jsonl").read_text().splitlines()] == [6]


class _Built(Exception):
    """Raised where the model would be built: the run got past every check before it."""


class _BuildProbe:
    """Stands in for the Trainer: counts the runs that got past every check (and stops them there)."""

    def __init__(self):
        self.calls = 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        raise _Built


@pytest.mark.parametrize(
    "options",
    [
        [],  # opensdi-vitl14, the default config: CLIP and MAE have hub weights
        ["--clip-weights", "openai"],  # its MAE would still start random
        ["--config", "tiny"],  # no hub weights fit tiny's CLIP, but a frozen random one is still random
    ],
)
def test_random_weights_need_random_init(data, tmp_path, monkeypatch, options):
    import maskclip_core.train as train_module

    probe = _BuildProbe()
    monkeypatch.setattr(train_module, "Trainer", probe)
    monkeypatch.setattr(train_module, "check_memory", lambda *a, **k: None)
    base = ["--data", str(data), "--split", "train", "--out", str(tmp_path / "run"), *options]
    refused = CliRunner().invoke(train_command, base)
    assert refused.exit_code == 2 and probe.calls == 0
    CliRunner().invoke(train_command, [*base, "--random-init"])
    assert probe.calls == 1


def test_a_run_over_the_available_memory_is_refused_unless_forced(data, tmp_path, monkeypatch):
    import maskclip_core.train as train_module
    import maskclip_core.train_memory as train_memory

    probe = _BuildProbe()
    monkeypatch.setattr(train_module, "Trainer", probe)
    need = train_memory.estimate_training_memory(get_config("tiny"), 2).total
    monkeypatch.setattr(train_memory, "available_memory", lambda device: need - 1)
    base = ["--data", str(data), "--out", str(tmp_path / "run"), "--config", "tiny", "--random-init"]
    refused = CliRunner().invoke(train_command, [*base, "--batch", "2"])
    assert refused.exit_code == 2 and probe.calls == 0
    CliRunner().invoke(train_command, [*base, "--batch", "1"])
    assert probe.calls == 1
    CliRunner().invoke(train_command, [*base, "--batch", "2", "--force"])
    assert probe.calls == 2


def test_memory_estimate_counts_what_a_real_training_step_holds(one_torch_thread):
    """Parameters, gradients and moments of the real model exactly; activations against what autograd keeps
    in a real forward pass (each storage once, parameters excluded), counted on CPU tensors by address: the
    estimate may only be above it, by what the CPU's fused attention saves over the reference kernel."""
    from maskclip_core.model import build_model
    from maskclip_core.train_memory import estimate_training_memory

    cfg = get_config("tiny")
    estimate = estimate_training_memory(cfg, 3)
    torch.manual_seed(0)
    model = build_model(cfg).train()
    params = [p for p in model.parameters()]
    trainable = sum(p.numel() * 4 for p in params if p.requires_grad)
    assert estimate.parameters == sum(p.numel() * 4 for p in params)
    assert (estimate.gradients, estimate.moments) == (trainable, 2 * trainable)
    owned = {t.untyped_storage().data_ptr() for t in (*params, *model.buffers())}
    kept = {}

    def pack(t):
        if t.untyped_storage().data_ptr() not in owned:
            kept[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(torch.randn(3, 3, cfg.image_size, cfg.image_size))
    assert sum(kept.values()) <= estimate.activations <= 1.1 * sum(kept.values())


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
        "--random-init",
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
        "--random-init",
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


def test_a_folder_of_split_folders_trains_on_train_only_and_says_so(tmp_path, monkeypatch):
    import maskclip_core.train as train_module
    from maskclip_core.data import open_samples

    root = synthesize(tmp_path / "synth", 0, 4, 2, ["sd15-like"], 64, 80)
    assert (root / "train").is_dir() and (root / "test").is_dir()
    seen = []
    monkeypatch.setattr(train_module, "train", lambda args: seen.append(args) or tmp_path / "run" / "last")
    result = CliRunner().invoke(
        train_command, ["--data", str(root), "--out", str(tmp_path / "run"), "--config", "tiny"]
    )
    assert result.exit_code == 0, result.output
    (args,) = seen
    assert args.split == "train" and "training on train/ only" in result.stderr
    assert len(open_samples(args.data, args.split)) == 4  # not the 6 of train/ and test/ together
    seen.clear()
    CliRunner().invoke(train_command, ["--data", str(root), "--split", "test", "--out", str(tmp_path / "r2")])
    assert seen[0].split == "test"
