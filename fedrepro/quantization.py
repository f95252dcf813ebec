"""Post-training static int8 quantization (paper 01): weights *and* activations, calibrated on public data.

Paper 01 quantizes each trained model "using the validation dataset (public) to tune the quantization
parameters", replacing 32-bit floats by 8-bit integers in weights and activations, and reports the
serialized model shrinking by 74.4% (ResNet-9) and 76.6% (ResNet-18) with accuracy within ±1%.

Which PyTorch path, and why
---------------------------
* **Used: FX graph mode**, ``torch.ao.quantization.quantize_fx.prepare_fx``/``convert_fx`` with the
  ``x86`` backend (fbgemm/oneDNN kernels): per-channel symmetric int8 weights, per-tensor affine uint8
  activations (histogram observers), real int8 kernels on the CPU. FX traces the registry's models
  as they are (``out = out + identity`` residual sums, ``getattr`` stage loops), so no model needs
  QuantStubs or ``FloatFunctional`` edits. **torch marks ``torch.ao.quantization`` deprecated** (its
  warning says "will be removed in 2.10"; in torch 2.14.1 it still works). ``tests/test_quantization.py``
  runs this path on a small model on every test run and fails loudly when it is gone; the warning is
  silenced here, not ignored.
* **Tried and not used: torchao's PT2E flow** (``torchao.quantization.pt2e``, torchao 0.18, the path
  torch points to). On this CPU it prepares and converts ResNet-9 fine, but the converted program is
  a float graph with quantize/dequantize nodes: int8 kernels and int8 storage only appear after
  ``torch.compile`` (Inductor) lowers it, which needs a C++ toolchain and minutes of compilation on 2
  cores; without it the converted module's state is *larger* than fp32 (32.9 MB vs 26.3 MB for
  ResNet-9) and runs at fp32 speed. For a size and accuracy study on CPUs the FX path is the one that
  produces a real int8 model.

GroupNorm
---------
The paper's models use GroupNorm (for DP). FX's ``x86`` backend has no pattern for the
``nn.GroupNorm`` module (``torch.ao.nn.quantized.GroupNorm`` exists for eager mode only; a qconfig
set on GroupNorm is silently ignored by FX — checked in the tests), so GroupNorm runs in **float**
between a dequantize and a quantize node; everything else — convolutions, linear layers, ReLU,
max-pooling, residual additions — is int8. GroupNorm's 2·C affine parameters are float in either
design, so the serialized size is the same. Measured here: ResNet-9 26,301,653 → 6,649,377 bytes
(−74.7%; paper −74.4%), ResNet-18 44,717,097 → 11,341,671 bytes (−74.6%; paper −76.6%).

A quantized model has no autograd: it is only ever attacked by transfer (``fedrepro.robustness``
refuses to differentiate it, see :func:`require_float`).
"""
from __future__ import annotations

import copy
import io
import warnings
from dataclasses import dataclass, field

import torch
from torch import nn

BACKEND = "x86"


class QuantizedModelError(TypeError):
    """Raised when something tries to differentiate (attack white-box, train) an int8 model."""


def serialized_size(model: nn.Module) -> int:
    """Bytes of ``torch.save(model.state_dict())`` — the size a client or server would ship or store."""
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.tell()


def is_quantized(model: nn.Module) -> bool:
    """True for a model that holds quantized modules or tensors (the output of :func:`quantize_int8`)."""
    if getattr(model, "is_int8", False):
        return True
    for module in model.modules():
        if type(module).__module__.startswith(("torch.ao.nn.quantized", "torch.nn.quantized", "torch.ao.nn.intrinsic.quantized")):
            return True
    return any(t.is_quantized for t in model.state_dict().values() if isinstance(t, torch.Tensor))


def require_float(model: nn.Module) -> nn.Module:
    """Return ``model`` unchanged, or raise :class:`QuantizedModelError` if it is an int8 model."""
    if is_quantized(model):
        raise QuantizedModelError("a quantized model is never differentiated: generate adversarial examples on a "
                                  "float model and evaluate the int8 model by transfer")
    return model


