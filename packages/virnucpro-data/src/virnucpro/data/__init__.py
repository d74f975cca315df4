"""FASTA streaming, tokenizing and packing for ESM-2 (usable without the rest of virnucpro)."""
