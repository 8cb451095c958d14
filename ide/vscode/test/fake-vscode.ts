// A fake of the small part of the `vscode` API the extension uses, with
// hooks for tests to script the user's answers and read what was shown.

type Listener = (e: any) => void;

export const state = {
  settings: new Map<string, unknown>(),
  errors: [] as string[],
  progress: [] as Array<{ title?: string; message?: string }>,
  quickPickItems: [] as any[],
  quickPickAnswer: (items: any[]): any => undefined,
  inputBoxAnswer: undefined as string | undefined,
  commands: new Map<string, (...args: any[]) => any>(),
  providers: [] as Array<{ type: string; provider: any }>,
  configListeners: [] as Listener[],
  statusItems: [] as any[],
  cancelProgress: false,
};

export function reset(): void {
  state.settings.clear();
  state.errors = [];
  state.progress = [];
  state.quickPickItems = [];
  state.quickPickAnswer = () => undefined;
  state.inputBoxAnswer = undefined;
  state.commands.clear();
  state.providers = [];
  state.configListeners = [];
  state.statusItems = [];
  state.cancelProgress = false;
}

export enum ConfigurationTarget {
  Global = 1,
  Workspace = 2,
  WorkspaceFolder = 3,
}
export enum ProgressLocation {
  SourceControl = 1,
  Window = 10,
  Notification = 15,
}
export enum StatusBarAlignment {
  Left = 1,
  Right = 2,
}

export const workspace = {
  getConfiguration(section: string) {
    return {
      get<T>(key: string, fallback?: T): T {
        const full = `${section}.${key}`;
        return (state.settings.has(full) ? state.settings.get(full) : fallback) as T;
      },
      async update(key: string, value: unknown, _target?: ConfigurationTarget) {
        const full = `${section}.${key}`;
        state.settings.set(full, value);
        for (const l of state.configListeners)
          l({ affectsConfiguration: (s: string) => full.startsWith(s) });
      },
    };
  },
  onDidChangeConfiguration(listener: Listener) {
    state.configListeners.push(listener);
    return { dispose() {} };
  },
};

function cancellationToken(cancelled: boolean) {
  return {
    isCancellationRequested: cancelled,
    onCancellationRequested(listener: () => void) {
      if (cancelled) setImmediate(listener);
      return { dispose() {} };
    },
  };
}

export const window = {
  createStatusBarItem(_alignment?: StatusBarAlignment, _priority?: number) {
    const item = { text: "", tooltip: "", command: "", shown: false, show() { item.shown = true; }, dispose() {} };
    state.statusItems.push(item);
    return item;
  },
  async showErrorMessage(message: string) {
    state.errors.push(message);
    return undefined;
  },
  async showQuickPick(items: any[], _options?: unknown) {
    state.quickPickItems = items;
    return state.quickPickAnswer(items);
  },
  async showInputBox(_options?: unknown) {
    return state.inputBoxAnswer;
  },
  async withProgress<R>(
    options: { location: ProgressLocation; title?: string; cancellable?: boolean },
    task: (progress: { report(v: { message?: string }) : void }, token: any) => Promise<R>,
  ): Promise<R> {
    state.progress.push({ title: options.title });
    return task(
      { report: (v) => state.progress.push({ message: v.message }) },
      cancellationToken(state.cancelProgress),
    );
  },
};

export const commands = {
  registerCommand(name: string, fn: (...args: any[]) => any) {
    state.commands.set(name, fn);
    return { dispose() {} };
  },
};

export const debug = {
  registerDebugConfigurationProvider(type: string, provider: any) {
    state.providers.push({ type, provider });
    return { dispose() {} };
  },
};
