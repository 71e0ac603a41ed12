"""Lightning callbacks that stream geomonitor's measurements to the trainer's loggers."""
