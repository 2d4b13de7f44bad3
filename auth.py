"""Client authentication: bearer tokens with roles, and which permission each route needs.

Every route declares what it needs with `requires(...)` or `open_route`; the app refuses to
start if a route declares nothing, so no route is ever open by mistake.

With `--auth-file PATH` (JSON `{"tokens": [{"name", "role", "sha256"}]}`) a client sends
`Authorization: Bearer <token>`; the file holds only each token's SHA-256, so reading it does
not reveal a token. Roles: read < write < admin. A follower that forwards a request to the
leader replaces the token by the caller's identity, signed with a key derived from the cluster
secret. Failed attempts are counted per client address; past a limit the address gets 429.
`python auth.py add NAME ROLE --auth-file PATH` creates a token (printed once).
"""
from __future__ import annotations

import argparse
import hashlib
import hmac
import ipaddress
import json
import logging
import os
import re
import secrets
import stat
import sys
import tempfile
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

ROLES = ("read", "write", "admin")  # each role includes the ones before it
PERMISSION_ATTRIBUTE = "pickledb_permission"
OPEN = "open"
TOKEN_FIELDS = ("name", "role", "sha256")
NAME_PATTERN = re.compile(r"[A-Za-z0-9._@-]{1,64}")
DIGEST_PATTERN = re.compile(r"[0-9a-f]{64}")
# RFC 6750 b64token; anything longer than MAX_TOKEN_LENGTH is not a token of ours.
BEARER_PATTERN = re.compile(r"Bearer +([A-Za-z0-9\-._~+/]+=*)", re.IGNORECASE)
MAX_TOKEN_LENGTH = 512
CHALLENGE = 'Bearer realm="pickledb"'
IDENTITY_HEADER = "X-PickleDB-Identity"
IDENTITY_SIGNATURE_HEADER = "X-PickleDB-Identity-Signature"
IDENTITY_ENVIRON, SIGNATURE_ENVIRON = ("HTTP_" + h.upper().replace("-", "_") for h in (IDENTITY_HEADER,
                                                                                     IDENTITY_SIGNATURE_HEADER))
IDENTITY_WINDOW = 30.0  # seconds a signed identity stays valid (nodes' clocks must agree this well)
IDENTITY_KEY_LABEL = b"pickledb client identity v1"
# A node's own signed claim (a joining node asking to be added) is "node/<id>:admin": "/" is in no
# token name, so no token can pose as a node. Holding the cluster secret already lets one take
# part in Raft, which is more than admin.
NODE_IDENTITY_PREFIX = "node/"
FAILURE_LIMIT = 10  # failed attempts per address and window before 429
FAILURE_WINDOW = 60.0
TRACKED_ADDRESSES = 10_000  # the failure table's size; the oldest entries go first

log = logging.getLogger("pickledb_cluster.auth")


def requires(role: str):
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}")

    def mark(view):
        setattr(view, PERMISSION_ATTRIBUTE, role)
        return view
    return mark


def open_route(view):
    setattr(view, PERMISSION_ATTRIBUTE, OPEN)
    return view


def permission_of(view) -> str | None:
    return getattr(view, PERMISSION_ATTRIBUTE, None)


@dataclass(frozen=True)
class Identity:
    name: str
    role: str

    def allows(self, permission: str) -> bool:
        return ROLES.index(self.role) >= ROLES.index(permission)


