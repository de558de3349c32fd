"""The HMAC-verified /nc/* proxy into Nextcloud (docs/nc-proxy.md): handler (the route and the
order of its checks), signatures (inbound v1/v2 checks), destination (the Destination header),
path (pure request-target checks, also used by the `sign` command), spool (request bodies)."""
