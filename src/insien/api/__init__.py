"""The HTTP face of the server: REST routes and the client WebSocket."""
