"""Where sandboxes run: the `Runtime` protocol, its required core and the optional capabilities
the core asks for by type (`base`), and its implementations, the Docker Engine (`docker`) and
Kubernetes pods (`kubernetes`)."""
