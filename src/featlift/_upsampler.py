"""``Upsampler``: a frozen backbone + UPLiFT with the image pre- and post-processing users need.

The model code never sees a PIL image: this wrapper turns PIL images, numpy arrays and tensors into
normalised batches, runs the backbone and the upsampler, and resizes the result.
"""

from __future__ import annotations

import logging
import operator
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._images import PendingImage, image_batch, patch_multiple, resize_to_patch_multiple
from ._memory import RESIZE_CHANNELS, available_bytes, estimate_call, format_bytes
from ._tensors import freeze
from .backbones import agreed_normalisation
from .backbones._normalisation import normalise
from .backbones.base import Backbone
from .errors import InsufficientMemoryError
from .modeling.uplift import UPLiFT

__all__ = ["Upsampler", "resize_features"]

logger = logging.getLogger(__name__)

OutputSize = None | str | tuple[int, int]

# Elements of a half-precision map summed in float32 at a time by the finiteness check (16 MB of float32).
FINITE_STRIP = 1 << 22


def _all_finite(t: Tensor) -> bool:
    """Whether every element is finite: sums accumulated in float32 (a NaN or inf anywhere makes them
    non-finite), and the exact element test only when they are not finite (they may have overflowed). A
    half-precision map is summed a strip of rows at a time: a whole-map ``sum(dtype=torch.float32)`` would
    first make a float32 copy of it, twice its own size."""
    rows = t.shape[-2]
    if t.element_size() < 4:
        rows = FINITE_STRIP // max(1, t[..., :1, :].numel())
    total = torch.stack([strip.sum(dtype=torch.float32) for strip in t.split(max(1, rows), dim=-2)]).sum()
    return bool(torch.isfinite(total)) or bool(t.isfinite().all())


def resize_features(features: Tensor, size: tuple[int, int]) -> Tensor:
    """``features`` [B, C, h, w] resized to ``size`` with bilinear interpolation (align_corners=False),
    accumulated in float32 and returned in the input's dtype and memory layout.

    Antialiased only where a side shrinks by more than 2x. Up to 2x, plain bilinear still draws on every
    input pixel (output pixels are at most 2 input pixels apart), so the antialiasing triangle filter
    changes little: from the native 512 px grid to a 448 px image it moves DINOv2 features by at most
    about 1e-2 (README, "Performance"), while PyTorch's antialiased kernel costs 5-9x more on the CPU
    (1.2 s of a 3.6 s call for 384 channels there). Past 2x, bilinear would skip input pixels and alias.

    Half precision never takes a float32 copy of the whole map: PyTorch's bilinear kernel accumulates it
    in float32 itself, and its antialiased kernel, which takes float32 only, gets
    :data:`~featlift._memory.RESIZE_CHANNELS` channels at a time.
    """
    h, w = features.shape[-2:]
    antialias = size[0] * 2 < h or size[1] * 2 < w
    if not antialias or features.dtype == torch.float32:
        return F.interpolate(features, size=size, mode="bilinear", align_corners=False, antialias=antialias)
    channels_last = features.is_contiguous(memory_format=torch.channels_last) and not features.is_contiguous()
    layout = torch.channels_last if channels_last else torch.contiguous_format
    out = torch.empty((*features.shape[:2], *size), dtype=features.dtype, device=features.device, memory_format=layout)
    for c in range(0, features.shape[1], RESIZE_CHANNELS):
        part = features[:, c : c + RESIZE_CHANNELS].float()
        out[:, c : c + RESIZE_CHANNELS] = F.interpolate(
            part, size=size, mode="bilinear", align_corners=False, antialias=True
        )
    return out


def _check_output_size(output_size: Any) -> OutputSize:
    if output_size is None or output_size == "native":
        return output_size
    if isinstance(output_size, Sequence) and not isinstance(output_size, str) and len(output_size) == 2:
        try:
            size = tuple(operator.index(v) for v in output_size if not isinstance(v, bool))
        except TypeError:
            size = ()
        if len(size) == 2 and all(v > 0 for v in size):
            return size
    raise ValueError(
        f"output_size must be None (each image's own size), 'native' or (height, width) with positive "
        f"integers, got {output_size!r}"
    )


