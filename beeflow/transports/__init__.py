"""Transports bind a prepared AppRunner: TCP (legacy, behind Nextcloud's PHP proxy) or HaRP."""
