"""Tenants' secrets (issue 30): kept encrypted by the server, added to a sandbox's requests by
the egress proxy on the way out, never given to the sandbox. Below the core, like tenancy."""
