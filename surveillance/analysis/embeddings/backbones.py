"""Embedding backbones, registered by name.

A backbone turns a batch of grey images ``(B, 1, S, S)`` in [0, 1] into
vectors ``(B, dim)``. Every stored embedding row records the backbone's
``name`` and ``version``; two backbones that could give different vectors for
the same image never share both.

Registered keys (:func:`create_backbone`):

``conv-ae`` (default)
    The encoder half of an *untrained*, randomly initialised convolutional
    autoencoder, which Rabanser, Günnemann & Lipton (2019, "Failing Loudly")
    found to be among the best dimension reductions for two-sample shift
    tests on images. Four stride-2 3x3 convolutions (32-64-128-128 channels,
    ReLU) and a 2x2 average pool give 512 numbers. Weights are drawn from a
    numpy ``PCG64(seed)`` generator (He-normal, zero bias), so they are the same
    on every machine and torch version, and no weights are ever downloaded.
    Version ``1.s<seed>.r<size>``.
``bbsd``
    Black-box shift detection (Lipton et al. 2018; Rabanser et al. 2019): the
    deployed model's own output scores for the study, one number per finding,
    read from the stored predictions (no image). Name ``bbsd:<model>``,
    version = the model version.
``torchscript``
    A user-supplied TorchScript file (``torch.jit.save``) that maps
    ``(B, channels, S, S)`` to ``(B, ...)`` (flattened). Version = the first
    16 hex digits of the file's SHA-256, so a new file is a new version.
``exported``
    A ``torch.export`` program file (``torch.export.save``), the successor of
    TorchScript (which torch >= 2.10 deprecates); same conventions.
``torchvision``
    A torchvision architecture (``arch``, e.g. ``resnet18``) with a user
    state-dict file, classifier head removed; needs torchvision installed.
    Name ``tv-<arch>``, version = the file's SHA-256 prefix.
"""

from __future__ import annotations

import hashlib
import inspect
import itertools
import math
import warnings
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from surveillance.analysis.embeddings.decode import DEFAULT_IMAGE_SIZE
from surveillance.analysis.embeddings.names import bbsd_name
from surveillance.core.errors import ConfigError

DEFAULT_BACKBONE = "conv-ae"


def _sha256_prefix(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()[:16]


def _existing_file(path: str | Path, what: str) -> Path:
    resolved = Path(path)
    if not resolved.is_file():
        raise ConfigError(f"{what} {str(resolved)!r} does not exist or is not a file")
    return resolved


class Backbone:
    """Base class. Subclasses declare ``class X(Backbone, key="name")``.

    Attributes set by subclasses: ``name`` and ``version`` (stored with every
    vector), ``dim``, ``image_size``, ``channels`` (1 or 3) and ``net`` (the
    ``torch.nn.Module`` that does the work; ``None`` for ``bbsd``).
    """

    registry: ClassVar[dict[str, type[Backbone]]] = {}
    key: ClassVar[str] = ""
    #: False for backbones that do not look at pixels (``bbsd``).
    needs_image: ClassVar[bool] = True

    name: str
    version: str
    dim: int
    image_size: int = DEFAULT_IMAGE_SIZE
    channels: int = 1
    net: nn.Module | None = None

    def __init_subclass__(cls, key: str | None = None, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if key is None:
            return
        if key in Backbone.registry:
            raise TypeError(
                f"backbone key {key!r} is already registered by "
                f"{Backbone.registry[key].__qualname__}"
            )
        cls.key = key
        Backbone.registry[key] = cls

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, 1, S, S)`` in [0, 1] -> the network's input (channels, scaling)."""
        x = (images - 0.5) / 0.25
        if self.channels == 3:
            x = x.expand(-1, 3, -1, -1)
        return x

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, 1, S, S)`` in [0, 1] -> ``(B, dim)``; runs on the images' device."""
        if self.net is None:
            raise TypeError(f"backbone {self.name!r} does not embed images")
        out = self.net(self.prepare(images))
        if isinstance(out, tuple | list):
            out = out[0]
        return out.flatten(start_dim=1)

    def to(self, device: torch.device) -> Backbone:
        if self.net is not None:
            self.net.to(device)
        return self


