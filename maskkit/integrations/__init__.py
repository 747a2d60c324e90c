"""Drop maskkit's splits into the MAE code people already run.

One module per ecosystem, each a thin adapter over :mod:`maskkit.mae`'s blocks; import
the one you need (the optional dependencies are imported only there):

- :mod:`maskkit.integrations.mae`: facebookresearch/mae's ``MaskedAutoencoderViT``
  (:class:`~maskkit.integrations.mae.MAEAdapter`; no extra dependency).
- :mod:`maskkit.integrations.hf`: Hugging Face ``ViTMAEForPreTraining``, through its
  ``noise`` argument (``pip install 'maskkit[hf]'``).
- :mod:`maskkit.integrations.lightly`: lightly's ``MaskedVisionTransformerTIMM`` and MAE
  decoders (``pip install 'maskkit[lightly]'``).

timm ViTs need no adapter: :func:`maskkit.forward_features_visible` and
:class:`maskkit.mae.MaskedAutoencoder` are the native path.
"""

from __future__ import annotations

__all__: list[str] = []
