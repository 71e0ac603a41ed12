"""Sharpness: top eigenvalues and trace of the loss Hessian, and the edge of stability.

- :func:`hessian_eigenvalues`: top-k algebraic eigenpairs by Lanczos on double-backward HVPs.
- :func:`hessian_trace`: Hutchinson trace estimate with its standard error.
- :func:`spectral_density`: the eigenvalue density by stochastic Lanczos quadrature.
- :func:`stability_threshold`, :func:`adam_preconditioner`: where the edge of stability is
  for GD / SGD with momentum / Adam (Cohen et al. 2021, 2022).
- :class:`SharpnessEstimator`: warm-started, side-effect-free measurement during training.
- :func:`isolated`: the context manager that restores a model after a measurement.
"""
from geomonitor.sharpness.density import SpectralDensity, spectral_density
from geomonitor.sharpness.estimator import SharpnessEstimator, SharpnessResult
from geomonitor.sharpness.hvp import HVPOperator
from geomonitor.sharpness.isolation import isolated, measurement_mode, unwrap
from geomonitor.sharpness.lanczos import LanczosResult, lanczos_top
from geomonitor.sharpness.preconditioned import Threshold, adam_preconditioner, stability_threshold
from geomonitor.sharpness.spectrum import HessianSpectrum, hessian_eigenvalues
from geomonitor.sharpness.trace import HessianTrace, hessian_trace

__all__ = [
    "HVPOperator",
    "HessianSpectrum",
    "HessianTrace",
    "LanczosResult",
    "SharpnessEstimator",
    "SharpnessResult",
    "SpectralDensity",
    "Threshold",
    "adam_preconditioner",
    "hessian_eigenvalues",
    "hessian_trace",
    "isolated",
    "lanczos_top",
    "measurement_mode",
    "spectral_density",
    "stability_threshold",
    "unwrap",
]
