"""The StyleGAN2 generator with rosinality/stylegan2-pytorch's parameter names, and its style space.

Parameter and buffer names and shapes equal ``g_ema`` of the official ``stylegan2-ffhq-config-f.pt`` (converted
by rosinality), so that file loads with an explicit key check. Beyond the reference ``forward`` the generator
exposes StyleSpace (Wu et al.): ``styles(wplus)`` gives the per-layer modulation vectors ``s`` and
``synthesize(styles)`` renders from them, so an edit is arithmetic on ``s``.

``impl="ref"`` follows the reference computation (per-sample weights in a grouped convolution, reference ops).
``impl="fast"`` computes the same function as one batch (the style scales the activations, one dense
convolution for the whole batch, the fast ops of ``pipeline.models.ops``); it is what training differentiates.
Faster inference renderers (CPU, CUDA) live above this module, in the render layer (``pipeline/render/``):
this file imports none of them and holds no state for them.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.errors import MODEL_INVALID, PipelineError
from pipeline.models.checkpoints import load_state, read_checkpoint
from pipeline.models.ops import SQRT2, Impl, check_impl, fused_leaky_relu, make_kernel, upfirdn2d

BLUR_TAPS = [1, 3, 3, 1]


def default_channels(size: int, channel_multiplier: int = 2) -> dict[int, int]:
    """Feature widths per resolution of the official configs (config-f: ``channel_multiplier=2``)."""
    widths = {4: 512, 8: 512, 16: 512, 32: 512, 64: 256 * channel_multiplier, 128: 128 * channel_multiplier,
              256: 64 * channel_multiplier, 512: 32 * channel_multiplier, 1024: 16 * channel_multiplier}
    return {r: c for r, c in widths.items() if r <= size}


class EqualLinear(nn.Module):
    """Linear layer with the equalized learning rate: weights stored at unit scale, scaled at run time."""

    def __init__(self, in_dim: int, out_dim: int, bias_init: float = 0.0, lr_mul: float = 1.0,
                 activation: bool = False):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_dim, in_dim).div_(lr_mul))
        self.bias = nn.Parameter(torch.full((out_dim,), float(bias_init)))
        self.scale = lr_mul / math.sqrt(in_dim)
        self.lr_mul = lr_mul
        self.activation = activation

    def forward(self, x: torch.Tensor, impl: Impl = "ref") -> torch.Tensor:
        if self.activation:
            return fused_leaky_relu(F.linear(x, self.weight * self.scale), self.bias * self.lr_mul, impl=impl)
        return F.linear(x, self.weight * self.scale, bias=self.bias * self.lr_mul)


class Mapping(nn.Sequential):
    """z → w: pixel norm, then ``n_mlp`` equalized linear layers (keys ``style.1`` … ``style.n``)."""

    def __init__(self, style_dim: int, n_mlp: int, lr_mlp: float = 0.01):
        super().__init__(nn.Identity(), *[EqualLinear(style_dim, style_dim, lr_mul=lr_mlp, activation=True)
                                          for _ in range(n_mlp)])

    def forward(self, z: torch.Tensor, impl: Impl = "ref") -> torch.Tensor:
        x = z * torch.rsqrt(torch.mean(z ** 2, dim=1, keepdim=True) + 1e-8)
        for layer in list(self)[1:]:
            x = layer(x, impl)
        return x


class FIRFilter(nn.Module):
    """A fixed FIR filter (buffer ``kernel``) applied through ``upfirdn2d``."""

    def __init__(self, pad: tuple[int, int], up: int = 1, gain: float = 1.0):
        super().__init__()
        self.register_buffer("kernel", make_kernel(BLUR_TAPS) * gain)
        self.pad, self.up = pad, up

    def forward(self, x: torch.Tensor, impl: Impl = "ref") -> torch.Tensor:
        return upfirdn2d(x, self.kernel, up=self.up, pad=self.pad, impl=impl)


class ModulatedConv2d(nn.Module):
    """Convolution whose input channels are scaled per sample by a style ``s`` (then optionally demodulated).

    ``styles`` holds the modulation layer (w → s); ``forward`` takes ``s`` itself so that edits in style space
    need no second pass through it."""

    def __init__(self, in_channel: int, out_channel: int, kernel_size: int, style_dim: int,
                 demodulate: bool = True, upsample: bool = False):
        super().__init__()
        self.in_channel, self.out_channel, self.kernel_size = in_channel, out_channel, kernel_size
        self.upsample, self.demodulate = upsample, demodulate
        if upsample:  # transposed conv (stride 2), then blur; pads as in the reference for a 4-tap filter
            p = (len(BLUR_TAPS) - 2) - (kernel_size - 1)
            self.blur = FIRFilter(pad=((p + 1) // 2 + 1, p // 2 + 1), gain=4.0)
        self.scale = 1 / math.sqrt(in_channel * kernel_size ** 2)
        self.padding = kernel_size // 2
        self.weight = nn.Parameter(torch.randn(1, out_channel, in_channel, kernel_size, kernel_size))
        self.modulation = EqualLinear(style_dim, in_channel, bias_init=1)

    def forward(self, x: torch.Tensor, s: torch.Tensor, impl: Impl = "ref") -> torch.Tensor:
        """``x [B,Cin,H,W]``, ``s [B,Cin]`` → ``[B,Cout,H',W']``."""
        if check_impl(impl) == "fast" and x.shape[0] > 1:
            return self._forward_shared_weight(x, s)
        return self._forward_grouped(x, s, impl)

    def _forward_grouped(self, x: torch.Tensor, s: torch.Tensor, impl: Impl) -> torch.Tensor:
        """The reference form: one modulated weight per sample, one group per sample."""
        batch, cin, height, width = x.shape
        k, cout = self.kernel_size, self.out_channel
        weight = self.scale * self.weight * s.view(batch, 1, cin, 1, 1)
        if self.demodulate:
            demod = torch.rsqrt(weight.pow(2).sum([2, 3, 4]) + 1e-8)
            weight = weight * demod.view(batch, cout, 1, 1, 1)
        if self.upsample:
            weight = weight.transpose(1, 2).reshape(batch * cin, cout, k, k)
            out = F.conv_transpose2d(x.reshape(1, batch * cin, height, width), weight, stride=2, groups=batch)
            return self.blur(out.view(batch, cout, *out.shape[2:]), impl)
        weight = weight.view(batch * cout, cin, k, k)
        out = F.conv2d(x.reshape(1, batch * cin, height, width), weight, padding=self.padding, groups=batch)
        return out.view(batch, cout, *out.shape[2:])

    def _forward_shared_weight(self, x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        """Modulate activations instead of weights: ``conv(x·s, W)·demod`` equals ``conv(x, W·s·demod)`` and
        runs as one dense convolution for the whole batch."""
        weight = self.scale * self.weight[0]
        out = x * s[:, :, None, None]
        if self.upsample:
            out = self.blur(F.conv_transpose2d(out, weight.transpose(0, 1), stride=2), "fast")
        else:
            out = F.conv2d(out, weight, padding=self.padding)
        if self.demodulate:
            wsq = weight.pow(2).sum([2, 3])  # [Cout, Cin]
            out = out.mul_(torch.rsqrt(s.pow(2) @ wsq.t() + 1e-8)[:, :, None, None])
        return out


class ConstantInput(nn.Module):
    """The learned 4×4 start of the synthesis network (key ``input.input``)."""

    def __init__(self, channels: int, size: int = 4):
        super().__init__()
        self.input = nn.Parameter(torch.randn(1, channels, size, size))

    def forward(self, batch: int) -> torch.Tensor:
        return self.input.repeat(batch, 1, 1, 1)


class NoiseInjection(nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        return x + self.weight * noise


class FusedLeakyReLU(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor, impl: Impl = "ref") -> torch.Tensor:
        return fused_leaky_relu(x, self.bias, impl=impl)


class StyledConv(nn.Module):
    """Modulated 3×3 conv → noise → bias + leaky ReLU."""

    def __init__(self, in_channel: int, out_channel: int, style_dim: int, upsample: bool = False):
        super().__init__()
        self.conv = ModulatedConv2d(in_channel, out_channel, 3, style_dim, upsample=upsample)
        self.noise = NoiseInjection()
        self.activate = FusedLeakyReLU(out_channel)

    def forward(self, x: torch.Tensor, s: torch.Tensor, noise: torch.Tensor, impl: Impl = "ref") -> torch.Tensor:
        out = self.conv(x, s, impl)
        if impl == "ref":
            return self.activate(self.noise(out, noise), impl)
        # one in-place epilogue: lrelu(v)·√2 == lrelu(v·√2)
        out = out.mul_(SQRT2).add_(noise * (self.noise.weight * SQRT2))
        out = out.add_((self.activate.bias * SQRT2).view(1, -1, 1, 1))
        return F.leaky_relu_(out, 0.2)


class ToRGB(nn.Module):
    """Modulated 1×1 conv to RGB (no demodulation) plus the upsampled skip image."""

    def __init__(self, in_channel: int, style_dim: int, upsample: bool = True):
        super().__init__()
        if upsample:
            self.upsample = FIRFilter(pad=(2, 1), up=2, gain=4.0)
        self.conv = ModulatedConv2d(in_channel, 3, 1, style_dim, demodulate=False)
        self.bias = nn.Parameter(torch.zeros(1, 3, 1, 1))

    def forward(self, x: torch.Tensor, s: torch.Tensor, skip: torch.Tensor | None, impl: Impl = "ref") -> torch.Tensor:
        if impl == "ref":
            out = self.conv(x, s, impl) + self.bias
        else:  # a 1×1 modulated conv is a batched matmul: [B,3,Cin] @ [B,Cin,HW]
            weight = (self.conv.scale * self.conv.weight[0, :, :, 0, 0])[None] * s[:, None, :]
            out = torch.baddbmm(self.bias.view(1, 3, 1), weight, x.flatten(2)).view(x.shape[0], 3, *x.shape[2:])
        if skip is None:
            return out
        return out + self.upsample(skip, impl)


class Generator(nn.Module):
    """rosinality's ``Generator`` (``g_ema``) with a style-space interface.

    ``channels`` (resolution → width, for 4 … ``size``) overrides ``channel_multiplier``: tiny development
    models use it. ``impl`` selects the reference or the batched fast computation; it can be changed at any
    time. ``pipeline.render.renderer.Renderer`` renders it faster for inference."""

    def __init__(self, size: int, style_dim: int = 512, n_mlp: int = 8, channel_multiplier: int = 2,
                 channels: dict[int, int] | None = None, impl: Impl = "fast"):
        super().__init__()
        self.log_size = int(math.log2(size))
        if 2 ** self.log_size != size or size < 4:
            raise ValueError(f"size must be a power of two >= 4, got {size}")
        self.size, self.style_dim, self.n_mlp = size, style_dim, n_mlp
        self.channels = dict(channels) if channels is not None else default_channels(size, channel_multiplier)
        missing = [2 ** i for i in range(2, self.log_size + 1) if 2 ** i not in self.channels]
        if missing:
            raise ValueError(f"channels lacks resolutions {missing}")
        self.impl = impl
        ch = self.channels

        self.style = Mapping(style_dim, n_mlp)
        self.input = ConstantInput(ch[4])
        self.conv1 = StyledConv(ch[4], ch[4], style_dim)
        self.to_rgb1 = ToRGB(ch[4], style_dim, upsample=False)
        self.convs, self.to_rgbs = nn.ModuleList(), nn.ModuleList()
        in_channel = ch[4]
        for i in range(3, self.log_size + 1):
            out_channel = ch[2 ** i]
            self.convs.append(StyledConv(in_channel, out_channel, style_dim, upsample=True))
            self.convs.append(StyledConv(out_channel, out_channel, style_dim))
            self.to_rgbs.append(ToRGB(out_channel, style_dim))
            in_channel = out_channel
        self.num_layers = (self.log_size - 2) * 2 + 1
        self.noises = nn.Module()
        for i in range(self.num_layers):
            res = 2 ** ((i + 5) // 2)
            self.noises.register_buffer(f"noise_{i}", torch.randn(1, 1, res, res))
        self.n_latent = self.log_size * 2 - 2
        # not part of g_ema: the checkpoint's mean W, kept beside the weights (moves with .to())
        self.register_buffer("latent_avg", torch.zeros(0), persistent=False)

        # style space, in execution order: (name, module, W+ row)
        layers: list[tuple[str, ModulatedConv2d, int]] = [("conv1", self.conv1.conv, 0), ("to_rgb1", self.to_rgb1.conv, 1)]
        for k, to_rgb in enumerate(self.to_rgbs):
            layers += [(f"convs.{2 * k}", self.convs[2 * k].conv, 2 * k + 1),
                       (f"convs.{2 * k + 1}", self.convs[2 * k + 1].conv, 2 * k + 2),
                       (f"to_rgbs.{k}", to_rgb.conv, 2 * k + 3)]
        self._style_layers = layers
        self.style_layer_names = [f"{name}.conv.modulation" for name, _, _ in layers]
        self.style_dims = [conv.in_channel for _, conv, _ in layers]
        self.style_is_torgb = [name.startswith("to_rgb") for name, _, _ in layers]
        self.style_wplus_index = [idx for _, _, idx in layers]

    @property
    def impl(self) -> str:
        return self._impl

    @impl.setter
    def impl(self, impl: str) -> None:
        self._impl = check_impl(impl)

    # --- W space -------------------------------------------------------------------------------------------

    def mapping(self, z: torch.Tensor) -> torch.Tensor:
        """z ``[B,style_dim]`` → w ``[B,style_dim]``."""
        return self.style(z, self.impl)

    def mean_latent(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Mean of ``n`` mapped random z: ``[1,style_dim]`` (the truncation centre)."""
        device = self.input.input.device
        z = torch.randn(n, self.style_dim, generator=generator, device="cpu").to(device)
        return self.mapping(z).mean(0, keepdim=True)

    def forward(self, wplus: torch.Tensor) -> torch.Tensor:
        """W+ ``[B,n_latent,style_dim]`` (or one w ``[B,style_dim]`` for all layers) → image ``[B,3,size,size]``,
        unclamped, with the stored noise buffers (the reference's ``randomize_noise=False``)."""
        return self.synthesize(self.styles(wplus))

    # --- style space ---------------------------------------------------------------------------------------

    def styles(self, wplus: torch.Tensor) -> list[torch.Tensor]:
        """W+ → the style vector of every modulated layer, in execution order: list of ``[B,C_i]``."""
        if wplus.ndim == 2:
            wplus = wplus[:, None, :].expand(-1, self.n_latent, -1)
        if wplus.shape[1:] != (self.n_latent, self.style_dim):
            raise ValueError(f"wplus must be [B,{self.n_latent},{self.style_dim}], got {list(wplus.shape)}")
        return [conv.modulation(wplus[:, idx]) for _, conv, idx in self._style_layers]

    def synthesize(self, styles: list[torch.Tensor], feature: torch.Tensor | None = None,
                   impl: Impl | None = None) -> torch.Tensor:
        """Style vectors (as from ``styles``, any batch size B) → image ``[B,3,size,size]``, computed as ``impl``
        says (default: ``self.impl``).

        ``feature`` ``[B,C_r,r,r]`` (StyleFeatureEditor's injected feature) replaces the ``r``×``r`` block's
        output before the next block, as the reference's ``new_features`` does: the layers up to ``r`` still
        run on the styles (the RGB skip image up to ``r`` is the generator's own), the layers above run on
        the feature."""
        self.check_styles(styles)
        if feature is not None:
            self.check_feature(feature, styles[0].shape[0])
        return self._render(styles, self.impl if impl is None else check_impl(impl), feature)

    def feature(self, styles: list[torch.Tensor], resolution: int, impl: Impl | None = None,
                injected: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Render only up to ``resolution``: that block's output ``[B,C_r,r,r]`` (what ``synthesize``'s
        ``feature`` replaces; the reference's ``outs`` with ``early_stop``) and the RGB skip image ``[B,3,r,r]``,
        computed as ``impl`` says (default: ``self.impl``). Only the style vectors of the layers up to
        ``resolution`` are read (``feature_layers``). ``injected``: ``synthesize``'s ``feature``, when it
        replaces a block below ``resolution`` (SFE's 64² feature under a 256² preview)."""
        styles = list(styles[:self.feature_layers(resolution)])
        self.check_styles(styles, partial=True)
        if injected is not None:
            self.check_feature(injected, styles[0].shape[0])
        return self._render_feature(styles, self.impl if impl is None else check_impl(impl), resolution, injected)

    def resume(self, styles: list[torch.Tensor], resolution: int, x: torch.Tensor, skip: torch.Tensor,
               feature: torch.Tensor | None = None, impl: Impl | None = None) -> torch.Tensor:
        """The layers above ``resolution``, from ``feature(styles, resolution)``'s block output ``x`` and skip
        image: ``feature`` then ``resume`` is ``synthesize`` with no layer run twice (a render that shows its
        skip image at ``resolution`` as a preview, then goes on). ``feature``: ``synthesize``'s, as there."""
        self.check_styles(styles)
        self.feature_layers(resolution)  # a block resolution below the size
        batch = styles[0].shape[0]
        if x.shape[0] != batch or x.shape[1:] != (self.channels[resolution], resolution, resolution) \
                or skip.shape != (batch, 3, resolution, resolution):
            raise ValueError(f"x and skip must be feature()'s output at {resolution} for batch {batch}, got "
                             f"{list(x.shape)} and {list(skip.shape)}")
        if feature is not None:
            self.check_feature(feature, batch)
        impl = self.impl if impl is None else check_impl(impl)
        *_, (_, _, image) = self._blocks(styles, impl, feature, start=(resolution, x, skip))
        return image

    def feature_layers(self, resolution: int) -> int:
        """How many style layers (execution order) render up to ``resolution``: conv1, to_rgb1, then three per
        block."""
        if resolution not in self.channels or resolution >= self.size:
            raise ValueError(f"resolution must be one of {sorted(r for r in self.channels if r < self.size)}, "
                             f"got {resolution}")
        return 2 + 3 * (int(math.log2(resolution)) - 2)

    def check_styles(self, styles: list[torch.Tensor], partial: bool = False) -> None:
        """``ValueError`` unless ``styles`` is one ``[B,C_i]`` vector per modulated layer (``partial``: per layer
        of a prefix of them), all of one batch B."""
        if not partial and len(styles) != len(self._style_layers):
            raise ValueError(f"expected {len(self._style_layers)} style vectors, got {len(styles)}")
        for i, (s, dim) in enumerate(zip(styles, self.style_dims, strict=not partial)):
            if s.ndim != 2 or s.shape[1] != dim or s.shape[0] != styles[0].shape[0]:
                raise ValueError(f"style {i} ({self.style_layer_names[i]}) must be [B,{dim}], got {list(s.shape)}")

    def check_feature(self, feature: torch.Tensor, batch: int) -> None:
        """``ValueError`` unless ``feature`` is ``[batch,C_r,r,r]`` for a block resolution ``r`` below the size."""
        resolution = feature.shape[-1]
        expected = [batch, self.channels.get(resolution), resolution, resolution]
        if list(feature.shape) != expected or resolution >= self.size:
            raise ValueError(f"feature must be [B,C_r,r,r] for a block resolution r below {self.size} "
                             f"(here {expected}), got {list(feature.shape)}")

    def _render(self, styles: list[torch.Tensor], impl: Impl, feature: torch.Tensor | None = None) -> torch.Tensor:
        *_, (_, _, image) = self._blocks(styles, impl, feature)  # the last block's skip image is the image
        return image

    def _render_feature(self, styles: list[torch.Tensor], impl: Impl, resolution: int,
                        injected: torch.Tensor | None = None):
        for res, x, skip in self._blocks(styles, impl, injected):
            if res == resolution:
                return x, skip
        raise AssertionError("unreachable: feature_layers checked the resolution")

    def _blocks(self, styles: list[torch.Tensor], impl: Impl, feature: torch.Tensor | None = None,
                start: tuple[int, torch.Tensor, torch.Tensor] | None = None):
        """The synthesis network block by block: yields ``(resolution, features, skip image)`` after each;
        ``start``: ``(resolution, features, skip image)`` of a block already rendered, to go on from there."""
        noise = [getattr(self.noises, f"noise_{i}") for i in range(self.num_layers)]
        if start is None:
            x = self.input(styles[0].shape[0])
            x = self.conv1(x, styles[0], noise[0], impl)
            skip = self.to_rgb1(x, styles[1], None, impl)
            yield 4, x, skip
            first = 0
        else:
            resolution, x, skip = start
            first = int(math.log2(resolution)) - 2  # the block whose input is `resolution`
        for k in range(first, len(self.to_rgbs)):
            to_rgb = self.to_rgbs[k]
            if feature is not None and feature.shape[-1] == x.shape[-1]:
                x = feature.to(x.dtype)  # SFE: the block above reads the injected feature
            s_up, s_conv, s_rgb = styles[2 + 3 * k: 5 + 3 * k]
            x = self.convs[2 * k](x, s_up, noise[2 * k + 1], impl)
            x = self.convs[2 * k + 1](x, s_conv, noise[2 * k + 2], impl)
            skip = to_rgb(x, s_rgb, skip, impl)
            yield 2 ** (k + 3), x, skip


# --- the checkpoint -------------------------------------------------------------------------------------------

def infer_config(state: dict[str, torch.Tensor], source: str) -> dict:
    """Architecture from the weights' own shapes: size from the number of toRGB layers, widths from the convs."""
    def shape(key: str) -> torch.Size:
        if key not in state:
            raise PipelineError(MODEL_INVALID, f"{source}: not a StyleGAN2 g_ema state dict (missing key {key})")
        return state[key].shape

    n_mlp = len([k for k in state if re.fullmatch(r"style\.\d+\.weight", k)])
    n_up = len([k for k in state if re.fullmatch(r"to_rgbs\.\d+\.conv\.weight", k)])
    channels = {4: shape("input.input")[1]}
    channels.update({2 ** (k + 3): shape(f"convs.{2 * k}.conv.weight")[1] for k in range(n_up)})
    return {"size": 2 ** (n_up + 2), "style_dim": shape("conv1.conv.modulation.weight")[1], "n_mlp": n_mlp,
            "channels": channels}


def load_generator(path: str | Path, device: str | torch.device = "cpu", impl: Impl = "fast") -> Generator:
    """Read an official rosinality checkpoint (``{"g_ema": state_dict, "latent_avg": [512]}``) or one written
    by ``save_generator``; the architecture is inferred from the shapes. ``generator.latent_avg`` holds the
    checkpoint's mean W (empty when the file has none)."""
    ckpt = read_checkpoint(path)
    if not isinstance(ckpt.get("g_ema"), dict):
        raise PipelineError(MODEL_INVALID, f"{path}: no 'g_ema' state dict (keys: {sorted(ckpt)[:8]})")
    # rosinality's key names are ours: the key map is the identity, checked key by key in load_state
    state = dict(ckpt["g_ema"])
    g = Generator(**infer_config(state, str(path)), impl=impl)
    load_state(g, state, str(path))
    latent_avg = ckpt.get("latent_avg")
    if latent_avg is not None:
        if latent_avg.shape[-1] != g.style_dim:
            raise PipelineError(MODEL_INVALID, f"{path}: latent_avg has shape {list(latent_avg.shape)}, "
                                               f"expected [..., {g.style_dim}]")
        g.latent_avg = latent_avg.float().clone()
    return g.to(device).eval()


def save_generator(path: str | Path, generator: Generator, latent_avg: torch.Tensor | None = None) -> None:
    """Write the official layout (``g_ema`` + ``latent_avg``), readable by rosinality's code and ours."""
    if latent_avg is None and generator.latent_avg.numel():
        latent_avg = generator.latent_avg
    ckpt: dict = {"g_ema": {k: v.detach().cpu().contiguous() for k, v in generator.state_dict().items()}}
    if latent_avg is not None:
        ckpt["latent_avg"] = latent_avg.detach().cpu().float()
    torch.save(ckpt, Path(path))
