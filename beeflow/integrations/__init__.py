"""What the Bee Flow service gets from Nextcloud: user and group changes (the reconciliation, the
webhook forwarder, the signed deliveries)."""
