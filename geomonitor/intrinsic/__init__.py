"""intrinsic."""
