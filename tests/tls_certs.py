"""Certificates for the TLS tests, made with the openssl CLI by the commands the README's
"Running on several machines" section shows (a CA, then one key and certificate per node with
its addresses in subjectAltName), plus the bad ones the tests need."""
from __future__ import annotations

import os
import subprocess


def openssl(*args: str, cwd: str) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=30)


def make_ca(directory: str, name: str = "ca") -> str:
    """A CA key and self-signed certificate: NAME.key, NAME.crt. Returns the certificate's path."""
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", f"{name}.key", "-out", f"{name}.crt", "-days", "3650",
            "-subj", f"/CN=PickleDB {name}", cwd=directory)
    return os.path.join(directory, f"{name}.crt")


def make_node_cert(directory: str, name: str, sans: str, ca: str = "ca", days: int = 825,
                   expired: bool = False) -> tuple[str, str]:
    """NAME.key and NAME.crt signed by CA, for the subjectAltName list `sans`
    (e.g. "IP:192.0.2.1,DNS:node1.example"), usable as server and client certificate.
    expired: valid from 2020-01-01 to 2020-01-02. Returns (cert, key) paths."""
    openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}", cwd=directory)
    with open(os.path.join(directory, f"{name}.ext"), "w") as f:
        f.write(f"subjectAltName = {sans}\n"
                "extendedKeyUsage = serverAuth, clientAuth\n")
    if expired:  # openssl x509 can set a start date only from OpenSSL 3.4 on
        _backdate(directory, name, ca)
    else:
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.crt", "-CAkey", f"{ca}.key",
                "-CAcreateserial", "-out", f"{name}.crt", "-days", str(days), "-extfile", f"{name}.ext",
                cwd=directory)
    os.chmod(os.path.join(directory, f"{name}.key"), 0o600)
    return os.path.join(directory, f"{name}.crt"), os.path.join(directory, f"{name}.key")


def _backdate(directory: str, name: str, ca: str) -> None:
    """Re-sign NAME.csr with a validity that ended in 2020, through `openssl ca`."""
    db = os.path.join(directory, f"{name}-ca-db")
    os.makedirs(db, exist_ok=True)
    open(os.path.join(db, "index.txt"), "w").close()
    with open(os.path.join(db, "serial"), "w") as f:
        f.write("1000\n")
    with open(os.path.join(db, "ca.cnf"), "w") as f:
        f.write(f"""[ca]
default_ca = c
[c]
database = {db}/index.txt
serial = {db}/serial
new_certs_dir = {db}
default_md = sha256
policy = p
copy_extensions = none
[p]
commonName = supplied
""")
    openssl("ca", "-batch", "-config", os.path.join(db, "ca.cnf"), "-in", f"{name}.csr",
            "-cert", f"{ca}.crt", "-keyfile", f"{ca}.key", "-out", f"{name}.crt",
            "-startdate", "20200101000000Z", "-enddate", "20200102000000Z",
            "-extfile", f"{name}.ext", "-notext", cwd=directory)


def make_self_signed(directory: str, name: str, sans: str) -> tuple[str, str]:
    """A certificate that signs itself (no CA), for `sans`."""
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", f"{name}.key", "-out", f"{name}.crt", "-days", "30", "-subj", f"/CN={name}",
            "-addext", f"subjectAltName = {sans}", cwd=directory)
    return os.path.join(directory, f"{name}.crt"), os.path.join(directory, f"{name}.key")
