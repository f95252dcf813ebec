"""The semi-trained model M^s (:func:`train_semi_model`) is plain centralised training on a seeded
10% of the training set — the reference trains it outside the federation too (its "tiny data"
checkpoint), with inversefed's "conservative" recipe: SGD(0.1, momentum 0.9, Nesterov, weight decay
5e-4), batch 128, learning rate ×0.1 at 3/8, 5/8 and 7/8 of the epochs, random crop + flip. The
paper trains 50 epochs (its released search script loads a 100-epoch checkpoint).

Its augmentation is :func:`fedrepro.augment.random_crop_flip` with ``draws="pairwise"``: each batch's
crop offsets as (row, column) pairs per image, then the flips — the order the recorded quick-tier
search (its M^s, hence its policies) was produced with.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from fedrepro.augment import random_crop_flip
from fedrepro.data import ImageDataset
from fedrepro.runtime import generator, get_device


def train_semi_model(model: nn.Module, dataset: ImageDataset, *, fraction: float = 0.1, epochs: int = 50,
                     batch_size: int = 128, lr: float = 0.1, momentum: float = 0.9, weight_decay: float = 5e-4,
                     augment: bool = True, seed: int = 0, device: str = "auto", progress: bool = True) -> nn.Module:
    """Train ``model`` in place on a seeded ``fraction`` of ``dataset`` (plain SGD, see the module notes).

    Returns the model in eval mode — how S_pri uses it. The reference's ``lr=0.1`` suits its width-64
    models and 50 epochs; a narrow ConvNet (width 8–16) trained for a few epochs at 0.1 ends with
    dead ReLUs (measured: width 8, 2% of CIFAR-10, 6 epochs — 78% of the last layer's channels dead,
    7.8% test accuracy; at 0.02: none dead, 40.6%), which :func:`privacy_score` flags.
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    dev = get_device(device)
    model.to(dev).train()
    count = max(1, int(round(fraction * len(dataset))))
    subset = torch.randperm(len(dataset), generator=generator(seed, "semi-subset"))[:count]
    images, labels = dataset.images[subset], dataset.labels[subset].to(dev)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, nesterov=momentum > 0,
                                weight_decay=weight_decay)
    milestones = sorted({max(1, int(epochs * f)) for f in (3 / 8, 5 / 8, 7 / 8)})
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=milestones, gamma=0.1)
    with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):  # restore both generators
        torch.manual_seed(generator(seed, "semi-train").initial_seed())
        bar = tqdm(range(epochs), desc="semi-trained model", unit="epoch", disable=not progress)
        for epoch in bar:
            order = torch.randperm(count, generator=generator(seed, "semi-batches", epoch))
            total, seen = 0.0, 0
            for index in torch.split(order, batch_size):
                batch = images[index]
                if augment:
                    batch = random_crop_flip(batch, generator(seed, "semi-augment", epoch, int(index[0])), draws="pairwise")
                x = dataset.normalize(batch.to(dev))
                optimizer.zero_grad(set_to_none=True)
                loss = F.cross_entropy(model(x), labels[index.to(dev)])
                loss.backward()
                optimizer.step()
                total += loss.item() * len(index)
                seen += len(index)
            scheduler.step()
            bar.set_postfix(loss=f"{total / seen:.3f}")
        bar.close()
    return model.eval()

