// A fake `remora` executable: a shell script printing scripted stdout and
// stderr, exiting with a scripted code, and recording its arguments.

import * as fs from "fs";
import * as os from "os";
import * as path from "path";

export interface FakeRemora {
  path: string;
  /** The arguments of every call, one array per call. */
  calls(): string[][];
}

// Every fake's directory, removed when the test process exits (each test
// file runs in a process of its own), whether its tests passed or not.
const dirs: string[] = [];
process.on("exit", () => {
  for (const dir of dirs) {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

export function fakeRemora(stdout: string, opts: { stderr?: string; code?: number } = {}): FakeRemora {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "fake-remora-"));
  dirs.push(dir);
  fs.writeFileSync(path.join(dir, "stdout"), stdout);
  fs.writeFileSync(path.join(dir, "stderr"), opts.stderr ?? "");
  const log = path.join(dir, "calls");
  const script = `#!/bin/sh
for a in "$@"; do printf '%s\\t' "$a" >> '${log}'; done
printf '\\n' >> '${log}'
cat '${dir}/stdout'
cat '${dir}/stderr' >&2
exit ${opts.code ?? 0}
`;
  const bin = path.join(dir, "remora");
  fs.writeFileSync(bin, script, { mode: 0o755 });
  return {
    path: bin,
    calls: () =>
      fs.existsSync(log)
        ? fs
            .readFileSync(log, "utf8")
            .split("\n")
            .filter((l) => l)
            .map((l) => l.split("\t").slice(0, -1))
        : [],
  };
}

export const READY = {
  version: 1,
  type: "ready",
  target: "pid/42",
  env: {
    APP_SECRET: "s3cr3t",
    LD_PRELOAD: "/opt/remora/libremora_layer.so",
    REMORA_INTPROXY_ADDR: "127.0.0.1:4000",
    REMORA_LAYER_TOKEN: "abc",
    REMORA_RESOLVED_CONFIG: "{}",
  },
  unset: ["HOME"],
  intproxy: "127.0.0.1:4000",
  wait_seconds: 120,
};

export function lines(...objs: unknown[]): string {
  return objs.map((o) => JSON.stringify(o)).join("\n") + "\n";
}
