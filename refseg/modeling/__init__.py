"""Shared model components (one folder per role) and the contracts where they meet."""
