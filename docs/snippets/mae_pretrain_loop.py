import sys
from pathlib import Path

import torch
import torchvision.transforms as transforms
from torch.utils.data import DataLoader, Dataset

from maskkit import (
    AttentionExtractor,
    CropDataset,
    IndexedDataset,
    MaskingSchedule,
    MaskWeightBank,
    PairedRandomResizedCrop,
    SAMMasker,
    align_weights,
)
from maskkit.integrations.mae import MAEAdapter

# The lines added to MAE's main_pretrain.py and engine_pretrain.py, on a tiny stand-in:
# the test suite's replica of models_mae and random "images" in place of ImageFolder.
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))
import mae_replica as models_mae


class Images(Dataset):
    """(image, target) pairs like ImageFolder's, 40 x 48 tensor images."""

    def __init__(self, count: int, transform=None) -> None:
        self.images = torch.rand(count, 3, 40, 48, generator=torch.Generator().manual_seed(0))
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        image = self.images[index]
        return (self.transform(image) if self.transform else image), 0


def train_one_epoch(model, data_loader, optimizer, device, args, bank=None, masker=None):
    for samples, _, crops, indices in data_loader:
        samples = samples.to(device, non_blocking=True)
        masking = args["mask_ratio"]  # warm-up: MAE's uniform masking
        if masker is not None:  # then SAM, from each image's map moved with its view's crop
            weights = align_weights(bank[indices].to(device), crops, out_grid=bank.grid)
            masking = masker(samples.shape[0], weights[0].numel(), weights)
        loss, _, _ = model(samples, masking)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return loss.item()


args = {"mask_ratio": 0.75, "input_size": 32, "seed": 0, "epochs": 3, "start_epoch": 0}
device = torch.device("cpu")
transform_train = transforms.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])
dataset_train = CropDataset(
    Images(16), PairedRandomResizedCrop(args["input_size"]), seed=0, post_transform=transform_train
)
loader_train = DataLoader(dataset_train, batch_size=8, shuffle=True, drop_last=True)
resize = transforms.Resize((args["input_size"], args["input_size"]), interpolation=3)
dataset_whole = IndexedDataset(Images(16, transforms.Compose([resize, transform_train])))
loader_whole = DataLoader(dataset_whole, batch_size=8)

model = MAEAdapter(models_mae.mae_vit_tiny(img_size=32, patch_size=8)).to(device)
model_without_ddp = model
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95))

bank = MaskWeightBank(len(dataset_train), model_without_ddp.grid)
extractor = AttentionExtractor(model_without_ddp)  # AMT: the MAE itself; SAM: a supervised ViT
schedule = MaskingSchedule(warmup_epochs=1, refresh_every=1)  # MSMAE: 40 and 40
for epoch in range(args["start_epoch"], args["epochs"]):
    dataset_train.set_epoch(epoch)
    if schedule.should_refresh(epoch) or (
        epoch == args["start_epoch"] and not schedule.use_random(epoch)
    ):
        bank.refresh(extractor, loader_whole, progress=False)
    masker = None if schedule.use_random(epoch) else SAMMasker(0.45, 0.30)
    loss = train_one_epoch(model, loader_train, optimizer, device, args, bank=bank, masker=masker)
    print(f"epoch {epoch} ({'random' if masker is None else 'SAM'}): loss {loss:.4f}")
assert not torch.equal(bank.weights, torch.ones_like(bank.weights))  # refreshed maps
