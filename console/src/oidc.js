// Sign-in through the deployment's OpenID Connect issuer: the authorization code flow with PKCE (RFC 7636, S256),
// as a public client in the browser. The verifier and state live in this tab's session storage between the
// redirect to the issuer and the return; the code is exchanged at the issuer's token endpoint, and the token it
// answers becomes the console's bearer token.

const PENDING_KEY = 'keel.console.oidc';

function randomText(bytes = 32) {
  const data = crypto.getRandomValues(new Uint8Array(bytes));
  return base64url(data);
}

function base64url(bytes) {
  let text = '';
  for (const byte of bytes) text += String.fromCharCode(byte);
  return btoa(text).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
}

async function challengeOf(verifier) {
  const digest = await crypto.subtle.digest('SHA-256', new TextEncoder().encode(verifier));
  return base64url(new Uint8Array(digest));
}

async function discover(issuer) {
  const response = await fetch(`${issuer.replace(/\/$/, '')}/.well-known/openid-configuration`);
  if (!response.ok) throw new Error(`the issuer's discovery document answered ${response.status}`);
  const document = await response.json();
  if (!document.authorization_endpoint || !document.token_endpoint) {
    throw new Error('the issuer does not offer the authorization code flow');
  }
  return document;
}

function redirectUri() {
  return `${location.origin}${location.pathname}`;
}

/** Sends the browser to the issuer's sign-in page. */
export async function signIn(oidc) {
  const endpoints = await discover(oidc.issuer);
  const verifier = randomText();
  const state = randomText(16);
  sessionStorage.setItem(PENDING_KEY, JSON.stringify({ verifier, state, token_endpoint: endpoints.token_endpoint }));
  const url = new URL(endpoints.authorization_endpoint);
  for (const [name, value] of Object.entries({
    response_type: 'code',
    client_id: oidc.client_id,
    redirect_uri: redirectUri(),
    scope: oidc.scope || 'openid',
    state,
    code_challenge: await challengeOf(verifier),
    code_challenge_method: 'S256',
  })) {
    url.searchParams.set(name, value);
  }
  location.assign(url.toString());
}

/**
 * On the return from the issuer (`?code=&state=`): checks the state, exchanges the code with the verifier, and
 * answers the token; null when this is not a return. Throws when the return is not the one this tab started.
 */
export async function completeSignIn(oidc) {
  const params = new URLSearchParams(location.search);
  const code = params.get('code');
  const error = params.get('error');
  if (!code && !error) return null;
  const pending = JSON.parse(sessionStorage.getItem(PENDING_KEY) || 'null');
  sessionStorage.removeItem(PENDING_KEY);
  history.replaceState(null, '', redirectUri());
  // The state first: a return this tab did not start says nothing else, whatever its error text.
  if (!pending || params.get('state') !== pending.state) {
    throw new Error('this sign-in was not started here (its state does not match): sign in again');
  }
  if (error) throw new Error(`the issuer refused the sign-in: ${error}`);
  const response = await fetch(pending.token_endpoint, {
    method: 'POST',
    headers: { 'content-type': 'application/x-www-form-urlencoded' },
    body: new URLSearchParams({
      grant_type: 'authorization_code',
      code,
      redirect_uri: redirectUri(),
      client_id: oidc.client_id,
      code_verifier: pending.verifier,
    }),
  });
  const answer = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(`the issuer refused the code: ${answer.error || response.status}`);
  const token = [answer.access_token, answer.id_token].find((t) => typeof t === 'string' && t.split('.').length === 3);
  if (!token) throw new Error('the issuer answered no JWT');
  return token;
}
