"""An OIDC issuer as an identity provider runs one, built on joserfc (Authlib's JOSE library), not on Keel's code:
an RSA key (RS256, as API Gateway's JWT authorizer requires), its discovery document and key set over HTTP, and
tokens it signed.

Usage: jwt_issuer.py AUDIENCE. Listens on 127.0.0.1 on a free port and prints one JSON line:
{"issuer", "tokens": {"valid", "access", "expired", "other_audience", "unknown_key"}}; then serves until killed.
"""

import json
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from joserfc import jwt
from joserfc.jwk import KeySet, RSAKey

audience = sys.argv[1]
key = RSAKey.generate_key(2048, parameters={"kid": "rsa-1", "use": "sig", "alg": "RS256"})
stranger = RSAKey.generate_key(2048, parameters={"kid": "rsa-2"})
server = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
issuer = f"http://127.0.0.1:{server.server_address[1]}"


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_GET(self):
        if self.path == "/.well-known/openid-configuration":
            body = {"issuer": issuer, "jwks_uri": f"{issuer}/jwks"}
        elif self.path == "/jwks":
            body = KeySet([key]).as_dict(private=False)
        else:
            self.send_response(404)
            self.end_headers()
            return
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


server.RequestHandlerClass = Handler
now = int(time.time())
claims = {"iss": issuer, "aud": audience, "sub": "user-1", "org_id": "org-1", "roles": ["admin"], "iat": now,
          "exp": now + 600}


def sign(changes, signer=key, kid="rsa-1"):
    return jwt.encode({"alg": "RS256", "kid": kid}, {**claims, **changes}, signer)


access = {k: v for k, v in claims.items() if k != "aud"}
access["client_id"] = audience
tokens = {
    "valid": sign({}),
    "access": jwt.encode({"alg": "RS256", "kid": "rsa-1"}, access, key),
    "expired": sign({"exp": now - 5}),
    "other_audience": sign({"aud": "someone-else"}),
    "unknown_key": sign({}, signer=stranger, kid="rsa-2"),
}
print(json.dumps({"issuer": issuer, "tokens": tokens}), flush=True)
server.serve_forever()
