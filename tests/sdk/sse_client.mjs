// A client of Keel's event stream built on the `eventsource` package (the WHATWG EventSource for Node): it
// connects with a bearer token, reconnects on its own with Last-Event-ID whenever the server ends a stream, and
// prints one JSON line per thing it sees: {"open": n} per connection, {"id", "event"} per event, {"error", "code"}
// when a connection fails. It stops after `want` events or `seconds`, or at once when the server refuses it.
//
// Usage: node sse_client.mjs URL TOKEN WANT SECONDS
import { EventSource } from 'eventsource';

const [url, token, want, seconds] = process.argv.slice(2);
const print = (line) => process.stdout.write(JSON.stringify(line) + '\n');
let opens = 0;
let events = 0;
const source = new EventSource(url, {
  fetch: (input, init) => fetch(input, { ...init, headers: { ...init.headers, Authorization: `Bearer ${token}` } }),
});
const stop = (code) => {
  source.close();
  process.exit(code);
};
source.onopen = () => print({ open: ++opens });
source.onmessage = (message) => {
  const event = JSON.parse(message.data);
  print({ id: message.lastEventId, event });
  if (++events >= Number(want)) stop(0);
};
source.onerror = (error) => {
  print({ error: error.message ?? 'error', code: error.code ?? null });
  // A refusal (a status other than 200) closes the source for good: nothing more will come.
  if (source.readyState === EventSource.CLOSED) stop(0);
};
setTimeout(() => stop(0), Number(seconds) * 1000);
