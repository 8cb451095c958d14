// Makes `require("vscode")` return the fake: import this first in every test.
import Module = require("module");
import * as fake from "./fake-vscode";

const loader = Module as unknown as { _load: (request: string, ...rest: unknown[]) => unknown };
const original = loader._load;
loader._load = function (request: string, ...rest: unknown[]) {
  if (request === "vscode") return fake;
  return original.call(this, request, ...rest);
};

export { fake };
