"""Training loop: the paper's recipe as defaults, exact resume, Ctrl-C safe, DDP through torchrun.

Recipe (MODEL.md): AdamW (0.9, 0.999, eps 1e-8), lr 1e-4, weight decay 0.05 except biases and 1-D
parameters, per-iteration half-cosine to 0 without warm-up, 50 epochs, 16 images per process,
seed 42. The optimiser is built from the parameters that require grad AFTER the model is final.
A step whose gradients hold inf or NaN is skipped (on by default): the authors' fp32 loop steps
through an enabled GradScaler, which does exactly that; the schedule still advances.

Checkpoints go to OUT/last/ (rewritten every --save-every steps, at the end and on Ctrl-C):
model.safetensors + config.json (maskclip_core.checkpoint, loadable on their own) and
training_state.safetensors + training_state.json (optimiser moments, RNG states, step, epoch).
No pickle anywhere. `--resume OUT/last` continues bit-exactly: the data order is a function of
(seed, epoch), augmentations of (seed, epoch, index) and dropout of the saved RNG state.
The first Ctrl-C finishes the current step, saves and exits (status 130); a second one aborts.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

from maskclip_core.checkpoint import checkpoint_files, read_checkpoint_config, save_checkpoint
from maskclip_core.config import MaskCLIPConfig, get_config
from maskclip_core.data import MaskCLIPDataset, open_samples
from maskclip_core.losses import compute_losses
from maskclip_core.model import MaskCLIP, build_model


@dataclass
class TrainArgs:
    data: str
    out: str
    split: str | None = None
    config: str = "opensdi-vitl14"  # registered name or a JSON file (config dict or checkpoint config.json)
    clip_weights: str | None = None
    mae_weights: str | None = None
    epochs: int = 50
    batch_size: int = 16  # per process
    lr: float = 1e-4
    weight_decay: float = 0.05
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    seed: int = 42
    workers: int = 2
    bf16: bool = False
    clip_grad: float | None = None
    skip_nonfinite: bool = True  # skip steps with inf/NaN gradients, as the authors' GradScaler does
    max_steps: int | None = None  # stop early; the cosine schedule still spans all epochs
    save_every: int = 500
    log_every: int = 10
    resume: str | None = None
    device: str = "auto"


def resolve_config(spec: str) -> MaskCLIPConfig:
    """A registered config name, or a JSON file holding a config (or a checkpoint's config.json)."""
    path = Path(spec)
    if path.suffix == ".json" and path.is_file():
        doc = json.loads(path.read_text())
        return MaskCLIPConfig.from_dict(doc.get("config", doc))
    return get_config(spec)


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Trainable parameters (requires_grad as final) -> [decayed >=2-D weights, undecayed biases and 1-D]."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 or name.endswith(".bias") else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def optimizer_step(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, clip_grad: float | None, skip_nonfinite: bool
) -> bool:
    """Clip (if asked) and step; returns False for a step skipped because a gradient is not finite.

    GradScaler's check, without its loss scaling (pointless in fp32): every gradient element is
    tested, the parameters and the optimiser moments stay untouched, the gradients are dropped.
    Under DDP the gradients are already all-reduced, so every rank decides alike.
    """
    if skip_nonfinite:
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        if grads and not bool(torch.stack([torch.isfinite(g).all() for g in grads]).all()):
            optimizer.zero_grad(set_to_none=True)
            return False
    if clip_grad:
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip_grad)
    optimizer.step()
    return True


def cosine_lr(base_lr: float, step: int, total: int) -> float:
    """Half-cosine from base_lr at step 0 to 0 at step `total`, no warm-up."""
    return 0.5 * base_lr * (1.0 + math.cos(math.pi * min(step, total) / total))


