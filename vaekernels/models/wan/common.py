"""What the two Wan VAEs share beyond the layers: the chunk steps around encoder and decoder."""
from __future__ import annotations

from ..base import VAEModel


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
            self.conv1(y, state, out=out[:, :, :y.shape[2]])
        return y.shape[2]

    def decode_chunk(self, z, state, out, piece_frames):
        body = self.decoder.conv1.buffer(state, z)
        self.conv2(z, state, out=body)
        self.decoder(body, state, out, piece_frames)
