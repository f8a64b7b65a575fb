"""diffusers' ``AutoencoderKLWan`` with its encode and decode run by this package (both Wan versions).

``FastAutoencoderKLWan`` is diffusers' class with two methods replaced (``_encode``, ``_decode``): config,
``from_pretrained`` / ``save_pretrained``, ``.to()``, offload hooks and the output types stay diffusers' own. The
weights stay in diffusers' modules; our model (``WanVAEModel`` / ``Wan22VAEModel``) is built around the very same
parameter tensors (no copy), names mapped by ``models/wan/diffusers_keys.py``. Needs diffusers installed.
"""
from __future__ import annotations

import warnings

import torch
from diffusers import AutoencoderKLWan
from diffusers.models.autoencoders.vae import DecoderOutput

from ..engine import parse_bytes
from ..models.split import check_options as check_split_options
from ..models.wan.diffusers_keys import model_of, ours

_IDENTITY = (0.0, 1.0)  # diffusers' latents are not normalised: mean 0, 1/std 1 leaves them as they are


class FastAutoencoderKLWan(AutoencoderKLWan):
    """diffusers' ``AutoencoderKLWan`` (Wan2.1 and Wan2.2 configurations), with vaekernels' fused encode and decode.

    Same constructor, config, ``from_pretrained(path, subfolder=..., torch_dtype=...)``, ``save_pretrained``,
    ``encode(x, return_dict=True)`` (``.latent_dist``: diffusers' ``DiagonalGaussianDistribution``) and
    ``decode(z, return_dict=True)`` (``.sample``, clamped to [-1, 1]), in diffusers' un-normalised latent space.
    Gradients as diffusers' (its parameters require grad unless frozen: call under ``torch.no_grad()`` for
    inference, as pipelines do), through the fused ops (``VAEModel.encode_raw``). Differences: inputs with NaN or
    Inf raise; ``enable_tiling`` is accepted but not used (see there); ``max_memory`` plans inference only.
    ``max_memory`` (None, bytes or e.g. ``"8GiB"``; set it on the object or through ``accelerate``) picks each
    call's chunking so that its estimated memory fits (see ``VAEModel.estimate_memory``). ``split_group`` (a
    torch.distributed process group; set it on the object or through ``accelerate``): each encode and decode is split
    over its ranks by bands of rows, every rank getting the whole result (``VAEModel.encode_raw``; inference only,
    not with ``max_memory``), each rank waiting ``split_timeout`` seconds at most for another (None: the default).
    """

    max_memory = None
    split_group = None
    split_timeout = None

    def _split(self):
        return {} if self.split_group is None else dict(group=self.split_group, timeout=self.split_timeout)

    def _engine_model(self):
        """Our model holding this module's parameter tensors; rebuilt when a parameter was replaced (a loader
        that assigns new ones) rather than changed in place."""
        pairs = getattr(self, "_vaekernels_pairs", None)
        if pairs is not None and all(module._parameters[name] is p for module, name, p in pairs):
            return self._vaekernels_model
        cls, args = model_of(self.config)
        with torch.device("meta"):
            model = cls(**args)
        nested, blocks = bool(self.config.get("is_residual", False)), self.config.get("num_res_blocks", 2)
        pairs, wanted = [], dict(model.named_parameters())
        for key, p in self.named_parameters():
            name = ours(key, nested, blocks)
            if name not in wanted or wanted[name].shape != p.shape:
                raise ValueError(f"{type(self).__name__}: parameter {key} (shape {tuple(p.shape)}) has no place in "
                                 f"{cls.__name__}({args}) as {name}")
            module_name, _, attr = name.rpartition(".")
            module = model.get_submodule(module_name)
            module._parameters[attr] = p
            pairs.append((module, attr, p))
            del wanted[name]
        if wanted:
            raise ValueError(f"{type(self).__name__}: no diffusers parameter for {sorted(wanted)[:3]} of "
                             f"{cls.__name__}")
        model.eval()
        # plain attributes, not submodules: state_dict(), save_pretrained and .to() see each tensor once
        self.__dict__["_vaekernels_model"], self.__dict__["_vaekernels_pairs"] = model, pairs
        return model

    def _encode(self, x: torch.Tensor) -> torch.Tensor:
        mu, logvar = self._engine_model().encode_raw(x, max_memory=self.max_memory, **self._split())
        return torch.cat([mu, logvar], dim=1)  # what diffusers' DiagonalGaussianDistribution splits

    def _decode(self, z: torch.Tensor, return_dict: bool = True):
        out = self._engine_model().decode(z, _IDENTITY, max_memory=self.max_memory, **self._split()).clamp_(-1.0, 1.0)
        return DecoderOutput(sample=out) if return_dict else (out,)

    def enable_tiling(self, *args, **kwargs) -> None:
        """Accepted for diffusers' callers, but tiles are not used: encode and decode already run in chunks of
        frames sized to a memory budget (``VAEKERNELS_CHUNK_MB``), which bounds memory without tile seams and
        gives the untiled result exactly."""
        super().enable_tiling(*args, **kwargs)

    def enable_slicing(self) -> None:
        """Batches are encoded and decoded one video at a time, as in diffusers (the same result)."""
        super().enable_slicing()


def accelerate(pipe, *, max_memory=None, group=None, timeout=None):
    """Makes ``pipe.vae``, a diffusers ``AutoencoderKLWan``, a ``FastAutoencoderKLWan`` in place: the same
    object, weights, dtype, device and config; the pipeline runs unchanged. A second call does nothing (but set
    ``max_memory``, ``group`` and ``timeout`` when given); a VAE of another kind (or a configuration neither Wan model
    has) is left as it is, with a warning. ``max_memory``, ``group`` (``split_group``) and ``timeout``
    (``split_timeout``): see ``FastAutoencoderKLWan``. Returns ``pipe``."""
    if max_memory is not None:
        parse_bytes(max_memory)
    check_split_options(group, max_memory, timeout=timeout)
    vae = getattr(pipe, "vae", None)
    if isinstance(vae, FastAutoencoderKLWan):
        if max_memory is not None:
            vae.max_memory = max_memory
        if group is not None:
            vae.split_group, vae.split_timeout = group, timeout
        return pipe
    if type(vae) is not AutoencoderKLWan:
        warnings.warn(f"vaekernels.accelerate: the pipeline's VAE is a {type(vae).__name__}, not diffusers' "
                      f"AutoencoderKLWan: left as it is", RuntimeWarning, stacklevel=2)
        return pipe
    vae.__class__ = FastAutoencoderKLWan
    try:
        vae._engine_model()
    except ValueError as e:
        vae.__class__ = AutoencoderKLWan
        warnings.warn(f"vaekernels.accelerate: the pipeline's VAE is left as it is: {e}", RuntimeWarning,
                      stacklevel=2)
        return pipe
    vae.max_memory = max_memory
    if group is not None:
        vae.split_group, vae.split_timeout = group, timeout
    return pipe
