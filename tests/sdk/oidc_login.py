"""An OpenID Connect issuer with a sign-in page, for the console's browser test: the authorization code flow with
PKCE (RFC 7636, S256 only) for one public client, built on joserfc (Authlib's JOSE library), not on Keel's code.

Usage: oidc_login.py CLIENT_ID REDIRECT_URI SUB ORG ROLES. Listens on 127.0.0.1 on a free port, prints one JSON
line {"issuer"}, and serves until killed:
- GET /.well-known/openid-configuration and GET /jwks (an RS256 key), with CORS for the browser;
- GET /authorize: checks response_type=code, the client, the exact redirect URI and an S256 challenge, then shows a
  sign-in page for SUB (a "Sign in" and a "Deny" button), which answers the redirect URI with a one-use code
  (valid 60 s) and the state, or error=access_denied;
- POST /token (form): the code once, for the same client and redirect URI, with the verifier whose SHA-256 is the
  challenge; answers an ID token and an access token (RS256; sub, org_id, roles; aud the client), else 400 with
  the OAuth error.
"""

import base64
import hashlib
import html
import json
import secrets
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlencode, urlparse

from joserfc import jwt
from joserfc.jwk import KeySet, RSAKey

client_id, redirect_uri, subject, org, roles = sys.argv[1:6]
key = RSAKey.generate_key(2048, parameters={"kid": "login-1", "use": "sig", "alg": "RS256"})
server = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
issuer = f"http://127.0.0.1:{server.server_address[1]}"
codes = {}


def challenge_of(verifier):
    return base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def send(self, status, body, content_type="application/json", headers=()):
        data = body if isinstance(body, bytes) else (json.dumps(body) if content_type == "application/json" else body).encode()
        self.send_response(status)
        self.send_header("content-type", content_type)
        self.send_header("content-length", str(len(data)))
        self.send_header("access-control-allow-origin", "*")
        for name, value in headers:
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        url = urlparse(self.path)
        if url.path == "/.well-known/openid-configuration":
            return self.send(200, {
                "issuer": issuer, "jwks_uri": f"{issuer}/jwks", "authorization_endpoint": f"{issuer}/authorize",
                "token_endpoint": f"{issuer}/token", "response_types_supported": ["code"],
                "code_challenge_methods_supported": ["S256"], "id_token_signing_alg_values_supported": ["RS256"],
            })
        if url.path == "/jwks":
            return self.send(200, KeySet([key]).as_dict(private=False))
        if url.path == "/authorize":
            q = {k: v[0] for k, v in parse_qs(url.query).items()}
            problem = None
            if q.get("response_type") != "code":
                problem = "unsupported_response_type"
            elif q.get("client_id") != client_id or q.get("redirect_uri") != redirect_uri:
                problem = "unauthorized_client"
            elif q.get("code_challenge_method") != "S256" or not q.get("code_challenge"):
                problem = "invalid_request: PKCE with S256 is required"
            if problem:
                return self.send(400, f"<p>{html.escape(problem)}</p>", "text/html")
            fields = "".join(f'<input type="hidden" name="{html.escape(k)}" value="{html.escape(v)}">' for k, v in q.items())
            page = (f'<!doctype html><title>Sign in</title><link rel="icon" href="data:,"><h1>Sign in to {html.escape(client_id)}</h1>'
                    f'<form method="post" action="/authorize">{fields}<p>as <b>{html.escape(subject)}</b></p>'
                    '<button name="decision" value="allow" id="allow">Sign in</button> '
                    '<button name="decision" value="deny" id="deny">Deny</button></form>')
            return self.send(200, page, "text/html")
        self.send(404, {"error": "not_found"})

    def form(self):
        length = int(self.headers.get("content-length") or 0)
        return {k: v[0] for k, v in parse_qs(self.rfile.read(length).decode()).items()}

    def do_POST(self):
        url = urlparse(self.path)
        if url.path == "/authorize":
            q = self.form()
            if q.get("client_id") != client_id or q.get("redirect_uri") != redirect_uri:
                return self.send(400, "<p>unauthorized_client</p>", "text/html")
            if q.get("decision") != "allow":
                answer = {"error": "access_denied", "state": q.get("state", "")}
            else:
                code = secrets.token_urlsafe(24)
                codes[code] = {"challenge": q["code_challenge"], "at": time.time()}
                answer = {"code": code, "state": q.get("state", "")}
            return self.send(302, b"", "text/plain", [("location", f"{redirect_uri}?{urlencode(answer)}")])
        if url.path == "/token":
            q = self.form()
            grant = codes.pop(q.get("code", ""), None)
            if q.get("grant_type") != "authorization_code":
                return self.send(400, {"error": "unsupported_grant_type"})
            if grant is None or time.time() - grant["at"] > 60:
                return self.send(400, {"error": "invalid_grant"})
            if q.get("client_id") != client_id or q.get("redirect_uri") != redirect_uri:
                return self.send(400, {"error": "invalid_grant"})
            if challenge_of(q.get("code_verifier", "")) != grant["challenge"]:
                return self.send(400, {"error": "invalid_grant", "error_description": "the verifier does not match"})
            now = int(time.time())
            claims = {"iss": issuer, "aud": client_id, "sub": subject, "org_id": org, "roles": roles.split(","),
                      "iat": now, "exp": now + 600}
            token = jwt.encode({"alg": "RS256", "kid": "login-1"}, claims, key)
            return self.send(200, {"access_token": token, "id_token": token, "token_type": "Bearer", "expires_in": 600})
        self.send(404, {"error": "not_found"})


server.RequestHandlerClass = Handler
print(json.dumps({"issuer": issuer}), flush=True)
server.serve_forever()
