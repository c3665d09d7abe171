// pgJDBC through pg_doorman in transaction mode: a plain java.sql.DriverManager program (no connection pool).
//
// Run by tests/integration/test_drivers_external.py:
//   java -cp postgresql.jar:DIR DriverTest JDBC_URL USER PASSWORD TABLE CLIENTS ITERATIONS
// The URL carries prepareThreshold=1, so pgJDBC turns every PreparedStatement into a named server-side
// statement (S_1, S_2, ...: the same names on every connection) from its first execution on, and afterwards
// only binds by name -- possibly on a server connection that never saw the Parse. CLIENTS threads each own a
// Connection and run several statements with varying parameters, batched inserts (addBatch/executeBatch)
// in explicit transactions, and a division by zero inside a transaction followed by rollback and further use
// of the same statements. Every value is checked; one JSON line on stdout summarizes what was done (exit
// status 1 when anything was wrong).

import java.sql.Connection;
import java.sql.DriverManager;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.sql.SQLException;
import java.sql.Statement;
import java.util.ArrayList;
import java.util.Collections;
import java.util.HashSet;
import java.util.List;
import java.util.Set;
import java.util.concurrent.atomic.AtomicInteger;
import java.util.concurrent.atomic.AtomicLong;

public final class DriverTest {
    private static final List<String> FAILURES = Collections.synchronizedList(new ArrayList<>());
    private static final Set<Integer> PIDS = Collections.synchronizedSet(new HashSet<>());
    private static final AtomicLong ROWS = new AtomicLong();
    private static final AtomicLong SUM = new AtomicLong();
    private static final AtomicInteger ROLLBACKS = new AtomicInteger();
    private static final AtomicInteger MULTI_SERVER_CLIENTS = new AtomicInteger();
    private static final AtomicInteger SERVER_PREPARED = new AtomicInteger();

    private DriverTest() {
    }

    private static void check(boolean cond, String message) {
        if (!cond && FAILURES.size() < 50) {
            FAILURES.add(message);
        }
    }

    private static int intResult(PreparedStatement ps) throws SQLException {
        try (ResultSet rs = ps.executeQuery()) {
            if (!rs.next()) {
                throw new SQLException("no row");
            }
            return rs.getInt(1);
        }
    }

