'use strict'
// Shared helpers for the node driver programs run by tests/integration/test_drivers_external.py.
//
// * config(): reads the JSON in DRIVER_TEST_CONFIG (host, port, user, password, database, table, clients, ...).
// * Every ErrorResponse a PostgreSQL backend (here: pg_doorman) sends on any socket of this process is recorded
//   by a passive sniffer on net.Socket, so an error a driver hides from the program (postgres.js silently
//   re-prepares and retries after "prepared statement ... does not exist") still fails the test.
// * config() also arms a watchdog (cfg.timeoutMs, default 100 s) that reports and exits if the program hangs.
// * check(cond, msg) collects mismatches; finish(summary) prints the summary as one JSON line and sets the exit
//   code (1 when anything was wrong).

const net = require('net')

const serverErrors = [] // {code, message} of every ErrorResponse received
const failures = []

function parseErrorFields(body) {
  const fields = {}
  let i = 0
  while (i < body.length && body[i] !== 0) {
    const type = String.fromCharCode(body[i])
    const end = body.indexOf(0, i + 1)
    fields[type] = body.toString('utf8', i + 1, end)
    i = end + 1
  }
  return fields
}

function makeSniffer() {
  let pending = Buffer.alloc(0)
  return (chunk) => {
    pending = pending.length ? Buffer.concat([pending, chunk]) : chunk
    let offset = 0
    while (pending.length - offset >= 5) {
      const type = pending[offset]
      const length = pending.readUInt32BE(offset + 1)
      if (pending.length - offset < 1 + length) break
      if (type === 0x45) { // 'E' ErrorResponse
        const f = parseErrorFields(pending.subarray(offset + 5, offset + 1 + length))
        serverErrors.push({ code: f.C, message: f.M })
      }
      offset += 1 + length
    }
    pending = pending.subarray(offset)
  }
}

const originalConnect = net.Socket.prototype.connect
net.Socket.prototype.connect = function (...args) {
  if (!this.__doormanSniffer) {
    this.__doormanSniffer = makeSniffer()
    this.on('data', this.__doormanSniffer)
  }
  return originalConnect.apply(this, args)
}

function config() {
  const raw = process.env.DRIVER_TEST_CONFIG
  if (!raw) throw new Error('DRIVER_TEST_CONFIG is not set')
  const cfg = JSON.parse(raw)
  // A driver waiting forever for an answer that never comes must not hang the test run: report and exit.
  setTimeout(() => {
    failures.push(`timed out after ${cfg.timeoutMs || 100000} ms (a query never completed)`)
    finish({ fatal: 'timeout' })
    process.exit(1)
  }, cfg.timeoutMs || 100000).unref()
  return cfg
}

function check(cond, msg) {
  if (!cond) {
    if (failures.length < 50) failures.push(msg)
    else if (failures.length === 50) failures.push('... more failures left out')
  }
  return cond
}

function finish(summary) {
  const unexpected = serverErrors.filter((e) => !(summary.expectedErrorCodes || []).includes(e.code))
  const out = {
    ...summary,
    failures,
    serverErrors: serverErrors.length,
    unexpectedServerErrors: unexpected.slice(0, 20),
    unexpectedServerErrorCount: unexpected.length,
  }
  process.stdout.write(JSON.stringify(out) + '\n')
  process.exitCode = failures.length || unexpected.length ? 1 : 0
}

// Runs `runClient(index)` for cfg.clients clients at once; each returns { pids, committedRows, committedSum,
// rollbacks }. Prints the summary the Python side checks (division by zero, 22012, is the expected error).
function runClients(cfg, runClient) {
  const expectedErrorCodes = ['22012']
  const main = async () => {
    const results = await Promise.all([...Array(cfg.clients).keys()].map(runClient))
    const allPids = new Set()
    let rows = 0
    let sum = 0
    let rollbacks = 0
    let multiServerClients = 0
    for (const r of results) {
      r.pids.forEach((p) => allPids.add(p))
      rows += r.committedRows
      sum += r.committedSum
      rollbacks += r.rollbacks
      if (r.pids.length > 1) multiServerClients += 1
    }
    finish({ rows, sum, rollbacks, pids: [...allPids], multiServerClients, expectedErrorCodes })
  }
  main().catch((err) => {
    process.stderr.write(`fatal: ${err && err.stack ? err.stack : err}\n`)
    finish({ fatal: String(err && err.message), expectedErrorCodes })
    process.exitCode = 1
  })
}

module.exports = { config, check, finish, runClients, serverErrors }
