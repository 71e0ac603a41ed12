"""sharpness."""
