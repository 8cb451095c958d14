// The parts of the extension that do not need VS Code: running `remora ext`
// and `remora ls`, parsing their JSON, and merging a session's environment
// into a launch configuration.

import { spawn } from "child_process";
import { existsSync } from "fs";

/** The `ready` line of `remora ext --json` (version 1, see docs/ide.md). */
export interface ExtReady {
  version: number;
  type: "ready";
  target: string;
  env: Record<string, string>;
  unset: string[];
  intproxy: string;
  wait_seconds: number;
}

/** A target of `remora ls --json`. */
export interface TargetEntry {
  target: string;
  platform: string;
  description: string;
  details: Record<string, unknown>;
}

/** remora's own words when it failed: its error line, or its stderr. */
export class RemoraError extends Error {
  constructor(
    message: string,
    public readonly help?: string,
  ) {
    super(message);
  }

  /** The text to show the user. */
  display(): string {
    return this.help ? `${this.message} (${this.help})` : this.message;
  }
}

/** The JSON version this extension understands. */
export const EXT_JSON_VERSION = 1;

/** Parse the output of `remora ext --json`: progress lines go to `onProgress`. */
export function parseExtLines(
  text: string,
  onProgress: (message: string) => void,
): ExtReady | RemoraError | undefined {
  let result: ExtReady | RemoraError | undefined;
  for (const raw of text.split("\n")) {
    const line = raw.trim();
    if (!line) continue;
    let obj: any;
    try {
      obj = JSON.parse(line);
    } catch {
      return new RemoraError(`remora printed something that is not JSON: ${line}`);
    }
    if (obj.version !== EXT_JSON_VERSION) {
      return new RemoraError(
        `remora speaks ext JSON version ${obj.version}; this extension understands version ${EXT_JSON_VERSION} (update one of them)`,
      );
    }
    if (obj.type === "progress") onProgress(String(obj.message));
    else if (obj.type === "ready") result = obj as ExtReady;
    else if (obj.type === "error")
      result = new RemoraError(String(obj.message), obj.help ?? undefined);
  }
  return result;
}

/** How a process is started; tests replace it. */
export type Spawner = typeof spawn;

export interface RunOptions {
  remora: string;
  cwd?: string;
  spawner?: Spawner;
  /** Ends the process when set (the user cancelled). */
  signal?: AbortSignal;
}

/** Run remora, streaming stdout lines to `onLine`; resolves with stdout, stderr and the exit code. */
export function runRemora(
  args: string[],
  opts: RunOptions,
  onLine: (line: string) => void = () => {},
): Promise<{ stdout: string; stderr: string; code: number | null }> {
  const spawner = opts.spawner ?? spawn;
  return new Promise((resolve, reject) => {
    const child = spawner(opts.remora, args, {
      cwd: opts.cwd,
      stdio: ["ignore", "pipe", "pipe"],
      signal: opts.signal,
    });
    let stdout = "";
    let stderr = "";
    let pending = "";
    child.stdout!.on("data", (chunk: Buffer) => {
      stdout += chunk.toString();
      pending += chunk.toString();
      let nl: number;
      while ((nl = pending.indexOf("\n")) >= 0) {
        onLine(pending.slice(0, nl));
        pending = pending.slice(nl + 1);
      }
    });
    child.stderr!.on("data", (chunk: Buffer) => (stderr += chunk.toString()));
    child.on("error", (err: NodeJS.ErrnoException) => {
      if (err.code === "ENOENT" && opts.cwd && !existsSync(opts.cwd))
        reject(new RemoraError(`the working directory ${opts.cwd} does not exist`));
      else if (err.code === "ENOENT")
        reject(
          new RemoraError(
            `cannot run ${opts.remora}: not found`,
            "install remora or set remora.path to its location",
          ),
        );
      else if (err.name === "AbortError") reject(new RemoraError("cancelled"));
      else reject(new RemoraError(`cannot run ${opts.remora}: ${err.message}`));
    });
    child.on("close", (code: number | null) => resolve({ stdout, stderr, code }));
  });
}

export interface ExtOptions extends RunOptions {
  target: string;
  configFile?: string;
  waitTimeout?: number;
  program?: string;
}

/** `remora ext --json`: prepare a session and return its environment. */
export async function prepareSession(
  opts: ExtOptions,
  onProgress: (message: string) => void,
): Promise<ExtReady> {
  const args = ["ext", "--json", "--target", opts.target];
  if (opts.configFile) args.push("-f", opts.configFile);
  if (opts.waitTimeout) args.push("--wait-timeout", String(opts.waitTimeout));
  if (opts.program) args.push("--program", opts.program);
  const out = await runRemora(args, opts, (line) =>
    parseExtLines(line, onProgress),
  );
  const result = parseExtLines(out.stdout, () => {});
  if (result instanceof RemoraError) throw result;
  if (result && out.code === 0) return result;
  const stderr = out.stderr.trim();
  throw new RemoraError(
    stderr || `remora ext exited with code ${out.code} without a result`,
  );
}

/** `remora ls --json`. */
export async function listTargets(opts: RunOptions): Promise<TargetEntry[]> {
  const out = await runRemora(["ls", "--json"], opts);
  if (out.code !== 0)
    throw new RemoraError(out.stderr.trim() || `remora ls exited with code ${out.code}`);
  try {
    return JSON.parse(out.stdout) as TargetEntry[];
  } catch {
    throw new RemoraError(`remora ls printed something that is not JSON: ${out.stdout}`);
  }
}

/** Debug types whose launch configurations take `environment: [{name, value}]`. */
const ENVIRONMENT_ARRAY_TYPES = new Set(["cppdbg"]);
/** Debug types whose `env` removes a variable given as null. */
const NULL_UNSETS_TYPES = new Set(["node", "pwa-node", "node-terminal"]);

/**
 * The launch configuration with the session's environment merged in.
 * The user's own variables win over the target's, except `LD_PRELOAD`,
 * which keeps the layer first and the user's libraries after it.
 */
export function mergeEnv(
  config: Record<string, any>,
  ready: Pick<ExtReady, "env" | "unset">,
): Record<string, any> {
  const out = { ...config };
  const sessionEnv: Record<string, string | null> = { ...ready.env };
  if (NULL_UNSETS_TYPES.has(config.type)) {
    for (const name of ready.unset) sessionEnv[name] = null;
  }
  const layer = ready.env["LD_PRELOAD"];
  if (ENVIRONMENT_ARRAY_TYPES.has(config.type)) {
    const user: Array<{ name: string; value: string }> = config.environment ?? [];
    const userNames = new Set(user.map((e) => e.name));
    const merged = Object.entries(sessionEnv)
      .filter(([name, value]) => value !== null && !userNames.has(name))
      .map(([name, value]) => ({ name, value: value as string }));
    const entries = [...merged, ...user].map((e) =>
      e.name === "LD_PRELOAD" && userNames.has("LD_PRELOAD") && layer
        ? { name: e.name, value: joinPreload(layer, e.value) }
        : e,
    );
    out.environment = entries;
    return out;
  }
  const user: Record<string, string | null> = config.env ?? {};
  const env: Record<string, string | null> = { ...sessionEnv, ...user };
  if (layer && typeof user["LD_PRELOAD"] === "string") {
    env["LD_PRELOAD"] = joinPreload(layer, user["LD_PRELOAD"]);
  }
  out.env = env;
  return out;
}

function joinPreload(layer: string, user: string): string {
  return user ? `${layer}:${user}` : layer;
}
