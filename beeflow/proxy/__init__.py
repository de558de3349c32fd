"""The two reverse proxies and their shared streaming core."""
