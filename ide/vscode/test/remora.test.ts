import { test } from "node:test";
import * as assert from "node:assert/strict";
import { RemoraError, listTargets, mergeEnv, parseExtLines, prepareSession } from "../src/remora";
import { READY, fakeRemora, lines } from "./fake-remora";

test("progress lines go to the callback and the ready line is the result", () => {
  const seen: string[] = [];
  const out = lines(
    { version: 1, type: "progress", message: "starting the agent for pid/42" },
    { version: 1, type: "progress", message: "fetching the target's environment" },
    READY,
  );
  const result = parseExtLines(out, (m) => seen.push(m));
  assert.deepEqual(seen, ["starting the agent for pid/42", "fetching the target's environment"]);
  assert.deepEqual(result, READY);
});

test("an error line becomes a RemoraError with remora's own text and help", () => {
  const result = parseExtLines(
    lines({ version: 1, type: "error", message: "no target given", help: "pass --target pid/<PID>" }),
    () => {},
  );
  assert.ok(result instanceof RemoraError);
  assert.equal(result.display(), "no target given (pass --target pid/<PID>)");
});

test("another JSON version or non-JSON output is refused, saying why", () => {
  const v2 = parseExtLines(lines({ ...READY, version: 2 }), () => {});
  assert.ok(v2 instanceof RemoraError);
  assert.match(v2.message, /version 2.*understands version 1/);
  const junk = parseExtLines("Error: boom\n", () => {});
  assert.ok(junk instanceof RemoraError);
  assert.match(junk.message, /not JSON: Error: boom/);
});

test("node: the session's variables, null for removed ones, the user's win", () => {
  const merged = mergeEnv(
    { type: "pwa-node", request: "launch", env: { APP_SECRET: "mine", LD_PRELOAD: "/x.so" } },
    READY,
  );
  assert.equal(merged.env.APP_SECRET, "mine");
  assert.equal(merged.env.REMORA_LAYER_TOKEN, "abc");
  assert.equal(merged.env.HOME, null);
  assert.equal(merged.env.LD_PRELOAD, "/opt/remora/libremora_layer.so:/x.so");
});

for (const type of ["debugpy", "python", "lldb", "go", "java"]) {
  test(`${type}: env gets the session's variables, removed ones are left alone`, () => {
    const merged = mergeEnv({ type, request: "launch", name: "x" }, READY);
    assert.deepEqual(merged.env, READY.env);
    assert.equal(merged.name, "x");
  });
}

test("cppdbg: environment is an array of name/value pairs", () => {
  const merged = mergeEnv(
    { type: "cppdbg", request: "launch", environment: [{ name: "APP_SECRET", value: "mine" }] },
    READY,
  );
  const env = Object.fromEntries(merged.environment.map((e: any) => [e.name, e.value]));
  assert.equal(env.APP_SECRET, "mine");
  assert.equal(env.LD_PRELOAD, "/opt/remora/libremora_layer.so");
  assert.equal(merged.environment.filter((e: any) => e.name === "APP_SECRET").length, 1);
});

test("prepareSession runs remora ext with the options and returns the env", async () => {
  const remora = fakeRemora(
    lines({ version: 1, type: "progress", message: "starting the agent for pid/42" }, READY),
  );
  const seen: string[] = [];
  const ready = await prepareSession(
    { remora: remora.path, target: "pid/42", configFile: "/w/remora.toml", waitTimeout: 30, program: "Launch api" },
    (m) => seen.push(m),
  );
  assert.deepEqual(ready.env, READY.env);
  assert.deepEqual(seen, ["starting the agent for pid/42"]);
  assert.deepEqual(remora.calls(), [
    ["ext", "--json", "--target", "pid/42", "-f", "/w/remora.toml", "--wait-timeout", "30", "--program", "Launch api"],
  ]);
});

test("prepareSession throws remora's error, or its stderr when there is no JSON", async () => {
  const failing = fakeRemora(
    lines({ version: 1, type: "error", message: "target pid/9 not found: no such process", help: null }),
    { code: 1 },
  );
  await assert.rejects(prepareSession({ remora: failing.path, target: "pid/9" }, () => {}), (e: any) => {
    assert.ok(e instanceof RemoraError);
    assert.equal(e.display(), "target pid/9 not found: no such process");
    return true;
  });
  const crashing = fakeRemora("", { stderr: "error: unexpected argument '--json'\n", code: 2 });
  await assert.rejects(prepareSession({ remora: crashing.path, target: "pid/9" }, () => {}), /unexpected argument '--json'/);
  await assert.rejects(
    prepareSession({ remora: "/nonexistent/remora", target: "pid/9" }, () => {}),
    (e: any) => e instanceof RemoraError && /not found/.test(e.message) && /remora.path/.test(e.help ?? ""),
  );
});

test("listTargets parses remora ls --json", async () => {
  const entries = [{ target: "pid/7", platform: "local", description: "sleep 1", details: { pid: 7 } }];
  const remora = fakeRemora(JSON.stringify(entries) + "\n");
  assert.deepEqual(await listTargets({ remora: remora.path }), entries);
  assert.deepEqual(remora.calls(), [["ls", "--json"]]);
});
