"""Packed ESM-2 inference: forward, stream runner, GPU queue manager."""
