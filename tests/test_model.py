"""The reference model against independent computations (MODEL.md)."""

from __future__ import annotations

import functools
import json
import subprocess
import sys
import time

import pytest
import timm.models.vision_transformer as timm_vit
import torch
import torch.nn.functional as F
from torch import nn

from maskclip_core.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from maskclip_core.config import get_config
from maskclip_core.model import build_model
from maskclip_core.model.layers import multihead_attention
from maskclip_core.model.mae import (
    MaeBlock,
    RelPosAttention,
    decomposed_rel_pos_bias,
    relative_position_table,
    window_partition,
    window_unpartition,
)
from maskclip_core.weights import WeightsUnavailableError, load_clip_weights, load_mae_weights


def test_explicit_attention_equals_torch_mha():
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(32, 4, batch_first=True).eval()
    q, kv = torch.randn(3, 5, 32), torch.randn(3, 7, 32)
    ref_cross = mha(q, kv, kv, need_weights=False)[0]
    ref_self = mha(kv, kv, kv, need_weights=False)[0]
    torch.testing.assert_close(multihead_attention(mha, q, kv, kv), ref_cross, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(multihead_attention(mha, kv, kv, kv), ref_self, atol=1e-6, rtol=1e-5)


def test_decomposed_rel_pos_equals_direct_gather():
    torch.manual_seed(0)
    n, s, d = 3, 5, 8
    q = torch.randn(n, s * s, d)
    table_h, table_w = torch.randn(2 * s - 1, d), torch.randn(2 * s - 1, d)
    bias = decomposed_rel_pos_bias(q, relative_position_table(table_h, s), relative_position_table(table_w, s), s, s)
    direct = torch.empty(n, s, s, s, s)
    qg = q.reshape(n, s, s, d)
    for i in range(s):
        for j in range(s):
            for k in range(s):
                for m in range(s):
                    rh = table_h[i - k + s - 1]
                    rw = table_w[j - m + s - 1]
                    direct[:, i, j, k, m] = qg[:, i, j] @ rh + qg[:, i, j] @ rw
    torch.testing.assert_close(bias, direct.reshape(n, s * s, s * s), atol=1e-5, rtol=1e-5)


def test_windowed_attention_with_padding_equals_per_window_loop():
    torch.manual_seed(0)
    grid, window, dim = 8, 3, 16  # pads 8 -> 9: three 3x3 windows per side, the last ones padded
    attn = RelPosAttention(dim, heads=2, size=window)
    nn.init.normal_(attn.rel_pos_h)
    nn.init.normal_(attn.rel_pos_w)
    x = torch.randn(2, grid, grid, dim)
    padded = 9
    fast = window_unpartition(attn(window_partition(x, window, padded)), window, padded, grid)

    xp = torch.zeros(2, padded, padded, dim)
    xp[:, :grid, :grid] = x
    slow = torch.zeros_like(xp)
    for r in range(0, padded, window):
        for c in range(0, padded, window):
            slow[:, r : r + window, c : c + window] = attn(xp[:, r : r + window, c : c + window])
    torch.testing.assert_close(fast, slow[:, :grid, :grid], atol=1e-5, rtol=1e-5)


def test_mae_block_without_relpos_or_windows_equals_timm_vit_block():
    torch.manual_seed(0)
    dim, heads, grid = 48, 4, 6
    ours = MaeBlock(dim, heads, 4.0, grid=grid, window=0, drop_path=0.0).eval()
    ref = timm_vit.Block(dim, heads, mlp_ratio=4.0, qkv_bias=True, norm_layer=functools.partial(nn.LayerNorm, eps=1e-6))
    ref.eval()
    missing = ours.load_state_dict(ref.state_dict(), strict=False).missing_keys
    assert sorted(missing) == ["attn.rel_pos_h", "attn.rel_pos_w"]  # and nothing else differs by name
    x = torch.randn(2, grid, grid, dim)
    torch.testing.assert_close(
        ours(x).reshape(2, grid * grid, dim), ref(x.reshape(2, grid * grid, dim)), atol=1e-5, rtol=1e-5
    )


def test_clip_taps_equal_hook_capture(tiny_model):
    clip = tiny_model.clip
    captured = {}
    blocks = clip.model.visual.transformer.resblocks
    handles = [
        blocks[i].ln_2.register_forward_hook(lambda m, a, out, i=i: captured.__setitem__(i, out)) for i in clip.cfg.taps
    ]
    x = torch.randn(2, 3, clip.cfg.image_size, clip.cfg.image_size)
    try:
        with torch.no_grad():
            clip.model.visual(x)
    finally:
        for h in handles:
            h.remove()
    cls, maps = clip.visual_taps(x)
    g = clip.cfg.grid
    for t, i in enumerate(clip.cfg.taps):
        ref = captured[i]  # [B,1+g*g,W]
        torch.testing.assert_close(cls[:, t], ref[:, 0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(maps[:, t], ref[:, 1:].transpose(1, 2).reshape(2, -1, g, g), atol=1e-5, rtol=1e-5)


def test_forward_shapes_and_probabilities(tiny_model):
    cfg = tiny_model.config
    x = torch.randn(3, 3, cfg.image_size, cfg.image_size)
    with torch.no_grad():
        out = tiny_model(x)
    assert out["logits"].shape == (3, 2)
    assert out["mask_logits"].shape == (3, 1, cfg.decoder_size, cfg.decoder_size)
    assert out["mask_prob"].shape == (3, 1, cfg.image_size, cfg.image_size)
    torch.testing.assert_close(out["fake_prob"], F.softmax(out["logits"], -1)[:, 1])
    up = F.interpolate(out["mask_logits"], size=cfg.image_size, mode="bilinear", align_corners=True)
    torch.testing.assert_close(out["mask_prob"], up.sigmoid())
    # each image is processed independently (no batch mixing)
    with torch.no_grad():
        single = tiny_model(x[1:2])
    torch.testing.assert_close(single["mask_prob"], out["mask_prob"][1:2], atol=1e-5, rtol=1e-4)


def _train_step_loss(model, x):
    out = model(x)
    label = torch.tensor([0, 1])
    target = torch.zeros_like(out["mask_prob"])
    target[1, :, : target.shape[-2] // 2] = 1
    up = F.interpolate(out["mask_logits"], size=target.shape[-1], mode="bilinear", align_corners=True)
    return F.cross_entropy(out["logits"], label) + F.binary_cross_entropy_with_logits(up, target)


def test_no_clip_gradient_and_one_step_trains_every_group():
    torch.manual_seed(0)
    model = build_model("tiny").train()
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    before = {n: p.detach().clone() for n, p in trainable.items()}
    opt = torch.optim.AdamW(trainable.values(), lr=1e-3, weight_decay=0.0)
    x = torch.randn(2, 3, 128, 128)
    _train_step_loss(model, x).backward()
    assert all(p.grad is None for p in model.clip.parameters()), "a frozen CLIP parameter got a gradient"
    opt.step()
    # A key-projection bias adds the same constant to every logit of a query's softmax, so its
    # gradient is exactly zero (in the authors' model too); everything else must move.
    zero_grad_by_math = {n for n in trainable if n.endswith(".k.bias")}
    for n in zero_grad_by_math:
        assert trainable[n].grad.abs().max() < 1e-6
    unchanged = [n for n, p in trainable.items() if n not in zero_grad_by_math and torch.equal(p, before[n])]
    assert not unchanged, f"parameters not updated by one step: {unchanged}"
    for part in ("mae", "vca", "decoder", "text_proj", "vsa", "prompts"):
        assert any(n.startswith(part) and not torch.equal(p, before[n]) for n, p in trainable.items()), part


def test_trainable_set_is_exactly_the_papers():
    with torch.device("meta"):
        model = build_model("opensdi-vitl14")
    trainable = {n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"mae", "vca", "decoder", "text_proj", "vsa", "prompts"}
    assert sum(p.numel() for p in model.parameters()) == 546_828_738
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == 119_212_225


def test_cached_text_equals_recomputed_and_follows_prompt_changes():
    torch.manual_seed(0)
    model = build_model("tiny").eval()
    cached = model.text_embeddings()
    assert model.text_embeddings() is cached  # served from the cache
    torch.testing.assert_close(cached, model.compute_text_embeddings())
    torch.testing.assert_close(cached.norm(dim=-1), torch.ones(2))
    with torch.no_grad():
        model.prompts.ctx.add_(0.5)  # as an optimiser step would
    fresh = model.text_embeddings()
    assert not torch.allclose(fresh, cached)
    torch.testing.assert_close(fresh, model.compute_text_embeddings())


def test_checkpoint_round_trip(tmp_path, tiny_model):
    path = save_checkpoint(tiny_model, tmp_path / "demo.safetensors")
    assert path.with_suffix(".json").is_file()
    loaded = load_checkpoint(path)
    x = torch.randn(2, 3, 128, 128)
    with torch.no_grad():
        a, b = tiny_model(x), loaded(x)
    for k in a:
        torch.testing.assert_close(a[k], b[k])
    folder = save_checkpoint(tiny_model, tmp_path / "ckpt").parent  # folder form: model.safetensors + config.json
    for form in (folder, folder / "model.safetensors", folder / "config.json"):
        assert load_checkpoint(form).config == tiny_model.config
    # the pickle-free format: a config of another model refuses the weights, naming the file
    doc = json.loads(path.with_suffix(".json").read_text())
    doc["config"]["mae"]["width"] = 48
    path.with_suffix(".json").write_text(json.dumps(doc))
    with pytest.raises(CheckpointError, match="demo.safetensors"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "missing.safetensors")


@pytest.mark.parametrize("which", ["clip", "mae"])
def test_offline_weight_request_fails_fast_and_clearly(which, tiny_model, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    start = time.perf_counter()
    with pytest.raises(WeightsUnavailableError) as err:
        if which == "clip":
            load_clip_weights(tiny_model.clip.model, "openai", "ViT-L-14")
        else:
            load_mae_weights(tiny_model.mae, "vit_base_patch16_224.mae")
    assert time.perf_counter() - start < 5
    message = str(err.value)
    assert f"--{which}-weights" in message and ("open_clip_model.safetensors" in message or ".pth" in message)


def test_local_weight_files_load_by_name(tmp_path, tiny_model):
    from safetensors.torch import save_file

    torch.manual_seed(1)
    donor = build_model("tiny")
    # a FAIR-style MAE checkpoint: extra cls_token / norm, no rel-pos tables
    mae_state = {k: v for k, v in donor.mae.state_dict().items() if "rel_pos" not in k}
    mae_state["cls_token"] = torch.zeros(1, 1, 96)
    mae_state["norm.weight"] = torch.ones(96)
    torch.save({"model": mae_state}, tmp_path / "mae_pretrain.pth")
    save_file(donor.clip.model.state_dict(), str(tmp_path / "clip.safetensors"))
    model = build_model(
        "tiny", clip_weights=str(tmp_path / "clip.safetensors"), mae_weights=str(tmp_path / "mae_pretrain.pth")
    )
    torch.testing.assert_close(model.mae.blocks[0].attn.qkv.weight, donor.mae.blocks[0].attn.qkv.weight)
    torch.testing.assert_close(model.clip.model.visual.conv1.weight, donor.clip.model.visual.conv1.weight)
    assert model.mae.blocks[0].attn.rel_pos_h.abs().sum() == 0
    with pytest.raises(WeightsUnavailableError, match="not found"):
        build_model("tiny", mae_weights=str(tmp_path / "nope.pth"))


def test_config_json_round_trip():
    for name in ("tiny", "opensdi-vitl14"):
        cfg = get_config(name)
        from maskclip_core.config import MaskCLIPConfig

        assert MaskCLIPConfig.from_dict(json.loads(cfg.to_json())) == cfg


def test_info_cli_reports_the_published_parameter_counts():
    out = subprocess.run(
        [sys.executable, "-m", "maskclip_core.info", "--config", "opensdi-vitl14", "--json", "-"],
        capture_output=True,
        text=True,
        check=True,
    )
    info = json.loads(out.stdout)
    assert info["parameters"]["total"] == 546_828_738
    assert info["parameters"]["trainable"] == 119_212_225
    assert 245 < info["gmacs"]["image_total"] < 255  # MODEL.md: about 251 GMACs
