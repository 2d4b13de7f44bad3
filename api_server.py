"""Flask app factory: the edge checks every request passes, then the blueprints (one per
concern: tasks, legacy key-value, cluster views, events, operations, docs); the node-to-node
RPC layer (transport.py) wraps the app.

At the edge, before anything is proposed: only the node's own host names are served (DNS
rebinding), writes must be JSON and must not come from a foreign origin (CSRF). Every route
declares the permission it needs (auth.py); the app refuses to start if one does not. With an
authenticator, the caller's token (or a forwarding node's signed identity) must grant it.
"""
from __future__ import annotations

import logging
import os
import re
from urllib.parse import urlsplit

from flask import Flask, g, request, send_file
from werkzeug.exceptions import HTTPException, NotFound
from werkzeug.routing import RequestRedirect

import api_cluster
import api_docs
import api_events
import api_kv
import api_ops
import api_tasks
from api_common import (ALLOWED_REQUEST_HEADERS, MAX_BODY, RELAYED_HEADERS, AnyPathConverter, BadRequest,
                        NodeContext, error, host_name, request_target)
from auth import OPEN, AuthError, Authenticator, forbidden, open_route, permission_of
from cluster_manager import ClientError, Node
from metrics import ROUTE_KEY
from transport import raft_rpc

log = logging.getLogger("pickledb_cluster.api")

STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "[::1]")
DASHBOARD = os.path.join(os.path.dirname(os.path.abspath(__file__)), "examples", "node_dashboard.html")
BLUEPRINTS = (api_tasks.bp, api_kv.bp, api_cluster.bp, api_events.bp, api_ops.bp, api_docs.bp)


DEFAULT_PORTS = {"http": 80, "https": 443}
PREFLIGHT_MAX_AGE = "600"


def authority(name: str, port: int, scheme: str = "http") -> str:
    """host[:port] as a Host header or an origin carries it (no port when it is the default)."""
    return name if port == DEFAULT_PORTS.get(scheme) else f"{name}:{port}"


def served_names(own_url: str, member_urls, extra_hosts=()) -> tuple[frozenset[str], frozenset[str]]:
    """The Host header values this node answers to, and the origins whose pages may use it.

    Hosts: the loopback names, this node's host and every member's host, each with this node's
    port, and `extra_hosts` ("name" with this node's port, or "name:port"). Origins: the pages
    of any member of the cluster: this node under any of its host names, and each member's URL
    (with every loopback name when its host is one)."""
    own = urlsplit(own_url)
    port = own.port or DEFAULT_PORTS[own.scheme]
    names = {*LOOPBACK_NAMES, host_name(own_url), *map(host_name, member_urls)}
    hosts = {authority(name, port, own.scheme) for name in names}
    for extra in extra_hosts:
        extra = extra.lower()
        hosts.add(extra if re.fullmatch(r"(\[[^\]]*\]|[^:\[\]]+):\d+", extra) else authority(extra, port, own.scheme))
    origins = {f"{own.scheme}://{host}" for host in hosts}
    for url in member_urls:
        parts = urlsplit(url)
        name, member_port = host_name(url), parts.port or DEFAULT_PORTS[parts.scheme]
        for variant in LOOPBACK_NAMES if name in LOOPBACK_NAMES else (name,):
            origins.add(f"{parts.scheme}://{authority(variant, member_port, parts.scheme)}")
    return frozenset(hosts), frozenset(origins)


class ServedNames:
    """served_names() for the cluster's current configuration: a node that joins becomes an
    origin whose dashboard may use this node, a removed one stops being one."""

    def __init__(self, node: Node, extra_hosts=()):
        self.node, self.extra_hosts = node, tuple(extra_hosts)
        self.members: list | None = None
        self.hosts = self.origins = frozenset()

    def current(self) -> tuple[frozenset[str], frozenset[str]]:
        members = self.node.core.members  # replaced, never changed in place, by the raft thread
        if members is not self.members:
            urls = [m["url"] for m in members] or self.node.config.peers
            self.hosts, self.origins = served_names(self.node.url, urls, self.extra_hosts)
            self.members = members
        return self.hosts, self.origins


