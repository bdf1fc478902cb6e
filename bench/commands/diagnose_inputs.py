"""Reading a user's tokenizer for ``vqbench diagnose``: tensor files, vector-quantize-pytorch state dicts, models.

Three ways in (see :mod:`vqbench.commands.diagnose`):

- files: a codebook ``(K, d)`` plus latents ``(..., d)`` and/or indices ``(...)``, each a ``.pt``/``.pth``/
  ``.ckpt`` (``torch.save``), ``.npy``/``.npz`` (NumPy) or ``.safetensors`` file (needs the ``safetensors``
  package); a file holding a dict picks its tensor by ``--*-key`` (or its only tensor);
- a vector-quantize-pytorch ``VectorQuantize`` state dict as the codebook: its codes are ``_codebook.embed``
  ``(heads, K, d_c)`` (any key prefix); the latents are the module's *inputs*, mapped as its ``forward`` does:
  ``project_in`` (Linear, then LayerNorm when present), split into heads, l2-normalised with ``--cosine``;
- ``--model module:factory --data FILE``: ``factory()`` returns a model following :class:`DiagnosableModel`.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor

from vqbench.errors import UserError

TORCH_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin")
VQP_EMBED = "_codebook.embed"


@runtime_checkable
class DiagnosableModel(Protocol):
    """What ``--model module:factory`` must return: a model that exposes its quantizer's input and output.

    ``quantizer_io(batch)`` takes one batch of ``--data`` (rows along dim 0, as stored in the file) and returns
    ``(latents, indices)``: the quantizer's input, channel-last ``(..., d)``, and the code ids it chose,
    ``(...)`` integers in ``[0, K)`` (the same leading shape). ``codebook()`` returns the code vectors
    ``(K, d)`` in the latents' space, or None when they cannot be enumerated; then the model must have an
    integer attribute ``codebook_size``. It runs under ``torch.no_grad()`` after ``model.eval()`` when the
    model has ``eval``. A vqbench ``Quantizer`` inside an encoder fits in five lines::

        class Tokenizer(nn.Module):
            def quantizer_io(self, x):
                z = self.encoder(x)
                return z, self.quantizer(z).indices
            def codebook(self):
                return self.quantizer.codebook()
    """

    def quantizer_io(self, batch: Tensor) -> tuple[Tensor, Tensor]: ...

    def codebook(self) -> Tensor | None: ...


def load_file(path: str | os.PathLike[str]) -> Any:
    """A tensor, or a dict of them, from a ``.pt``/``.npy``/``.npz``/``.safetensors`` file (on the CPU)."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{p}: no such file: check the path")
    if p.stat().st_size == 0:
        raise UserError(f"{p} is empty: save the tensor again (torch.save, numpy.save or safetensors)")
    suffix = p.suffix.lower()
    try:
        if suffix in TORCH_SUFFIXES:
            return torch.load(p, map_location="cpu", weights_only=True)
        if suffix in (".npy", ".npz"):
            import numpy as np

            data = np.load(p, allow_pickle=False)
            if suffix == ".npz":
                return {k: torch.from_numpy(data[k]) for k in data.files}
            return torch.from_numpy(data)
        if suffix == ".safetensors":
            try:
                from safetensors.torch import load_file as load_safetensors
            except ImportError:
                raise UserError(f"{p}: reading .safetensors needs the safetensors package: "
                                "pip install safetensors (or save as .pt / .npy)") from None
            return load_safetensors(str(p), device="cpu")
    except UserError:
        raise
    except Exception as exc:  # noqa: BLE001 - any parse failure of a user's file is a user error
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"cannot read {p} ({type(exc).__name__}: {first[:160]}): the file is damaged or not a "
                        f"{suffix} tensor file; save it again") from None
    raise UserError(f"{p}: unknown file type {suffix!r}: use .pt/.pth/.ckpt (torch.save), .npy/.npz or .safetensors")