class AuthError(Exception):
    """A refused request: 401, 403 or 429, with the headers its answer needs."""

    def __init__(self, status: int, code: str, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers or {}


class AuthFileError(Exception):
    """The auth file cannot be used; the message names the file and what is wrong."""


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


# ------------------------------------------------------------------ the auth file


def read_auth_file(path: str) -> list[dict]:
    """The file's token entries, each field checked. Raises AuthFileError."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # a FIFO must not hang the node
    except FileNotFoundError:
        raise AuthFileError(f"auth file {path} does not exist")
    except OSError as exc:
        raise AuthFileError(f"cannot read auth file {path}: {exc.strerror or exc}")
    try:
        mode = os.fstat(fd).st_mode  # of the file opened, not of whatever the path names later
        if not stat.S_ISREG(mode):
            raise AuthFileError(f"cannot read auth file {path}: not a regular file")
        if mode & stat.S_IWOTH:
            raise AuthFileError(f"auth file {path} is writable by every user: anyone could add a token "
                                f"(chmod o-w {path})")
        with open(fd, "rb", closefd=False) as f:
            raw = f.read()
    except OSError as exc:
        raise AuthFileError(f"cannot read auth file {path}: {exc.strerror or exc}")
    finally:
        os.close(fd)
    try:
        document = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise AuthFileError(f"auth file {path} is not valid JSON: {exc}")
    if not isinstance(document, dict) or set(document) != {"tokens"} or not isinstance(document["tokens"], list):
        raise AuthFileError(f'auth file {path} must be a JSON object {{"tokens": [...]}} and nothing else')
    names, digests = set(), set()
    for position, entry in enumerate(document["tokens"]):
        where = f"auth file {path}: token {position}"
        if not isinstance(entry, dict) or set(entry) != set(TOKEN_FIELDS):
            raise AuthFileError(f"{where} must be an object with exactly the fields {', '.join(TOKEN_FIELDS)}")
        name, role, digest = entry["name"], entry["role"], entry["sha256"]
        if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
            raise AuthFileError(f"{where}: 'name' must be 1-64 characters of A-Z a-z 0-9 . _ @ -")
        if role not in ROLES:
            raise AuthFileError(f"{where} ({name}): 'role' must be one of {', '.join(ROLES)}")
        if not isinstance(digest, str) or not DIGEST_PATTERN.fullmatch(digest):
            raise AuthFileError(f"{where} ({name}): 'sha256' must be 64 lowercase hex digits")
        if name in names:
            raise AuthFileError(f"{where}: the name {name!r} appears twice")
        if digest in digests:
            raise AuthFileError(f"{where} ({name}): the same token digest appears twice")
        names.add(name)
        digests.add(digest)
    return document["tokens"]


def create_token(path: str, name: str, role: str) -> str:
    """Adds a new token to the auth file (created with mode 0600 if missing) and returns it;
    the file keeps only its SHA-256. Raises AuthFileError (also for a name already in use)."""
    if not NAME_PATTERN.fullmatch(name):
        raise AuthFileError("the name must be 1-64 characters of A-Z a-z 0-9 . _ @ -")
    if role not in ROLES:
        raise AuthFileError(f"the role must be one of {', '.join(ROLES)}")
    exists = os.path.lexists(path)
    tokens = read_auth_file(path) if exists else []
    if any(entry["name"] == name for entry in tokens):
        raise AuthFileError(f"auth file {path} already has a token named {name!r}")
    token = secrets.token_urlsafe(32)
    tokens.append({"name": name, "role": role, "sha256": token_digest(token)})
    mode = stat.S_IMODE(os.stat(path).st_mode) if exists else 0o600
    directory = os.path.dirname(os.path.abspath(path))
    # Written whole and renamed: a node reloading the file never reads half of it.
    fd, temporary = tempfile.mkstemp(dir=directory, prefix=".auth-")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            os.fchmod(f.fileno(), mode)
            json.dump({"tokens": tokens}, f, indent=2)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise
    return token


# ------------------------------------------------------------------ failed attempts


def client_key(address: str) -> str:
    """Failures are counted per IPv4 address, and per /64 for IPv6 (one host holds a whole /64)."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if ip.version == 4:
        return str(ip)
    if ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ipaddress.ip_network(f"{ip}/64", strict=False))


class FailureLimiter:
    """Counts failed attempts per client in fixed windows; at most `capacity` clients are
    tracked (the oldest window is forgotten first), so an attacker cannot grow it without bound."""

    def __init__(self, limit: int = FAILURE_LIMIT, window: float = FAILURE_WINDOW,
                 capacity: int = TRACKED_ADDRESSES, clock=time.monotonic):
        self.limit, self.window, self.capacity, self.clock = limit, window, capacity, clock
        self.lock = threading.Lock()
        self.windows: OrderedDict[str, list] = OrderedDict()  # key -> [window start, failures]

    def retry_after(self, key: str) -> float | None:
        """Seconds until `key` may try again, or None if it may now."""
        now = self.clock()
        with self.lock:
            entry = self.windows.get(key)
            if entry is None or entry[1] < self.limit:
                return None
            left = entry[0] + self.window - now
            if left > 0:
                return left
            del self.windows[key]
            return None

    def failed(self, key: str) -> bool:
        """Counts one failure; True when it is the one that reaches the limit."""
        now = self.clock()
        with self.lock:
            entry = self.windows.get(key)
            if entry is None or now - entry[0] >= self.window:
                self.windows.pop(key, None)
                entry = self.windows[key] = [now, 0]
                while len(self.windows) > self.capacity:
                    self.windows.popitem(last=False)
            entry[1] += 1
            return entry[1] == self.limit


