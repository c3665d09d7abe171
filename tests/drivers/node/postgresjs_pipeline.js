'use strict'
// postgres.js (porsager/postgres) through pg_doorman in transaction mode, with its defaults: prepare = true
// (every query becomes a named statement, parsed once per connection and then bound by name) and pipelining
// (queries issued together on one connection go out back to back without waiting for each other).
//
// `clients` independent sql instances with one connection each (max: 1), so Promise.all over many queries
// really pipelines them on one client connection of the pooler. postgres.js describes a new statement with
// Parse/Describe/Flush and only sends Bind/Execute/Sync after the answer, which the pooler must keep on one
// server. Transactions (sql.begin) pipeline inserts too; a division by zero inside one makes postgres.js roll
// back, after which the statements keep working. postgres.js quietly re-prepares and retries a query that
// fails with "prepared statement ... does not exist"; common.js records every ErrorResponse on the wire so
// such a hidden error still fails the test.

const { config, check, runClients } = require('./common')
const postgres = require('postgres')

const cfg = config()
const rounds = cfg.iterations
const fanout = cfg.fanout || 12

async function runClient(c) {
  const sql = postgres({
    host: cfg.host, port: cfg.port, user: cfg.user, password: cfg.password, database: cfg.database,
    max: 1, idle_timeout: 0, connect_timeout: 20, onnotice: () => {},
  })
  const T = sql(cfg.table)
  const pids = new Set()
  let committedRows = 0
  let committedSum = 0
  let rollbacks = 0
  try {
    for (let r = 0; r < rounds; r++) {
      // Pipelined burst of one statement with many parameter values.
      const base = c * 100000 + r * 100
      const doubles = await Promise.all([...Array(fanout).keys()].map((k) =>
        sql`select ${base + k}::int * 2 as v, pg_backend_pid() as pid`))
      doubles.forEach(([row], k) => {
        check(row.v === 2 * (base + k), `client ${c} round ${r}: double(${base + k}) = ${row.v}`)
        pids.add(row.pid)
      })

      // Pipelined burst of different statements, some only on even or odd clients.
      const n = (r % 30) + 1
      const mixed = await Promise.all([
        sql`select ${'c' + c}::text || '/' || ${'r' + r}::text as s`,
        sql`select sum(x)::int as s from generate_series(1, ${n}::int) as x`,
        c % 2 === 0 ? sql`select ${r}::int + 1000 as v` : sql`select ${r}::int - 1000 as v`,
        sql`select ${c}::int as c, ${r}::int as r, ${'t' + r}::text as t`,
      ])
      check(mixed[0][0].s === `c${c}/r${r}`, `client ${c} round ${r}: concat = ${mixed[0][0].s}`)
      check(mixed[1][0].s === (n * (n + 1)) / 2, `client ${c} round ${r}: series(${n}) = ${mixed[1][0].s}`)
      const want = c % 2 === 0 ? r + 1000 : r - 1000
      check(mixed[2][0].v === want, `client ${c} round ${r}: parity stmt = ${mixed[2][0].v}, want ${want}`)
      check(mixed[3][0].c === c && mixed[3][0].r === r && mixed[3][0].t === `t${r}`,
        `client ${c} round ${r}: row = ${JSON.stringify(mixed[3][0])}`)

      // A transaction with pipelined inserts, read back before COMMIT.
      const vals = [1, 2, 3, 4].map((k) => c + r * k)
      const inTx = await sql.begin(async (tx) => {
        await Promise.all(vals.map((val, k) =>
          tx`insert into ${T} (client, seq, val) values (${c}, ${r * 10 + k}, ${val})`))
        const [row] = await tx`select count(*)::int as n, coalesce(sum(val), 0)::int as s from ${T} where client = ${c}`
        return row
      })
      const addSum = vals.reduce((a, b) => a + b, 0)
      check(inTx.n === committedRows + vals.length && inTx.s === committedSum + addSum,
        `client ${c} round ${r}: in-tx count/sum ${inTx.n}/${inTx.s}, want ${committedRows + vals.length}/${committedSum + addSum}`)
      committedRows += vals.length
      committedSum += addSum

      if (r % 4 === 1) {
        let failed = null
        try {
          await sql.begin(async (tx) => {
            await tx`insert into ${T} (client, seq, val) values (${c}, ${1000000 + r}, ${1000000})`
            await tx`select 100 / ${0}::int as v`
          })
        } catch (err) {
          failed = err
        }
        check(failed && failed.code === '22012', `client ${c} round ${r}: expected division_by_zero, got ${failed && (failed.code + ' ' + failed.message)}`)
        rollbacks += 1
        const [row] = await sql`select 100 / ${4}::int as v`
        check(row.v === 25, `client ${c} round ${r}: div(4) = ${row.v}`)
      }
    }
    const [row] = await sql`select count(*)::int as n, coalesce(sum(val), 0)::int as s from ${T} where client = ${c}`
    check(row.n === committedRows && row.s === committedSum,
      `client ${c}: final count/sum ${row.n}/${row.s}, want ${committedRows}/${committedSum}`)
  } finally {
    await sql.end({ timeout: 5 })
  }
  return { pids: [...pids], committedRows, committedSum, rollbacks }
}

runClients(cfg, runClient)
