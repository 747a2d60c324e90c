import timm
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from maskkit import (
    AttentionExtractor,
    CropDataset,
    IndexedDataset,
    MaskingSchedule,
    MaskWeightBank,
    PairedRandomResizedCrop,
    RandomMasker,
    SAMMasker,
    align_weights,
    forward_features_visible,
)
from maskkit.demo import SyntheticLesions

torch.manual_seed(0)
device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
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
).to(device)
optimizer = torch.optim.AdamW(vit.parameters(), lr=1e-3)
grid = vit.patch_embed.grid_size  # (8, 8): L = 64 patches

bank = MaskWeightBank(len(data), grid=grid)  # one whole-image map per sample, on the CPU
extractor = AttentionExtractor(vit)
refresh_loader = DataLoader(IndexedDataset(data), batch_size=8)  # whole images, indices last
# Views with the crop box and flip that made them: (view, target, crop, index).
train_set = CropDataset(data, PairedRandomResizedCrop(64), seed=0)
train_loader = DataLoader(train_set, batch_size=8, shuffle=True)
random_masker, sam_masker = RandomMasker(0.75), SAMMasker(0.45, 0.30)
schedule = MaskingSchedule(warmup_epochs=1, refresh_every=2)  # MSMAE: (40, 40)

refreshed_at = []
for epoch in range(4):
    if schedule.should_refresh(epoch):
        bank.refresh(extractor, refresh_loader, progress=False)
        refreshed_at.append(epoch)
    train_set.set_epoch(epoch)  # before the epoch's iterator (no persistent workers)
    by_maps = not schedule.use_random(epoch)
    vit.train()
    for images, targets, crops, indices in train_loader:
        images, targets = images.to(device), targets.to(device)
        if by_maps:
            # The batch's whole-image maps follow each view's crop and flip, on the device.
            weights = align_weights(bank[indices].to(device), crops, out_grid=grid)
            split = sam_masker(len(images), 64, weights)
        else:
            split = random_masker(len(images), 64, device=device)
        logits = vit.forward_head(forward_features_visible(vit, images, split.visible))
        loss = F.cross_entropy(logits, targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    print(f"epoch {epoch} {'SAM' if by_maps else 'random'} loss {loss:.3f}")

assert refreshed_at == [1, 3] and torch.isfinite(loss)
# At test time the classifier sees every token.
vit.eval()
with torch.no_grad():
    logits = vit.forward_head(forward_features_visible(vit, images, None))
assert logits.shape == (len(images), 3)
