"""The inbound side of the web app: middleware (one per module, each with an installer), AppAPI
authentication, JSON answers, and the UI's static files."""
