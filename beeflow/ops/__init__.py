"""Operator commands run beside the server: doctor (checks an installation) and sign (signs
a /nc request like the Bee Flow service does)."""
