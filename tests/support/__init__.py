"""Helpers the integration tests share: test images, an embedded containerd, a registry."""
