"""Model families behind one Denoiser interface.

Importing this package is cheap: diffusers and transformers are imported only when a model is built or loaded.
"""
from senseflow.models.base import (Conditioning, Denoiser, IdentityCodec, LatentCodec, ModelBundle, TextEncoder,
                                   guided_velocity)
from senseflow.models.flux import FluxDenoiser
from senseflow.models.loading import (DEFAULT_MODEL_IDS, ModelNotAvailableError, bundle_from_components,
                                      default_scheduler, load_bundle, pipeline_from_bundle, sigma_table_for)
from senseflow.models.sd3 import SD3Denoiser
from senseflow.models.sdxl import SDXLDenoiser, sdxl_sigma_table
from senseflow.models.text import FluxTextEncoder, SD3TextEncoder, SDXLTextEncoder
from senseflow.models.tiny import tiny_bundle, tiny_pipeline
from senseflow.models.vae import VAECodec

__all__ = [
    "Conditioning", "Denoiser", "IdentityCodec", "LatentCodec", "ModelBundle", "TextEncoder", "guided_velocity",
    "SD3Denoiser", "FluxDenoiser", "SDXLDenoiser", "sdxl_sigma_table",
    "SD3TextEncoder", "FluxTextEncoder", "SDXLTextEncoder", "VAECodec",
    "DEFAULT_MODEL_IDS", "ModelNotAvailableError", "load_bundle", "bundle_from_components", "sigma_table_for",
    "default_scheduler", "pipeline_from_bundle", "tiny_bundle", "tiny_pipeline",
]
