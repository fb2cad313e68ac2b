"""Frozen configuration of the Astra diffusion transformer, with named presets.

The full-size preset reproduces the authors' release (Wan2.1-T2V-1.3B backbone plus Astra's
FramePack embedders, ACT-Adapters and action experts) so that the released state dict loads
strictly. The smaller presets keep the same architecture and parameter names at CPU sizes.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Literal

__all__ = [
    "ModalitySpec",
    "AstraTransformerConfig",
    "RELEASE_MODALITIES",
    "ASTRA_GYM_MODALITIES",
    "PRESETS",
    "get_preset",
]


@dataclass(frozen=True)
class ModalitySpec:
    """One action modality: its own projector into the unified action space.

    Attributes:
        name: Modality name. Its projector is the module ``{name}_processor`` on the transformer.
        dim: Width of the raw per-latent-frame action vector, **including** the trailing
            past/current flag (1 = history latent, 0 = latent being generated).
        expert: Expert index used by hard (per-modality) routing.
    """

    name: str
    dim: int
    expert: int

    def __post_init__(self) -> None:
        if not self.name.isidentifier():
            raise ValueError(f"modality name {self.name!r} must be a Python identifier")
        if self.dim < 2:
            raise ValueError(f"modality {self.name!r}: dim={self.dim} must be >= 2 (values + flag)")
        if self.expert < 0:
            raise ValueError(f"modality {self.name!r}: expert={self.expert} must be >= 0")


# The release: sekai = 12-D relative camera pose [R|t] + flag (also used for SpatialVID),
# nuscenes = 7-D vehicle pose + flag, openx = 12-D end-effector pose + flag (see astra-release.md §2.2, §3.2).
RELEASE_MODALITIES: tuple[ModalitySpec, ...] = (
    ModalitySpec("sekai", 13, 0),
    ModalitySpec("nuscenes", 8, 1),
    ModalitySpec("openx", 13, 2),
)

# Our own models: camera 12-D relative pose, vehicle 7-D, robot 7-D (xyz + rpy + gripper),
# keyboard = multi-hot of up to 16 buttons; each + flag.
ASTRA_GYM_MODALITIES: tuple[ModalitySpec, ...] = (
    ModalitySpec("camera", 13, 0),
    ModalitySpec("vehicle", 8, 1),
    ModalitySpec("robot", 8, 2),
    ModalitySpec("keyboard", 17, 3),
)


@dataclass(frozen=True)
class AstraTransformerConfig:
    """Sizes and options of :class:`~astra_gym.world_model.transformer.AstraTransformer`.

    Attributes:
        dim: Hidden width.
        num_layers: Number of transformer blocks.
        num_heads: Attention heads; ``dim // num_heads`` is the head width (RoPE splits it t/h/w).
        ffn_dim: Hidden width of each block's feed-forward network.
        in_channels: Latent channels of the VAE.
        out_channels: Predicted velocity channels (equal to ``in_channels`` for flow matching).
        patch_size: (t, h, w) patch of the target embedder; must have t == 1.
        text_dim: Width of the text-encoder features fed to cross-attention.
        freq_dim: Width of the sinusoidal timestep embedding.
        eps: Epsilon of all LayerNorms and q/k RMSNorms.
        rope_theta: RoPE base.
        history_scales: Temporal compression factors with a ``clean_x_embedder`` Conv3d
            (1 -> ``proj``, 2 -> ``proj_2x``, 4 -> ``proj_4x``); kernel = (s, s*ph, s*pw).
        unified_dim: Width U of the shared action space after the modality projectors.
        num_experts: Number of action experts E per block. 0 = no experts, processors or router:
            each block's ``cam_encoder`` embeds the raw action row instead (one shared encoder).
        top_k: Experts mixed per token.
        expert_hidden: 0 -> each expert is one Linear(U, dim) (the release); > 0 -> an MLP
            Linear(U, expert_hidden) -> GELU -> Linear(expert_hidden, dim) (the paper's MLP experts).
        routing: ``"hard"`` routes each modality to its fixed expert (what the release checkpoint
            needs); ``"learned"`` uses the ``global_router`` top-k softmax router with a
            load-balancing loss (what the paper describes).
        modalities: The action modalities this model accepts.
        history_attention: ``"full"`` (Astra and the release): every token, history included, gets
            the target timestep's modulation and attends to every valid token. ``"causal"``: history
            tokens get the modulation of timestep 0 (clean) and attend only to history tokens, so
            their keys/values can be cached once per chunk (:mod:`~astra_gym.world_model.kv_cache`);
            targets attend to history and targets. A model must be trained with the mode it runs in.
        action_injection: ``"add"`` (Astra): each block adds its action features of a token's own
            action row to the modulated self-attention input (ACT-Adapter). ``"cross_attn"`` (the
            paper's ablation, Table 3): no addition; each block has an extra zero-initialised
            cross-attention ``action_attn`` from every token to the features of all action rows
            the sample uses (tokens are not told which row is theirs; the past/current flag is in
            the rows). Not in the release checkpoint.
    """

    dim: int
    num_layers: int
    num_heads: int
    ffn_dim: int
    in_channels: int = 16
    out_channels: int = 16
    patch_size: tuple[int, int, int] = (1, 2, 2)
    text_dim: int = 4096
    freq_dim: int = 256
    eps: float = 1e-6
    rope_theta: float = 10000.0
    history_scales: tuple[int, ...] = (1, 2, 4)
    unified_dim: int = 25
    num_experts: int = 3
    top_k: int = 1
    expert_hidden: int = 0
    routing: Literal["hard", "learned"] = "hard"
    modalities: tuple[ModalitySpec, ...] = field(default=RELEASE_MODALITIES)
    history_attention: Literal["full", "causal"] = "full"
    action_injection: Literal["add", "cross_attn"] = "add"

    def __post_init__(self) -> None:
        if self.action_injection not in ("add", "cross_attn"):
            raise ValueError(f"action_injection={self.action_injection!r} must be 'add' or 'cross_attn'")
        if self.action_injection == "cross_attn" and self.history_attention != "full":
            raise ValueError(
                "action_injection='cross_attn' (an ablation) supports only history_attention='full'; "
                "use action_injection='add' for the causal/cached path"
            )
        if self.history_attention not in ("full", "causal"):
            raise ValueError(f"history_attention={self.history_attention!r} must be 'full' or 'causal'")
        if self.dim % self.num_heads:
            raise ValueError(f"dim={self.dim} is not divisible by num_heads={self.num_heads}")
        head_dim = self.dim // self.num_heads
        if head_dim % 2 or head_dim < 6:
            raise ValueError(f"head width dim/num_heads={head_dim} must be even and >= 6 (3-D RoPE)")
        if self.patch_size[0] != 1:
            raise ValueError(f"patch_size={self.patch_size}: the temporal patch must be 1")
        if any(s not in (1, 2, 4) for s in self.history_scales) or 1 not in self.history_scales:
            raise ValueError(f"history_scales={self.history_scales} must contain 1 and only values from (1, 2, 4)")
        if self.routing not in ("hard", "learned"):
            raise ValueError(f"routing={self.routing!r} must be 'hard' or 'learned'")
        if self.num_experts < 0:
            raise ValueError(f"num_experts={self.num_experts} must be >= 0 (0 = one shared cam_encoder per block)")
        if self.num_experts and not 1 <= self.top_k <= self.num_experts:
            raise ValueError(f"top_k={self.top_k} must be in [1, num_experts={self.num_experts}]")
        names = [m.name for m in self.modalities]
        if len(set(names)) != len(names) or not names:
            raise ValueError(f"modalities must be a non-empty set of unique names, got {names}")
        for m in self.modalities:
            if self.num_experts and m.expert >= self.num_experts:
                raise ValueError(f"modality {m.name!r} routes to expert {m.expert} but num_experts={self.num_experts}")

    @property
    def head_dim(self) -> int:
        """Width of one attention head."""
        return self.dim // self.num_heads

    @property
    def rope_split(self) -> tuple[int, int, int]:
        """Real channels of each head rotated by (t, h, w) positions; Wan: 44/42/42 for 128."""
        hw = 2 * (self.head_dim // 6)
        return self.head_dim - 2 * hw, hw, hw

    def modality(self, name: str) -> ModalitySpec:
        """Returns the spec of modality ``name``; raises a ValueError listing the known ones."""
        for m in self.modalities:
            if m.name == name:
                return m
        raise ValueError(f"unknown action modality {name!r}; this model accepts {[m.name for m in self.modalities]}")

    def replace(self, **changes) -> AstraTransformerConfig:
        """Returns a copy with ``changes`` applied (validated)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        """JSON-serialisable form (inverse of :meth:`from_dict`)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> AstraTransformerConfig:
        """Builds a config from :meth:`to_dict` output; unknown keys raise a ValueError naming them."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown AstraTransformerConfig fields {unknown}; known fields: {sorted(known)}")
        data = dict(data)
        if "modalities" in data:
            specs = data["modalities"]
            data["modalities"] = tuple(m if isinstance(m, ModalitySpec) else ModalitySpec(**m) for m in specs)
        for key in ("patch_size", "history_scales"):
            if key in data:
                data[key] = tuple(data[key])
        return cls(**data)


PRESETS: dict[str, AstraTransformerConfig] = {
    # The authors' release: Wan2.1-T2V-1.3B + Astra additions (U=25, E=3, hard routing, Linear experts).
    "wan2.1-1.3b": AstraTransformerConfig(dim=1536, num_layers=30, num_heads=12, ffn_dim=8960),
    # CPU-sized model for 64x64 frames (8x8 latents): ~9M parameters.
    "small": AstraTransformerConfig(
        dim=256,
        num_layers=8,
        num_heads=4,
        ffn_dim=1024,
        in_channels=8,
        out_channels=8,
        text_dim=64,
        freq_dim=128,
        unified_dim=32,
        num_experts=4,
        top_k=2,
        expert_hidden=64,
        routing="learned",
        modalities=ASTRA_GYM_MODALITIES,
    ),
    # Tiny model for tests.
    "debug": AstraTransformerConfig(
        dim=48,
        num_layers=2,
        num_heads=2,
        ffn_dim=96,
        in_channels=4,
        out_channels=4,
        text_dim=16,
        freq_dim=32,
        unified_dim=8,
        num_experts=4,
        top_k=2,
        expert_hidden=16,
        routing="learned",
        modalities=ASTRA_GYM_MODALITIES,
    ),
}


# The small model for 16x16 latents (the 4x "detail" SmallVAE at 64x64): 4x4 patches keep 16 tokens
# per frame, so it costs what "small" costs on 8x8 latents.
PRESETS["small-p4"] = PRESETS["small"].replace(patch_size=(1, 4, 4))


def get_preset(name: str) -> AstraTransformerConfig:
    """Returns the named preset; raises a ValueError listing the presets if unknown."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}") from None
