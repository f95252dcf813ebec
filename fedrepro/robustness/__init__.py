"""Adversarial robustness (paper 01): FGSM/PGD/FAB, white-box and transfer attacks, adversarial training,
and the train-time attacker — all on [0, 1] images with the model's normalisation inside the loss.

Typical use::

    from fedrepro.robustness import AdversarialConfig, Normalized, white_box, transfer

    net = Normalized.for_dataset(model, data.test)                 # takes [0, 1] images
    x, y = data.test.images[:500].float() / 255, data.test.labels[:500]
    wb = white_box(net, x, y, AdversarialConfig("pgd"))            # ε 8/255, step 2/255, 10 steps
    int8 = Normalized.for_dataset(quantize_int8(model, calibration), data.test)
    tr = transfer({"normal": net}, {"normal": net, "int8": int8}, x, y, adversarial={"normal": wb.adversarial})

Adversarial training / the train-time attacker in FedAvg::

    batches = AdversarialBatches.for_dataset(data.train, 0.2, AdversarialConfig("pgd"), labels="true")
    run_fedavg(model, data.train, data.test, data.splits, config, trainer=AdversarialTrainer(batches))
"""
from __future__ import annotations

from fedrepro.robustness.attacks import (EPS, METHODS, STEP_SIZE, STEPS, AdversarialConfig, Normalized,
                                         attack_dataset, fab, fgsm, generate, model_device, pgd)
from fedrepro.robustness.threat import TransferResult, WhiteBoxResult, accuracy, attack_images, transfer, white_box
from fedrepro.robustness.training import AdversarialBatches, AdversarialTrainer, PoisonedData, poison_dataset

__all__ = [
    "EPS", "METHODS", "STEPS", "STEP_SIZE", "AdversarialBatches", "AdversarialConfig", "AdversarialTrainer",
    "Normalized", "PoisonedData", "TransferResult", "WhiteBoxResult", "accuracy", "attack_dataset", "attack_images",
    "fab", "fgsm", "generate", "model_device", "pgd", "poison_dataset", "transfer", "white_box",
]
