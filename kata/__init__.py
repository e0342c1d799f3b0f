"""Kata CI: container-native CI and declarative build tool."""

__version__ = "0.1.0"
