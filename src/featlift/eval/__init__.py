"""``featlift eval``: the field's dense-probe benchmarks (linear-probe segmentation and depth, video
label propagation) for any upsampler, side by side.

- :mod:`~featlift.eval.datasets`: the standard on-disk layouts (VOC, ADE20K, Cityscapes, COCO-Stuff,
  NYUv2, DAVIS 2017) and the protocol's resize + centre crop.
- :mod:`~featlift.eval.metrics`: mIoU / pixel accuracy, depth errors, J&F.
- :mod:`~featlift.eval.video`: label propagation with a top-k feature affinity.
- :mod:`~featlift.eval.upsamplers`: what ``--upsampler`` names (featlift models, bilinear/nearest/bicubic,
  ``hub:REPO:ENTRY``) as one feature source interface.
- :mod:`~featlift.eval.probe`: training and evaluating the 1x1 linear probe.
"""
