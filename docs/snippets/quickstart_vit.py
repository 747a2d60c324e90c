import timm
import torch

from maskkit import AttentionExtractor, SAMMasker, forward_features_visible
from maskkit.demo import SyntheticLesions

# A small timm ViT: 64 px images, 8 px patches, an 8 x 8 grid of L = 64 patches.
vit = timm.create_model(
    "vit_tiny_patch16_224",  # a ViT-Ti/16 made smaller; random weights, nothing downloaded
    pretrained=False,
    img_size=64,
    patch_size=8,
    embed_dim=64,
    depth=2,
    num_heads=2,
    num_classes=3,
)
data = SyntheticLesions(4, image_size=64, num_classes=3)
images = torch.stack([data[i][0] for i in range(4)])  # (B, 3, 64, 64)

# 1. Masking weights: the last block's cls-token attention over the patches.
extractor = AttentionExtractor(vit)
weights = extractor(images)  # (B, gh, gw) float32, min-max normalised per head
assert weights.shape == (4, 8, 8)
assert weights.min() >= 0 and weights.max() <= 1

# 2. A SAM split of the 64 patches: 16 visible, 28 masked, 20 thrown.
split = SAMMasker()(4, 64, weights, generator=torch.Generator().manual_seed(0))
assert (split.visible.shape[1], split.masked.shape[1], split.thrown.shape[1]) == (16, 28, 20)

# 3. Encode only the visible patches with timm's own layers, then classify.
tokens = forward_features_visible(vit, images, split.visible)  # (B, 1 + K, D): cls + visible
logits = vit.forward_head(tokens)
assert tokens.shape == (4, 1 + 16, vit.embed_dim) and logits.shape == (4, 3)
