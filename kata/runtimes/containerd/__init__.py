"""containerd adapter."""
