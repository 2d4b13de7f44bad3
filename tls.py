"""TLS for one node: the server's context, the client context for node-to-node calls, the
command-line flags, and reloading the certificate on SIGHUP.

--tls-cert/--tls-key: the node serves HTTPS (TLS 1.2 or later) to clients and peers.
--tls-ca: the CA the cluster's node certificates chain to. Then node-to-node traffic is mutual
TLS: a node presents its certificate when it calls a peer, and checks the peer's against the CA
and against the host name of the peer's URL. A node's server asks every client for a
certificate without requiring one (API clients need none): a certificate that does not chain to
the CA fails the handshake, and a node-to-node request on a connection without one is answered
403 by the HTTP server (the refusal names what is missing; a handshake failure could not).
Without --tls-ca, node-to-node calls check peers against the system's trusted CAs (public
certificates) and present none.

Everything is checked at start, before the node opens its data directory: each file readable,
a PEM certificate and its matching unencrypted key, and, with a CA, a handshake of the node with
itself in memory, which proves what its peers will check: its certificate chains to the CA, is
valid today, names the host the node is known by, and is usable for both ends of a connection.
"""
from __future__ import annotations

import logging
import ssl
from dataclasses import dataclass
from urllib.parse import urlsplit

log = logging.getLogger("pickledb_cluster.tls")

MIN_VERSION = ssl.TLSVersion.TLSv1_2
WILDCARD_HOSTS = ("0.0.0.0", "::", "")


class TLSError(Exception):
    """A certificate, key or CA the node cannot use; the message names the flag and file."""


@dataclass(frozen=True)
class Contexts:
    server: ssl.SSLContext
    client: ssl.SSLContext


def add_arguments(parser) -> None:
    parser.add_argument("--tls-cert", metavar="PATH", default=None,
                        help="PEM certificate (chain) of this node: serve HTTPS (needs --tls-key)")
    parser.add_argument("--tls-key", metavar="PATH", default=None,
                        help="PEM private key of --tls-cert (unencrypted; readable by the node only)")
    parser.add_argument("--tls-ca", metavar="PATH", default=None,
                        help="PEM CA certificate(s) that every node's certificate chains to: "
                             "node-to-node calls use mutual TLS (needs --tls-cert)")


def validate(args) -> list[str]:
    """The flag combinations that cannot work (the files are checked by load())."""
    errors = []
    if bool(args.tls_cert) != bool(args.tls_key):
        errors.append("--tls-cert and --tls-key go together")
    if args.tls_ca and not args.tls_cert:
        errors.append("--tls-ca needs --tls-cert and --tls-key (mutual TLS: a node presents its certificate)")
    return errors


def enabled(args) -> bool:
    return bool(args.tls_cert)


def scheme(args) -> str:
    """The scheme of this node's URL and its peers' URLs."""
    return "https" if enabled(args) else "http"


def load(args) -> "NodeTLS | None":
    """The node's TLS from its flags (None without --tls-cert); raises TLSError. The host name
    checked against the certificate is that of --advertise-url if there is one, else --host."""
    if not enabled(args):
        return None
    advertised = getattr(args, "advertise_url", None)
    host = urlsplit(advertised).hostname if advertised else args.host
    return NodeTLS(args.tls_cert, args.tls_key, args.tls_ca, host=host)


