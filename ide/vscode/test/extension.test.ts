import { fake } from "./setup";
import { beforeEach, test } from "node:test";
import * as assert from "node:assert/strict";
import * as ext from "../src/extension";
import * as os from "os";
import * as path from "path";
import { READY, fakeRemora, lines } from "./fake-remora";

const context = () => ({ subscriptions: [] as any[] }) as any;

function provider(): ext.RemoraDebugProvider {
  const found = fake.state.providers.find((p) => p.type === "*");
  assert.ok(found, "a provider for every debug type");
  return found.provider;
}

beforeEach(() => {
  fake.reset();
  ext.activate(context());
});

test("activation registers the commands and the status bar shows remora is off", () => {
  assert.ok(fake.state.commands.has("remora.toggle"));
  assert.ok(fake.state.commands.has("remora.pickTarget"));
  const item = fake.state.statusItems[0];
  assert.equal(item.text, "$(circle-slash) remora: off");
  assert.equal(item.command, "remora.toggle");
  assert.ok(item.shown);
});

test("the toggle turns remora on and the status bar names the target", async () => {
  fake.state.settings.set("remora.target", "pid/42");
  await fake.state.commands.get("remora.toggle")!();
  assert.equal(fake.state.settings.get("remora.enabled"), true);
  assert.equal(fake.state.statusItems[0].text, "$(remote) remora: pid/42");
  await fake.state.commands.get("remora.toggle")!();
  assert.equal(fake.state.settings.get("remora.enabled"), false);
});

test("the target picker lists remora ls --json and saves the choice", async () => {
  const remora = fakeRemora(
    JSON.stringify([
      { target: "pid/9", platform: "local", description: "sleep infinity", details: { addresses: ["10.213.0.6"] } },
      { target: "pid/5", platform: "local", description: "python3 app.py", details: { addresses: [] } },
    ]) + "\n",
  );
  fake.state.settings.set("remora.path", remora.path);
  fake.state.quickPickAnswer = (items) => items[0];
  // No target yet: enabling asks for one first.
  await fake.state.commands.get("remora.toggle")!();
  const labels = fake.state.quickPickItems.map((i: any) => i.label);
  assert.deepEqual(labels, ["pid/9", "pid/5", "Enter a target…"]);
  assert.equal(fake.state.quickPickItems[0].detail, "sandboxed: 10.213.0.6");
  assert.equal(fake.state.settings.get("remora.target"), "pid/9");
  assert.equal(fake.state.settings.get("remora.enabled"), true);
});

test("when off, launch configurations pass through untouched", async () => {
  const config = { type: "debugpy", request: "launch", name: "app" };
  assert.deepEqual(await provider().resolveDebugConfigurationWithSubstitutedVariables(undefined, config), config);
});

test("when on, a launch gets the session's env, with progress in a notification", async () => {
  const remora = fakeRemora(
    lines({ version: 1, type: "progress", message: "starting the agent for pid/42" }, READY),
  );
  fake.state.settings.set("remora.enabled", true);
  fake.state.settings.set("remora.target", "pid/42");
  fake.state.settings.set("remora.path", remora.path);
  fake.state.settings.set("remora.configFile", "remora.toml");
  const folder = { uri: { fsPath: os.tmpdir() } } as any;
  const config = { type: "debugpy", request: "launch", name: "app", env: { DEBUG: "1" } };
  const resolved: any = await provider().resolveDebugConfigurationWithSubstitutedVariables(folder, config);
  assert.equal(resolved.env.APP_SECRET, "s3cr3t");
  assert.equal(resolved.env.DEBUG, "1");
  assert.deepEqual(fake.state.progress, [
    { title: "remora: pid/42" },
    { message: "starting the agent for pid/42" },
  ]);
  assert.deepEqual(remora.calls()[0].slice(0, 6), ["ext", "--json", "--target", "pid/42", "-f", path.join(os.tmpdir(), "remora.toml")]);
  // Attaching needs no session.
  const attach = { type: "debugpy", request: "attach", name: "a" };
  assert.deepEqual(await provider().resolveDebugConfigurationWithSubstitutedVariables(folder, attach), attach);
  assert.equal(remora.calls().length, 1);
});

test("when remora fails, its own error text is shown and the launch is abandoned", async () => {
  const remora = fakeRemora(
    lines({
      version: 1,
      type: "error",
      message: "remora needs privileges to enter the namespaces of pid/1",
      help: "run as root (e.g. with sudo)",
    }),
    { code: 1 },
  );
  fake.state.settings.set("remora.enabled", true);
  fake.state.settings.set("remora.target", "pid/1");
  fake.state.settings.set("remora.path", remora.path);
  const result = await provider().resolveDebugConfigurationWithSubstitutedVariables(undefined, {
    type: "node",
    request: "launch",
    name: "n",
  });
  assert.equal(result, undefined);
  assert.deepEqual(fake.state.errors, [
    "remora: remora needs privileges to enter the namespaces of pid/1 (run as root (e.g. with sudo))",
  ]);
});

test("a launch can opt out with remora: false", async () => {
  fake.state.settings.set("remora.enabled", true);
  fake.state.settings.set("remora.target", "pid/1");
  fake.state.settings.set("remora.path", "/nonexistent/remora");
  const config = { type: "go", request: "launch", name: "g", remora: false };
  assert.deepEqual(await provider().resolveDebugConfigurationWithSubstitutedVariables(undefined, config), config);
  assert.deepEqual(fake.state.errors, []);
});
