'use strict'
// node-postgres (pg) named queries through pg_doorman in transaction mode.
//
// `clients` pg.Client connections run concurrently; each uses named queries ({name, text, values}), which
// node-postgres parses once per connection and afterwards only binds by name, so every later use may land on
// a server connection that never saw the Parse. The same name carries a different text on different clients
// ('q_var'), some names exist only on even or odd clients, inserts run in explicit transactions and a
// division by zero inside a transaction is followed by ROLLBACK and further use of the same statement.
// Every returned value is checked; the summary lets the Python side verify the table contents.

const { config, check, runClients } = require('./common')
const { Client } = require('pg')

const cfg = config()
const T = cfg.table
const iterations = cfg.iterations

const Q = {
  double: { name: 'q_double', text: 'select $1::int * 2 as v, pg_backend_pid() as pid' },
  concat: { name: 'q_concat', text: "select $1::text || '-' || $2::text as s" },
  series: { name: 'q_series', text: 'select sum(x)::int as s from generate_series(1, $1::int) as x' },
  insert: { name: 'q_insert', text: `insert into ${T} (client, seq, val) values ($1, $2, $3)` },
  div: { name: 'q_div', text: 'select 100 / $1::int as v' },
  count: { name: 'q_count', text: `select count(*)::int as n, coalesce(sum(val), 0)::int as s from ${T} where client = $1` },
  even: { name: 'q_even', text: 'select $1::int + 1 as v' },
  odd: { name: 'q_odd', text: "select upper($1::text) as v" },
}

function named(q, values) {
  return { name: q.name, text: q.text, values }
}

async function runClient(c) {
  const client = new Client({
    host: cfg.host, port: cfg.port, user: cfg.user, password: cfg.password, database: cfg.database,
  })
  await client.connect()
  const pids = new Set()
  let committedRows = 0
  let committedSum = 0
  let rollbacks = 0
  // Same statement name, text depending on the client: the pooler must keep names per client.
  const varAdd = c % 3
  const qVar = { name: 'q_var', text: `select $1::int + ${varAdd} as v` }
  try {
    for (let i = 0; i < iterations; i++) {
      const v = c * 1000 + i
      let r = await client.query(named(Q.double, [v]))
      check(r.rows[0].v === 2 * v, `client ${c} iter ${i}: q_double(${v}) = ${r.rows[0].v}`)
      pids.add(r.rows[0].pid)

      r = await client.query(named(Q.concat, [`c${c}`, `i${i}`]))
      check(r.rows[0].s === `c${c}-i${i}`, `client ${c} iter ${i}: q_concat = ${r.rows[0].s}`)

      const n = (i % 40) + 1
      r = await client.query(named(Q.series, [n]))
      check(r.rows[0].s === (n * (n + 1)) / 2, `client ${c} iter ${i}: q_series(${n}) = ${r.rows[0].s}`)

      r = await client.query(named(qVar, [v]))
      check(r.rows[0].v === v + varAdd, `client ${c} iter ${i}: q_var(${v}) = ${r.rows[0].v}, want ${v + varAdd}`)

      // An unnamed parameterized query (Parse of the unnamed statement every time) between the named ones.
      r = await client.query('select $1::int + 100 as v, $2::text as t', [v, `u${i}`])
      check(r.rows[0].v === v + 100 && r.rows[0].t === `u${i}`, `client ${c} iter ${i}: unnamed = ${JSON.stringify(r.rows[0])}`)

      if (c % 2 === 0) {
        r = await client.query(named(Q.even, [v]))
        check(r.rows[0].v === v + 1, `client ${c} iter ${i}: q_even = ${r.rows[0].v}`)
      } else {
        r = await client.query(named(Q.odd, [`x${i}y`]))
        check(r.rows[0].v === `X${i}Y`, `client ${c} iter ${i}: q_odd = ${r.rows[0].v}`)
      }

      // A committed transaction: insert, then read back inside the same transaction.
      await client.query('BEGIN')
      await client.query(named(Q.insert, [c, i, c + i]))
      r = await client.query(named(Q.count, [c]))
      check(r.rows[0].n === committedRows + 1, `client ${c} iter ${i}: in-tx count ${r.rows[0].n} != ${committedRows + 1}`)
      check(r.rows[0].s === committedSum + c + i, `client ${c} iter ${i}: in-tx sum ${r.rows[0].s}`)
      r = await client.query(named(Q.double, [i]))
      check(r.rows[0].v === 2 * i, `client ${c} iter ${i}: in-tx q_double = ${r.rows[0].v}`)
      await client.query('COMMIT')
      committedRows += 1
      committedSum += c + i

      if (i % 5 === 2) {
        // An error inside a transaction, ROLLBACK, then the same statements keep working.
        await client.query('BEGIN')
        await client.query(named(Q.insert, [c, 100000 + i, 1000000]))
        let failed = null
        try {
          await client.query(named(Q.div, [0]))
        } catch (err) {
          failed = err
        }
        check(failed && failed.code === '22012', `client ${c} iter ${i}: expected division_by_zero, got ${failed && (failed.code + ' ' + failed.message)}`)
        await client.query('ROLLBACK')
        rollbacks += 1
        r = await client.query(named(Q.div, [4]))
        check(r.rows[0].v === 25, `client ${c} iter ${i}: q_div(4) = ${r.rows[0].v}`)
      }

      if (i % 10 === 9) {
        r = await client.query(named(Q.count, [c]))
        check(r.rows[0].n === committedRows && r.rows[0].s === committedSum,
          `client ${c} iter ${i}: count/sum ${r.rows[0].n}/${r.rows[0].s}, want ${committedRows}/${committedSum}`)
      }
    }
  } finally {
    await client.end()
  }
  return { pids: [...pids], committedRows, committedSum, rollbacks }
}

runClients(cfg, runClient)
