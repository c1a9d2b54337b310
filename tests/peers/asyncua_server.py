"""An independent OPC UA server for Causeway's tests: Python's asyncua, written by nobody here.

It offers only Basic256Sha256 SignAndEncrypt and user-name logins, generates its certificate
into --pki, serves a few variables under Objects/Press, and prints one JSON line when it
listens: {"endpoint": ..., "certificate": ..., "nodes": {name: node id}}. It exits when its
standard input closes, so a test that dies takes it along.
"""

import argparse
import asyncio
import json
import sys
from pathlib import Path

from asyncua import Server, ua
from asyncua.crypto.cert_gen import setup_self_signed_certificate
from asyncua.server.user_managers import UserManager
from asyncua.crypto.permission_rules import User, UserRole
from cryptography.x509.oid import ExtendedKeyUsageOID

APP_URI = "urn:causeway:tests:asyncua"


class Users(UserManager):
    def __init__(self, user: str, password: str) -> None:
        self.user = user
        self.password = password

    def get_user(self, iserver, username=None, password=None, certificate=None):
        if username == self.user and password == self.password:
            return User(role=UserRole.User)
        return None


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pki", required=True)
    parser.add_argument("--user", required=True)
    parser.add_argument("--password", required=True)
    args = parser.parse_args()

    pki = Path(args.pki)
    pki.mkdir(parents=True, exist_ok=True)
    key, cert = pki / "server-key.pem", pki / "server-cert.der"
    await setup_self_signed_certificate(
        key, cert, APP_URI, "127.0.0.1",
        [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH],
        {"countryName": "DE", "organizationName": "Causeway tests", "commonName": "asyncua-peer"},
    )

    server = Server(user_manager=Users(args.user, args.password))
    await server.init()
    await server.set_application_uri(APP_URI)
    server.set_server_name("asyncua peer")
    server.set_endpoint("opc.tcp://127.0.0.1:0/causeway/")
    server.set_security_policy([ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt])
    server.set_identity_tokens([ua.UserNameIdentityToken])
    await server.load_certificate(str(cert))
    await server.load_private_key(str(key))

    ns = await server.register_namespace("urn:causeway:tests")
    press = await server.nodes.objects.add_object(ua.NodeId("Press", ns), "Press")
    counter = await press.add_variable(ua.NodeId("Press.Parts", ns), "Parts", ua.Variant(0, ua.VariantType.UInt32))
    force = await press.add_variable(ua.NodeId("Press.Force", ns), "Force", ua.Variant(47.5, ua.VariantType.Double))
    order = await press.add_variable(ua.NodeId("Press.Order", ns), "Order", ua.Variant("PO-4711", ua.VariantType.String))
    flags = await press.add_variable(
        ua.NodeId("Press.Flags", ns), "Flags", ua.Variant([True, False, True], ua.VariantType.Boolean)
    )
    await server.start()
    port = server.bserver._server.sockets[0].getsockname()[1]
    nodes = {
        "Parts": counter.nodeid.to_string(),
        "Force": force.nodeid.to_string(),
        "Order": order.nodeid.to_string(),
        "Flags": flags.nodeid.to_string(),
    }
    print(json.dumps({
        "endpoint": f"opc.tcp://127.0.0.1:{port}/causeway/",
        "certificate": str(cert.resolve()),
        "nodes": nodes,
    }), flush=True)

    loop = asyncio.get_running_loop()
    stdin_closed = loop.run_in_executor(None, sys.stdin.read)
    parts = 0
    try:
        while not stdin_closed.done():
            await asyncio.sleep(0.2)
            parts += 1
            await counter.write_value(ua.Variant(parts, ua.VariantType.UInt32))
    finally:
        await server.stop()


if __name__ == "__main__":
    asyncio.run(main())
