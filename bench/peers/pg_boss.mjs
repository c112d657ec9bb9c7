// pg-boss adapter (Node, packages from bench/.peers/node). Protocol: see _common.py.
// Batch enqueue: boss.insert(name, jobs). Worker: boss.work() with batchSize 100,
// burst fetching while batches come back full, and LISTEN/NOTIFY wake-ups.
import * as c from "./_common.mjs";

const { PgBoss } = await c.importPeer("pg-boss");
const ENQUEUE_CHUNK = Number(process.env.BENCH_PGBOSS_CHUNK ?? 5000);
const BATCH_SIZE = 100;
const QUEUE = "noop";
const WORK_OPTIONS = { batchSize: BATCH_SIZE, burstWhenBatchFull: true, pollingIntervalSeconds: 0.5 };

const args = c.parseArgs();

async function startBoss() {
  const boss = new PgBoss({ connectionString: args.url, useListenNotify: true });
  boss.on("error", (err) => process.stderr.write(`pg-boss error: ${err?.stack ?? err}\n`));
  await boss.start();
  return boss;
}

if (args.command === "setup") {
  const boss = await startBoss();
  await boss.createQueue(QUEUE, { notify: true });
  await boss.stop({ graceful: false, wait: true });
  c.emitJson({
    version: `pg-boss ${c.peerVersion("pg-boss")}`,
    remaining_sql: `SELECT count(*) FROM pgboss.job WHERE name = '${QUEUE}' AND state IN ('created', 'retry', 'active')`,
    config: {
      enqueue_chunk: ENQUEUE_CHUNK,
      "work.batchSize": BATCH_SIZE,
      "work.burstWhenBatchFull": true,
      "work.pollingIntervalSeconds": 0.5,
      useListenNotify: true,
      "queue.notify": true,
    },
  });
  process.exit(0);
} else if (args.command === "enqueue") {
  const boss = await startBoss();
  const elapsed = c.timed();
  for (let start = 0; start < args.jobs; start += ENQUEUE_CHUNK) {
    const jobs = [];
    for (let i = start; i < Math.min(args.jobs, start + ENQUEUE_CHUNK); i++) jobs.push({ data: { n: i } });
    await boss.insert(QUEUE, jobs);
  }
  const seconds = elapsed();
  await boss.stop({ graceful: false, wait: true });
  c.emitJson({ jobs: args.jobs, seconds });
  process.exit(0);
} else if (args.command === "worker") {
  const latency = args.latency;
  const boss = await startBoss();
  c.ready();
  await boss.work(QUEUE, WORK_OPTIONS, async (jobs) => {
    if (latency) for (const job of jobs) c.ran(job.data.n);
  });
  await c.untilTerminated();
  await boss.stop({ graceful: false, wait: false });
  process.exit(0);
} else {
  const boss = await startBoss();
  await c.produceLoop((no) => boss.send(QUEUE, { n: no }));
  await boss.stop({ graceful: false, wait: true });
  process.exit(0);
}
