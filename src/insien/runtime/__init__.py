"""Everything that talks to the Docker Engine: container lifecycle and the attach stream."""
