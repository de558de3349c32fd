"""The tenant: what the connector knows of its Bee Flow organisation (the key above all), where it
is kept, and how it is provisioned, verified and rotated."""
