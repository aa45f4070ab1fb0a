"""kmsemu: a volume-activation lab speaking the KLP/1 lab protocol."""

__version__ = "0.1.0"