@torch.no_grad()
def quantize_int8(model: nn.Module, calibration: torch.Tensor, batch_size: int = 256) -> nn.Module:
    """A post-training static int8 copy of ``model``, calibrated on ``calibration`` (normalised inputs).

    ``model`` is not modified (a CPU copy is quantized). ``calibration`` are model inputs from a
    public split (see :func:`public_calibration_set`); the observers see all of them, in batches of
    ``batch_size``. The result is an ``nn.Module`` in eval mode that takes the same normalised float
    input on the CPU and returns float logits; it is marked ``is_int8 = True``.
    """
    if len(calibration) == 0:
        raise ValueError("calibration needs at least one input")
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    torch.backends.quantized.engine = BACKEND
    float_model = copy.deepcopy(model).cpu().eval()
    calibration = calibration.detach().cpu().float()
    with warnings.catch_warnings():
        # torch.ao.quantization's deprecation and observer notices: documented in the module docstring
        warnings.simplefilter("ignore")
        prepared = prepare_fx(float_model, get_default_qconfig_mapping(BACKEND), example_inputs=(calibration[:1],))
        for start in range(0, len(calibration), batch_size):
            prepared(calibration[start:start + batch_size])
        quantized = convert_fx(prepared)
    quantized.eval()
    quantized.is_int8 = True
    for parameter in quantized.parameters():  # float leftovers (GroupNorm γ/β): frozen, never trained
        parameter.requires_grad_(False)
    return quantized


def public_calibration_set(data, count: int | None = None, seed: int = 0) -> torch.Tensor:
    """Normalised images of the public validation split the paper calibrates on.

    ``data`` is a :class:`fedrepro.data.FederatedData`; the pool is every client's validation
    split (the paper calls the validation data public), from which ``count`` images are drawn with
    a seeded permutation (all of them when ``count`` is None).
    """
    from fedrepro.runtime import generator

    pool = torch.cat([split.val for split in data.splits])
    if len(pool) == 0:
        raise ValueError("no validation images to calibrate on: use val_fraction > 0")
    if count is not None and count < len(pool):
        pool = pool[torch.randperm(len(pool), generator=generator(seed, "calibration"))[:count]]
    return data.train.normalize(data.train.images[pool.sort().values])


@dataclass
class QuantizationReport:
    """Size and accuracy of a model before and after int8 quantization (accuracies in [0, 1])."""

    fp32_bytes: int
    int8_bytes: int
    fp32_accuracy: float
    int8_accuracy: float
    # which test images each version classifies right, for a paired comparison (None: sizes only)
    fp32_correct: torch.Tensor | None = field(default=None, repr=False, compare=False)
    int8_correct: torch.Tensor | None = field(default=None, repr=False, compare=False)

    @property
    def size_reduction(self) -> float:
        """Fraction of the serialized size removed (paper: 0.744 for ResNet-9, 0.766 for ResNet-18)."""
        return 1.0 - self.int8_bytes / self.fp32_bytes

    @property
    def accuracy_change(self) -> float:
        """int8 minus fp32 accuracy, in accuracy units (×100 for points)."""
        return self.int8_accuracy - self.fp32_accuracy

    def as_dict(self) -> dict[str, float]:
        """The numbers, without the per-image results."""
        numbers = {name: getattr(self, name) for name in ("fp32_bytes", "int8_bytes", "fp32_accuracy", "int8_accuracy")}
        return {**numbers, "size_reduction": self.size_reduction, "accuracy_change": self.accuracy_change}


def compare(model: nn.Module, quantized: nn.Module, x: torch.Tensor, y: torch.Tensor,
            batch_size: int = 512) -> QuantizationReport:
    """Serialized sizes and test accuracies of ``model`` and its quantized copy on normalised ``x``, with
    which images each classifies right (each batch runs on its model's device)."""
    from fedrepro.robustness.threat import correct, hit_rate  # fedrepro.robustness imports this module

    fp32, int8 = correct(model, x, y, batch_size), correct(quantized, x, y, batch_size)
    return QuantizationReport(serialized_size(model), serialized_size(quantized), hit_rate(fp32), hit_rate(int8), fp32,
                              int8)


def size_table(model_names: list[str] | tuple[str, ...], in_channels: int = 3, num_classes: int = 10,
               image_size: int = 32, calibration: int = 16, seed: int = 0) -> dict[str, QuantizationReport]:
    """Serialized fp32 and int8 sizes of freshly built registry models (sizes do not depend on training).

    Calibrated on ``calibration`` random inputs: enough to fix every scale, and sizes are independent
    of the calibration data. Accuracies are NaN (the models are untrained).
    """
    from fedrepro.models import build_model

    generator = torch.Generator().manual_seed(seed)
    reports = {}
    for name in model_names:
        torch.manual_seed(seed)
        model = build_model(name, in_channels=in_channels, num_classes=num_classes, image_size=image_size).eval()
        inputs = torch.randn(calibration, in_channels, image_size, image_size, generator=generator)
        quantized = quantize_int8(model, inputs)
        reports[name] = QuantizationReport(serialized_size(model), serialized_size(quantized), float("nan"), float("nan"))
    return reports


__all__ = ["BACKEND", "QuantizationReport", "QuantizedModelError", "compare", "is_quantized", "public_calibration_set",
           "quantize_int8", "require_float", "serialized_size", "size_table"]
