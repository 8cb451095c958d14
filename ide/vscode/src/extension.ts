// VS Code glue: a status-bar toggle, a target picker fed by `remora ls
// --json`, and a debug configuration provider that prepares a remora session
// (`remora ext --json`) for every launch while remora is enabled and merges
// the session's environment into the launch configuration.

import * as vscode from "vscode";
import * as path from "path";
import {
  ExtReady,
  RemoraError,
  listTargets,
  mergeEnv,
  prepareSession,
} from "./remora";

const SECTION = "remora";

function settings() {
  const c = vscode.workspace.getConfiguration(SECTION);
  return {
    enabled: c.get<boolean>("enabled", false),
    target: c.get<string>("target", ""),
    configFile: c.get<string>("configFile", ""),
    remora: c.get<string>("path", "remora") || "remora",
    waitTimeout: c.get<number>("waitTimeout", 120),
  };
}

/** The status bar item: shows the state, toggles on click. */
export function renderStatus(item: vscode.StatusBarItem): void {
  const s = settings();
  if (s.enabled) {
    item.text = `$(remote) remora: ${s.target || "no target"}`;
    item.tooltip = "remora is on for debug sessions (click to turn off)";
  } else {
    item.text = "$(circle-slash) remora: off";
    item.tooltip = "remora is off (click to run debug sessions in a remora session)";
  }
  item.command = "remora.toggle";
  item.show();
}

/** Let the user pick a target from `remora ls --json`; saves it. */
export async function pickTarget(): Promise<string | undefined> {
  const s = settings();
  let entries;
  try {
    entries = await listTargets({ remora: s.remora });
  } catch (e) {
    showError(e);
    return undefined;
  }
  const items: Array<vscode.QuickPickItem & { target?: string }> = entries.map((t) => {
    const addresses = (t.details["addresses"] as string[] | undefined) ?? [];
    return {
      label: t.target,
      description: t.description,
      detail: addresses.length ? `sandboxed: ${addresses.join(", ")}` : undefined,
      target: t.target,
    };
  });
  items.push({ label: "Enter a target…", target: undefined });
  const picked = await vscode.window.showQuickPick(items, {
    placeHolder: "The target your debug sessions run in",
    matchOnDescription: true,
  });
  if (!picked) return undefined;
  const target =
    picked.target ??
    (await vscode.window.showInputBox({
      prompt: "Target, as for `remora run --target`",
      value: s.target,
    }));
  if (!target) return undefined;
  await vscode.workspace
    .getConfiguration(SECTION)
    .update("target", target, vscode.ConfigurationTarget.Workspace);
  return target;
}

/** Turn remora on or off (asking for a target when there is none). */
export async function toggle(): Promise<void> {
  const s = settings();
  if (!s.enabled && !s.target && !(await pickTarget())) return;
  await vscode.workspace
    .getConfiguration(SECTION)
    .update("enabled", !s.enabled, vscode.ConfigurationTarget.Workspace);
}

function showError(e: unknown): void {
  const text = e instanceof RemoraError ? e.display() : String(e);
  void vscode.window.showErrorMessage(`remora: ${text}`);
}

/** Prepares a remora session for each launch while remora is enabled. */
export class RemoraDebugProvider implements vscode.DebugConfigurationProvider {
  async resolveDebugConfigurationWithSubstitutedVariables(
    folder: vscode.WorkspaceFolder | undefined,
    config: vscode.DebugConfiguration,
    token?: vscode.CancellationToken,
  ): Promise<vscode.DebugConfiguration | undefined> {
    const s = settings();
    // Attaching joins a running process: nothing to prepare.
    if (!s.enabled || config.remora === false || config.request !== "launch") return config;
    if (!s.target) {
      showError(new RemoraError("no target", "pick one with “remora: Pick a target”"));
      return undefined;
    }
    const cwd = folder?.uri.fsPath;
    const configFile =
      s.configFile && cwd && !path.isAbsolute(s.configFile)
        ? path.join(cwd, s.configFile)
        : s.configFile || undefined;
    let ready: ExtReady;
    try {
      ready = await vscode.window.withProgress(
        {
          location: vscode.ProgressLocation.Notification,
          title: `remora: ${s.target}`,
          cancellable: true,
        },
        (progress, cancel) => {
          const abort = new AbortController();
          cancel.onCancellationRequested(() => abort.abort());
          token?.onCancellationRequested(() => abort.abort());
          return prepareSession(
            {
              remora: s.remora,
              cwd,
              target: s.target,
              configFile,
              waitTimeout: s.waitTimeout,
              program: config.name,
              signal: abort.signal,
            },
            (message) => progress.report({ message }),
          );
        },
      );
    } catch (e) {
      showError(e);
      return undefined; // the launch is abandoned
    }
    return mergeEnv(config, ready) as vscode.DebugConfiguration;
  }
}

export function activate(context: vscode.ExtensionContext): void {
  const item = vscode.window.createStatusBarItem(vscode.StatusBarAlignment.Left, 100);
  renderStatus(item);
  context.subscriptions.push(
    item,
    vscode.commands.registerCommand("remora.toggle", toggle),
    vscode.commands.registerCommand("remora.pickTarget", pickTarget),
    vscode.workspace.onDidChangeConfiguration((e) => {
      if (e.affectsConfiguration(SECTION)) renderStatus(item);
    }),
    vscode.debug.registerDebugConfigurationProvider("*", new RemoraDebugProvider()),
  );
}

export function deactivate(): void {}
