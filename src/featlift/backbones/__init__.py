"""Frozen feature backbones behind one small interface (:class:`Backbone`), from every source.

=================  ============================================  ===========================================
source             example name (``SOURCE:NAME``)                class
=================  ============================================  ===========================================
``timm``           ``timm:resnet50.a1_in1k`` (a bare name too)   :class:`TimmBackbone` (ViTs, conv nets, Swin)
``open_clip``      ``open_clip:ViT-B-16/openai``                 :class:`OpenClipBackbone`
``transformers``   ``transformers:facebook/dinov2-small``        :class:`TransformersBackbone`
``hub``            ``hub:NVlabs/RADIO:radio_model``              :class:`HubBackbone` (adapter contract)
``diffusers``      ``diffusers:stable-diffusion-v1-5/...``       :class:`DiffusersVAE`
``module``         (Python only) :class:`UserModule`             :class:`ModuleBackbone`
=================  ============================================  ===========================================

:func:`create_backbone` builds one from a name, a :class:`UserModule` or a :class:`Backbone`;
:func:`load_backbone` builds the one a :class:`~featlift.config.BackboneConfig` records. The table
:data:`BACKBONE_CLASSES` maps each ``source`` to its class; each library beyond timm is imported only when
its backbone is built.
"""

from __future__ import annotations

from ._sources import (
    BACKBONE_CLASSES,
    agreed_normalisation,
    backbone_class,
    create_backbone,
    image_normalisation,
    load_backbone,
    parse_backbone,
)
from .base import Backbone, BuildOptions
from .custom import ModuleBackbone, UserModule
from .hf_transformers import TransformersBackbone
from .openclip import OpenClipBackbone
from .sd_vae import DiffusersVAE
from .timm_models import TimmBackbone, TimmViT
from .torch_hub import HubBackbone

__all__ = [
    "BACKBONE_CLASSES",
    "Backbone",
    "BuildOptions",
    "DiffusersVAE",
    "HubBackbone",
    "ModuleBackbone",
    "OpenClipBackbone",
    "TimmBackbone",
    "TimmViT",
    "TransformersBackbone",
    "UserModule",
    "agreed_normalisation",
    "backbone_class",
    "create_backbone",
    "image_normalisation",
    "load_backbone",
    "parse_backbone",
]
