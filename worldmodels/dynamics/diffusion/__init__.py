"""DIAMOND's diffusion world model pieces: EDM maths (``edm``), ODE samplers (``sampler``) and the
next-frame denoiser (``unet``), kept separate so each can be tested and swapped alone."""

from worldmodels.dynamics.diffusion.edm import (
    EDMConfig,
    Preconditioners,
    add_training_noise,
    denoiser_target,
    preconditioners,
    sample_training_sigma,
)
from worldmodels.dynamics.diffusion.sampler import (
    SAMPLERS,
    Denoise,
    initial_noise,
    sample_euler,
    sample_heun,
    sigma_schedule,
)
from worldmodels.dynamics.diffusion.unet import Denoiser, DenoiserNet, DenoiserNetConfig, quantize

__all__ = [
    "SAMPLERS",
    "Denoise",
    "Denoiser",
    "DenoiserNet",
    "DenoiserNetConfig",
    "EDMConfig",
    "Preconditioners",
    "add_training_noise",
    "denoiser_target",
    "initial_noise",
    "preconditioners",
    "quantize",
    "sample_euler",
    "sample_heun",
    "sample_training_sigma",
    "sigma_schedule",
]
