"""frpc in HaRP mode (docs/transports.md, "The frpc supervisor"): config (the rendered frpc.toml
and HaRP's port rules), binary (which frpc: found, its version, the pin), diagnose (reading what
frpc prints: the tunnel's state and what to do about its errors), supervisor (the child
process: start, restart with backoff, stop)."""