class ResumableSampler(DistributedSampler):
    """DistributedSampler whose first epoch after a resume skips the batches already trained on."""

    skip = 0  # indices (per process) to drop at the start of the current epoch

    def __iter__(self):
        return iter(list(super().__iter__())[self.skip :])

    def __len__(self) -> int:
        return self.num_samples - self.skip


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device_arg: str) -> tuple[Dist, torch.device]:
    """torchrun env -> process group (NCCL on GPU, gloo on CPU) and this process's device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    d = Dist(int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0")))
    if device_arg == "auto":
        device_arg = f"cuda:{d.local_rank}" if torch.cuda.is_available() else "cpu"
    device = torch.device(device_arg)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return d, device


def _mean_across(values: torch.Tensor, d: Dist) -> torch.Tensor:
    if d.world > 1:
        dist.all_reduce(values)
        values /= d.world
    return values


class _StopFlag:
    """First SIGINT asks the loop to stop at the next step boundary; a second one raises at once."""

    def __init__(self):
        self.requested = False
        self._previous = signal.getsignal(signal.SIGINT)

    def __enter__(self):
        signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame):
        self.requested = True
        signal.signal(signal.SIGINT, signal.default_int_handler)

    def __exit__(self, *exc):
        signal.signal(signal.SIGINT, self._previous)


def _ignore_sigint(worker_id: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the main process's to handle


def _rng_states(d: Dist, device: torch.device) -> dict[str, torch.Tensor]:
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    if d.world == 1:
        return {f"rng.rank0.{k}": v for k, v in state.items()}
    gathered = [None] * d.world
    dist.all_gather_object(gathered, state)
    return {f"rng.rank{r}.{k}": v for r, s in enumerate(gathered) for k, v in s.items()}


def save_training_state(
    out: Path, model: MaskCLIP, optimizer: torch.optim.Optimizer, state: dict, rng: dict[str, torch.Tensor]
) -> Path:
    """OUT/last/ = model checkpoint + optimiser moments + RNG states + counters, swapped in atomically."""
    tmp, last = out / ".last.tmp", out / "last"
    shutil.rmtree(tmp, ignore_errors=True)
    save_checkpoint(model, tmp, metadata={"step": state["step"], "epoch": state["epoch"]})
    tensors = dict(rng)
    opt_state = optimizer.state_dict()
    for index, moments in opt_state["state"].items():
        for name, value in moments.items():
            tensors[f"optimizer.{index}.{name}"] = torch.as_tensor(value).detach().cpu().contiguous()
    save_file(tensors, str(tmp / "training_state.safetensors"))
    groups = [
        {k: v for k, v in g.items() if k != "params"} | {"size": len(g["params"])} for g in opt_state["param_groups"]
    ]
    (tmp / "training_state.json").write_text(json.dumps({**state, "param_groups": groups}, indent=2))
    if last.exists():
        shutil.rmtree(last)
    tmp.rename(last)
    return last


def load_training_state(path: Path, optimizer: torch.optim.Optimizer, d: Dist, device: torch.device) -> dict:
    """Restore optimiser moments and this rank's RNG state; returns the counters (step, epoch, ...)."""
    state = json.loads((path / "training_state.json").read_text())
    tensors = load_file(str(path / "training_state.safetensors"))
    opt_state = optimizer.state_dict()
    if [len(g["params"]) for g in opt_state["param_groups"]] != [g["size"] for g in state["param_groups"]]:
        raise ValueError(f"{path}: optimiser parameter groups do not match this model")
    moments: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith("optimizer."):
            _, index, name = key.split(".", 2)
            moments.setdefault(int(index), {})[name] = value
    opt_state["state"] = moments
    for group, saved in zip(opt_state["param_groups"], state["param_groups"], strict=True):
        group.update({k: tuple(v) if isinstance(v, list) else v for k, v in saved.items() if k != "size"})
    optimizer.load_state_dict(opt_state)
    prefix = f"rng.rank{d.rank}."
    if prefix + "cpu" in tensors:
        torch.set_rng_state(tensors[prefix + "cpu"])
        if device.type == "cuda" and prefix + "cuda" in tensors:
            torch.cuda.set_rng_state(tensors[prefix + "cuda"], device)
    else:  # resumed with more processes than saved: a fresh, still deterministic stream
        torch.manual_seed(state["seed"] + 1000 * d.rank + state["step"])
    return state


