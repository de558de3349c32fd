"""Talking to Nextcloud: the outbound client (OCS/DAV, AppAPI headers, warm-up retry, verdicts,
the failure budget), the user directory, and one module per AppAPI registration surface."""
