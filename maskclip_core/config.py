"""Registry of named MaskCLIP configurations.

`opensdi-vitl14` is the paper's model (MODEL.md). `tiny` is the SAME architecture with small
widths, depths and resolution, so tests and the embedded demo run in seconds on a CPU.
Configs are plain dataclasses that round-trip through JSON (they travel with checkpoints and
exported artifacts). A config names its input resize (maskclip_runtime.kernel.preprocess.RESIZE_METHODS);
the registered ones use the authors' OpenCV resize, while a config without the field (a checkpoint
written before it existed) keeps the Pillow resize it was trained and evaluated with.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

from maskclip_runtime.errors import InputError
from maskclip_runtime.kernel.preprocess import LEGACY_RESIZE, PreprocessSpec


@dataclass(frozen=True)
class ClipConfig:
    """Frozen CLIP (open_clip layout, QuickGELU). Only the visual taps and the text tower are used."""

    model_name: str = "ViT-L-14"  # open_clip name, used for hub weights
    image_size: int = 224  # CLIP input; the 512 image is resized to this in-graph
    patch_size: int = 14
    width: int = 1024
    layers: int = 24
    heads: int = 16
    embed_dim: int = 768  # joint image/text space (text_projection output)
    taps: tuple[int, ...] = (2, 4, 8, 12, 16, 20, 23)  # blocks whose ln_2 output is tapped
    text_width: int = 768
    text_layers: int = 12
    text_heads: int = 12
    context_length: int = 77
    vocab_size: int = 49408

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size


@dataclass(frozen=True)
class MaeConfig:
    """Trainable windowed ViT side network (ViTDet/SAM style)."""

    patch_size: int = 16
    width: int = 768
    depth: int = 12
    heads: int = 12
    mlp_ratio: float = 4.0
    window_size: int = 14
    global_blocks: tuple[int, ...] = (2, 5, 8, 11)
    pretrain_grid: int = 14  # the 224 MAE position table is 14x14 (+CLS)
    drop_path_rate: float = 0.1


@dataclass(frozen=True)
class DecoderConfig:
    channels: int = 256  # pyramid / TVCA width
    tvca_heads: int = 8
    dropout: float = 0.1


@dataclass(frozen=True)
class MaskCLIPConfig:
    name: str
    image_size: int = 512
    clip: ClipConfig = field(default_factory=ClipConfig)
    mae: MaeConfig = field(default_factory=MaeConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    vca_heads: int = 8
    vsa_heads: int = 8
    vsa_dropout: float = 0.1
    prompt_length: int = 10
    prompt_suffix: str = "an image."
    threshold: float = 0.5  # decision threshold on fake_prob and on mask probability
    resize: str = LEGACY_RESIZE  # input resize of training, evaluation and export (registered: "cv2-linear")

    @property
    def grid(self) -> int:
        """MAE token grid side (32 at 512)."""
        return self.image_size // self.mae.patch_size

    @property
    def decoder_size(self) -> int:
        """Mask logits side (128 at 512): the x4 pyramid level."""
        return 4 * self.grid

    @property
    def num_taps(self) -> int:
        return len(self.clip.taps)

    def preprocess_spec(self) -> PreprocessSpec:
        """How images reach this model: the same in training, evaluation, export and the runtime."""
        return PreprocessSpec(size=self.image_size, resize=self.resize)

    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, d: dict) -> MaskCLIPConfig:
        def build(kind, values):
            kw = {}
            for f in fields(kind):
                if f.name in values:
                    v = values[f.name]
                    kw[f.name] = tuple(v) if isinstance(v, list) else v
            return kind(**kw)

        d = dict(d)
        sub = {"clip": ClipConfig, "mae": MaeConfig, "decoder": DecoderConfig}
        for key, kind in sub.items():
            if key in d:
                d[key] = build(kind, d[key])
        return build(cls, d)

    def validate(self) -> None:
        if self.image_size % self.mae.patch_size:
            raise ValueError(f"image_size {self.image_size} not divisible by MAE patch {self.mae.patch_size}")
        if self.clip.image_size % self.clip.patch_size:
            raise ValueError("CLIP image_size must be divisible by its patch size")
        if self.num_taps + 1 > self.mae.depth:
            raise ValueError(f"{self.num_taps} VCA blocks need at least {self.num_taps + 1} MAE blocks")
        if max(self.clip.taps) >= self.clip.layers:
            raise ValueError(f"tap {max(self.clip.taps)} beyond {self.clip.layers} CLIP blocks")
        if self.mae.width % self.vca_heads or self.decoder.channels % self.decoder.tvca_heads:
            raise ValueError("attention widths must divide by their head counts")
        self.preprocess_spec()  # raises on an unknown resize name


_REGISTRY: dict[str, MaskCLIPConfig] = {}


def register(cfg: MaskCLIPConfig) -> MaskCLIPConfig:
    cfg.validate()
    _REGISTRY[cfg.name] = cfg
    return cfg


class UnknownConfig(InputError, KeyError):
    """A config name that is not registered; the message lists the known ones."""


def get_config(name: str) -> MaskCLIPConfig:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownConfig(f"unknown config {name!r}; known: {', '.join(sorted(_REGISTRY))}") from None


def list_configs() -> list[str]:
    return sorted(_REGISTRY)


def resolve_config(spec: str) -> MaskCLIPConfig:
    """A registered config name, or a JSON file holding a config (or a checkpoint's config.json)."""
    path = Path(spec)
    if path.suffix == ".json" and path.is_file():
        doc = json.loads(path.read_text())
        return MaskCLIPConfig.from_dict(doc.get("config", doc))
    return get_config(spec)


# The authors resize with albumentations' Resize = OpenCV INTER_LINEAR (masks INTER_NEAREST).
AUTHORS_RESIZE = "cv2-linear"

register(MaskCLIPConfig(name="opensdi-vitl14", resize=AUTHORS_RESIZE))

# Same modules and wiring; 128 px input, 8x8 MAE grid with 3x3 windows (padded to 9x9),
# 3 CLIP taps feeding 3 VCA blocks, 8x8 CLIP grid at 112 px. The embedded demo checkpoint was
# written before configs named their resize, so its config.json keeps "pil-bilinear-aa".
register(
    replace(
        MaskCLIPConfig(name="tiny", resize=AUTHORS_RESIZE),
        image_size=128,
        clip=ClipConfig(
            model_name="",
            image_size=112,
            width=64,
            layers=4,
            heads=4,
            embed_dim=64,
            taps=(1, 2, 3),
            text_width=64,
            text_layers=2,
            text_heads=4,
        ),
        mae=MaeConfig(width=96, depth=4, heads=4, window_size=3, global_blocks=(1, 3), pretrain_grid=4),
        decoder=DecoderConfig(channels=32, tvca_heads=4),
        vca_heads=4,
        vsa_heads=4,
    )
)