# ------------------------------------------------------------------ the authenticator


class Authenticator:
    """The tokens of one auth file, reloadable, and the checks of every request."""

    def __init__(self, path: str, cluster_secret: str | None = None, limiter: FailureLimiter | None = None):
        self.path = path
        self.limiter = limiter or FailureLimiter()
        self.identity_key = identity_key(cluster_secret) if cluster_secret else None
        self.by_digest, self.by_name = self._load()

    def _load(self) -> tuple[dict[str, Identity], dict[str, Identity]]:
        tokens = read_auth_file(self.path)
        by_digest = {t["sha256"]: Identity(t["name"], t["role"]) for t in tokens}
        return by_digest, {identity.name: identity for identity in by_digest.values()}

    def reload(self) -> bool:
        """Re-reads the file (on SIGHUP). A file that cannot be used keeps the tokens in effect."""
        try:
            tables = self._load()
        except AuthFileError as exc:
            log.error("auth file not reloaded, the previous tokens stay in effect: %s", exc)
            return False
        self.by_digest, self.by_name = tables  # one assignment: a request sees the old or the new
        log.info("auth file %s reloaded: %d tokens", self.path, len(tables[0]))
        return True

    @property
    def signs_identities(self) -> bool:
        return self.identity_key is not None

    def identify(self, environ: dict, target: str, read_body) -> Identity:
        """Who sent this request; raises AuthError (401 or 429). The request's `target` and
        `read_body()` (its raw body) are needed only to check a forwarded identity."""
        if IDENTITY_ENVIRON in environ:
            return self._forwarded_identity(environ, target, read_body)
        if "HTTP_AUTHORIZATION" not in environ:  # not an attempt: not counted
            raise unauthorized("this request needs a token: send 'Authorization: Bearer <token>'")
        key = client_key(environ.get("REMOTE_ADDR", ""))
        self._refuse_if_limited(key)
        try:
            return self._bearer_identity(environ)
        except AuthError:
            self._count_failure(key)
            raise

    def _refuse_if_limited(self, key: str) -> None:
        wait = self.limiter.retry_after(key)
        if wait is not None:
            raise AuthError(429, "too_many_attempts",
                            f"too many failed attempts from this address; retry in {int(wait) + 1} s",
                            {"Retry-After": str(int(wait) + 1)})

    def _count_failure(self, key: str) -> None:
        if self.limiter.failed(key):
            log.warning("client %s reached %d failed attempts; refused for %.0f s",
                        key, self.limiter.limit, self.limiter.window)

    def _bearer_identity(self, environ: dict) -> Identity:
        match = BEARER_PATTERN.fullmatch(environ["HTTP_AUTHORIZATION"])
        if match is None or len(match.group(1)) > MAX_TOKEN_LENGTH:
            # The header is never echoed: it may hold a token.
            raise unauthorized("malformed Authorization header: expected 'Bearer <token>' "
                               "(one token of letters, digits and -._~+/)", "invalid_request")
        # The lookup is by the digest of the presented token, so its timing depends only on that
        # digest (known to the sender anyway), never on how much of a real token was guessed.
        identity = self.by_digest.get(token_digest(match.group(1)))
        if identity is None:
            raise unauthorized("unknown or revoked token", "invalid_token")
        return identity

    # A forwarded request: "name:role" and "timestamp:hmac" over everything that makes the
    # request what it is, so a captured header cannot be reused for another request.
    def _mac(self, identity: str, method: str, target: str, host: str, body: bytes, timestamp: str) -> str:
        return identity_mac(self.identity_key, identity, method, target, host, body, timestamp)

    def identity_headers(self, identity: Identity, method: str, target: str, host: str, body: bytes) -> dict:
        return signed_identity_headers(self.identity_key, identity, method, target, host, body)

    def _forwarded_identity(self, environ: dict, target: str, read_body) -> Identity:
        """A follower's signed claim. Only a bad signature counts as a failed attempt: the
        follower's address must not be shut out because one of its callers was refused."""
        claim = environ[IDENTITY_ENVIRON]
        timestamp, _, mac = environ.get(SIGNATURE_ENVIRON, "").partition(":")
        signed = self.identity_key is not None and hmac.compare_digest(mac.encode("latin-1"), self._mac(
            claim, environ["REQUEST_METHOD"], target, environ.get("HTTP_HOST", ""), read_body(), timestamp).encode())
        if not signed:
            key = client_key(environ.get("REMOTE_ADDR", ""))
            self._refuse_if_limited(key)
            self._count_failure(key)
            raise unauthorized(f"{IDENTITY_HEADER} is accepted only when signed by a node of this cluster "
                               "(with the cluster secret)", "invalid_token")
        try:
            fresh = abs(time.time() - float(timestamp)) <= IDENTITY_WINDOW
        except ValueError:
            fresh = False
        if not fresh:
            raise unauthorized(f"the forwarded identity is more than {IDENTITY_WINDOW:.0f} s old "
                               "(are the nodes' clocks in step?)", "invalid_token")
        name, _, role = claim.rpartition(":")
        if name.startswith(NODE_IDENTITY_PREFIX):
            return Identity(name, "admin")
        known = self.by_name.get(name)
        if known is None or role not in ROLES:
            raise unauthorized("the forwarded identity is unknown here (revoked?)", "invalid_token")
        # The lesser of the two: a token revoked or demoted on either node loses its rights.
        return Identity(name, min(role, known.role, key=ROLES.index))


