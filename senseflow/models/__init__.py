"""Model families behind one Denoiser interface."""
from senseflow.models.base import (Conditioning, Denoiser, IdentityCodec, LatentCodec, ModelBundle, TextEncoder,
                                   guided_velocity)

__all__ = ["Conditioning", "Denoiser", "IdentityCodec", "LatentCodec", "ModelBundle", "TextEncoder", "guided_velocity"]
