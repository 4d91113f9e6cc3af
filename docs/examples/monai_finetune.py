"""Fine-tune a pretrained semantic-genesis U-Net inside a MONAI training loop (MONAI data, transforms and loss).

    python docs/examples/monai_finetune.py results/ct/pretrain/semantic_genesis --steps 20

Stands in for a segmentation data set with MONAI's synthetic 3D images (spheres in noise); put your own
`{"image": ..., "label": ...}` dicts in `items` instead, with values scaled as the model card (README.md of the
folder) says and arrays ordered (z, y, x) like the pretrained network's inputs.
"""

import argparse

import numpy as np
import torch
from monai.data import DataLoader, Dataset, create_test_image_3d
from monai.losses import DiceLoss
from monai.transforms import Compose, EnsureChannelFirstd, RandFlipd, ScaleIntensityd

from semantic_genesis.networks.genesis import load_pretrained

parser = argparse.ArgumentParser()
parser.add_argument("pretrained", help="a pretrained folder (or an imported one: import-weights)")
parser.add_argument("--steps", type=int, default=20)
parser.add_argument("--size", type=int, nargs=3, default=[32, 64, 64], help="z y x, multiples of 8")
args = parser.parse_args()

torch.manual_seed(0)
items = []
for seed in range(8):
    state = np.random.RandomState(seed)
    image, label = create_test_image_3d(
        *args.size, rad_max=min(args.size) // 4, rad_min=2, num_seg_classes=1, noise_max=0.3, random_state=state
    )
    items.append({"image": image, "label": label})
transforms = Compose(
    [
        EnsureChannelFirstd(keys=["image", "label"], channel_dim="no_channel"),
        ScaleIntensityd(keys="image"),  # to [0, 1], as the pretrained inputs
        RandFlipd(keys=["image", "label"], prob=0.5, spatial_axis=2),
    ]
)
loader = DataLoader(Dataset(items, transforms), batch_size=2, shuffle=True)

model = load_pretrained(args.pretrained, part="unet").train()  # encoder + decoder; sigmoid probabilities out
loss_function = DiceLoss(sigmoid=False)
optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
step = 0
while step < args.steps:
    for batch in loader:
        optimizer.zero_grad()
        loss = loss_function(model(batch["image"].float()), batch["label"].float())
        loss.backward()
        optimizer.step()
        step += 1
        print(f"step {step}: Dice loss {loss.item():.4f}")
        if step == args.steps:
            break
