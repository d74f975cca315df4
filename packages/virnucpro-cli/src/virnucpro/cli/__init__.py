"""The virnucpro command line, composed with pluggy."""