class NodeTLS:
    """The node's current TLS contexts. reload() swaps in new ones; connections opened before
    keep theirs. The server reads `server_context` at each accept, node-to-node connections
    `client_context` at each connect; requests-based clients use `requests_verify` and
    `requests_cert`, which name files (read again on each new connection)."""

    def __init__(self, cert: str, key: str, ca: str | None, host: str | None = None):
        self.cert, self.key, self.ca = cert, key, ca
        self.host = None if host in WILDCARD_HOSTS else host
        self.verifies_peers = ca is not None  # node-to-node requests must bring a CA-signed certificate
        self.contexts = self._build()

    @property
    def server_context(self) -> ssl.SSLContext:
        return self.contexts.server

    @property
    def client_context(self) -> ssl.SSLContext:
        return self.contexts.client

    @property
    def requests_verify(self) -> str | bool:
        return self.ca or True

    @property
    def requests_cert(self) -> tuple[str, str] | None:
        return (self.cert, self.key) if self.ca else None

    def reload(self) -> None:
        """Read the files again; on any problem keep the current contexts and raise TLSError.
        One assignment swaps both contexts (no lock: a SIGHUP handler may interrupt a reload)."""
        self.contexts = self._build()

    def reload_logged(self) -> bool:
        """reload() for a SIGHUP handler: logs the outcome, never raises."""
        try:
            self.reload()
        except TLSError as exc:
            log.error("TLS reload failed, keeping the previous certificate: %s", exc)
            return False
        log.info("TLS certificate reloaded from %s", self.cert)
        return True

    # ------------------------------------------------------------------ building
    def _build(self) -> Contexts:
        for flag, path in (("--tls-cert", self.cert), ("--tls-key", self.key), ("--tls-ca", self.ca)):
            if path is not None:
                _check_readable(flag, path)
        server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        server.minimum_version = MIN_VERSION
        server.options |= ssl.OP_NO_RENEGOTIATION
        self._load_chain(server)
        # cafile alone: the cluster CA and nothing from the system store. check_hostname is on.
        try:
            client = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=self.ca)
        except ssl.SSLError as exc:
            raise TLSError(f"--tls-ca {self.ca} holds no usable PEM CA certificate ({_reason(exc)})")
        client.minimum_version = MIN_VERSION
        if self.ca:
            server.load_verify_locations(self.ca)
            server.verify_mode = ssl.CERT_OPTIONAL  # API clients need none; a wrong one fails
            self._load_chain(client)
            self._handshake_with_itself(server, client)
        return Contexts(server, client)

    def _load_chain(self, context: ssl.SSLContext) -> None:
        def no_password():
            raise TLSError(f"--tls-key {self.key} is encrypted; give the node an unencrypted key "
                           "(e.g. openssl pkey -in KEY -out node.key) readable only by its user")
        try:
            context.load_cert_chain(self.cert, self.key, password=no_password)
        except ssl.SSLError as exc:
            reason = _reason(exc)
            if "KEY_VALUES_MISMATCH" in str(exc) or "key values mismatch" in reason:
                raise TLSError(f"--tls-key {self.key} is not the key of --tls-cert {self.cert}")
            raise TLSError(f"cannot use --tls-cert {self.cert} with --tls-key {self.key}: expected a PEM "
                           f"certificate (chain) and its PEM private key ({reason})")
        except OSError as exc:  # gone between the check and the load
            raise TLSError(f"cannot read {exc.filename or self.cert}: {exc.strerror or exc}")

    def _handshake_with_itself(self, server: ssl.SSLContext, client: ssl.SSLContext) -> None:
        """A handshake between the node's own server and client contexts, in memory: it fails
        exactly when the node's peers would refuse this certificate (as a server or a client)."""
        host = self.host or "invalid.invalid"
        if self.host is None:  # listening on every address: no one name to check
            client = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=self.ca)
            client.check_hostname = False
            self._load_chain(client)
        to_server, to_client = ssl.MemoryBIO(), ssl.MemoryBIO()
        server_end = server.wrap_bio(to_server, to_client, server_side=True)
        client_end = client.wrap_bio(to_client, to_server, server_hostname=host)
        ends = {"client": client_end, "server": server_end}
        done = set()
        for _ in range(20):  # a handshake is a few flights
            for name, end in ends.items():
                if name in done:
                    continue
                try:
                    end.do_handshake()
                    done.add(name)
                except ssl.SSLWantReadError:
                    pass
                except ssl.SSLCertVerificationError as exc:
                    raise TLSError(self._refusal(name, exc))
                except ssl.SSLError as exc:
                    raise TLSError(f"--tls-cert {self.cert} fails a TLS handshake with --tls-ca {self.ca}: "
                                   f"{_reason(exc)}")
            if len(done) == 2:
                if not server_end.getpeercert():
                    raise TLSError(f"--tls-cert {self.cert} was not accepted as a client certificate")
                return
        raise TLSError(f"a TLS handshake of --tls-cert {self.cert} with itself did not finish")

    def _refusal(self, end: str, exc: ssl.SSLCertVerificationError) -> str:
        reason = exc.verify_message or _reason(exc)
        if exc.verify_code == 62:  # X509_V_ERR_HOSTNAME_MISMATCH / IP_ADDRESS_MISMATCH (64)
            return f"--tls-cert {self.cert} does not name this node's host {self.host} (subjectAltName): {reason}"
        if exc.verify_code == 64:
            return f"--tls-cert {self.cert} does not name this node's address {self.host} (subjectAltName IP): {reason}"
        role = "server" if end == "client" else "client"
        return (f"--tls-cert {self.cert} would be refused by the other nodes as a {role} certificate "
                f"(checked against --tls-ca {self.ca}): {reason}")


def _check_readable(flag: str, path: str) -> None:
    try:
        with open(path, "rb") as f:
            f.read(1)
    except OSError as exc:
        raise TLSError(f"cannot read {flag} {path}: {exc.strerror or exc}")


def _reason(exc: ssl.SSLError) -> str:
    return exc.reason or exc.strerror or str(exc)

