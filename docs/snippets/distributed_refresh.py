"""Refresh a MaskWeightBank on every rank. Run: torchrun --nproc_per_node 2 THIS_FILE"""

import timm
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, DistributedSampler

from maskkit import AttentionExtractor, IndexedDataset, MaskWeightBank
from maskkit.demo import SyntheticLesions

# torchrun sets RANK, WORLD_SIZE and the rendezvous address. On GPUs use "nccl", after
# torch.cuda.set_device(local_rank): the bank's all-gather then goes through that device.
dist.init_process_group("gloo")
torch.manual_seed(0)  # the same weights on every rank, as DDP would broadcast them
vit = timm.create_model(
    "vit_tiny_patch16_224",  # a ViT-Ti/16 made smaller; random weights, nothing downloaded
    pretrained=False,
    img_size=32,
    patch_size=8,
    embed_dim=64,
    depth=2,
    num_heads=2,
    num_classes=3,
)
data = IndexedDataset(SyntheticLesions(10, image_size=32, num_classes=3))
bank = MaskWeightBank(len(data), grid=(4, 4))  # one bank per rank, same size everywhere

# Each rank extracts the maps of its own shard; refresh then all-gathers them.
sampler = DistributedSampler(data, shuffle=False)
loader = DataLoader(data, batch_size=4, sampler=sampler)
assert len(sampler) == len(data) // dist.get_world_size()
extractor = AttentionExtractor(vit)
assert bank.refresh(extractor, loader, progress=False) == len(data)  # every rank calls it

# Every rank now holds every map, including those another rank computed.
images = torch.stack([data[i][0] for i in range(len(data))])
assert torch.allclose(bank[torch.arange(len(data))], extractor(images), atol=1e-3)
dist.destroy_process_group()