class _Encoder(nn.Module):
    def __init__(self, widths: tuple[int, ...]) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for c_in, c_out in itertools.pairwise(widths):
            layers += [nn.Conv2d(c_in, c_out, 3, stride=2, padding=1), nn.ReLU(inplace=True)]
        layers.append(nn.AdaptiveAvgPool2d(2))
        self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.body(x), 1)


class ConvAEBackbone(Backbone, key="conv-ae"):
    """Seeded, untrained convolutional encoder (see the module docstring)."""

    ARCHITECTURE_VERSION = "1"
    WIDTHS = (1, 32, 64, 128, 128)

    def __init__(self, seed: int = 0, image_size: int = DEFAULT_IMAGE_SIZE) -> None:
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ConfigError(f"'seed' must be an int >= 0, got {seed!r}")
        if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 16:
            raise ConfigError(f"'image_size' must be an int >= 16, got {image_size!r}")
        self.name = "conv-ae"
        self.version = f"{self.ARCHITECTURE_VERSION}.s{seed}.r{image_size}"
        self.image_size = image_size
        self.dim = self.WIDTHS[-1] * 4
        net = _Encoder(self.WIDTHS)
        rng = np.random.Generator(np.random.PCG64(seed))
        with torch.no_grad():
            for module in net.modules():
                if isinstance(module, nn.Conv2d):
                    fan_in = module.in_channels * module.kernel_size[0] * module.kernel_size[1]
                    weights = rng.standard_normal(tuple(module.weight.shape)) * math.sqrt(
                        2.0 / fan_in
                    )
                    module.weight.copy_(torch.from_numpy(weights.astype(np.float32)))
                    assert module.bias is not None
                    module.bias.zero_()
        self.net = net.eval()


class TorchScriptBackbone(Backbone, key="torchscript"):
    """A user's TorchScript module; its output is flattened to ``(B, dim)``."""

    def __init__(
        self, path: str | Path, image_size: int = 224, channels: int = 1, name: str = "torchscript"
    ) -> None:
        file = _existing_file(path, "TorchScript file")
        if channels not in (1, 3):
            raise ConfigError(f"'channels' must be 1 or 3, got {channels!r}")
        try:
            with warnings.catch_warnings():
                # torch >= 2.10 deprecates TorchScript; a user's existing file still loads.
                warnings.filterwarnings(
                    "ignore", message=r".*torch\.jit.*", category=DeprecationWarning
                )
                net = torch.jit.load(str(file), map_location="cpu")
        except (RuntimeError, ValueError) as exc:
            raise ConfigError(f"{file} is not a loadable TorchScript file: {exc}") from exc
        self.name = name[:64]
        self.version = _sha256_prefix(file)
        self.image_size = image_size
        self.channels = channels
        self.net = net.eval()
        with torch.no_grad():
            probe = self.forward(torch.zeros(1, 1, image_size, image_size))
        self.dim = int(probe.shape[1])


class ExportedBackbone(Backbone, key="exported"):
    """A ``torch.export`` program (``torch.export.save``, ``.pt2``), TorchScript's successor.

    Export it with a dynamic batch dimension (``dynamic_shapes={"x": {0: Dim("batch")}}``)
    so batches of any size run.
    """

    def __init__(
        self, path: str | Path, image_size: int = 224, channels: int = 1, name: str = "exported"
    ) -> None:
        file = _existing_file(path, "exported program file")
        if channels not in (1, 3):
            raise ConfigError(f"'channels' must be 1 or 3, got {channels!r}")
        try:
            program = torch.export.load(str(file))
        except (RuntimeError, ValueError, KeyError, OSError) as exc:
            raise ConfigError(f"{file} is not a torch.export program: {exc}") from exc
        self.name = name[:64]
        self.version = _sha256_prefix(file)
        self.image_size = image_size
        self.channels = channels
        self.net = program.module()
        with torch.no_grad():
            probe = self.forward(torch.zeros(2, 1, image_size, image_size))
        self.dim = int(probe.shape[1])


