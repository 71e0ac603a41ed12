"""Learned equivariance: the equivariance error under a group action (:mod:`.error`) and the
Lie derivative along a one-parameter group (:mod:`.lie`)."""
from geomonitor.equivariance.error import equivariance_error, layer_equivariance_errors, relative_error
from geomonitor.equivariance.lie import fourier_shift, lie_derivative, lie_derivative_tensor

__all__ = ["equivariance_error", "fourier_shift", "layer_equivariance_errors", "lie_derivative",
           "lie_derivative_tensor", "relative_error"]
