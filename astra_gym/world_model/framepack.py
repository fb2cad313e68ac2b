"""FramePack history: a bounded per-row latent history and its packing into token groups.

The packed history is a fixed set of *slots* (layout defaults shown)::

    slot:  0       1 ............................ 16   17 ....................... 18   19             20 ..
         [start | 16 latents -> 4 tokens @4x     | 2 latents -> 1 token @2x     | 1 latent @1x | targets ]
           |                                                                      |
           +------------------------ 1x group: [start, last] ---------------------+

    token order in the transformer: [4x (4 tokens) | 2x (1 token) | 1x (start, last) | targets]

The start slot holds the first latent of the row's episode (kept forever when ``keep_first``);
slots 1..19 hold the 19 most recent latents, right-aligned (the most recent in slot 19). Each
slot s also owns row s of the returned action values; the target rows follow (row 20 + j).

Two modes (:attr:`FramePackLayout.mode`):

``"exact"`` (our models)
    * Every latent appears at most once: the first latent is only in the start slot, never also in
      a compressed slot. Empty slots are zero latents and tokens with no latent are ``valid=False``.
    * ``frame_pos`` is the absolute latent index; a compressed token gets the mean absolute index of
      the valid latents it covers; targets continue at last index + 1, + 2, ...
    * Action convention: **the action row of latent k is the action that took the world from
      latent k-1 to latent k** (the action given to ``env.step`` is carried by the latents it
      produces). The first latent of an episode carries the null action (zeros), whose flag
      :func:`pack` then sets to 1 like every history row. A compressed token reads the row of the
      *latest* latent it covers (the motion closest to the present); 1x tokens read their own rows.
    * ``spatial_scale`` = s (geometrically true spatial positions).

``"release"`` (checkpoint fidelity): the released DiT's token quirks, in
    :mod:`astra_gym.world_model.release_compat` next to the release converter.

The history itself (:class:`FramePackHistory`) only stores, per latent, the action row it was
given; the convention is the caller's.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from astra_gym.world_model.conditioning import FramePackInputs, TokenGroup

__all__ = [
    "FramePackLayout",
    "FramePackHistory",
    "pack",
    "referenced_action_rows",
    "newest_full_resolution_token",
    "history_noise_mask",
    "corrupt_history",
    "sample_history_length",
]


@dataclass(frozen=True)
class FramePackLayout:
    """How a history is packed into token groups (see the module docstring for the slot diagram).

    Attributes:
        num_4x: Latents compressed 4x in time (4 per token); a multiple of 4.
        num_2x: Latents compressed 2x in time (2 per token); a multiple of 2.
        num_1x: Most recent latents kept at full resolution (besides the start latent).
        keep_first: Keep the episode's first latent in a 1x start slot forever.
        mode: ``"exact"`` (our models) or ``"release"`` (the released checkpoint's token quirks).
        patch_hw: Spatial patch (ph, pw) of the embedders; a scale-s group is padded to
            multiples of (s*ph, s*pw).
        max_start_distance: If set, the start token's ``frame_pos`` is placed at most this many
            latents before the first target (its true index when closer). None keeps true positions.
            20 reproduces the release-time layout (start at τ=0, targets from τ=20) for long rollouts.
    """

    num_4x: int = 16
    num_2x: int = 2
    num_1x: int = 1
    keep_first: bool = True
    mode: Literal["exact", "release"] = "exact"
    patch_hw: tuple[int, int] = (2, 2)
    max_start_distance: int | None = None

    def __post_init__(self) -> None:
        if self.num_4x < 0 or self.num_4x % 4:
            raise ValueError(f"num_4x={self.num_4x} must be a non-negative multiple of 4")
        if self.num_2x < 0 or self.num_2x % 2:
            raise ValueError(f"num_2x={self.num_2x} must be a non-negative multiple of 2")
        if self.num_1x < 1:
            raise ValueError(f"num_1x={self.num_1x} must be >= 1 (the most recent latent is always kept)")
        if self.mode not in ("exact", "release"):
            raise ValueError(f"mode={self.mode!r} must be 'exact' or 'release'")
        if self.mode == "release" and (self.num_1x != 1 or not self.keep_first):
            raise ValueError(
                f"mode='release' needs num_1x=1 and keep_first=True (its 1x group is [start, last]); "
                f"got num_1x={self.num_1x}, keep_first={self.keep_first}"
            )
        if len(self.patch_hw) != 2 or min(self.patch_hw) < 1:
            raise ValueError(f"patch_hw={self.patch_hw} must be two positive ints (ph, pw)")
        if self.max_start_distance is not None and self.max_start_distance <= self.window:
            raise ValueError(
                f"max_start_distance={self.max_start_distance} must exceed the {self.window} recent "
                f"slots so the start stays before them; use >= {self.window + 1} or None"
            )

    @property
    def window(self) -> int:
        """Recent latents packed: num_4x + num_2x + num_1x."""
        return self.num_4x + self.num_2x + self.num_1x

    @property
    def num_start(self) -> int:
        """1 if the start slot exists, else 0."""
        return int(self.keep_first)

    @property
    def num_slots(self) -> int:
        """History slots (and history action rows): start + window."""
        return self.num_start + self.window


DEFAULT_WINDOW = FramePackLayout().window


@dataclass(frozen=True, eq=False)
class FramePackHistory:
    """Batched, bounded history of latents and their action rows (immutable; methods return copies).

    Per batch row it holds the first latent of the row's episode and the K = ``window`` most recent
    latents, right-aligned (empty slots are zeros with index -1), so memory never grows with the
    episode length. Latent j of a row's episode has absolute index ``first_index + j``.

    Attributes:
        first_latent: [B, C, 1, H, W] first latent of each row (zeros while empty).
        first_action: [B, 1, D] its action row.
        first_index: [B] long absolute index of the first latent.
        recent_latents: [B, C, K, H, W] most recent latents, the newest last.
        recent_actions: [B, K, D] their action rows.
        recent_index: [B, K] long absolute indices, -1 for empty slots.
        length: [B] long latents appended since the row's (re)start.
    """

    first_latent: Tensor
    first_action: Tensor
    first_index: Tensor
    recent_latents: Tensor
    recent_actions: Tensor
    recent_index: Tensor
    length: Tensor

    def __post_init__(self) -> None:
        if self.recent_latents.ndim != 5 or self.recent_actions.ndim != 3:
            raise ValueError(
                f"recent_latents must be [B, C, K, H, W] and recent_actions [B, K, D], got "
                f"{tuple(self.recent_latents.shape)} and {tuple(self.recent_actions.shape)}"
            )
        batch, channels, window, height, width = self.recent_latents.shape
        action_width = self.recent_actions.shape[-1]
        expected = {
            "first_latent": (batch, channels, 1, height, width),
            "first_action": (batch, 1, action_width),
            "first_index": (batch,),
            "recent_actions": (batch, window, action_width),
            "recent_index": (batch, window),
            "length": (batch,),
        }
        for name, shape in expected.items():
            if tuple(getattr(self, name).shape) != shape:
                raise ValueError(
                    f"FramePackHistory.{name} has shape {tuple(getattr(self, name).shape)}, expected {shape}"
                )

    @classmethod
    def empty(
        cls,
        batch: int,
        channels: int,
        height: int,
        width: int,
        action_width: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
        *,
        window: int = DEFAULT_WINDOW,
        action_dtype: torch.dtype = torch.float32,
        start_index: int = 0,
    ) -> FramePackHistory:
        """A history with no latents; its first appended latent gets index ``start_index``."""
        if window < 1:
            raise ValueError(f"window={window} must be >= 1")
        return cls(
            first_latent=torch.zeros(batch, channels, 1, height, width, device=device, dtype=dtype),
            first_action=torch.zeros(batch, 1, action_width, device=device, dtype=action_dtype),
            first_index=torch.full((batch,), start_index, device=device, dtype=torch.long),
            recent_latents=torch.zeros(batch, channels, window, height, width, device=device, dtype=dtype),
            recent_actions=torch.zeros(batch, window, action_width, device=device, dtype=action_dtype),
            recent_index=torch.full((batch, window), -1, device=device, dtype=torch.long),
            length=torch.zeros(batch, device=device, dtype=torch.long),
        )

    @classmethod
    def from_latents(
        cls,
        latents: Tensor,
        actions: Tensor | None = None,
        *,
        action_width: int | None = None,
        window: int = DEFAULT_WINDOW,
        start_index: int = 0,
    ) -> FramePackHistory:
        """A history holding ``latents`` [B, C, T, H, W] with ``actions`` [B, T, D] (None = null rows).

        ``action_width`` is required when ``actions`` is None.
        """
        if latents.ndim != 5:
            raise ValueError(f"latents must be [B, C, T, H, W], got shape {tuple(latents.shape)}")
        if actions is None and action_width is None:
            raise ValueError("from_latents needs actions [B, T, D] or action_width (for null action rows)")
        columns = actions.shape[-1] if actions is not None else action_width
        action_dtype = actions.dtype if actions is not None else torch.float32
        batch, channels, _, height, width = latents.shape
        history = cls.empty(
            batch,
            channels,
            height,
            width,
            columns,
            latents.device,
            latents.dtype,
            window=window,
            action_dtype=action_dtype,
            start_index=start_index,
        )
        return history.append(latents, actions)

    # ----------------------------------------------------------------------------- properties

    @property
    def batch_size(self) -> int:
        """Batch rows B."""
        return self.length.shape[0]

    @property
    def window(self) -> int:
        """Recent latents held per row."""
        return self.recent_index.shape[1]

    @property
    def action_width(self) -> int:
        """Width D of the stored action rows."""
        return self.recent_actions.shape[-1]

    @property
    def device(self) -> torch.device:
        """Device of the stored tensors."""
        return self.length.device

    @property
    def next_index(self) -> Tensor:
        """[B] absolute index the next appended latent will get."""
        return self.first_index + self.length

    @property
    def last_index(self) -> Tensor:
        """[B] absolute index of the most recent latent (first_index - 1 while empty)."""
        return self.next_index - 1

    @property
    def recent_valid(self) -> Tensor:
        """[B, K] bool slots holding a latent."""
        return self.recent_index >= 0

    # ----------------------------------------------------------------------------- updates

    def append(self, latents: Tensor, actions: Tensor | None = None, rows: Tensor | None = None) -> FramePackHistory:
        """Appends n latents to the selected rows.

        Args:
            latents: [B, C, n, H, W] new latents, oldest first.
            actions: [B, n, D] their action rows; None = null (zero) rows.
            rows: [B] bool rows to update; None = all. Other rows are returned unchanged.

        Returns:
            The updated history (same memory footprint).
        """
        actions = self._check_chunk(latents, actions)
        count = latents.shape[2]
        if count == 0:
            return self
        mask = self._row_mask(rows)
        index = self.next_index[:, None] + torch.arange(count, device=self.device)  # [B, n]
        latents = latents.to(self.recent_latents.dtype)
        window = self.window
        grown = FramePackHistory(
            first_latent=self.first_latent,
            first_action=self.first_action,
            first_index=self.first_index,
            recent_latents=torch.cat([self.recent_latents, latents], dim=2)[:, :, -window:],  # [B, C, K, H, W]
            recent_actions=torch.cat([self.recent_actions, actions], dim=1)[:, -window:],  # [B, K, D]
            recent_index=torch.cat([self.recent_index, index], dim=1)[:, -window:],  # [B, K]
            length=self.length + count,
        )
        starting = self.length == 0
        grown = grown._where(starting, grown._with_first(latents[:, :, :1], actions[:, :1]))
        return self._where(mask, grown)

    def reset_rows(self, mask: Tensor, latents: Tensor, actions: Tensor | None = None) -> FramePackHistory:
        """Restarts the selected rows from new context latents (partial environment resets).

        Args:
            mask: [B] bool rows to restart; their old history is discarded and their indices
                restart at 0.
            latents: [B, C, T, H, W] (rows outside ``mask`` are ignored) or [mask.sum(), C, T, H, W]
                new context latents.
            actions: Matching [B or mask.sum(), T, D] action rows; None = null rows.

        Returns:
            The updated history.
        """
        mask = self._row_mask(mask)
        latents = _scatter_rows(mask, latents)
        actions = None if actions is None else _scatter_rows(mask, actions)
        return self._where(mask, self._cleared()).append(latents, actions, rows=mask)

    # ----------------------------------------------------------------------------- forking

    def select(self, rows: Tensor | Sequence[int]) -> FramePackHistory:
        """The rows ``rows`` (long indices or a [B] bool mask), e.g. to fork a subset."""
        rows = torch.as_tensor(rows, device=self.device)
        return self._map(lambda t: t[rows])

    def repeat_interleave(self, repeats: int) -> FramePackHistory:
        """Each row repeated ``repeats`` times in place (row b -> rows b*r .. b*r + r - 1), e.g. for MPC."""
        return self._map(lambda t: t.repeat_interleave(repeats, dim=0))

    def clone(self) -> FramePackHistory:
        """A copy that shares no storage with this history."""
        return self._map(torch.clone)

    def to(self, device: torch.device | str) -> FramePackHistory:
        """The history on ``device``."""
        return self._map(lambda t: t.to(device))

    # ----------------------------------------------------------------------------- helpers

    def _map(self, fn: Callable[[Tensor], Tensor]) -> FramePackHistory:
        """Applies ``fn`` to every stored tensor."""
        return FramePackHistory(**{f.name: fn(getattr(self, f.name)) for f in dataclasses.fields(self)})

    def _where(self, mask: Tensor, other: FramePackHistory) -> FramePackHistory:
        """Rows from ``other`` where ``mask`` [B] is True, from ``self`` elsewhere."""

        def pick(name: str) -> Tensor:
            mine, theirs = getattr(self, name), getattr(other, name)
            row_mask = mask.reshape(-1, *([1] * (mine.ndim - 1)))  # [B, 1, ...]
            return torch.where(row_mask, theirs, mine)

        return FramePackHistory(**{f.name: pick(f.name) for f in dataclasses.fields(self)})

    def _with_first(self, latent: Tensor, action: Tensor) -> FramePackHistory:
        """This history with the first latent [B, C, 1, H, W] / action [B, 1, D] replaced."""
        return dataclasses.replace(self, first_latent=latent, first_action=action)

    def _cleared(self) -> FramePackHistory:
        """An empty history of the same shapes (indices restarting at 0)."""
        return FramePackHistory(
            first_latent=torch.zeros_like(self.first_latent),
            first_action=torch.zeros_like(self.first_action),
            first_index=torch.zeros_like(self.first_index),
            recent_latents=torch.zeros_like(self.recent_latents),
            recent_actions=torch.zeros_like(self.recent_actions),
            recent_index=torch.full_like(self.recent_index, -1),
            length=torch.zeros_like(self.length),
        )

    def _row_mask(self, rows: Tensor | None) -> Tensor:
        """[B] bool mask on this device from ``rows`` (None = all rows)."""
        if rows is None:
            return torch.ones(self.batch_size, dtype=torch.bool, device=self.device)
        rows = torch.as_tensor(rows, device=self.device)
        if rows.dtype != torch.bool or rows.shape != (self.batch_size,):
            raise ValueError(f"rows must be a [B]={self.batch_size} bool mask, got {rows.dtype} {tuple(rows.shape)}")
        return rows

    def _check_chunk(self, latents: Tensor, actions: Tensor | None) -> Tensor:
        """Validates a chunk to append; returns its action rows (zeros when None) in storage dtype."""
        want = (self.batch_size, self.recent_latents.shape[1], *self.recent_latents.shape[3:])
        if latents.ndim != 5 or (latents.shape[:2] + latents.shape[3:]) != want:
            raise ValueError(
                f"latents must be [B, C, n, H, W] with (B, C, H, W)={want}, got shape {tuple(latents.shape)}"
            )
        shape = (self.batch_size, latents.shape[2], self.action_width)
        if actions is None:
            return self.recent_actions.new_zeros(shape)
        if tuple(actions.shape) != shape:
            raise ValueError(f"actions must be [B, n, D]={shape} to match the latents, got {tuple(actions.shape)}")
        return actions.to(self.recent_actions.device, self.recent_actions.dtype)


def _scatter_rows(mask: Tensor, x: Tensor) -> Tensor:
    """``x`` with B rows: itself if it already has B rows, else its rows placed at ``mask``'s True rows."""
    if x.shape[0] == mask.shape[0]:
        return x
    selected = int(mask.sum())
    if x.shape[0] != selected:
        raise ValueError(f"expected {mask.shape[0]} rows (all) or {selected} rows (the masked ones), got {x.shape[0]}")
    full = x.new_zeros(mask.shape[0], *x.shape[1:])
    full[mask] = x
    return full


# --------------------------------------------------------------------------------- packing


@dataclass(frozen=True, eq=False)
class _Slots:
    """The history laid out in packing slots: [start] + window recent slots.

    Attributes:
        latents: [B, C, S, H, W], zeros in invalid slots.
        actions: [B, S, D], zeros in invalid slots.
        index: [B, S] long absolute latent index (-1 where empty).
        pos: [B, S] float temporal RoPE position.
        valid: [B, S] bool.
    """

    latents: Tensor
    actions: Tensor
    index: Tensor
    pos: Tensor
    valid: Tensor


def pack(
    history: FramePackHistory,
    target_actions: Tensor,
    layout: FramePackLayout = FramePackLayout(),
    *,
    flag_column: int | Tensor | None = None,
) -> tuple[FramePackInputs, Tensor]:
    """Packs a history and the targets' action rows into transformer inputs.

    Args:
        history: The latent history; every row must hold at least one latent, or none may.
        target_actions: [B, F, D] action rows of the F latents to generate (convention of
            ``layout.mode``, see the module docstring).
        layout: Packing layout.
        flag_column: Column of the past/current flag: an int, [B] long per row (see
            :func:`~astra_gym.world_model.action_encoders.flag_columns` for mixed modalities) or
            None for the last column.

    Returns:
        (packed inputs, action values [B, A, D]) with A = ``layout.num_slots + F`` when there is
        history (row s = slot s, flag 1 where the slot holds a latent, zeros elsewhere; then the
        targets, flag 0) and A = F without history. Build ``ActionInput(values, modality)`` from it.
    """
    _check_pack_inputs(history, target_actions, layout)
    has_history = history.length > 0
    if not bool(has_history.any()):
        return _pack_without_history(history, target_actions, flag_column)
    if not bool(has_history.all()):
        empty = torch.nonzero(~has_history).flatten().tolist()
        raise ValueError(
            f"batch rows {empty} have no history latents while others do; append their context "
            "latents (e.g. the first frame) first, or pack them separately"
        )
    slots = _gather_slots(history, layout)
    values = _action_values(slots.actions, slots.valid, target_actions, flag_column)
    if layout.mode == "release":
        from astra_gym.world_model.release_compat import release_groups as builder
    else:
        builder = _exact_groups
    groups = tuple(g for g in builder(slots, layout) if bool(g.valid.any()))
    frames = target_actions.shape[1]
    steps = torch.arange(frames, device=history.device)
    inputs = FramePackInputs(
        history=groups,
        target_frame_pos=(history.next_index[:, None] + steps).float(),  # [B, F]
        target_action_row=(layout.num_slots + steps).expand(history.batch_size, frames),  # [B, F]
    )
    return inputs, values


def _check_pack_inputs(history: FramePackHistory, target_actions: Tensor, layout: FramePackLayout) -> None:
    """Raises a ValueError naming any mismatch between history, targets and layout."""
    if target_actions.ndim != 3 or target_actions.shape[0] != history.batch_size:
        raise ValueError(f"target_actions must be [B={history.batch_size}, F, D], got {tuple(target_actions.shape)}")
    if target_actions.shape[-1] != history.action_width:
        raise ValueError(
            f"target_actions have {target_actions.shape[-1]} columns but the history stores "
            f"{history.action_width}; pad both with make_action_rows(..., width=D)"
        )
    if history.window < layout.window:
        raise ValueError(
            f"the history holds {history.window} recent latents but the layout packs {layout.window}; "
            f"build it with window={layout.window}"
        )


def _pack_without_history(
    history: FramePackHistory, target_actions: Tensor, flag_column: int | Tensor | None
) -> tuple[FramePackInputs, Tensor]:
    """Targets only: positions from the rows' start index, action rows 0..F-1 with flag 0."""
    batch, frames, _ = target_actions.shape
    steps = torch.arange(frames, device=history.device)
    no_slots = torch.zeros(batch, 0, dtype=torch.bool, device=history.device)
    values = _action_values(target_actions[:, :0], no_slots, target_actions, flag_column)
    inputs = FramePackInputs(
        history=(),
        target_frame_pos=(history.next_index[:, None] + steps).float(),  # [B, F]
        target_action_row=steps.expand(batch, frames),  # [B, F]
    )
    return inputs, values


def _gather_slots(history: FramePackHistory, layout: FramePackLayout) -> _Slots:
    """Lays the history out as [start] + the last ``layout.window`` recent slots."""
    recent = slice(history.window - layout.window, None)
    latents = history.recent_latents[:, :, recent]  # [B, C, K, H, W]
    actions = history.recent_actions[:, recent]  # [B, K, D]
    index = history.recent_index[:, recent]  # [B, K]
    valid = index >= 0
    if layout.mode == "exact" and layout.keep_first:
        valid = valid & (index != history.first_index[:, None])  # the first latent lives in the start slot only
    pos = index.float()
    if layout.keep_first:
        latents = torch.cat([history.first_latent, latents], dim=2)  # [B, C, 1 + K, H, W]
        actions = torch.cat([history.first_action, actions], dim=1)  # [B, 1 + K, D]
        index = torch.cat([history.first_index[:, None], index], dim=1)  # [B, 1 + K]
        valid = torch.cat([(history.length > 0)[:, None], valid], dim=1)
        pos = torch.cat([_start_pos(history, layout)[:, None], pos], dim=1)
    keep = valid.to(latents.dtype)[:, None, :, None, None]  # [B, 1, S, 1, 1]
    return _Slots(
        latents=latents * keep,
        actions=actions * valid.to(actions.dtype)[..., None],
        index=torch.where(valid, index, -1),
        pos=torch.where(valid, pos, 0.0),
        valid=valid,
    )


def _start_pos(history: FramePackHistory, layout: FramePackLayout) -> Tensor:
    """[B] float position of the start token: its index, or at most max_start_distance before the targets."""
    pos = history.first_index
    if layout.max_start_distance is not None:
        pos = torch.maximum(pos, history.next_index - layout.max_start_distance)
    return pos.float()


def _action_values(
    history_actions: Tensor, history_valid: Tensor, target_actions: Tensor, flag_column: int | Tensor | None
) -> Tensor:
    """[B, S + F, D] history rows (flag = slot validity) then target rows (flag 0)."""
    values = torch.cat([history_actions.to(target_actions.dtype), target_actions], dim=1)  # [B, A, D]
    batch, rows, width = values.shape
    flags = torch.cat([history_valid.to(values.dtype), values.new_zeros(batch, target_actions.shape[1])], dim=1)
    column = _flag_column(flag_column, batch, width, values.device)  # [B]
    return values.scatter(2, column[:, None, None].expand(batch, rows, 1), flags[..., None])


def _flag_column(flag_column: int | Tensor | None, batch: int, width: int, device: torch.device) -> Tensor:
    """[B] long flag column per row, validated against the action width."""
    if flag_column is None:
        flag_column = width - 1
    column = torch.as_tensor(flag_column, dtype=torch.long, device=device).expand(batch)
    if batch and (int(column.min()) < 0 or int(column.max()) >= width):
        raise ValueError(f"flag_column {column.tolist()} out of range for action rows of width {width}")
    return column


def _pad_spatial(latents: Tensor, scale: int, patch_hw: tuple[int, int]) -> Tensor:
    """Replicate-pads [B, C, T, H, W] at the far end of H and W to multiples of (s*ph, s*pw)."""
    pad_h = -latents.shape[3] % (scale * patch_hw[0])
    pad_w = -latents.shape[4] % (scale * patch_hw[1])
    if not (pad_h or pad_w):
        return latents
    return F.pad(latents, (0, pad_w, 0, pad_h, 0, 0), mode="replicate")


def _exact_groups(slots: _Slots, layout: FramePackLayout) -> list[TokenGroup]:
    """Groups of ``mode="exact"``: 4x, 2x (one token per s slots), then 1x [start, last num_1x]."""
    start = layout.num_start
    groups = []
    if layout.num_4x:
        groups.append(_exact_compressed(slots, 4, slice(start, start + layout.num_4x), layout))
    if layout.num_2x:
        first_2x = start + layout.num_4x
        groups.append(_exact_compressed(slots, 2, slice(first_2x, first_2x + layout.num_2x), layout))
    one_x = list(range(start)) + list(range(layout.num_slots - layout.num_1x, layout.num_slots))
    groups.append(_full_resolution(slots, one_x, one_x, layout, spatial_scale=1.0))
    return groups


def _exact_compressed(slots: _Slots, scale: int, span: slice, layout: FramePackLayout) -> TokenGroup:
    """One token per ``scale`` slots: mean index of its valid latents, row of its latest latent."""
    batch = slots.valid.shape[0]
    valid = slots.valid[:, span].reshape(batch, -1, scale)  # [B, tokens, s]
    pos = slots.pos[:, span].reshape(batch, -1, scale)  # [B, tokens, s]
    index = slots.index[:, span].reshape(batch, -1, scale)  # [B, tokens, s]
    count = valid.sum(dim=-1)  # [B, tokens]
    token_valid = count > 0
    mean_pos = (pos * valid).sum(dim=-1) / count.clamp(min=1)
    latest = torch.where(valid, index, -1).argmax(dim=-1)  # [B, tokens] offset of the latest latent
    first_slot = span.start + scale * torch.arange(valid.shape[1], device=valid.device)  # [tokens]
    return TokenGroup(
        scale=scale,
        latents=_pad_spatial(slots.latents[:, :, span], scale, layout.patch_hw),
        frame_pos=torch.where(token_valid, mean_pos, 0.0),
        action_row=torch.where(token_valid, first_slot + latest, -1),
        valid=token_valid,
        spatial_scale=float(scale),
    )


def _full_resolution(
    slots: _Slots, slot_ids: list[int], rows: list[int], layout: FramePackLayout, spatial_scale: float
) -> TokenGroup:
    """The 1x group of the given slots, token t reading action row ``rows[t]`` (-1 where invalid)."""
    device = slots.valid.device
    chosen = torch.tensor(slot_ids, device=device)
    valid = slots.valid[:, chosen]  # [B, tokens]
    row = torch.tensor(rows, device=device).expand_as(valid)
    return TokenGroup(
        scale=1,
        latents=_pad_spatial(slots.latents[:, :, chosen], 1, layout.patch_hw),
        frame_pos=slots.pos[:, chosen],
        action_row=torch.where(valid, row, -1),
        valid=valid,
        spatial_scale=spatial_scale,
    )


def referenced_action_rows(frame_pack: FramePackInputs, num_rows: int) -> Tensor:
    """[B, A] bool action rows read by a valid history token or by a target (e.g. ``valid`` for
    :func:`~astra_gym.world_model.action_encoders.route`)."""
    target = frame_pack.target_action_row
    used = torch.zeros(target.shape[0], num_rows + 1, dtype=torch.bool, device=target.device)  # +1: sink for -1
    rows = [target] + [torch.where(g.valid & (g.action_row >= 0), g.action_row, num_rows) for g in frame_pack.history]
    for row in rows:
        used = used.scatter(1, row.long().clamp(max=num_rows), True)
    return used[:, :num_rows]


def newest_full_resolution_token(frame_pack: FramePackInputs) -> tuple[Tensor, Tensor]:
    """Where each row's most recent uncompressed history latent sits in a pack.

    Args:
        frame_pack: Packed history of B rows.

    Returns:
        (group [B] long index into ``frame_pack.history`` of the 1x group holding the valid token with
        the largest temporal position, -1 for rows without one; token [B] long index of that token in
        its group). On equal positions the earlier group and the earlier token win.
    """
    rows = frame_pack.target_frame_pos.shape[0]
    device = frame_pack.target_frame_pos.device
    group = torch.full((rows,), -1, dtype=torch.long, device=device)
    token = torch.zeros(rows, dtype=torch.long, device=device)
    latest = torch.full((rows,), float("-inf"), device=device)
    for g, tokens in enumerate(frame_pack.history):
        if tokens.scale != 1:
            continue
        top, index = tokens.frame_pos.masked_fill(~tokens.valid, float("-inf")).max(dim=1)  # [B]
        newer = top > latest
        group, token = torch.where(newer, g, group), torch.where(newer, index, token)
        latest = torch.maximum(top, latest)
    return group, token


# --------------------------------------------------------------------------------- training helpers


def history_noise_mask(batch: int, generator: torch.Generator, p: float = 0.8) -> Tensor:
    """[B] bool rows whose history is noised (each with probability ``p``), on the generator's device."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"history noise probability p={p} must be in [0, 1]")
    return torch.rand(batch, generator=generator, device=generator.device) < p


def corrupt_history(
    frame_pack: FramePackInputs,
    generator: torch.Generator,
    p: float = 0.8,
    sigma_range: tuple[float, float] = (0.626, 1.0),
    scales: Sequence[int] = (1,),
) -> FramePackInputs:
    """Noise-as-mask: noises the history latents of the chosen scales for a random subset of rows.

    With probability ``p`` per batch row, every latent of the groups whose scale is in ``scales``
    becomes (1 - σ)·x + σ·ε with one σ ~ U(sigma_range) per row and independent ε ~ N(0, 1).
    Everything else (other groups, other rows, positions, rows, validity, targets) is returned
    untouched. The release defaults: p = 0.8, σ in [0.626, 1.0], only the 1x group. All draws come
    from ``generator`` (on its device), in a fixed order, so a seeded generator is deterministic.

    Args:
        frame_pack: Packed inputs from :func:`pack`.
        generator: Source of all randomness.
        p: Probability that a row's history is noised.
        sigma_range: (low, high) of the uniform noise level, within [0, 1].
        scales: Group scales to noise.

    Returns:
        New packed inputs.
    """
    low, high = sigma_range
    if not 0.0 <= low <= high <= 1.0:
        raise ValueError(f"sigma_range={sigma_range} must satisfy 0 <= low <= high <= 1")
    if any(s not in (1, 2, 4) for s in scales):
        raise ValueError(f"scales={tuple(scales)} must be drawn from (1, 2, 4)")
    batch = frame_pack.target_frame_pos.shape[0]
    noised = history_noise_mask(batch, generator, p)
    sigma = low + (high - low) * torch.rand(batch, generator=generator, device=generator.device)  # [B]
    groups = tuple(_noise_group(g, noised, sigma, generator) if g.scale in scales else g for g in frame_pack.history)
    return dataclasses.replace(frame_pack, history=groups)


def _noise_group(group: TokenGroup, noised: Tensor, sigma: Tensor, generator: torch.Generator) -> TokenGroup:
    """The group with rows ``noised`` [B] replaced by (1 - σ)x + σε."""
    latents = group.latents
    eps = torch.randn(latents.shape, generator=generator, device=generator.device).to(latents.device)
    s = sigma.to(latents.device)[:, None, None, None, None]  # [B, 1, 1, 1, 1]
    mixed = ((1.0 - s) * latents.float() + s * eps).to(latents.dtype)
    keep = ~noised.to(latents.device)[:, None, None, None, None]
    return dataclasses.replace(group, latents=torch.where(keep, latents, mixed))


def sample_history_length(
    generator: torch.Generator,
    max_len: int,
    *,
    target_len: int = 8,
    dataset: Literal["other", "spatialvid"] = "other",
    clip_len: int | None = None,
) -> int:
    """Draws a training condition length n (in latents), as the release does (§5.2 step 2).

    With r ~ U(0, 1):

    * ``"other"`` (default): r < 0.15 -> 1; r < 0.9, or a short clip (clip_len <= 2*target_len + 1)
      -> U{target_len // 4 .. max_len}; otherwise target_len.
    * ``"spatialvid"``: r < 0.4 -> 1; r < 0.9 -> U{target_len // 4 .. max_len}; otherwise target_len.

    Args:
        generator: Source of the draws.
        max_len: Largest n; the release uses min(30, clip_len - target_len - 1).
        target_len: Target latents m (release 8).
        dataset: Which branch of the release's distribution.
        clip_len: Latents in the clip (only used for the short-clip rule of ``"other"``).

    Returns:
        n, at most ``max_len`` (the release's n = target_len can exceed it on short clips; we clamp).
    """
    if max_len < 1:
        raise ValueError(f"max_len={max_len} must be >= 1; the clip is too short for {target_len} targets")
    if dataset not in ("other", "spatialvid"):
        raise ValueError(f"dataset={dataset!r} must be 'other' or 'spatialvid'")
    r = float(torch.rand((), generator=generator, device=generator.device))
    single_cut = 0.4 if dataset == "spatialvid" else 0.15
    short = dataset == "other" and clip_len is not None and clip_len <= 2 * target_len + 1
    if r < single_cut:
        return 1
    if r < 0.9 or short:
        return _uniform_length(generator, max(target_len // 4, 1), max_len)
    return min(target_len, max_len)


def _uniform_length(generator: torch.Generator, low: int, high: int) -> int:
    """n ~ U{low .. high}; raises if the range is empty."""
    if high < low:
        raise ValueError(
            f"max_len={high} is below the minimum condition length {low}; use clips with at least "
            f"{low} + target_len + 1 latents"
        )
    return int(torch.randint(low, high + 1, (), generator=generator, device=generator.device))
