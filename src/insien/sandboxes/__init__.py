"""The core: the sandbox registry and lifecycle (`manager`), one sandbox's record (`sandbox`),
the warm pool (`pool`), restart recovery (`recovery`, `records`, `provenance`) and snapshots
(`snapshots`). It knows no HTTP and no docker-py: it talks to a `runtime.base.Runtime`."""