def identity_key(cluster_secret: str) -> bytes:
    """Derived, not the secret's SHA-256: that travels in every node-to-node request."""
    return hmac.new(cluster_secret.encode("utf-8", "surrogateescape"), IDENTITY_KEY_LABEL, hashlib.sha256).digest()


def identity_mac(key: bytes, identity: str, method: str, target: str, host: str, body: bytes, timestamp: str) -> str:
    message = "\n".join((identity, method, target, host, hashlib.sha256(body).hexdigest(), timestamp))
    return hmac.new(key, message.encode("utf-8", "surrogateescape"), hashlib.sha256).hexdigest()


def signed_identity_headers(key: bytes, identity: Identity, method: str, target: str, host: str, body: bytes) -> dict:
    claim, timestamp = f"{identity.name}:{identity.role}", f"{time.time():.3f}"
    return {IDENTITY_HEADER: claim,
            IDENTITY_SIGNATURE_HEADER: f"{timestamp}:{identity_mac(key, claim, method, target, host, body, timestamp)}"}


def node_identity_headers(cluster_secret: str, node_id: str, method: str, target: str, host: str,
                          body: bytes) -> dict:
    """Headers by which a node (holding the cluster secret) proves itself to another node's API."""
    return signed_identity_headers(identity_key(cluster_secret), Identity(NODE_IDENTITY_PREFIX + node_id, "admin"),
                                   method, target, host, body)


def unauthorized(message: str, error_code: str | None = None) -> AuthError:
    challenge = CHALLENGE + (f', error="{error_code}"' if error_code else "")
    return AuthError(401, "unauthorized", message, {"WWW-Authenticate": challenge})


def forbidden(identity: Identity, permission: str) -> AuthError:
    return AuthError(403, "forbidden", f"the token {identity.name!r} has the role {identity.role!r}; "
                                       f"this request needs {permission!r}")


# ------------------------------------------------------------------ node command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--auth-file", default=None,
                        help="JSON file of client tokens (their SHA-256) and roles; without it every "
                             "client may do everything. Reloaded on SIGHUP")
    parser.add_argument("--insecure", action="store_true",
                        help="allow a non-loopback address without --auth-file (every client that reaches "
                             "the port can read, change and delete everything)")


def authenticator_from_args(args, loopback: bool) -> Authenticator | None:
    """The node's authenticator, or None when clients are not authenticated. Raises
    AuthFileError with the one line to print when the node must not start."""
    if args.auth_file is None:
        if not loopback and not args.insecure:
            raise AuthFileError("refusing to listen on a non-loopback address without --auth-file "
                                "(anyone reaching the port could read and change everything); "
                                "pass --insecure to do it anyway")
        return None
    return Authenticator(args.auth_file, args.cluster_secret)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="auth.py", description="Manage the client tokens of a PickleDB Cluster node.")
    commands = p.add_subparsers(dest="command", required=True)
    add = commands.add_parser("add", help="create a token; it is printed once, the file keeps only its SHA-256")
    add.add_argument("name")
    add.add_argument("role", choices=ROLES)
    add.add_argument("--auth-file", required=True, help="the node's auth file (created with mode 0600 if missing)")
    args = p.parse_args(argv)
    try:
        token = create_token(args.auth_file, args.name, args.role)
    except AuthFileError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"error: cannot write auth file {args.auth_file}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    print(token)
    print(f"token {args.name!r} ({args.role}) added to {args.auth_file}; it is shown only now. "
          "Send SIGHUP to running nodes to load it.", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
