"""Intrinsic dimension of point clouds (activations): TwoNN, MLE and PCA-based estimators.

:func:`intrinsic_dimension` is the entry point (``method="twonn" | "mle" | "pca"``);
:class:`IntrinsicDimension` is the same, configured once and callable, with a config-only
``state_dict``. The per-method functions are also public. See
:mod:`geomonitor.intrinsic.estimator` for the options and the handling of bad input.
"""
from geomonitor.intrinsic._common import Estimate, IntrinsicDimensionWarning
from geomonitor.intrinsic.estimator import (
    METHODS, IntrinsicDimension, intrinsic_dimension, intrinsic_dimension_estimate,
)
from geomonitor.intrinsic.mle import mle
from geomonitor.intrinsic.pca import pca_dimension
from geomonitor.intrinsic.twonn import twonn

__all__ = [
    "METHODS", "Estimate", "IntrinsicDimension", "IntrinsicDimensionWarning",
    "intrinsic_dimension", "intrinsic_dimension_estimate", "mle", "pca_dimension", "twonn",
]
