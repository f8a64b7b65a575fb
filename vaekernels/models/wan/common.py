"""What the two Wan VAEs share beyond the layers: the chunk steps around encoder and decoder."""
from __future__ import annotations

from torch import nn

from ...layers import AttentionBlock, CausalConv3d, RMSNorm, ResidualBlock, bordered_like, interior, norm_into_conv
from ..base import VAEModel


def middle(dim, dropout):
    """The middle blocks both Wan VAEs have in encoder and decoder: a ResidualBlock, attention, a ResidualBlock."""
    return nn.ModuleList([ResidualBlock(dim, dim, dropout), AttentionBlock(dim), ResidualBlock(dim, dim, dropout)])


def head(dim, out_channels):
    """RMS norm, SiLU and a 3x3x3 causal conv (the encoder's to mu and log_var, the decoder's to pixels)."""
    return nn.ModuleList([RMSNorm(dim), nn.SiLU(), CausalConv3d(dim, out_channels, 3, padding=1)])


def run_head(head_layers, x, state, out=None):
    """The head on ``x``: the fused norm writes the conv's input in place; the conv writes into ``out`` if given."""
    return head_layers[2](norm_into_conv(head_layers[0], head_layers[2], x, state), state, out=out)


class WanEncoder(nn.Module):
    """What both encoders run: ``conv1``, the ``downsamples`` (blocks or stages), ``middle``, ``head``; a subclass
    builds them."""

    def forward(self, x, state):
        """``x``: a body handed out by ``conv1.buffer``. Returns fewer frames than it got, maybe none."""
        x = self.conv1(x, state)
        for layer in self.downsamples:
            x = layer(x, state)
            if not x.shape[2]:  # a temporal downsampler is waiting for more frames
                return x
        for layer in self.middle:
            x = layer(x, state)
        return run_head(self.head, x, state)


class WanBase(VAEModel):
    """``encode_chunk`` / ``decode_chunk`` for a model with ``encoder`` (whose ``conv1`` takes the video),
    ``conv1`` (1x1 on mu, log_var), ``conv2`` (1x1 on the latent) and ``decoder``; a subclass says how the video
    enters the first conv's buffer (``into_first_conv``)."""

    def into_first_conv(self, x, state):
        """``encoder.conv1``'s input buffer holding the video frames ``x``, behind the conv's history."""
        raise NotImplementedError

    def video_size(self, h, w):
        f = self.spec.space_factor
        return h * f, w * f

    def encode_chunk(self, x, state, out):
        y = self.encoder(self.into_first_conv(x, state), state)
        if y.shape[2]:
            self.conv1(interior(state, y), state, out=out[:, :, :y.shape[2]])
        return y.shape[2]

    def decode_chunk(self, z, state, out, piece_frames):
        """In a frame split into bands (``layers.bands``), ``z`` and ``out`` hold this rank's band rows; between them
        the layers work on bordered bands."""
        body = self.decoder.conv1.buffer(state, bordered_like(state, z))
        self.conv2(z, state, out=interior(state, body))
        self.decoder(body, state, out, piece_frames)