def _tensors(obj: Any, prefix: str = "") -> dict[str, Tensor]:
    """Every tensor of a (nested) dict, by dotted key."""
    if isinstance(obj, Tensor):
        return {prefix or "": obj}
    out: dict[str, Tensor] = {}
    if isinstance(obj, dict):
        for k, v in obj.items():
            out.update(_tensors(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def pick_tensor(obj: Any, key: str | None, path: str, what: str, option: str) -> Tensor:
    """The tensor under ``key`` (dotted for nested dicts), or the only tensor of ``obj``."""
    tensors = _tensors(obj)
    if key is not None:
        if key not in tensors:
            raise UserError(f"{path} has no tensor {key!r} for the {what}: choose {option} from "
                            f"{', '.join(sorted(tensors)[:12]) or '(no tensors)'}")
        return tensors[key]
    if len(tensors) == 1:
        return next(iter(tensors.values()))
    if not tensors:
        raise UserError(f"{path} holds no tensor for the {what}: save a tensor (or a dict of tensors)")
    raise UserError(f"{path} holds {len(tensors)} tensors: pass {option} NAME to choose the {what} "
                    f"({', '.join(sorted(tensors)[:12])})")


@dataclass
class VQPCodebook:
    """A vector-quantize-pytorch ``VectorQuantize`` read from its state dict (see the module docstring)."""

    embed: Tensor  # (heads or 1, K, d_c)
    project: Callable[[Tensor], Tensor]  # module input (..., dim) -> codebook input (..., heads * d_c)
    prefix: str
    initted: bool | None

    @property
    def separate_heads(self) -> int:
        return self.embed.shape[0]

    def codebook(self, head: int) -> Tensor:
        if not 0 <= head < self.embed.shape[0]:
            raise UserError(f"--head {head} is out of range: the checkpoint has {self.embed.shape[0]} codebook(s)")
        return self.embed[head].float()

    def latents(self, x: Tensor, head: int) -> Tensor:
        """Module inputs -> the vectors codebook ``head`` sees, (n, d_c)."""
        z = self.project(x.float())
        d_c = self.embed.shape[-1]
        if z.shape[-1] % d_c:
            raise UserError(f"latents of width {x.shape[-1]} (projected: {z.shape[-1]}) do not split into heads of "
                            f"the codebook's dimension {d_c}: pass the VectorQuantize module's inputs (..., dim)")
        z = z.reshape(-1, z.shape[-1] // d_c, d_c)
        if self.separate_heads > 1:
            return z[:, head]
        return z.reshape(-1, d_c)  # one codebook shared by every head


def find_vqp(obj: Any, path: str, key: str | None = None) -> VQPCodebook | None:
    """The ``VectorQuantize`` in a state dict (None when ``obj`` holds no ``*_codebook.embed``, or ``key``
    names another tensor)."""
    tensors = _tensors(obj)
    keys = [k for k in tensors if (k == VQP_EMBED or k.endswith("." + VQP_EMBED)) and key in (None, k)]
    if not keys:
        return None
    if len(keys) > 1:
        raise UserError(f"{path} holds {len(keys)} vector-quantize-pytorch codebooks ({', '.join(keys[:6])}): "
                        "pass --codebook-key with the one to diagnose")
    prefix = keys[0][: -len(VQP_EMBED)]
    embed = tensors[keys[0]]
    if embed.ndim != 3:
        raise UserError(f"{path}: {keys[0]} has shape {tuple(embed.shape)}, expected (heads, K, d) as in "
                        "vector-quantize-pytorch's VectorQuantize")
    weight = tensors.get(prefix + "project_in.0.weight", tensors.get(prefix + "project_in.weight"))
    bias = tensors.get(prefix + "project_in.0.bias", tensors.get(prefix + "project_in.bias"))
    norm_w, norm_b = tensors.get(prefix + "project_in.1.weight"), tensors.get(prefix + "project_in.1.bias")

    def project(x: Tensor) -> Tensor:
        if weight is None:
            return x
        if x.shape[-1] != weight.shape[1]:
            raise UserError(f"latents have width {x.shape[-1]} but the VectorQuantize's project_in expects "
                            f"{weight.shape[1]}: pass the module's inputs")
        z = torch.nn.functional.linear(x, weight.float(), None if bias is None else bias.float())
        if norm_w is not None:
            z = torch.nn.functional.layer_norm(z, z.shape[-1:], norm_w.float(),
                                               None if norm_b is None else norm_b.float())
        return z

    initted = tensors.get(prefix + "_codebook.initted")
    return VQPCodebook(embed, project, prefix, None if initted is None else bool(initted))


def import_factory(spec: str) -> Callable[[], Any]:
    """``module:attr`` -> the callable (a clear UserError when the module or attribute is missing)."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise UserError(f"--model {spec!r}: use module:factory (e.g. my_tokenizer:build), an importable module "
                        "and a callable in it that returns the model")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # noqa: BLE001 - whatever the user's module raises on import
        raise UserError(f"--model {spec!r}: module {module_name!r} does not import ({type(exc).__name__}: "
                        f"{str(exc).splitlines()[0] if str(exc) else ''}): check PYTHONPATH and the module") from None
    factory = module
    for part in attr.split("."):
        factory = getattr(factory, part, None)
        if factory is None:
            raise UserError(f"--model {spec!r}: {module_name} has no attribute {attr!r}: name the factory function")
    if not callable(factory):
        raise UserError(f"--model {spec!r}: {attr} is not callable: name a function or class that builds the model")
    return factory


def build_model(spec: str) -> Any:
    """``factory()`` for ``--model``, checked against :class:`DiagnosableModel`."""
    try:
        model = import_factory(spec)()
    except UserError:
        raise
    except Exception as exc:  # noqa: BLE001 - the user's factory failing is the user's to fix
        raise UserError(f"--model {spec!r}: the factory raised {type(exc).__name__}: {exc}") from None
    if not callable(getattr(model, "quantizer_io", None)):
        raise UserError(f"--model {spec!r}: the model has no quantizer_io(batch) -> (latents, indices): "
                        "see `vqbench diagnose --help` for the protocol")
    if hasattr(model, "eval"):
        model.eval()
    return model


def model_codebook(model: Any) -> tuple[Tensor | None, int]:
    """(codebook (K, d) or None, K) of a :class:`DiagnosableModel`."""
    codebook = model.codebook() if callable(getattr(model, "codebook", None)) else None
    if codebook is not None:
        return codebook.detach().float().cpu(), int(codebook.shape[0])
    size = getattr(model, "codebook_size", None)
    if not isinstance(size, int) or size < 1:
        raise UserError("the model's codebook() returned None and it has no integer codebook_size: expose one")
    return None, size


def model_batches(model: Any, data: Tensor, batch_size: int) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
    """(latents, indices, input rows) per batch of ``data``, through ``model.quantizer_io``."""
    for start in range(0, data.shape[0], batch_size):
        batch = data[start:start + batch_size]
        with torch.no_grad():
            out = model.quantizer_io(batch)
        if not (isinstance(out, (tuple, list)) and len(out) == 2 and all(isinstance(t, Tensor) for t in out)):
            raise UserError("model.quantizer_io(batch) must return a tuple (latents, indices) of tensors")
        yield out[0].detach().cpu(), out[1].detach().cpu(), batch
