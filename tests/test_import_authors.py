"""maskclip-import: the authors' checkpoint-N.pth -> our safetensors checkpoint, strictly and safely.

The authors' layout is built here from our model by an inverse mapping written independently of
maskclip_core/authors.py (module by module, not by renaming rules), and checked against the key
list of their full model (tests/data/authors_state_dict.tsv, a copy of shared/spec's).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from maskclip_core.authors import AuthorsCheckpointError, convert_state_dict, target_shapes
from maskclip_core.checkpoint import load_checkpoint
from maskclip_core.cli import import_checkpoint
from maskclip_core.config import get_config
from maskclip_core.model import build_model
from maskclip_runtime.errors import EXIT_USAGE

AUTHORS_TSV = Path(__file__).resolve().parent / "data" / "authors_state_dict.tsv"

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def authors_layout(model) -> dict[str, torch.Tensor]:
    """Our MaskCLIP -> the authors' state dict, walking our modules."""
    out = {}

    def put(prefix: str, module: torch.nn.Module) -> None:
        for name, tensor in module.state_dict().items():
            out[f"{prefix}.{name}"] = tensor

    put("clip", model.clip.model)
    put("aggregator.vit_model", model.mae)
    put("aggregator.text_projection", model.text_proj)
    for i, vca in enumerate(model.vca, start=1):
        layer = f"aggregator.fusion_layers.layer_{i}"
        put(f"{layer}.channel_adjust.0", vca.clip_proj)
        put(f"{layer}.channel_adjust.1", vca.clip_norm)
        put(f"{layer}.query_proj", vca.q)
        put(f"{layer}.key_proj", vca.k)
        put(f"{layer}.value_proj", vca.v)
        put(f"{layer}.output_proj.0", vca.proj)
        put(f"{layer}.output_proj.1", vca.norm)
    decoder, pyramid = "aggregator.mask_decoder", model.decoder.pyramid
    stages = [  # their Sequentials, position by position (None: a module without parameters)
        [pyramid.up4[0], pyramid.up4[1], None, pyramid.up4[3]],
        [pyramid.up2],
        [],
        [None],  # MaxPool2d
    ]
    for s, (level, head) in enumerate(zip(pyramid.levels, stages, strict=True)):
        for position, module in enumerate([*head, level.lateral, level.lateral_norm, level.output, level.output_norm]):
            if module is not None:
                put(f"{decoder}.stages.{s}.{position}", module)
    put(f"{decoder}.linear_fuse", pyramid.fuse)
    attn, width = model.decoder.tvca.attn, model.config.decoder.channels
    out[f"{decoder}.to_q.weight"], out[f"{decoder}.to_kv.weight"] = attn.in_proj_weight.split([width, 2 * width])
    out[f"{decoder}.to_q.bias"], out[f"{decoder}.to_kv.bias"] = attn.in_proj_bias.split([width, 2 * width])
    put(f"{decoder}.proj", attn.out_proj)
    put(f"{decoder}.norm", model.decoder.norm)
    put(f"{decoder}.predict", model.decoder.head)
    put("cls_aggregator.layers.0.multihead_attn", model.vsa.attn)
    put("cls_aggregator.layers.0.layer_norm", model.vsa.norm)
    put("cls_aggregator.projector.0", model.vsa.proj)
    real, fake = model.prompts.ctx.detach().split(1)
    out["prompt_learner.ctx_neg"], out["prompt_learner.ctx_pos"] = real, fake  # ctx_neg is the real class
    return {k: v.detach().clone() for k, v in out.items()}


def tsv_shapes() -> dict[str, list[int]]:
    rows = AUTHORS_TSV.read_text().splitlines()[1:]
    return {key: json.loads(shape) for key, shape, _ in (row.split("\t") for row in rows)}


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(1)
    return build_model("tiny").eval()


def save_authors_checkpoint(path: Path, state: dict) -> Path:
    """What their trainer writes (IMDLBenCo misc.save_model)."""
    args = argparse.Namespace(model="MaskCLIP", image_size=128, lr=1e-4, betas=(0.9, 0.999), output_dir="./out")
    optimizer = {"state": {0: {"step": torch.tensor(7.0), "exp_avg": torch.zeros(3)}}, "param_groups": [{"lr": 1e-4}]}
    scaler = {"scale": 65536.0, "growth_factor": 2.0, "backoff_factor": 0.5, "growth_interval": 2000}
    torch.save({"model": state, "optimizer": optimizer, "epoch": 7, "scaler": scaler, "args": args}, path)
    return path


def _import(*args):
    return CliRunner().invoke(import_checkpoint, [str(a) for a in args])


def test_authors_full_model_layout_is_the_tsv():
    """Our paper-size model, laid out the authors' way (meta device, no weights), is their key list."""
    with torch.device("meta"):
        model = build_model("opensdi-vitl14")
    ours = {k: list(v.shape) for k, v in authors_layout(model).items()}
    assert len(ours) == 778
    assert ours == tsv_shapes()


def test_importer_mapping_consumes_exactly_the_tsv():
    """Every one of the 778 tensors of their model maps, and every tensor of ours is produced, shapes checked."""
    source = {k: torch.empty(shape, device="meta") for k, shape in tsv_shapes().items()}
    config = get_config("opensdi-vitl14")
    converted = convert_state_dict(source, config)
    assert {k: v.shape for k, v in converted.items()} == target_shapes(config)


