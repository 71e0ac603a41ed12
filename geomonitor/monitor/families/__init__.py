"""Measurement families (one module each), subclasses of :class:`geomonitor.monitor.family.Family`."""