def create_app(node: Node, extra_hosts=(), authenticator: Authenticator | None = None) -> Flask:
    app = Flask(__name__, static_folder=None)  # the dashboard is one file; nothing else is served
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY
    app.json.sort_keys = False
    app.url_map.merge_slashes = False  # no redirects (Flask sends them as HTML); /jobs/a//b reads key "a//b"
    app.url_map.converters["anypath"] = AnyPathConverter
    names = ServedNames(node, extra_hosts)
    allowed_request_headers = {h.lower() for h in ALLOWED_REQUEST_HEADERS}
    app.extensions["pickledb"] = NodeContext.build(node, authenticator)

    # -------------------------------------------------------------- errors
    @app.errorhandler(BadRequest)
    def bad_request(exc: BadRequest):
        return error(exc.status, exc.code, exc.message)

    @app.errorhandler(ClientError)
    def client_error(exc: ClientError):
        return error(exc.status, exc.code, exc.message, exc.retry_after)

    @app.errorhandler(AuthError)
    def auth_error(exc: AuthError):
        response = error(exc.status, exc.code, exc.message)
        response.headers.update(exc.headers)
        return response

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException):
        code = (exc.name or "error").lower().replace(" ", "_")
        response = error(exc.code or 500, code, exc.description or exc.name)
        for name, value in exc.get_headers():  # e.g. Allow on a 405
            if name.lower() != "content-type":
                response.headers[name] = value
        return response

    @app.errorhandler(Exception)
    def unexpected(exc: Exception):
        app.logger.exception("unhandled error")
        return error(500, "internal_error", "the node hit an unexpected error")

    # -------------------------------------------------------------- edge checks
    @app.after_request
    def cross_origin(response):
        """CORS for the pages of the cluster's own nodes (their dashboards fail over to this one)."""
        origin = request.headers.get("Origin")
        response.vary.add("Origin")
        if origin is None or origin.lower() not in names.current()[1]:
            return response
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers["Access-Control-Expose-Headers"] = ", ".join(RELAYED_HEADERS)
        if request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers:
            asked = [h.strip() for h in request.headers.get("Access-Control-Request-Headers", "").split(",")]
            response.headers["Access-Control-Allow-Methods"] = ", ".join(sorted(response.allow)) or "GET"
            response.headers["Access-Control-Allow-Headers"] = ", ".join(
                h for h in asked if h.lower() in allowed_request_headers)
            response.headers["Access-Control-Max-Age"] = PREFLIGHT_MAX_AGE
        return response

    @app.before_request
    def edge_checks():
        req = request._get_current_object()  # each use of the proxy costs about 1 us
        environ = req.environ
        environ[ROUTE_KEY] = req.url_rule  # the metrics' route label (None: no route matched)
        host = environ.get("HTTP_HOST", "")
        hosts, origins = names.current()
        if host.lower() not in hosts:
            # DNS rebinding: a foreign name resolved to this address must not reach the API.
            raise BadRequest(f"this node does not answer to the host name {host!r}", 421, "misdirected_request")
        if isinstance(req.routing_exception, RequestRedirect):
            # Only an empty path gets here (slashes are not merged); Flask would send the
            # redirect as an HTML page, past the error handlers.
            raise NotFound()
        method = environ["REQUEST_METHOD"]
        if method not in STATE_CHANGING:
            return
        origin = environ.get("HTTP_ORIGIN")
        foreign = (origin.lower() not in origins if origin is not None
                   else environ.get("HTTP_SEC_FETCH_SITE") == "cross-site")
        if foreign:
            raise BadRequest("writes from pages of other origins are refused", 403, "forbidden_origin")
        # A browser sends a cross-origin text/plain or form body without asking (no preflight).
        if (method != "DELETE" and req.routing_exception is None
                and environ.get("CONTENT_TYPE", "").partition(";")[0].strip().lower() != "application/json"):
            raise BadRequest("the body must be sent as Content-Type: application/json", 415,
                             "unsupported_media_type")

    if authenticator is not None:
        @app.before_request
        def check_permission():
            req = request._get_current_object()
            # A CORS preflight carries no credentials; an unknown route or method is answered as such.
            if req.method == "OPTIONS" or req.url_rule is None:
                return
            permission = permission_of(app.view_functions[req.url_rule.endpoint])
            if permission == OPEN:
                return
            identity = authenticator.identify(req.environ, request_target(req.environ),
                                              lambda: req.get_data(cache=True))
            if not identity.allows(permission):
                raise forbidden(identity, permission)
            g.identity = identity  # a forwarded request carries it to the leader

    @app.get("/")
    @open_route
    def dashboard():
        return send_file(DASHBOARD, mimetype="text/html", max_age=0)

    for blueprint in BLUEPRINTS:
        app.register_blueprint(blueprint)
    undeclared = sorted(rule.rule for rule in app.url_map.iter_rules()
                        if permission_of(app.view_functions[rule.endpoint]) is None)
    if undeclared:
        raise RuntimeError(f"routes without a declared permission: {', '.join(undeclared)}")
    app.wsgi_app = raft_rpc(node, app)
    return app
