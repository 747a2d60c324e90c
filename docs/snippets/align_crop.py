import torch

from maskkit import align_weights

# A 4 x 4 weight map over a whole 224 x 224 image, hot in its top-right cell.
weights = torch.zeros(4, 4)
weights[0, 3] = 1.0

# RandomResizedCrop picked the top-right quadrant: (top, left, height, width) in pixels.
box = (0, 112, 112, 112)
aligned = align_weights(weights, box, (224, 224), (4, 4))
# The quadrant holds map cells [0:2, 2:4]; each becomes 2 x 2 cells of the crop's grid,
# so the hot cell fills the crop's top-right 2 x 2 block.
expected = torch.zeros(4, 4)
expected[0:2, 2:4] = 1.0
assert torch.equal(aligned, expected)

# The same crop flipped horizontally: the block moves to the left, like the pixels.
flipped = align_weights(weights, box, (224, 224), (4, 4), hflip=True)
assert torch.equal(flipped, expected.flip(-1))

# A pixel offset divided by the image size truncates to 0 (the AMT/MSMAE bug), so that
# code reads the map's top-left cells, whatever the box: here, cold ones.
assert weights[0:2, 0:2].sum() == 0

# Batched, on the weights' device: one box and flip per sample, e.g. the CropParams a
# DataLoader collates from maskkit.CropDataset (see the weight bank page).
maps = torch.rand(8, 14, 14)
boxes = torch.tensor([[10.0, 20.0, 150.0, 120.0]]).expand(8, 4)
flips = torch.tensor([True, False] * 4)
batch = align_weights(maps, boxes, (224, 224), (14, 14), hflip=flips)
assert batch.shape == (8, 14, 14)
# Each output cell is an area-weighted mean of map cells, so the values stay in range.
assert batch.min() >= maps.min() and batch.max() <= maps.max()
