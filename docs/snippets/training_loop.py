import timm
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from maskkit import (
    AttentionExtractor,
    IndexedDataset,
    MaskingSchedule,
    MaskWeightBank,
    PairedRandomResizedCrop,
    RandomMasker,
    SAMMasker,
    SyntheticLesions,
    WeightedCropDataset,
    forward_features_visible,
)

torch.manual_seed(0)
data = SyntheticLesions(16, image_size=64, num_classes=3)
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
optimizer = torch.optim.AdamW(vit.parameters(), lr=1e-3)

bank = MaskWeightBank(len(data), grid=(8, 8))
extractor = AttentionExtractor(vit)
refresh_loader = DataLoader(IndexedDataset(data), batch_size=8)  # whole images, indices last
train_set = WeightedCropDataset(data, bank, PairedRandomResizedCrop(64), seed=0)
train_loader = DataLoader(train_set, batch_size=8, shuffle=True)
random_masker, sam_masker = RandomMasker(0.75), SAMMasker(0.45, 0.30)
schedule = MaskingSchedule(warmup_epochs=1, refresh_every=2)  # MSMAE: (40, 40)

refreshed_at = []
for epoch in range(4):
    if schedule.should_refresh(epoch):
        bank.refresh(extractor, refresh_loader, progress=False)
        refreshed_at.append(epoch)
    train_set.set_epoch(epoch)
    masker = random_masker if schedule.use_random(epoch) else sam_masker
    vit.train()
    for images, targets, weights, _ in train_loader:
        # Random masking takes no weights; SAM masks by the crop's share of the map.
        split = masker(len(images), 64, None if masker is random_masker else weights)
        logits = vit.forward_head(forward_features_visible(vit, images, split.visible))
        loss = F.cross_entropy(logits, targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    print(f"epoch {epoch} {'random' if masker is random_masker else 'SAM'} loss {loss:.3f}")

assert refreshed_at == [1, 3] and torch.isfinite(loss)
# At test time the classifier sees every token.
vit.eval()
with torch.no_grad():
    logits = vit.forward_head(forward_features_visible(vit, images, None))
assert logits.shape == (len(images), 3)
