"""Post-training static int8 quantization: the FX path still exists, sizes shrink ~75%, accuracy holds."""
from __future__ import annotations

import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fedrepro.data import ClientSplit, FederatedData, ImageDataset
from fedrepro.quantization import (QuantizedModelError, compare, is_quantized, public_calibration_set, quantize_int8,
                                   require_float, serialized_size, size_table)


class TinyResidualGN(nn.Module):
    """Conv → GroupNorm → ReLU with a residual sum and max-pool: the ops of paper 01's ResNet-9, tiny."""

    def __init__(self, classes: int = 4) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        self.gn1 = nn.GroupNorm(4, 16)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(16, 16, 3, padding=1, bias=False)
        self.gn2 = nn.GroupNorm(4, 16)
        self.relu2 = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(16 * 4 * 4, classes)

    def forward(self, x):
        x = self.relu1(self.gn1(self.conv1(x)))
        x = x + self.relu2(self.gn2(self.conv2(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


def synthetic(n: int, seed: int, classes: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """Noisy class templates on 3×8×8: learnable in seconds, but not to 100%."""
    templates = torch.randn(classes, 3, 8, 8, generator=torch.Generator().manual_seed(123))
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, classes, (n,), generator=g)
    return templates[y] + 2.2 * torch.randn(n, 3, 8, 8, generator=g), y


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def trained():
    """A deterministically trained checkpoint (a few seconds on one CPU thread)."""
    torch.manual_seed(0)
    model = TinyResidualGN()
    x, y = synthetic(2048, seed=1)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for epoch in range(6):
        for start in range(0, len(y), 64):
            optimizer.zero_grad()
            F.cross_entropy(model(x[start:start + 64]), y[start:start + 64]).backward()
            optimizer.step()
    return model.eval()


def test_fx_quantization_path_still_works():
    """torch marks torch.ao.quantization deprecated; when it is removed this test says so first."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from torch.ao.quantization import get_default_qconfig_mapping  # noqa: F401
        from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx  # noqa: F401
    torch.manual_seed(0)
    quantized = quantize_int8(TinyResidualGN().eval(), torch.randn(16, 3, 8, 8))
    kinds = {type(m).__module__ + "." + type(m).__name__ for m in quantized.modules()}
    assert "torch.ao.nn.quantized.modules.conv.Conv2d" in kinds
    assert "torch.ao.nn.quantized.modules.linear.Linear" in kinds
    # FX's x86 backend has no nn.GroupNorm pattern: it stays float between dequantize and quantize
    # (the module docstring says so; if this starts failing, GroupNorm became quantizable — update it).
    assert "torch.nn.modules.normalization.GroupNorm" in kinds
    assert is_quantized(quantized) and not is_quantized(TinyResidualGN())
    out = quantized(torch.randn(5, 3, 8, 8))
    assert out.dtype == torch.float32 and out.shape == (5, 4) and not out.requires_grad


def test_original_model_is_untouched(trained):
    before = {k: v.clone() for k, v in trained.state_dict().items()}
    quantize_int8(trained, synthetic(64, seed=5)[0])
    assert all(torch.equal(before[k], v) for k, v in trained.state_dict().items())
    assert not is_quantized(trained)


def test_quantized_accuracy_within_one_point_of_fp32(trained):
    calibration, _ = synthetic(256, seed=2)  # the "public validation split"
    x_test, y_test = synthetic(2000, seed=3)
    quantized = quantize_int8(trained, calibration)
    report = compare(trained, quantized, x_test, y_test)
    assert 0.7 < report.fp32_accuracy < 0.99  # a real classifier, not a trivial task
    assert abs(report.accuracy_change) <= 0.01, report
    # which images each version gets right, for the paired claim check; the JSON-ready numbers leave them out
    for hits, accuracy in ((report.fp32_correct, report.fp32_accuracy), (report.int8_correct, report.int8_accuracy)):
        assert hits.dtype == torch.bool and hits.shape == (2000,) and hits.sum().item() / 2000 == accuracy
    assert set(report.as_dict()) == {"fp32_bytes", "int8_bytes", "fp32_accuracy", "int8_accuracy", "size_reduction",
                                     "accuracy_change"}
    # the int8 model's predictions are close to, but not the same as, fp32 ones
    with torch.no_grad():
        agree = (trained(x_test).argmax(1) == quantized(x_test).argmax(1)).float().mean().item()
    assert 0.95 < agree


def test_resnet9_shrinks_like_the_paper():
    """Measured here: 26,301,653 → 6,649,377 bytes (−74.7%); the paper reports −74.4%."""
    report = size_table(["resnet9"], calibration=4)["resnet9"]
    assert report.fp32_bytes == pytest.approx(26_301_653, rel=1e-3)
    assert 0.74 <= report.size_reduction <= 0.755
    assert abs(100 * report.size_reduction - 74.4) < 1.0
    assert math.isnan(report.fp32_accuracy)


def test_serialized_size_counts_the_state_dict():
    payload = 4 * (100 * 100 + 100)  # float32 weight and bias
    assert payload <= serialized_size(nn.Linear(100, 100)) < payload + 4096  # plus a small zip/pickle header


def test_quantized_models_are_never_differentiated(trained):
    quantized = quantize_int8(trained, synthetic(32, seed=4)[0])
    assert require_float(trained) is trained
    with pytest.raises(QuantizedModelError, match="transfer"):
        require_float(quantized)
    assert not any(p.requires_grad for p in quantized.parameters())


def test_calibration_comes_from_the_clients_validation_splits():
    images = torch.arange(20, dtype=torch.uint8).view(20, 1, 1, 1).expand(20, 1, 2, 2).contiguous()
    train = ImageDataset("toy", "train", images, torch.zeros(20, dtype=torch.long), ["a"], (0.0,), (1.0,))
    splits = [ClientSplit(torch.tensor([0, 1, 2]), torch.tensor([3, 4])), ClientSplit(torch.tensor([5, 6]), torch.tensor([7]))]
    data = FederatedData(train, train, splits)
    pool = public_calibration_set(data)
    assert sorted((pool[:, 0, 0, 0] * 255).round().long().tolist()) == [3, 4, 7]
    assert len(public_calibration_set(data, count=2, seed=1)) == 2
    with pytest.raises(ValueError, match="val_fraction"):
        public_calibration_set(FederatedData(train, train, [ClientSplit(torch.tensor([0]), torch.tensor([], dtype=torch.long))]))
