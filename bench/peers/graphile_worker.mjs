// Graphile Worker adapter (Node, packages from bench/.peers/node). Protocol: see _common.py.
// Batch enqueue: WorkerUtils.addJobs(specs). Worker: run() with a preset using the
// local queue (batch fetching) and batched job completion/failure.
import * as c from "./_common.mjs";

const gw = await c.importPeer("graphile-worker");
const ENQUEUE_CHUNK = Number(process.env.BENCH_GW_CHUNK ?? 5000);
const CONCURRENT_JOBS = Number(process.env.BENCH_GW_CONCURRENCY ?? 10);
const LOCAL_QUEUE_SIZE = 500;
const BATCH_DELAY = Number(process.env.BENCH_GW_BATCH_DELAY ?? 0);

const quietLogger = new gw.Logger(() => (level, message) => {
  if (level === "error") process.stderr.write(`${message}\n`);
});

const args = c.parseArgs();
const connectionString = args.url;

if (args.command === "setup") {
  await gw.runMigrations({ connectionString, logger: quietLogger });
  c.emitJson({
    version: `graphile-worker ${c.peerVersion("graphile-worker")}`,
    remaining_sql: "SELECT count(*) FROM graphile_worker._private_jobs",
    config: {
      enqueue_chunk: ENQUEUE_CHUNK,
      "preset.worker.concurrentJobs": CONCURRENT_JOBS,
      "preset.worker.localQueue.size": LOCAL_QUEUE_SIZE,
      "preset.worker.completeJobBatchDelay": BATCH_DELAY,
      "preset.worker.failJobBatchDelay": BATCH_DELAY,
      "preset.worker.maxPoolSize": CONCURRENT_JOBS + 2,
    },
  });
} else if (args.command === "enqueue") {
  const utils = await gw.makeWorkerUtils({ connectionString, logger: quietLogger });
  const elapsed = c.timed();
  for (let start = 0; start < args.jobs; start += ENQUEUE_CHUNK) {
    const specs = [];
    for (let i = start; i < Math.min(args.jobs, start + ENQUEUE_CHUNK); i++) {
      specs.push({ identifier: "noop", payload: { n: i } });
    }
    await utils.addJobs(specs);
  }
  const seconds = elapsed();
  await utils.release();
  c.emitJson({ jobs: args.jobs, seconds });
} else if (args.command === "worker") {
  const latency = args.latency;
  c.ready();
  const runner = await gw.run({
    logger: quietLogger,
    preset: {
      worker: {
        connectionString,
        concurrentJobs: CONCURRENT_JOBS,
        maxPoolSize: CONCURRENT_JOBS + 2,
        localQueue: { size: LOCAL_QUEUE_SIZE },
        completeJobBatchDelay: BATCH_DELAY,
        failJobBatchDelay: BATCH_DELAY,
      },
    },
    taskList: {
      noop: async (payload) => {
        if (latency) c.ran(payload.n);
      },
    },
  });
  await runner.promise;
} else {
  const utils = await gw.makeWorkerUtils({ connectionString, logger: quietLogger });
  await c.produceLoop((no) => utils.addJob("noop", { n: no }));
}
