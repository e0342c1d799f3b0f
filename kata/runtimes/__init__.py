"""Runtime adapters. Only ``kata.runtimes.containerd`` imports the gRPC stubs."""
