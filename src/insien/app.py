"""The QuartTrio application factory: wires the routes to the services they use."""

from __future__ import annotations

from quart_trio import QuartTrio

from .api.console import console_blueprint
from .api.context import Services
from .api.cors import CorsMiddleware
from .api.e2b import control_blueprint
from .api.errors import install_error_handlers
from .api.files import files_blueprint
from .api.limits import BodyDeadline
from .api.openapi import docs_blueprint
from .api.operations import MetricsListener, operations_blueprint
from .api.ports import ports_blueprint
from .api.request_ids import RequestIds
from .api.rest import rest_blueprint
from .api.router import Router
from .api.secrets import secrets_blueprint
from .api.volumes import volumes_blueprint
from .api.ws import ws_blueprint

MAX_REST_BODY = 1024 * 1024


def create_app(services: Services) -> QuartTrio:
    app = QuartTrio("insien")
    app.config["MAX_CONTENT_LENGTH"] = MAX_REST_BODY
    app.config["JSON_SORT_KEYS"] = False
    app.json.sort_keys = False  # type: ignore[attr-defined]
    install_error_handlers(app)
    app.register_blueprint(rest_blueprint(services))
    app.register_blueprint(secrets_blueprint(services))
    app.register_blueprint(ws_blueprint(services))
    app.register_blueprint(files_blueprint(services))
    app.register_blueprint(control_blueprint(services))
    app.register_blueprint(docs_blueprint())
    app.register_blueprint(ports_blueprint(services))
    app.register_blueprint(operations_blueprint(services))
    app.register_blueprint(console_blueprint())
    app.register_blueprint(volumes_blueprint(services))
    return app


def create_asgi(services: Services) -> RequestIds:
    """The app as served: every request routed once (api/router.py: a sandbox's envd, a
    program on one of its ports, a streamed upload, or Quart's routes); no request body may
    stall longer than the body timeout, the allowed web origins get CORS headers, and every
    request an id (`X-Request-Id`)."""
    routed = Router(create_app(services), services)
    served: CorsMiddleware | MetricsListener = CorsMiddleware(
        BodyDeadline(routed, services.settings.body_timeout), services.settings.cors_origins
    )
    listen = services.settings.metrics_listen
    if listen is not None:
        served = MetricsListener(served, int(listen.rsplit(":", 1)[1]))
    return RequestIds(served)
