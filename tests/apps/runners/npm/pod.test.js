// Run by `remora test -- npm test`: the test sees the pod's env and files.
const test = require("node:test");
const assert = require("node:assert");
const fs = require("node:fs");

test("sees the pod's env", () => {
  assert.strictEqual(process.env.APP_SECRET, "s3cr3t-from-the-pod");
});

test("reads a pod file", () => {
  const text = fs.readFileSync("/etc/checkout/config.yaml", "utf8");
  assert.ok(text.startsWith("feature_flags:\n"), text);
});