class TorchvisionBackbone(Backbone, key="torchvision"):
    """A torchvision architecture with user weights; the classifier becomes identity."""

    _MEAN = (0.485, 0.456, 0.406)
    _STD = (0.229, 0.224, 0.225)

    def __init__(self, arch: str, path: str | Path, image_size: int = 224) -> None:
        try:
            import torchvision
        except ImportError as exc:
            raise ConfigError(
                "the 'torchvision' backbone needs torchvision installed "
                "(pip install torchvision matching your torch)"
            ) from exc
        file = _existing_file(path, "weights file")
        builder = getattr(torchvision.models, arch, None)
        if not callable(builder):
            raise ConfigError(f"torchvision has no architecture {arch!r}")
        net = builder(weights=None)
        try:
            state = torch.load(str(file), map_location="cpu", weights_only=True)
            net.load_state_dict(state)
        except (RuntimeError, ValueError, KeyError) as exc:
            raise ConfigError(f"{file} does not hold {arch} weights: {exc}") from exc
        for head in ("fc", "classifier", "heads", "head"):
            if hasattr(net, head):
                setattr(net, head, nn.Identity())
                break
        self.name = f"tv-{arch}"[:64]
        self.version = _sha256_prefix(file)
        self.image_size = image_size
        self.channels = 3
        self.net = net.eval()
        with torch.no_grad():
            probe = self.forward(torch.zeros(1, 1, image_size, image_size))
        self.dim = int(probe.shape[1])

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        x = images.expand(-1, 3, -1, -1)
        mean = torch.tensor(self._MEAN, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
        std = torch.tensor(self._STD, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
        return (x - mean) / std


class BBSDBackbone(Backbone, key="bbsd"):
    """The deployed model's scores, one per finding in sorted order (no image)."""

    needs_image = False

    def __init__(self, model_name: str, model_version: str, findings: list[str]) -> None:
        if not findings:
            raise ConfigError(f"model {model_name!r} has no findings for BBSD")
        self.name = bbsd_name(model_name)
        self.version = model_version[:32]
        self.findings = sorted(findings)
        self.dim = len(self.findings)

    def vectors(self, scores: list[dict[str, float]]) -> np.ndarray:
        """Per-study ``{finding: score}`` -> ``(n, dim)`` float32; NaN where one is missing."""
        out = np.full((len(scores), self.dim), np.nan, dtype=np.float32)
        for i, row in enumerate(scores):
            for j, finding in enumerate(self.findings):
                if finding in row:
                    out[i, j] = row[finding]
        return out


def get_backbone(key: str) -> type[Backbone]:
    try:
        return Backbone.registry[key]
    except KeyError:
        known = ", ".join(sorted(Backbone.registry))
        raise ConfigError(f"unknown backbone {key!r}; known backbones: {known}") from None


def create_backbone(key: str = DEFAULT_BACKBONE, **options: Any) -> Backbone:
    """An instance of the backbone registered under ``key`` with ``options``."""
    cls = get_backbone(key)
    try:
        inspect.signature(cls).bind(**options)
    except TypeError as exc:
        raise ConfigError(f"backbone {key!r}: {exc}") from exc
    return cls(**options)


__all__ = [
    "DEFAULT_BACKBONE",
    "BBSDBackbone",
    "Backbone",
    "ConvAEBackbone",
    "ExportedBackbone",
    "TorchScriptBackbone",
    "TorchvisionBackbone",
    "bbsd_name",
    "create_backbone",
    "get_backbone",
]
