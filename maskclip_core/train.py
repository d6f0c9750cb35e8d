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
import sys
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
from maskclip_core.config import MaskCLIPConfig, resolve_config
from maskclip_core.data import MaskCLIPDataset, open_samples
from maskclip_core.losses import compute_losses
from maskclip_core.model import MaskCLIP, build_model
from maskclip_core.train_memory import check_memory
from maskclip_core.train_options import TrainArgs, store_options
from maskclip_core.weights import require_pretrained


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
    """Run training; returns the path of the last checkpoint (OUT/last).

    Before anything is built: the config (a resumed run's is its checkpoint's), the pretrained
    weights (or args.random_init) and the memory estimate (unless args.force).
    """
    d, device = init_distributed(args.device)
    cfg = resolve_config(args.config)
    if args.resume:
        if read_checkpoint_config(args.resume) != cfg:
            raise ValueError(f"{args.resume}: checkpoint config differs from --config {args.config}")
    elif not args.random_init:
        require_pretrained(cfg, args.clip_weights, args.mae_weights)
    if not args.force:
        check_memory(cfg, args.batch_size, device, processes=int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    trainer = Trainer(args, cfg, d, device)
    if args.resume:
        trainer.restore(Path(args.resume))
    return trainer.run()


class Trainer:
    """One process's share of a run: its data, the model, the optimiser and the counters; `run` is the loop."""

    def __init__(self, args: TrainArgs, cfg: MaskCLIPConfig, d: Dist, device: torch.device):
        self.args, self.d, self.device, self.out = args, d, device, Path(args.out)
        samples = open_samples(args.data, args.split)
        self.dataset = MaskCLIPDataset(samples, cfg.preprocess_spec(), train=True, seed=args.seed)
        self.sampler = ResumableSampler(self.dataset, num_replicas=d.world, rank=d.rank, shuffle=True, seed=args.seed)
        self.steps_per_epoch = len(self.sampler) // args.batch_size
        if self.steps_per_epoch == 0:
            raise ValueError(
                f"{args.data}: {len(self.sampler)} images per process is less than one batch of {args.batch_size}"
            )
        self.total_steps = args.epochs * self.steps_per_epoch
        self.last_step = min(self.total_steps, args.max_steps or self.total_steps)
        torch.manual_seed(args.seed)  # identical initial weights on every rank
        pretrained = (None, None) if args.resume else (args.clip_weights, args.mae_weights)  # resumed: its own
        self.model = build_model(cfg, *pretrained).to(device).train()
        self.optimizer = torch.optim.AdamW(
            param_groups(self.model, args.weight_decay), lr=args.lr, betas=(args.beta1, args.beta2), eps=args.eps
        )
        torch.manual_seed(args.seed + 1000 * d.rank)  # dropout / drop-path stream, per rank
        self.autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16)
        self.step = self.skipped = 0
        self.log = self.bar = None
        self.started = time.time()

    def restore(self, checkpoint: Path) -> None:
        """Weights, optimiser moments, RNG state and counters of OUT/last; says where the run resumes."""
        self.model.load_state_dict(load_file(str(checkpoint_files(checkpoint)[0]), device=str(self.device)))
        state = load_training_state(checkpoint, self.optimizer, self.d, self.device)
        self.step, self.skipped = state["step"], state.get("skipped_steps", 0)
        if self.d.main:
            epoch = self.step // self.steps_per_epoch
            where = f"step {self.step} of {self.last_step} (epoch {epoch}, a {self.total_steps}-step schedule)"
            if self.step >= self.last_step:
                where += ": nothing left to train (a larger --max-steps or --epochs goes on)"
            tqdm.write(f"resuming {checkpoint} at {where}", file=sys.stderr)

    def run(self) -> Path:
        args, d = self.args, self.d
        net = self.model
        if d.world > 1:
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            net = DistributedDataParallel(self.model, device_ids=device_ids)
        if d.main:
            store_options(args)
            self.log = (self.out / "log.jsonl").open("a")
        self.bar = tqdm(total=self.last_step, initial=self.step, disable=not d.main, desc="train", dynamic_ncols=True)
        interrupted = False
        with _StopFlag() as stop:
            while self.step < self.last_step and not interrupted:
                epoch = self.step // self.steps_per_epoch
                for batch in self._loader(epoch):
                    losses, lr = self._train_step(net, batch)
                    interrupted = self._stop_requested(stop)
                    if self.step % args.log_every == 0 or self.step in (1, self.last_step) or interrupted:
                        self._log(epoch, lr, losses)
                    if interrupted or self.step >= self.last_step:
                        break
                    if self.step % args.save_every == 0:
                        self._checkpoint(epoch)
            self._checkpoint(self.step // self.steps_per_epoch)
        self.bar.close()
        if self.log is not None:
            self.log.close()
        if interrupted:
            if d.main:
                tqdm.write(f"interrupted at step {self.step}; resumable checkpoint in {self.out / 'last'}")
            raise KeyboardInterrupt
        return self.out / "last"

    def _loader(self, epoch: int) -> DataLoader:
        """This epoch's batches, from where a resumed run stopped inside it."""
        self.sampler.set_epoch(epoch)
        self.sampler.skip = (self.step - epoch * self.steps_per_epoch) * self.args.batch_size
        self.dataset.set_epoch(epoch)
        return DataLoader(
            self.dataset,
            batch_size=self.args.batch_size,
            sampler=self.sampler,
            num_workers=self.args.workers,
            drop_last=True,
            generator=torch.Generator().manual_seed(self.args.seed),  # keeps the global RNG untouched
            worker_init_fn=_ignore_sigint,
        )

    def _train_step(self, net: torch.nn.Module, batch: dict) -> tuple[dict[str, torch.Tensor], float]:
        """One optimiser step on the schedule's learning rate -> (losses, lr)."""
        lr = cosine_lr(self.args.lr, self.step, self.total_steps)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        with self.autocast:
            outputs = net(batch["image"].to(self.device, non_blocking=True))
        targets = (batch[k].to(self.device) for k in ("mask", "edge", "label"))
        losses = compute_losses(outputs, *targets)
        self.optimizer.zero_grad(set_to_none=True)
        losses["total"].backward()
        if not optimizer_step(self.model, self.optimizer, self.args.clip_grad, self.args.skip_nonfinite):
            self.skipped += 1
            if self.d.main:
                tqdm.write(f"step {self.step + 1}: non-finite gradients, step skipped ({self.skipped} so far)")
        self.step += 1
        self.bar.update(1)
        return losses, lr

    def _stop_requested(self, stop: _StopFlag) -> bool:
        flags = torch.tensor([float(stop.requested)], device=self.device)
        if self.d.world > 1:
            dist.all_reduce(flags, op=dist.ReduceOp.MAX)  # every rank stops at the same step
        return bool(flags.item())

    def _log(self, epoch: int, lr: float, losses: dict[str, torch.Tensor]) -> None:
        names = ("total", "ce", "bce", "edge")
        values = _mean_across(torch.stack([losses[k].detach().float() for k in names]), self.d).tolist()
        if self.d.main:
            record = {"step": self.step, "epoch": epoch, "lr": lr, **dict(zip(names, values, strict=True))}
            record["skipped_steps"] = self.skipped
            record["time"] = round(time.time() - self.started, 3)
            self.log.write(json.dumps(record) + "\n")
            self.log.flush()
            self.bar.set_postfix(loss=f"{values[0]:.4f}")

    def _checkpoint(self, epoch: int) -> None:
        rng = _rng_states(self.d, self.device)  # collective: every rank takes part
        if self.d.main:
            counters = {"step": self.step, "epoch": epoch, "skipped_steps": self.skipped}
            state = {**counters, "seed": self.args.seed, "world_size": self.d.world, "args": asdict(self.args)}
            save_training_state(self.out, self.model, self.optimizer, state, rng)
