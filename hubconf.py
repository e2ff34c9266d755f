"""torch.hub entry points: ``torch.hub.load("<repo>", "dinov2_s14")``. Heavy imports stay inside."""

# What the first call imports: featlift's core dependencies, by import name (tests/test_structure.py checks it).
dependencies = ["torch", "timm", "huggingface_hub", "safetensors", "einops", "yaml", "numpy", "PIL", "psutil", "tqdm"]


def _load(name, pretrained, kwargs):
    try:
        import featlift
    except ImportError:  # a torch.hub checkout that was not pip-installed
        import sys
        from pathlib import Path

        sys.path.insert(0, str(Path(__file__).resolve().parent / "src"))
        import featlift
    return featlift.load_upsampler(name, pretrained=pretrained, **kwargs)


def dinov2_s14(*, pretrained=True, **kwargs):
    """UPLiFT for DINOv2 ViT-S/14 (timm ``vit_small_patch14_dinov2.lvd142m``): 384 channels, patch 14.
    Keywords are :func:`featlift.load_upsampler`'s (``device``, ``dtype``, ``weights``, ...)."""
    return _load("dinov2_s14", pretrained, kwargs)


def dinov3_splus16(*, pretrained=True, **kwargs):
    """UPLiFT for DINOv3 ViT-S+/16 (timm ``vit_small_plus_patch16_dinov3.lvd1689m``): 384 channels, patch 16.
    Keywords are :func:`featlift.load_upsampler`'s."""
    return _load("dinov3_splus16", pretrained, kwargs)


def sd15_vae(*, pretrained=True, **kwargs):
    """UPLiFT for the Stable Diffusion 1.5 VAE latents (needs ``featlift[vae]``): 4 channels, patch 8.
    Keywords are :func:`featlift.load_upsampler`'s."""
    return _load("sd15_vae", pretrained, kwargs)
