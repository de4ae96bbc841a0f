"""The ServerApp's parts: strategy factory, round loop, results and checkpoints."""
