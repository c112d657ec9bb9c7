// The adapter protocol, Node side (same as _common.py; see its docstring).
// Peer packages live in bench/.peers/node (not next to this file), so they are
// resolved from BENCH_NODE_DIR and imported by absolute URL.
import { createRequire } from "node:module";
import { readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { createInterface } from "node:readline";
import { pathToFileURL } from "node:url";

const nodeDir = process.env.BENCH_NODE_DIR;
if (!nodeDir) throw new Error("BENCH_NODE_DIR is not set (run through bench/run.py)");
const req = createRequire(join(nodeDir, "package.json"));

export async function importPeer(name) {
  return import(pathToFileURL(req.resolve(name)).href);
}

export function peerVersion(name) {
  let dir = dirname(req.resolve(name));
  for (;;) {
    try {
      const pkg = JSON.parse(readFileSync(join(dir, "package.json"), "utf8"));
      if (pkg.name === name) return pkg.version;
    } catch {}
    const up = dirname(dir);
    if (up === dir) return "unknown";
    dir = up;
  }
}

export function parseArgs(argv = process.argv.slice(2)) {
  const args = { command: argv[0], url: null, jobs: 1000, latency: false };
  for (let i = 1; i < argv.length; i++) {
    if (argv[i] === "--url") args.url = argv[++i];
    else if (argv[i] === "--jobs") args.jobs = Number(argv[++i]);
    else if (argv[i] === "--latency") args.latency = true;
    else throw new Error(`unknown argument ${argv[i]}`);
  }
  if (!["setup", "enqueue", "worker", "produce"].includes(args.command) || !args.url) {
    throw new Error("usage: <setup|enqueue|worker|produce> --url URL [--jobs N] [--latency]");
  }
  return args;
}

// Wall-clock epoch seconds with sub-millisecond resolution.
export const now = () => (performance.timeOrigin + performance.now()) / 1000;
export const emitJson = (obj) => process.stdout.write(JSON.stringify(obj) + "\n");
export const say = (...parts) => process.stdout.write(parts.join(" ") + "\n");
export const ready = () => say("READY", now());
export const ran = (jobNo) => say("RUN", jobNo, now());

export async function produceLoop(enqueueOne) {
  const rl = createInterface({ input: process.stdin });
  ready();
  for await (const line of rl) {
    const text = line.trim();
    if (!text) continue;
    const no = Number(text);
    const t0 = now();
    await enqueueOne(no);
    say("SENT", no, t0);
  }
}

export function untilTerminated() {
  return new Promise((resolve) => {
    process.once("SIGTERM", resolve);
    process.once("SIGINT", resolve);
  });
}

export function timed() {
  const start = performance.now();
  return () => (performance.now() - start) / 1000;
}
