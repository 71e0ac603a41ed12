"""Measurement families built on the :mod:`geomonitor.monitor.family` contract."""