    private static void runClient(int c, String url, String user, String password, String table, int iterations)
            throws SQLException {
        try (Connection conn = DriverManager.getConnection(url, user, password)) {
            Set<Integer> myPids = new HashSet<>();
            long myRows = 0;
            long mySum = 0;
            try (PreparedStatement dbl = conn.prepareStatement("select ?::int * 2, pg_backend_pid()");
                 PreparedStatement concat = conn.prepareStatement("select ?::text || '-' || ?::text");
                 PreparedStatement series = conn.prepareStatement(
                         "select sum(x)::int from generate_series(1, ?::int) as x");
                 PreparedStatement parity = conn.prepareStatement(
                         c % 2 == 0 ? "select ?::int + 7" : "select ?::int - 7");
                 PreparedStatement insert = conn.prepareStatement(
                         "insert into " + table + " (client, seq, val) values (?, ?, ?)");
                 PreparedStatement count = conn.prepareStatement(
                         "select count(*)::int, coalesce(sum(val), 0)::bigint from " + table + " where client = ?");
                 PreparedStatement div = conn.prepareStatement("select 100 / ?::int")) {
                for (int i = 0; i < iterations; i++) {
                    conn.setAutoCommit(true);
                    int v = c * 1000 + i;
                    dbl.setInt(1, v);
                    try (ResultSet rs = dbl.executeQuery()) {
                        check(rs.next(), "client " + c + " iter " + i + ": dbl returned no row");
                        check(rs.getInt(1) == 2 * v, "client " + c + " iter " + i + ": dbl(" + v + ") = " + rs.getInt(1));
                        myPids.add(rs.getInt(2));
                    }
                    concat.setString(1, "c" + c);
                    concat.setString(2, "i" + i);
                    try (ResultSet rs = concat.executeQuery()) {
                        rs.next();
                        String s = rs.getString(1);
                        check(("c" + c + "-i" + i).equals(s), "client " + c + " iter " + i + ": concat = " + s);
                    }
                    int n = i % 30 + 1;
                    series.setInt(1, n);
                    int got = intResult(series);
                    check(got == n * (n + 1) / 2, "client " + c + " iter " + i + ": series(" + n + ") = " + got);
                    parity.setInt(1, v);
                    got = intResult(parity);
                    check(got == (c % 2 == 0 ? v + 7 : v - 7), "client " + c + " iter " + i + ": parity = " + got);

                    // A batch of inserts in a transaction, checked before commit.
                    conn.setAutoCommit(false);
                    int batch = 3 + i % 3;
                    long batchSum = 0;
                    for (int k = 0; k < batch; k++) {
                        insert.setInt(1, c);
                        insert.setInt(2, i * 10 + k);
                        insert.setInt(3, c + i + k);
                        insert.addBatch();
                        batchSum += c + i + k;
                    }
                    int[] counts = insert.executeBatch();
                    check(counts.length == batch, "client " + c + " iter " + i + ": batch returned " + counts.length);
                    for (int updated : counts) {
                        check(updated == 1 || updated == Statement.SUCCESS_NO_INFO,
                                "client " + c + " iter " + i + ": batch update count " + updated);
                    }
                    count.setInt(1, c);
                    try (ResultSet rs = count.executeQuery()) {
                        rs.next();
                        check(rs.getInt(1) == myRows + batch && rs.getLong(2) == mySum + batchSum,
                                "client " + c + " iter " + i + ": in-tx count/sum " + rs.getInt(1) + "/" + rs.getLong(2)
                                        + ", want " + (myRows + batch) + "/" + (mySum + batchSum));
                    }
                    dbl.setInt(1, i);
                    try (ResultSet rs = dbl.executeQuery()) {
                        rs.next();
                        check(rs.getInt(1) == 2 * i, "client " + c + " iter " + i + ": in-tx dbl = " + rs.getInt(1));
                    }
                    conn.commit();
                    myRows += batch;
                    mySum += batchSum;

                    if (i % 5 == 2) {
                        // An error inside a transaction, rollback, then the statements keep working.
                        insert.setInt(1, c);
                        insert.setInt(2, 1000000 + i);
                        insert.setInt(3, 1000000);
                        insert.executeUpdate();
                        div.setInt(1, 0);
                        String state = null;
                        try {
                            intResult(div);
                        } catch (SQLException e) {
                            state = e.getSQLState();
                        }
                        check("22012".equals(state), "client " + c + " iter " + i + ": expected 22012, got " + state);
                        conn.rollback();
                        ROLLBACKS.incrementAndGet();
                        div.setInt(1, 4);
                        got = intResult(div);
                        check(got == 25, "client " + c + " iter " + i + ": div(4) = " + got);
                        conn.commit();
                    }
                }
                conn.setAutoCommit(true);
                count.setInt(1, c);
                try (ResultSet rs = count.executeQuery()) {
                    rs.next();
                    check(rs.getInt(1) == myRows && rs.getLong(2) == mySum, "client " + c + ": final count/sum "
                            + rs.getInt(1) + "/" + rs.getLong(2) + ", want " + myRows + "/" + mySum);
                }
                if (dbl.unwrap(org.postgresql.PGStatement.class).isUseServerPrepare()) {
                    SERVER_PREPARED.incrementAndGet();
                }
            }
            PIDS.addAll(myPids);
            if (myPids.size() > 1) {
                MULTI_SERVER_CLIENTS.incrementAndGet();
            }
            ROWS.addAndGet(myRows);
            SUM.addAndGet(mySum);
        }
    }

    public static void main(String[] args) throws Exception {
        String url = args[0];
        String user = args[1];
        String password = args[2];
        String table = args[3];
        int clients = Integer.parseInt(args[4]);
        int iterations = Integer.parseInt(args[5]);
        List<Thread> threads = new ArrayList<>();
        for (int c = 0; c < clients; c++) {
            final int client = c;
            Thread t = new Thread(() -> {
                try {
                    runClient(client, url, user, password, table, iterations);
                } catch (Throwable e) {
                    FAILURES.add("client " + client + ": " + e);
                    e.printStackTrace();
                }
            });
            threads.add(t);
            t.start();
        }
        for (Thread t : threads) {
            t.join();
        }
        StringBuilder out = new StringBuilder();
        out.append("{\"rows\": ").append(ROWS.get())
                .append(", \"sum\": ").append(SUM.get())
                .append(", \"rollbacks\": ").append(ROLLBACKS.get())
                .append(", \"pids\": ").append(PIDS.size())
                .append(", \"multiServerClients\": ").append(MULTI_SERVER_CLIENTS.get())
                .append(", \"serverPrepared\": ").append(SERVER_PREPARED.get())
                .append(", \"failures\": [");
        synchronized (FAILURES) {
            for (int i = 0; i < FAILURES.size(); i++) {
                if (i > 0) {
                    out.append(", ");
                }
                out.append('"').append(FAILURES.get(i).replace("\\", "\\\\").replace("\"", "\\\"")
                        .replace("\n", " ")).append('"');
            }
        }
        out.append("]}");
        System.out.println(out);
        System.exit(FAILURES.isEmpty() ? 0 : 1);
    }
}
