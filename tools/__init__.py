"""Command-line tools and drivers around the app (installed with it, not shipped in its FAB)."""
