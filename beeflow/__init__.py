"""beeflow: the Bee Flow connector for Nextcloud, an AppAPI External App (app id bee_flow)."""

__version__ = "0.1.0"
