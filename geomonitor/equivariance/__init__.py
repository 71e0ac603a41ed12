"""Learned equivariance: the equivariance error under a group action (:mod:`.error`), the
Lie derivative along a one-parameter group (:mod:`.lie`) and that of every prefix of a
network in one pass (:mod:`.layerwise`)."""
from geomonitor.equivariance.error import equivariance_error, layer_equivariance_errors, relative_error
from geomonitor.equivariance.layerwise import layerwise_lie_derivative, layerwise_lie_derivative_tensors
from geomonitor.equivariance.lie import fourier_shift, lie_derivative, lie_derivative_tensor

__all__ = ["equivariance_error", "fourier_shift", "layer_equivariance_errors", "layerwise_lie_derivative",
           "layerwise_lie_derivative_tensors", "lie_derivative",
           "lie_derivative_tensor", "relative_error"]
