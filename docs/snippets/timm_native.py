import timm
import torch

from maskkit import AttentionExtractor, SAMMasker, forward_features_visible
from maskkit.mae import MaskedAutoencoder

encoder = timm.create_model("vit_tiny_patch16_224", img_size=64, num_classes=3)  # 4 x 4 patches
images, targets = torch.rand(2, 3, 64, 64), torch.tensor([0, 2])

# Attention maps: the last block's cls row, fused attention left on, in patch order.
weights = AttentionExtractor(encoder)(images)  # (2, 4, 4)

# An MAE around the timm ViT; thrown patches take no part in encoder, decoder or loss.
model = MaskedAutoencoder(encoder=encoder, decoder_dim=64, decoder_depth=1, norm_pix_loss=True)
split = SAMMasker(0.45, 0.30)(2, model.num_patches, weights)
out = model(images, targets, split)
assert out.pred.shape == (2, split.masked.shape[1], 16 * 16 * 3)  # the masked patches
out.loss.backward()

# Fine-tuning on SAM's visible patches only (MSMAE), all patches at test time.
logits = encoder.forward_head(forward_features_visible(encoder, images, split.visible))
assert logits.shape == (2, 3)

# Models that are not a grid of patch tokens behind a cls token are refused by name.
hiera = timm.create_model("hiera_tiny_224")
try:
    AttentionExtractor(hiera)
    raise AssertionError("expected a TypeError")
except TypeError as error:
    print(error)
