import timm
import torch
from torch.utils.data import DataLoader

from maskkit import (
    AttentionExtractor,
    CropDataset,
    IndexedDataset,
    MaskWeightBank,
    PairedRandomResizedCrop,
    SAMMasker,
    align_weights,
)
from maskkit.demo import SyntheticLesions

data = SyntheticLesions(16, image_size=64, num_classes=3)  # items: (image, target)
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

# One (8, 8) map per training image, uniform (ones) until the first refresh.
bank = MaskWeightBank(len(data), grid=(8, 8))
assert torch.equal(bank[0], torch.ones(8, 8))

# Refresh: attention maps of the whole, un-augmented images. Batches end with the
# dataset indices, which IndexedDataset appends to every item.
extractor = AttentionExtractor(vit)
refresh_loader = DataLoader(IndexedDataset(data), batch_size=8)
assert bank.refresh(extractor, refresh_loader, progress=False) == len(data)
images = torch.stack([data[i][0] for i in range(4)])
stored = extractor(images).to(torch.float16).float()  # the bank stores float16 by default
assert torch.equal(bank[torch.arange(4)], stored)

# Training: each view is a random resized crop (maybe flipped) of its image. The dataset
# returns the crop it applied; the step moves the batch's maps through the same crops and
# flips, on the device the step runs on (no bank in the DataLoader workers).
train_set = CropDataset(data, PairedRandomResizedCrop(64), seed=0)
train_set.set_epoch(0)  # new crops each epoch: call before creating the epoch's iterator
loader = DataLoader(train_set, batch_size=8, shuffle=True)
views, targets, crops, indices = next(iter(loader))  # crops: CropParams of (8,) tensors
weights = align_weights(bank[indices], crops, out_grid=(8, 8))
assert views.shape == (8, 3, 64, 64) and weights.shape == (8, 8, 8)

split = SAMMasker()(8, 64, weights)  # masks where the crop's attention is high
assert split.visible.shape == (8, 16)
