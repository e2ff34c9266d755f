"""The command line's shared arguments: each flag defined and validated once, used by every command
that takes it. Nothing here imports torch, so parsing and ``--help`` stay fast."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from .._tensors import DTYPE_NAMES

__all__ = [
    "add_backbone_name",
    "add_backbone_weights",
    "add_feature_cache",
    "add_iters",
    "add_model",
    "add_no_amp",
    "add_no_pretrained",
    "add_runtime",
    "add_tile",
    "add_trust_repo",
    "add_weight_sources",
    "at_least",
    "grid",
    "int_at_least",
    "load_options",
    "non_negative_int",
    "number_above",
    "positive_int",
    "torch_dtype",
]


def at_least(
    low: float, *, cast: type = int, strict: bool = False, below: float | None = None
) -> Callable[[str], float]:
    """An argparse type: a number read with ``cast`` (``int``: a whole number) no smaller than ``low`` (or
    greater than ``low`` when ``strict``), and smaller than ``below`` when given."""
    kind = "a whole number" if cast is int else "a number"
    bound = "greater than" if strict else "at least"

    def parse(text: str):
        try:
            value = cast(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {kind}, got {text!r}") from None
        if value < low or (strict and value == low):
            raise argparse.ArgumentTypeError(f"must be {bound} {low:g}, got {text}")
        if below is not None and value >= below:
            raise argparse.ArgumentTypeError(f"must be below {below:g}, got {text}")
        return value

    return parse


def int_at_least(low: int) -> Callable[[str], int]:
    """An argparse type: a whole number no smaller than ``low``."""
    return at_least(low)


def number_above(low: float) -> Callable[[str], float]:
    """An argparse type: a number greater than ``low``."""
    return at_least(low, cast=float, strict=True)


positive_int = int_at_least(1)
non_negative_int = int_at_least(0)


def grid(what: str, *, minimum: int = 1, also: tuple[str, ...] = ()) -> Callable[[str], object]:
    """An argparse type for ``HxW`` (two whole numbers of at least ``minimum``, e.g. ``448x448``), or one
    of the words in ``also``; ``what`` names the value in the error (``"--size"``)."""
    words = "".join(f"'{word}' or " for word in also)

    def parse(text: str):
        if text in also:
            return text
        try:
            h, w = (int(v) for v in text.lower().split("x"))
        except ValueError:
            raise argparse.ArgumentTypeError(f"{what} must be {words}HxW such as 4x6, got {text!r}") from None
        if h < minimum or w < minimum:
            raise argparse.ArgumentTypeError(f"{what} must be at least {minimum}x{minimum}, got {text!r}")
        return (h, w)

    return parse


def add_model(parser: argparse.ArgumentParser, *, positional: bool = False, default: str | None = "dinov2_s14") -> None:
    """The model reference and where its weights come from (read back with :func:`load_options`)."""
    what = "registered name (see 'featlift models'), local model dir, config file or Hub repo id"
    if positional:
        parser.add_argument("model", help=what)
    else:
        parser.add_argument("--model", default=default, help=f"{what} (default {default})")
    group = parser.add_argument_group("model weights")
    group.add_argument("--weights", default=None, metavar="FILE", help="local UPLiFT weights instead of the download")
    add_weight_sources(group)


def add_weight_sources(parser) -> None:
    """Where weights come from, for every command that loads a model: ``--backbone-weights``,
    ``--no-pretrained``, ``--revision`` and ``--cache-dir`` (read back with :func:`load_options`)."""
    add_backbone_weights(parser)
    add_no_pretrained(parser)
    add_trust_repo(parser)
    parser.add_argument("--revision", default=None, help="Hub branch, tag or commit of the UPLiFT files")
    parser.add_argument(
        "--cache-dir", default=None, metavar="DIR", help="Hugging Face cache folder (default: the standard one)"
    )


def add_backbone_weights(parser) -> None:
    parser.add_argument(
        "--backbone-weights", default=None, metavar="PATH", help="local backbone weights instead of the download"
    )


def add_trust_repo(parser) -> None:
    parser.add_argument(
        "--trust-repo",
        action="store_true",
        help="torch.hub code from a GitHub repository (hub: backbones and upsamplers) runs without asking "
        "(default: torch.hub asks once)",
    )


def add_backbone_name(parser, *, required: bool, what: str) -> None:
    """``--backbone SOURCE:NAME`` and ``--backbone-stride``, for the commands that build a backbone by name."""
    parser.add_argument(
        "--backbone",
        required=required,
        default=None,
        metavar="SOURCE:NAME",
        help=f"{what}: SOURCE:NAME with SOURCE timm, open_clip, transformers, hub or diffusers (e.g. "
        "open_clip:ViT-B-16/openai, transformers:facebook/dinov2-small, timm:resnet50.a1_in1k, "
        "hub:NVlabs/RADIO:radio_model); a bare name is a timm name",
    )
    parser.add_argument(
        "--backbone-stride",
        type=positive_int,
        default=None,
        help="output stride of a convolutional or hierarchical timm backbone (8, 16 or 32; default: its deepest "
        "stage's); other backbones have one stride",
    )


def add_no_pretrained(parser) -> None:
    parser.add_argument("--no-pretrained", action="store_true", help="random weights (testing only)")


def add_feature_cache(parser) -> None:
    parser.add_argument(
        "--feature-cache",
        default=None,
        metavar="DIR",
        help="keep backbone features here across epochs (keyed on the backbone's weights and its exact input)",
    )


def add_no_amp(parser) -> None:
    parser.add_argument("--no-amp", action="store_true", help="no bfloat16 autocast on CUDA (always float32)")


def load_options(args: argparse.Namespace):
    """The :class:`featlift.LoadOptions` the :func:`add_model` (or :func:`add_weight_sources`) arguments
    give."""
    from .._builder import LoadOptions

    return LoadOptions(
        pretrained=not args.no_pretrained,
        weights=getattr(args, "weights", None),
        backbone_weights=args.backbone_weights,
        revision=args.revision,
        cache_dir=args.cache_dir,
        trust_repo=args.trust_repo,
    )


def add_runtime(
    parser: argparse.ArgumentParser,
    *,
    dtypes: tuple[str, ...] | None = DTYPE_NAMES,
    device_help: str = "cuda, cuda:N or cpu (default: cuda when available)",
) -> None:
    """``--device`` and (unless ``dtypes`` is None) ``--dtype``, the compute dtype, from the one table."""
    parser.add_argument("--device", default=None, help=device_help)
    if dtypes is not None:
        parser.add_argument("--dtype", default="float32", choices=dtypes, help="compute dtype (default float32)")


def torch_dtype(args: argparse.Namespace):
    """The ``torch.dtype`` that ``--dtype`` names."""
    from .._tensors import to_dtype

    return to_dtype(args.dtype)


def add_iters(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--iters", type=positive_int, default=None, help="upsampling iterations (default: pixel density)"
    )


def add_tile(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--tile",
        type=positive_int,
        default=None,
        metavar="CELLS",
        help="exact tiled upsampling over tiles of this many backbone cells (bounds memory on big images)",
    )
