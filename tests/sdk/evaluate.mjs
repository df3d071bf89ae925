// Evaluates flags through the official OpenFeature Node server SDK and its OFREP provider, as a Keel user would.
//
// Reads {"base_url": ..., "calls": [{"token", "key", "type", "default"}]} on stdin and writes one
// {"value", "reason", "variant", "error_code"} per call, in order, as JSON on stdout. The test that runs it
// (tests/tests/flags_local.rs) decides what the answers must be.
import { OpenFeature } from '@openfeature/server-sdk';
import { OFREPProvider } from '@openfeature/ofrep-provider';

let input = '';
for await (const chunk of process.stdin) input += chunk;
const request = JSON.parse(input);
let token = '';
await OpenFeature.setProviderAndWait(
  new OFREPProvider({ baseUrl: request.base_url, headersFactory: () => [['Authorization', `Bearer ${token}`]] }),
);
const client = OpenFeature.getClient();
const methods = {
  boolean: (k, d, c) => client.getBooleanDetails(k, d, c),
  string: (k, d, c) => client.getStringDetails(k, d, c),
  integer: (k, d, c) => client.getNumberDetails(k, d, c),
  float: (k, d, c) => client.getNumberDetails(k, d, c),
  object: (k, d, c) => client.getObjectDetails(k, d, c),
};
const answers = [];
for (const call of request.calls) {
  token = call.token;
  // The targeting key is sent, as SDK users do; Keel takes the user from the token.
  const details = await methods[call.type](call.key, call.default, { targetingKey: 'sdk-user' });
  answers.push({
    value: details.value,
    reason: details.reason ?? null,
    variant: details.variant ?? null,
    error_code: details.errorCode ?? null,
  });
}
await OpenFeature.close();
process.stdout.write(JSON.stringify(answers));