def test_checkpoint_round_trip_is_exact(tiny, tmp_path):
    src = save_authors_checkpoint(tmp_path / "checkpoint-7.pth", authors_layout(tiny))
    result = _import(src, "--out", tmp_path / "ckpt", "--config", "tiny")
    assert result.exit_code == 0, result.output
    loaded = load_checkpoint(tmp_path / "ckpt")
    expected = tiny.state_dict()
    assert loaded.state_dict().keys() == expected.keys()
    for key, value in loaded.state_dict().items():
        assert torch.equal(value, expected[key]), key
    meta = json.loads((tmp_path / "ckpt" / "config.json").read_text())["metadata"]
    assert meta["epoch"] == 7 and meta["imported_from"] == "checkpoint-7.pth"
    assert loaded.config.resize == "cv2-linear"  # the authors' resize


def test_bare_state_dict_and_export_accepts_the_folder(tiny, tmp_path):
    from maskclip_export.cli import main as export

    torch.save(authors_layout(tiny), tmp_path / "model.pth")
    assert _import(tmp_path / "model.pth", "--out", tmp_path / "ckpt", "--config", "tiny").exit_code == 0
    result = CliRunner().invoke(
        export, ["--quiet", "--checkpoint", str(tmp_path / "ckpt"), "--out", str(tmp_path / "art"), "--no-verify"]
    )
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "art" / "manifest.json").read_text())
    assert manifest["model"]["config_name"] == "tiny"
    assert manifest["preprocess"]["resize"] == "cv2-linear"


def _mutated(tiny, change):
    state = authors_layout(tiny)
    change(state)
    return state


@pytest.mark.parametrize(
    "change",
    [
        lambda s: s.pop("aggregator.mask_decoder.to_kv.weight"),  # a tensor missing
        lambda s: s.update({"aggregator.extra.weight": torch.zeros(1)}),  # a tensor left over
        lambda s: s.update({"cls_aggregator.projector.0.weight": torch.zeros(3, 3)}),  # a wrong shape
        lambda s: s.update({"aggregator.mask_decoder.to_q.weight": torch.zeros(3, 3)}),  # a part that cannot join
        lambda s: s.update({"prompt_learner.ctx_pos": torch.zeros(1, 10, 64, dtype=torch.long)}),  # not a float
    ],
    ids=["missing", "unexpected", "shape", "concat-shape", "dtype"],
)
def test_strict_mapping_rejects(tiny, tmp_path, change):
    state = _mutated(tiny, change)
    with pytest.raises(AuthorsCheckpointError):
        convert_state_dict(state, get_config("tiny"))
    src = save_authors_checkpoint(tmp_path / "checkpoint-1.pth", state)
    result = _import(src, "--out", tmp_path / "ckpt", "--config", "tiny")
    assert result.exit_code == EXIT_USAGE and result.output.count("\n") == 1, result.output
    assert not (tmp_path / "ckpt").exists()


def test_wrong_config_is_refused_with_the_one_that_fits(tiny, tmp_path):
    src = save_authors_checkpoint(tmp_path / "checkpoint-1.pth", authors_layout(tiny))
    result = _import(src, "--out", tmp_path / "ckpt")  # default: opensdi-vitl14
    assert result.exit_code == EXIT_USAGE and result.output.count("\n") == 1, result.output


class Payload:
    """Unpickling this would run code: a weights-only load must refuse it."""

    ran = False

    def __reduce__(self):
        return (Payload._run, ())

    @staticmethod
    def _run():
        Payload.ran = True


@pytest.mark.parametrize(
    "content",
    [b"not a checkpoint", None],
    ids=["garbage", "code"],
)
def test_unsafe_or_unreadable_files_are_refused(tiny, tmp_path, content):
    src = tmp_path / "checkpoint-1.pth"
    if content is None:
        torch.save({"model": authors_layout(tiny), "args": Payload()}, src)
    else:
        src.write_bytes(content)
    result = _import(src, "--out", tmp_path / "ckpt", "--config", "tiny")
    assert result.exit_code == EXIT_USAGE and "Traceback" not in result.output, result.output
    assert not Payload.ran
    assert not (tmp_path / "ckpt").exists()


def test_out_never_overwrites_what_is_not_a_checkpoint(tiny, tmp_path, monkeypatch):
    src = save_authors_checkpoint(tmp_path / "checkpoint-1.pth", authors_layout(tiny))
    users = tmp_path / "project"
    users.mkdir()
    (users / "config.json").write_text('{"mine": true}')
    result = _import(src, "--out", users, "--config", "tiny")
    assert result.exit_code == EXIT_USAGE and "Traceback" not in result.output, result.output
    assert (users / "config.json").read_text() == '{"mine": true}' and not (users / "model.safetensors").exists()
    monkeypatch.chdir(users)
    (users / "config.json").unlink()
    assert _import(src, "--out", ".", "--config", "tiny").exit_code == EXIT_USAGE
    assert list(users.iterdir()) == []
    # a checkpoint folder of ours is replaced
    assert _import(src, "--out", tmp_path / "ckpt", "--config", "tiny").exit_code == 0
    assert _import(src, "--out", tmp_path / "ckpt", "--config", "tiny").exit_code == 0


def test_weights_of_another_shape_are_named_in_the_error(tiny, tmp_path):
    from safetensors.torch import load_file, save_file

    from maskclip_core.checkpoint import CheckpointError, save_checkpoint

    weights = save_checkpoint(tiny, tmp_path / "ckpt")
    state = load_file(str(weights))
    name = sorted(state)[0]
    state[name] = torch.zeros(3, 3)
    save_file(state, str(weights))
    with pytest.raises(CheckpointError, match=f"size mismatch for {name}"):
        load_checkpoint(tmp_path / "ckpt")