class Upsampler(nn.Module):
    """Pixel-dense features from images: backbone -> UPLiFT -> resize. Frozen, eval mode.

    Build with :func:`featlift.load_upsampler`. Call it on images::

        feats = up(image)                          # [1, C, H, W] at the image's own size
        feats = up(image, output_size="native")    # the upsampler's own grid, e.g. 512x512 for 448 px
        feats, lowres = up(image, return_lowres=True)
        labels = up(big_image, tile=64, head=probe)  # exact tiled inference, per-tile head

    ``tile`` (here or per call) runs UPLiFT over tiles of that many backbone cells with an exact halo
    (see :meth:`featlift.UPLiFT.forward`): the backbone still sees the whole image once, peak memory
    follows the tile size.

    Images are normalised with :attr:`normalisation`, ``(mean, std)`` per RGB channel, resolved once here:
    the backbone's statistics must agree with those the UPLiFT config implies
    (:func:`~featlift.backbones.image_normalisation`) when both state them, else ``ValueError``; a backbone
    that states none (a user's subclass) takes the config's, and a config that names no backbone and
    states no mean/std takes the backbone's. The backbone object given is not changed.
    """

    def __init__(
        self,
        backbone: Backbone,
        uplift: UPLiFT,
        iters: int | None = None,
        name: str | None = None,
        tile: int | tuple[int, int] | None = None,
    ) -> None:
        super().__init__()
        if backbone.patch != uplift.patch or backbone.channels != uplift.channels:
            raise ValueError(
                f"backbone gives {backbone.channels} channels at patch {backbone.patch} but the upsampler "
                f"expects {uplift.channels} channels at patch {uplift.patch}"
            )
        self.backbone = backbone
        self.uplift = uplift
        self.iters = uplift.default_iters if iters is None else iters
        self.name = name
        self.tile = tile
        self.memory_guard = True
        # The statistics images are normalised with: the backbone's and the config UPLiFT was trained with
        # must agree (a backbone that states none takes the config's). Kept here; the backbone is left alone.
        self.normalisation = agreed_normalisation(
            backbone.normalisation, uplift.config.backbone, what=f"the backbone ({type(backbone).__name__})"
        )
        freeze(self)

    @property
    def patch(self) -> int:
        return self.uplift.patch

    @property
    def device(self) -> torch.device:
        return next(self.uplift.parameters()).device

    @property
    def mean(self) -> Tensor:
        """The per-channel mean images are normalised with, [1, 3, 1, 1] (:attr:`normalisation`)."""
        return torch.tensor(self.normalisation[0], device=self.device).view(1, 3, 1, 1)

    @property
    def std(self) -> Tensor:
        """The per-channel std images are normalised with, [1, 3, 1, 1] (:attr:`normalisation`)."""
        return torch.tensor(self.normalisation[1], device=self.device).view(1, 3, 1, 1)

    @property
    def dtype(self) -> torch.dtype:
        return next(self.uplift.parameters()).dtype

    def train(self, mode: bool = True) -> Upsampler:
        # Frozen: the backbone and upsampler always run with running statistics.
        return super().train(False)

    # -- pre-processing ----------------------------------------------------------------------------

    def prepare(self, images: Any) -> list[tuple[Tensor, tuple[int, int]]]:
        """Each image as (float32 [1, 3, H', W'] in [0, 1] resized to patch multiples, original (H, W)).

        Every input kind goes through :mod:`featlift._images` (one conversion rule per kind) and then
        the same antialiased bilinear resize, so equal pixels give equal tensors however they arrive.
        """
        return [(self._load(item), item.size) for item in image_batch(images)]

    def _load(self, item: PendingImage) -> Tensor:
        return resize_to_patch_multiple(item.load()[None], self.patch)

    def normalize(self, image: Tensor) -> Tensor:
        """[B, 3, H, W] in [0, 1] -> normalised with :attr:`normalisation`, on the model's device and dtype."""
        return normalise(image.to(self.device, torch.float32), self.normalisation, self.dtype)

    # -- the call ----------------------------------------------------------------------------------

    @torch.inference_mode()
    def forward(
        self,
        images: Any,
        output_size: OutputSize = None,
        return_lowres: bool = False,
        *,
        tile: int | tuple[int, int] | str | None = "default",
        head: Callable[[Tensor], Tensor] | None = None,
        features: Tensor | None = None,
    ) -> Tensor | list[Tensor] | tuple[Any, Any]:
        """Pixel-dense features for ``images``.

        Args:
            images: a PIL image (any mode; converted to RGB), an HxWx3 uint8 numpy array, a float tensor
                [3, H, W] or [B, 3, H, W] in [0, 1], or a list of these. Each is resized to the nearest
                multiple of the patch before the backbone.
            output_size: None (default) gives each image's own size; ``"native"`` the upsampler's grid
                (h * 2**iters); ``(H, W)`` that size for every image.
            return_lowres: also return the backbone features.
            tile: tile size in backbone cells for exact tiled upsampling (``None``: whole image); by
                default ``self.tile``.
            head: per-pixel callable [B, C, H, W] -> [B, K, H, W] (linear probe, PCA, ...) applied to each
                tile at the upsampler's native resolution; the K-channel result is then resized to
                ``output_size``. Pixel-dense C-channel features are never held for the whole image.
            features: the backbone's features of ``images`` [B, C, h, w], computed earlier (a feature
                cache); the backbone is then skipped. The images must share one size.

        Returns:
            [B, C, H, W] when all images share a size, else a list of [1, C, H, W] tensors; with
            ``return_lowres`` a tuple (features, lowres) of matching structure.
        """
        output_size = _check_output_size(output_size)
        tile = self.uplift.check_tile(self.tile if tile == "default" else tile)
        if head is not None and not callable(head):
            raise TypeError(f"head must be a callable mapping [B, C, H, W] to [B, K, H, W], got {type(head).__name__}")
        pending = image_batch(images)
        same = len({item.size for item in pending}) == 1
        if features is not None and not same:
            raise ValueError("features= needs images of one size (one backbone batch); pass them one size at a time")
        groups = [pending] if same else [[item] for item in pending]
        feats, lows = [], []
        for group in groups:
            original = group[0].size
            size = None if output_size == "native" else (output_size or original)
            if self.memory_guard:
                self.check_memory(len(group), original, output_size=output_size, tile=tile, head=head)
            image = self.normalize(torch.cat([self._load(item) for item in group]))
            lowres = self.backbone(image) if features is None else self._check_features(features, image)
            if not _all_finite(lowres):
                raise ValueError(
                    f"the backbone returned NaN or infinite features for images of {original[0]}x{original[1]} "
                    "pixels; check the backbone weights (and try dtype=torch.float32 if you use half precision)"
                )
            out = self.uplift(image, lowres, iters=self.iters, tile=tile, head=head)
            if size is not None and tuple(out.shape[-2:]) != size:
                out = resize_features(out, size)
            if not _all_finite(out):
                raise ValueError(
                    "the upsampled features contain NaN or infinite values although the inputs were finite; "
                    "check the upsampler weights (and try dtype=torch.float32 if you use half precision)"
                )
            feats.append(out)
            lows.append(lowres)
        result = feats[0] if same else feats
        if return_lowres:
            return result, (lows[0] if same else lows)
        return result

    def _check_features(self, features: Tensor, image: Tensor) -> Tensor:
        b, _, h, w = image.shape
        want = (b, self.backbone.channels, h // self.patch, w // self.patch)
        if not isinstance(features, Tensor) or tuple(features.shape) != want:
            got = tuple(features.shape) if isinstance(features, Tensor) else type(features).__name__
            raise ValueError(
                f"features must be the backbone's output for these images, shape {want} (batch, channels, "
                f"patch grid of the {h}x{w} backbone input), got {got}"
            )
        return features.to(self.device, self.dtype)

    def estimate_memory(
        self,
        batch: int,
        size: tuple[int, int],
        *,
        output_size: OutputSize = None,
        tile: int | tuple[int, int] | None = None,
        head: Callable[[Tensor], Tensor] | None = None,
    ):
        """Estimated peak bytes (:class:`featlift._memory.MemoryEstimate`) of a call on ``batch`` images of
        ``size`` (H, W) pixels, from the shapes alone; the keywords mean what they mean in :meth:`forward`."""
        return self._estimate(batch, size, output_size, tile, None if head is None else self._head_channels(head))

    def _estimate(self, batch: int, size: tuple[int, int], output_size, tile, head_channels: int | None):
        """:meth:`estimate_memory` with a head of ``head_channels`` outputs (None: no head)."""
        output_size = _check_output_size(output_size)
        tile = self.uplift.check_tile(tile)
        pixels = patch_multiple(size, self.patch)
        itemsize = torch.empty((), dtype=self.dtype).element_size()
        return estimate_call(
            self.uplift,
            backbone_bytes=self.backbone.activation_bytes(batch, pixels, itemsize),
            batch=batch,
            pixels=pixels,
            iters=self.iters,
            itemsize=itemsize,
            tile=tile,
            out_channels=self.uplift.channels if head_channels is None else head_channels,
            output_size=None if output_size == "native" else (output_size or tuple(size)),
            head=head_channels is not None,
        )

    def check_memory(
        self,
        batch: int,
        size: tuple[int, int],
        *,
        output_size: OutputSize = None,
        tile: int | tuple[int, int] | None = None,
        head: Callable[[Tensor], Tensor] | None = None,
    ) -> None:
        """Raise :class:`~featlift.errors.InsufficientMemoryError` if the call would not fit in memory.

        Runs before the backbone on every call while ``self.memory_guard`` is True (the default); the
        keywords are :meth:`estimate_memory`'s.
        """
        free = available_bytes(self.device)
        if free is None:
            return
        head_channels = None if head is None else self._head_channels(head)  # probed once per call
        estimate = self._estimate(batch, size, output_size, tile, head_channels)
        if estimate.total <= free:
            return
        what = f"{batch} image(s) of {size[0]}x{size[1]} pixels"
        fixes = []
        fitting = self._fitting_tile(batch, size, output_size, head_channels, free)
        if fitting is not None:
            t, tiled = fitting
            fixes.append(f"tile={t} (exact tiled upsampling; about {format_bytes(tiled.total)} in all)")
        else:
            if head is None:
                fixes.append(self._head_fix(batch, size, output_size, free))
            fixes.append("output_size= a smaller (height, width)")
        if self.dtype == torch.float32:
            fixes.append("dtype=torch.bfloat16 in load_upsampler (half the bytes)")
        fixes.append("fewer images per call")
        raise InsufficientMemoryError(
            f"not enough memory: upsampling {what} needs {estimate.describe()}, but only "
            f"{format_bytes(free)} is available on {self.device}. Fixes: " + "; ".join(fixes) + ". "
            "If you know better, set up.memory_guard = False to run anyway."
        )

    def _fitting_tile(self, batch, size, output_size, head_channels, free: int):
        """The largest tile (of 128, 64, ..., 8 cells, smaller than the image) whose call fits in ``free``
        bytes, with its estimate; None when none fits."""
        for t in (128, 64, 32, 16, 8):
            tiled = self._estimate(batch, size, output_size, (t, t), head_channels)
            if tiled.total <= free and t < max(size) // self.patch:
                return t, tiled
        return None

    def _head_fix(self, batch, size, output_size, free: int) -> str:
        """What to pass when even a tiled call does not fit: a head (only its K channels are stored) with
        the largest K and the tile that make the call fit, in one sentence."""
        head = (
            "head= (a per-pixel head such as a linear probe or a PCA basis, applied per tile, so only its K "
            "channels are stored)"
        )
        tile = self._fitting_tile(batch, size, output_size, 1, free)
        if tile is None:
            return head
        t, one = tile
        per_channel = one.output  # the stored result grows by this much per channel of the head
        k = min(self.uplift.channels, 1 + max(0, (free - one.total) // max(per_channel, 1)))
        while k > 1 and self._estimate(batch, size, output_size, (t, t), k).total > free:
            k -= 1
        fits = self._estimate(batch, size, output_size, (t, t), k)
        return (
            f"{head} with at most {k} channels, together with tile={t} (about {format_bytes(fits.total)} in "
            f"all; a head alone, untiled, still holds the whole C-channel map)"
        )

    def _head_channels(self, head: Callable[[Tensor], Tensor] | None) -> int:
        """Channels a head returns, probed on one zero pixel (C without a head, or if the probe fails)."""
        if head is None:
            return self.uplift.channels
        try:
            probe = head(torch.zeros(1, self.uplift.channels, 1, 1, device=self.device, dtype=self.dtype))
            return int(probe.shape[1])
        except Exception:  # the real call will report a broken head; the estimate just assumes C
            logger.debug("could not probe the head's channel count; assuming %d", self.uplift.channels)
            return self.uplift.channels

    @torch.inference_mode()
    def decode(self, latents: Tensor) -> Tensor:
        """VAE variants only: (upsampled) latents [B, 4, h, w] -> images [B, 3, 8h, 8w] in [0, 1]."""
        decode = getattr(self.backbone, "decode", None)
        if decode is None:
            raise TypeError(
                f"decode() needs a VAE backbone; this upsampler's backbone is {type(self.backbone).__name__}"
            )
        return decode(latents.to(self.device, self.dtype))
