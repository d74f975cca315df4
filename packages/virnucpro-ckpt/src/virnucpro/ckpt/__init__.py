"""Kill-safe HDF5 checkpoints, resume and merge for virnucpro runs."""
