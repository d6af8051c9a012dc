// Driven by tests/e2e/test_js_sdk.py against a server that allows one sandbox per tenant: the
// second create is a RateLimitError with the server's code, message and Retry-After.
import { RateLimitError, Sandbox } from '../../clients/js/dist/index.js';

const first = await Sandbox.create();
try {
  await Sandbox.create();
  console.log(JSON.stringify({ error: null }));
} catch (error) {
  console.log(JSON.stringify({
    rateLimit: error instanceof RateLimitError,
    status: error.status,
    code: error.code,
    detail: error.detail,
    retryAfter: error.retryAfter,
  }));
} finally {
  await first.destroy();
}