def train(args: TrainArgs) -> Path:
    """Run training; returns the path of the last checkpoint (OUT/last)."""
    d, device = init_distributed(args.device)
    out = Path(args.out)
    cfg = resolve_config(args.config)
    samples = open_samples(args.data, args.split)
    dataset = MaskCLIPDataset(samples, cfg.preprocess_spec(), train=True, seed=args.seed)
    sampler = ResumableSampler(dataset, num_replicas=d.world, rank=d.rank, shuffle=True, seed=args.seed)
    steps_per_epoch = len(sampler) // args.batch_size
    if steps_per_epoch == 0:
        raise ValueError(f"{args.data}: {len(sampler)} images per process is less than one batch of {args.batch_size}")
    total_steps = args.epochs * steps_per_epoch
    last_step = min(total_steps, args.max_steps or total_steps)

    torch.manual_seed(args.seed)  # identical initial weights on every rank
    model = build_model(cfg, args.clip_weights, args.mae_weights).to(device).train()
    optimizer = torch.optim.AdamW(
        param_groups(model, args.weight_decay), lr=args.lr, betas=(args.beta1, args.beta2), eps=args.eps
    )
    torch.manual_seed(args.seed + 1000 * d.rank)  # dropout / drop-path stream, per rank
    step = skipped = 0
    if args.resume:
        resume = Path(args.resume)
        if read_checkpoint_config(resume) != cfg:
            raise ValueError(f"{resume}: checkpoint config differs from --config {args.config}")
        model.load_state_dict(load_file(str(checkpoint_files(resume)[0]), device=str(device)))
        resumed = load_training_state(resume, optimizer, d, device)
        step, skipped = resumed["step"], resumed.get("skipped_steps", 0)
    net = model
    if d.world > 1:
        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if d.main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "args.json").write_text(json.dumps(asdict(args), indent=2))

    def state(epoch: int) -> dict:
        counters = {"step": step, "epoch": epoch, "skipped_steps": skipped}
        return {**counters, "seed": args.seed, "world_size": d.world, "args": asdict(args)}

    def checkpoint(epoch: int) -> None:
        rng = _rng_states(d, device)  # collective: every rank takes part
        if d.main:
            save_training_state(out, model, optimizer, state(epoch), rng)

    log = (out / "log.jsonl").open("a") if d.main else None
    bar = tqdm(total=last_step, initial=step, disable=not d.main, desc="train", dynamic_ncols=True)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16)
    interrupted = False
    t0 = time.time()
    with _StopFlag() as stop:
        while step < last_step and not interrupted:
            epoch = step // steps_per_epoch
            sampler.set_epoch(epoch)
            sampler.skip = (step - epoch * steps_per_epoch) * args.batch_size
            dataset.set_epoch(epoch)
            loader = DataLoader(
                dataset,
                batch_size=args.batch_size,
                sampler=sampler,
                num_workers=args.workers,
                drop_last=True,
                generator=torch.Generator().manual_seed(args.seed),  # keeps the global RNG untouched
                worker_init_fn=_ignore_sigint,
            )
            for batch in loader:
                lr = cosine_lr(args.lr, step, total_steps)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                with autocast:
                    outputs = net(batch["image"].to(device, non_blocking=True))
                losses = compute_losses(
                    outputs, batch["mask"].to(device), batch["edge"].to(device), batch["label"].to(device)
                )
                optimizer.zero_grad(set_to_none=True)
                losses["total"].backward()
                if not optimizer_step(model, optimizer, args.clip_grad, args.skip_nonfinite):
                    skipped += 1
                    if d.main:
                        tqdm.write(f"step {step + 1}: non-finite gradients, step skipped ({skipped} so far)")
                step += 1
                bar.update(1)
                flags = torch.tensor([float(stop.requested)], device=device)
                if d.world > 1:
                    dist.all_reduce(flags, op=dist.ReduceOp.MAX)  # every rank stops at the same step
                interrupted = bool(flags.item())
                if step % args.log_every == 0 or step == 1 or step == last_step or interrupted:
                    names = ("total", "ce", "bce", "edge")
                    values = _mean_across(torch.stack([losses[k].detach().float() for k in names]), d).tolist()
                    if d.main:
                        record = {"step": step, "epoch": epoch, "lr": lr, **dict(zip(names, values, strict=True))}
                        record["skipped_steps"] = skipped
                        record["time"] = round(time.time() - t0, 3)
                        log.write(json.dumps(record) + "\n")
                        log.flush()
                        bar.set_postfix(loss=f"{values[0]:.4f}")
                if interrupted or step >= last_step:
                    break
                if step % args.save_every == 0:
                    checkpoint(epoch)
        checkpoint(step // steps_per_epoch)
    bar.close()
    if log is not None:
        log.close()
    if interrupted:
        if d.main:
            tqdm.write(f"interrupted at step {step}; resumable checkpoint in {out / 'last'}")
        raise KeyboardInterrupt
    return out / "last"
